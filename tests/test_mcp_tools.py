"""What an MCP client (the official SDK's, 2.x: `Client` and `ClientSession`) is told by a real `agentgate serve`:
serverInfo with agentgate's version; tools with titles, read-only annotations and output schemas; every result's
structured content valid against its tool's output schema, refusals included; each refusal's code, message and
request id (and approval id) as the gateway wrote them; and the README's client script, run as written."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from jsonschema import Draft202012Validator
from mcp import Client, ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from gateway import __version__
from gateway.transports.mcp import CORE_HAS_SQL, REFUSED
from tests.conftest import bearer, seed, token, write_workspace
from tests.serving import env, serving
from tests.test_attacks_mcp import mcp_error

pytestmark = pytest.mark.system

DATASETS = """
[datasets.customers]
source = "main"
table = "customers"
owner = "maria.keller@example.com"
max_rows = 25

[datasets.customers.columns.email]
class = "pii"

[datasets.orders]
source = "main"
table = "orders"
owner = "sales-ops@example.com"

[datasets.guarded]
source = "main"
table = "customers"
owner = "maria.keller@example.com"
approval = "required"
"""

POLICY = """
p, support, customers, read, allow
p, support, customers, read:pii, allow
p, support, guarded, read, allow
p, analyst, customers, read, allow
p, security-admin, admin:*, *, allow
g, support-bot, support
g, spent-bot, support
g, revoked-bot, support
g, jti-bot, support
g, analyst-bot, analyst
g, alice, security-admin
"""
README = Path(__file__).parent.parent / "README.md"


@dataclass
class Served:
    base: str
    http: httpx.Client


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("mcp-tools")
    seed(f"sqlite+aiosqlite:///{root / 'source.db'}")
    config = write_workspace(root, source_url=f"sqlite+aiosqlite:///{root / 'source.db'}", datasets=DATASETS,
                             policy=POLICY)
    (root / "policies" / "budgets.toml").write_text("[agents.spent-bot]\nrows_per_day = 0\n")
    with serving(config, root / "serve.log") as base, httpx.Client(base_url=base, timeout=20) as http:
        for revocation in ({"agent": "revoked-bot"}, {"jti": "mcp-tools-revoked"}):
            assert http.post("/admin/v1/revocations", headers=bearer("alice"), json=revocation).status_code == 201
        yield Served(base, http)


@asynccontextmanager
async def connected(base: str, headers: dict[str, str], *, legacy: bool = False) -> AsyncIterator[Client]:
    """The SDK's `Client`: on the 2026-07-28 protocol (server/discover), or on the initialize handshake."""
    async with (httpx2.AsyncClient(headers=headers, timeout=20) as http,
                Client(streamable_http_client(f"{base}/mcp", http_client=http),
                       mode="legacy" if legacy else "auto") as client):
        yield client


@asynccontextmanager
async def session(base: str, headers: dict[str, str]) -> AsyncIterator[ClientSession]:
    async with (httpx2.AsyncClient(headers=headers, timeout=20) as http,
                streamable_http_client(f"{base}/mcp", http_client=http) as (read, write),
                ClientSession(read, write) as s):
        await s.initialize()
        yield s


# --- serverInfo and the tools ----------------------------------------------------------------------------------

TITLES = {"list_datasets": "List datasets", "describe_dataset": "Describe a dataset",
          "query_dataset": "Read rows of a dataset", "sql": "Read with SQL"}


def test_server_info_carries_the_version_and_tools_their_titles_hints_and_schemas(served: Served) -> None:
    async def run() -> list[tuple[Any, list[Any]]]:
        seen = []
        for legacy in (False, True):
            async with connected(served.base, bearer("support-bot"), legacy=legacy) as client:
                seen.append((client.server_info, (await client.list_tools()).tools))
        async with session(served.base, bearer("support-bot")) as s:
            seen.append((s.server_info, (await s.list_tools()).tools))
        return seen

    for info, tools in asyncio.run(run()):
        assert info is not None and (info.name, info.version) == ("agentgate", __version__)
        assert {t.name for t in tools} == set(TITLES) - (set() if CORE_HAS_SQL else {"sql"})
        for tool in tools:
            assert tool.title == tool.annotations.title == TITLES[tool.name]
            assert tool.annotations.read_only_hint is True and tool.annotations.open_world_hint is False
            assert tool.input_schema["additionalProperties"] is False
            assert tool.output_schema is not None and tool.output_schema["type"] == "object"
            Draft202012Validator.check_schema(tool.output_schema)


# --- structured content -----------------------------------------------------------------------------------------

def _checked(result: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """The result's structured content, valid against its tool's output schema and equal to its text."""
    Draft202012Validator(schema).validate(result.structured_content)
    assert json.loads(result.content[0].text) == result.structured_content
    content: dict[str, Any] = result.structured_content
    return content


def test_every_result_matches_its_tools_output_schema_refusals_included(served: Served) -> None:
    async def run() -> None:
        async with connected(served.base, bearer("support-bot")) as client:
            schemas = {t.name: t.output_schema for t in (await client.list_tools()).tools}

            async def call(tool: str, args: dict[str, Any]) -> dict[str, Any]:
                # The SDK's client checks a served result against the schema itself; this checks refusals too.
                return _checked(await client.call_tool(tool, args), schemas[tool])

            assert [d["name"] for d in (await call("list_datasets", {}))["datasets"]] == ["customers", "guarded"]
            assert (await call("describe_dataset", {"name": "customers"}))["name"] == "customers"
            first = await call("query_dataset", {"name": "customers", "columns": ["id", "email", "balance",
                                                                                  "created_at", "active"],
                                                 "order_by": ["id"], "limit": 2})
            second = await call("query_dataset", {"name": "customers", "columns": ["id", "email", "balance",
                                                                                   "created_at", "active"],
                                                  "order_by": ["id"], "limit": 2, "cursor": first["next_cursor"]})
            assert [r["id"] for r in first["rows"] + second["rows"]] == [1, 2, 3, 4]
            if CORE_HAS_SQL:
                joined = await call("sql", {"sql": "SELECT c.country, count(*) AS n FROM customers c "
                                                   "GROUP BY c.country ORDER BY c.country"})
                assert joined["columns"] == ["country", "n"]
            for tool, args, code in (("query_dataset", {"name": "orders"}, "forbidden"),
                                     ("describe_dataset", {"name": "nope"}, "forbidden"),
                                     ("query_dataset", {"name": "customers", "wher": []}, "bad_request"),
                                     ("query_dataset", {"name": "guarded"}, "approval_pending")):
                assert (await call(tool, args))["error"]["code"] == code, (tool, args)
        async with connected(served.base, bearer("analyst-bot")) as client:
            masked = _checked(await client.call_tool("query_dataset", {"name": "customers", "limit": 1}),
                              schemas["query_dataset"])
            assert "email" in masked["masked"] and masked["rows"][0]["email"] is None
        async with connected(served.base, bearer("spent-bot")) as client:  # its tools/list is refused: empty
            spent = _checked(await client.call_tool("list_datasets", {}), schemas["list_datasets"])
            assert spent["error"]["code"] == "budget_exceeded"

    asyncio.run(run())


# --- refusals, as the client shows them ----------------------------------------------------------------------

async def _refused_at_connect(base: str, headers: dict[str, str], *, legacy: bool = False) -> MCPError:
    try:
        async with connected(base, headers, legacy=legacy):
            pass
    except BaseException as exc:  # the SDK raises it from inside its task groups' exception groups
        found = mcp_error(exc)
        if found is None:
            raise
        return found
    pytest.fail("the connection was not refused")


def test_each_refusal_reaches_the_client_with_the_gateways_code_and_message(served: Served) -> None:
    http = served.http
    connect_cases: dict[str, dict[str, str]] = {
        "no token": {},
        "bad token": {"Authorization": "Bearer not-a-jwt"},
        "expired": {"Authorization": f"Bearer {token('support-bot', ttl=-3600)}"},
        "revoked agent": bearer("revoked-bot"),
        "revoked token": bearer("jti-bot", jti="mcp-tools-revoked"),
    }
    for case, headers in connect_cases.items():
        rest = http.get("/v1/datasets", headers=headers).json()["error"]
        exc = asyncio.run(_refused_at_connect(served.base, headers))
        assert (exc.error.code, exc.error.message) == (REFUSED, rest["message"]), case
        assert isinstance(exc.error.data, dict), case
        error = exc.error.data["error"]
        assert (error["code"], error["message"]) == (rest["code"], rest["message"]) and error["request_id"], case

    support = bearer("support-bot")
    tool_cases: dict[str, tuple[dict[str, str], str, dict[str, Any], httpx.Response]] = {
        "forbidden": (support, "query_dataset", {"name": "orders"},
                      http.post("/v1/datasets/orders/query", headers=support, json={})),
        "budget": (bearer("spent-bot"), "query_dataset", {"name": "customers", "limit": 1},
                   http.post("/v1/datasets/customers/query", headers=bearer("spent-bot"), json={"limit": 1})),
        "bad request": (support, "query_dataset", {"name": "customers", "where": [["id", "~", 1]]},
                        http.post("/v1/datasets/customers/query", headers=support, json={"where": [["id", "~", 1]]})),
        "approval pending": (support, "query_dataset", {"name": "guarded", "limit": 1},
                             http.post("/v1/datasets/guarded/query", headers=support, json={"limit": 1})),
    }

    async def call(headers: dict[str, str], tool: str, args: dict[str, Any]) -> Any:
        async with connected(served.base, headers) as client:
            return await client.call_tool(tool, args)

    def same(message: str) -> str:  # a countdown or an approval's id differ between two asks
        return re.sub(r"\d+ s\b", "N s", re.sub(r"[0-9a-f]{32}", "ID", message))

    for case, (headers, tool, args, rest) in tool_cases.items():
        result = asyncio.run(call(headers, tool, args))
        assert result.is_error, case
        text = json.loads(result.content[0].text)  # what a model reads
        error, expected = text["error"], rest.json()["error"]
        assert (error["code"], same(error["message"])) == (expected["code"], same(expected["message"])), case
        assert re.fullmatch(r"[0-9a-f]{32}", error["request_id"]), case
        if case == "approval pending":
            assert rest.status_code == 202 and error["approval_id"] == text["approval_id"]
            assert error["approval_id"] == rest.json()["approval_id"]  # the same read: the same pending approval
    unknown = asyncio.run(call(support, "drop_everything", {}))
    assert unknown.is_error and json.loads(unknown.content[0].text)["error"]["code"] == "not_found"


def test_too_many_failed_sign_ins_reach_the_client_as_the_gateways_429(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source, extra=(
        "\n[limits]\nfailed_auth_burst = 1\nfailed_auth_per_minute = 1\nrefusal_delay_seconds = 0\n"))
    with serving(config, tmp_path / "serve.log") as base:
        # The handshake: one request a connection (the 2026-07-28 probe falls back to it, two requests).
        first = asyncio.run(_refused_at_connect(base, {"Authorization": "Bearer nope"}, legacy=True))
        later = asyncio.run(_refused_at_connect(base, {"Authorization": "Bearer nope"}, legacy=True))
    assert isinstance(first.error.data, dict) and first.error.data["error"]["code"] == "unauthenticated"
    assert isinstance(later.error.data, dict) and later.error.data["error"]["code"] == "budget_exceeded"
    assert later.error.message == later.error.data["error"]["message"] and "try again" in later.error.message


# --- the README's script -------------------------------------------------------------------------------------

def readme_client_script() -> str:
    """The README's MCP client script, as written: the Python block of "Connecting an MCP client"."""
    section = README.read_text().split("### Connecting an MCP client", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None, "the README's MCP client script is missing"
    return found.group(1)


def test_the_readme_client_script_runs_as_written(served: Served, tmp_path: Path) -> None:
    script = tmp_path / "mcp_client.py"
    script.write_text(readme_client_script())

    def run(agent_token: str) -> list[str]:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                              env={**env(), "AGENTGATE_URL": served.base, "AGENTGATE_TOKEN": agent_token})
        assert done.returncode == 0 and not done.stderr, done.stderr
        return done.stdout.splitlines()

    server, tools, rows = run(token("analyst-bot"))
    assert server == f"server: agentgate {__version__}"
    assert tools.startswith("tools: ['list_datasets', 'describe_dataset', 'query_dataset'")
    assert rows == ("rows: [{'id': 1, 'email': None}, {'id': 2, 'email': None}, {'id': 3, 'email': None}] "
                    "masked: ['email']")
    *_, denied = run(token("nobody-bot"))
    assert denied.startswith("refused: {'code': 'forbidden', 'message': 'not allowed: ")
    (refused,) = run("not-a-jwt")
    assert refused.startswith("refused: malformed token {'error': {'code': 'unauthenticated', ")
