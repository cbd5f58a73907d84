"""Attacks on /mcp, with the official MCP SDK's own client against a real `agentgate serve` (SQLite and
PostgreSQL stores): MCP answers exactly as REST does.

- Arguments a tool does not take (misspelt, extra, on every tool), of the wrong type, or nested, are a tool
  error with REST's message; none is dropped (a misspelt `wher` once read every row unfiltered).
- A refusal (bad, expired or forged token, revoked agent or token, forbidden dataset, spent budget, approval
  pending, source failure) reaches the client with REST's code and message and its request id: as a tool
  error, or, refused before any MCP message is read, as a JSON-RPC error the client raises.
- Every tool call, malformed ones included, leaves exactly one audit record holding its arguments as sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import jsonschema
import pytest
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from gateway.transports.mcp import CORE_HAS_SQL, REFUSED
from tests.conftest import (
    AUDIENCE,
    N_CUSTOMERS,
    PG_ADMIN,
    SECRET,
    _database,
    bearer,
    seed,
    token,
    write_workspace,
)
from tests.serving import serving

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

[datasets.fragile]
source = "main"
table = "fragile"
owner = "sales-ops@example.com"
"""

POLICY = """
p, support, customers, read, allow
p, support, customers, read:pii, allow
p, support, guarded, read, allow
p, support, fragile, read, allow
p, security-admin, admin:*, *, allow
g, support-bot, support
g, spent-bot, support
g, revoked-bot, support
g, late-bot, support
g, jti-bot, support
g, alice, security-admin
"""

MAX_BODY = 65536
MOVED = "fragile_moved_aside_xyz"


@dataclass
class Served:
    base: str
    http: httpx.Client
    source: Path


@pytest.fixture(scope="module", params=["sqlite-store", "postgresql-store"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("mcp-attacks")
    source = root / "source.db"
    seed(f"sqlite+aiosqlite:///{source}")
    with sqlite3.connect(source) as conn:
        conn.execute("CREATE TABLE fragile (id INTEGER PRIMARY KEY, secret TEXT)")
        conn.execute("INSERT INTO fragile VALUES (1, 'fragile-row-1')")
    with contextlib.ExitStack() as stack:
        store = None
        if request.param == "postgresql-store":
            store = stack.enter_context(contextlib.contextmanager(_database)(PG_ADMIN, "store", "PostgreSQL"))
        config = write_workspace(root, source_url=f"sqlite+aiosqlite:///{source}", store_url=store,
                                 datasets=DATASETS, policy=POLICY, extra=f"\n[server]\nmax_body_bytes = {MAX_BODY}\n")
        # spent-bot's budget is spent before it starts: every request of it is refused (429).
        (root / "policies" / "budgets.toml").write_text("[agents.spent-bot]\nrows_per_day = 0\n")
        base = stack.enter_context(serving(config, root / "serve.log"))
        http = stack.enter_context(httpx.Client(base_url=base, timeout=20))
        yield Served(base, http, source)


# --- the SDK's client -----------------------------------------------------------------------------------------

@asynccontextmanager
async def session(base: str, headers: dict[str, str], *, modern: bool = False) -> AsyncIterator[ClientSession]:
    """An MCP session of the SDK's client; `modern`: the 2026-07-28 protocol (server/discover, no handshake).
    Its tools are listed first, so the client does not list them again after a call (which would be a record
    of its own)."""
    async with (httpx2.AsyncClient(headers=headers, timeout=20) as http,
                streamable_http_client(f"{base}/mcp", http_client=http) as (read, write),
                ClientSession(read, write) as s):
        await (s.discover() if modern else s.initialize())
        await s.list_tools()
        yield s


def mcp_error(exc: BaseException) -> MCPError | None:
    """The MCPError inside what the SDK's client raised (its task groups wrap it)."""
    if isinstance(exc, MCPError):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = mcp_error(inner)
        if found is not None:
            return found
    return None


async def refused_at_connect(base: str, headers: dict[str, str]) -> MCPError:
    try:
        async with session(base, headers):
            pass
    except BaseException as exc:
        found = mcp_error(exc)
        if found is None:
            raise
        return found
    pytest.fail("the session opened")


# --- the trail ------------------------------------------------------------------------------------------------

def mark(http: httpx.Client) -> int:
    got = http.get("/admin/v1/audit?limit=1", headers=bearer("alice"))
    assert got.status_code == 200, got.text
    records = got.json()["records"]
    return int(records[0]["id"]) if records else 0


def mcp_records(http: httpx.Client, since: int) -> list[dict[str, Any]]:
    """The records of MCP requests after `since`, oldest first."""
    got = http.get("/admin/v1/audit?limit=1000", headers=bearer("alice"))
    assert got.status_code == 200, got.text
    return sorted((r for r in got.json()["records"] if r["id"] > since and r["transport"] == "mcp"),
                  key=lambda r: r["id"])


def error_of(result: Any) -> dict[str, Any]:
    """A tool error's error object, checked to be the JSON text the client also got."""
    assert result.is_error, result.content
    assert json.loads(result.content[0].text) == result.structured_content
    assert set(result.structured_content) <= {"error", "approval_id"}  # no rows beside an error
    error: dict[str, Any] = result.structured_content["error"]
    assert error["request_id"]
    return error


def seconds(message: str) -> str:
    """A message with its countdown ("try again in 13904 s") blanked: two answers a second apart compare."""
    return re.sub(r"\d+ s\b", "N s", message)


def rest_error(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


# --- unknown and ill-typed arguments ----------------------------------------------------------------------------

NESTED = [[["id", "=", 1]]]
for _ in range(150):
    NESTED = [NESTED]

# Arguments of query_dataset besides `name`, each refused as REST refuses the same body.
BAD_QUERY_BODIES: list[dict[str, Any]] = [
    {"wher": [["id", "=", 1]]},  # misspelt: once answered every row, the filter dropped
    {"where": [["id", "=", 1]], "wehre": [["id", "=", 2]]},
    {"Where": [["id", "=", 1]]},
    {"where ": [["id", "=", 1]]},
    {"wh\u0435re": [["id", "=", 1]]},  # a Cyrillic e
    {"filter": {"id": 1}},
    {"__proto__": {"where": [["id", "=", 1]]}},
    {"": 1},
    {"limit": "5"}, {"limit": True}, {"limit": 0}, {"limit": 2.5}, {"limit": [1]},
    {"columns": "id"}, {"columns": [{"id": 1}]}, {"columns": [1]},
    {"where": {"id": 1}}, {"where": [{"column": "id", "op": "=", "value": 1}]},
    {"where": [["id", "=", {"$ne": 1}]]}, {"where": NESTED},
    {"order_by": "id"}, {"order_by": [["id", "desc"]]},
    {"cursor": 5}, {"cursor": {"after": 1}},
]
# MCP's own arguments (REST's path and headers), of the wrong type.
BAD_MCP_ARGS: list[dict[str, Any]] = [
    {"name": {"dataset": "customers"}}, {"name": ["customers"]}, {"name": 5}, {"name": ""}, {},
    {"name": "customers", "work_unit": 5}, {"name": "customers", "work_unit": {"id": "T-1"}},
    {"name": "customers", "approval_id": ["x"]},
]
BAD_OTHER_TOOLS: list[tuple[str, dict[str, Any], str]] = [
    ("list_datasets", {"name": "customers"}, "unknown key 'name' (expected: no arguments)"),
    ("list_datasets", {"limit": 1}, "unknown key 'limit' (expected: no arguments)"),
    ("list_datasets", {"": None}, "unknown key '' (expected: no arguments)"),
    ("describe_dataset", {"name": "customers", "columns": ["id"]}, "unknown key 'columns' (expected: name)"),
    ("describe_dataset", {"name": "customers", "Name": "orders"}, "unknown key 'Name' (expected: name)"),
    ("describe_dataset", {"nmae": "customers"}, "argument 'name' (a dataset name) is required"),
    ("describe_dataset", {"name": {"name": "customers"}}, "argument 'name' must be a dataset name (a string)"),
]
BAD_SQL_BODIES: list[dict[str, Any]] = [
    {"sql": "SELECT id FROM customers", "wher": 1}, {"sql": "SELECT id FROM customers", "SQL": "x"},
    {"query": "SELECT id FROM customers"}, {"sql": 5}, {"sql": ["SELECT id FROM customers"]},
    {"sql": {"sql": "SELECT id FROM customers"}},
]


def test_unknown_or_ill_typed_arguments_are_refused_on_every_tool_as_rest_refuses_them(served: Served) -> None:
    http, support = served.http, bearer("support-bot")
    calls: list[tuple[str, dict[str, Any]]] = []

    async def run() -> None:
        async with session(served.base, support) as s:
            for body in BAD_QUERY_BODIES:
                args = {"name": "customers", **body}
                error = error_of(await s.call_tool("query_dataset", args))
                rest = http.post("/v1/datasets/customers/query", headers=support, json=body)
                assert rest.status_code == 400, (body, rest.text)
                assert (error["code"], error["message"]) == (rest_error(rest)["code"], rest_error(rest)["message"])
                calls.append(("query_dataset", args))
            for args in BAD_MCP_ARGS:
                error = error_of(await s.call_tool("query_dataset", args))
                assert error["code"] == "bad_request" and "argument" in error["message"], error
                calls.append(("query_dataset", args))
            for tool, args, message in BAD_OTHER_TOOLS:
                error = error_of(await s.call_tool(tool, args))
                assert (error["code"], error["message"]) == ("bad_request", message)
                calls.append((tool, args))
            if CORE_HAS_SQL:
                for body in BAD_SQL_BODIES:
                    error = error_of(await s.call_tool("sql", body))
                    rest = http.post("/v1/sql", headers=support, json=body)
                    assert rest.status_code == 400, (body, rest.text)
                    assert (error["code"], error["message"]) == (rest_error(rest)["code"],
                                                                 rest_error(rest)["message"])
                    calls.append(("sql", body))
                error = error_of(await s.call_tool("sql", {"sql": "SELECT id FROM customers", "work_unit": 7}))
                assert error["message"] == "argument 'work_unit' must be a string"
                calls.append(("sql", {"sql": "SELECT id FROM customers", "work_unit": 7}))
            # The same session still reads, with every argument it was given.
            good = {"name": "customers", "columns": ["id"], "where": [["id", "=", 3]], "work_unit": "T-9"}
            read = await s.call_tool("query_dataset", good)
            assert not read.is_error and read.structured_content["rows"] == [{"id": 3}]
            calls.append(("query_dataset", good))

    before = mark(http)
    asyncio.run(run())
    listed, *records = mcp_records(http, before)
    assert (listed["action"], listed["query"]) == ("list", None)  # the session's own tools/list
    assert len(records) == len(calls)  # exactly one per call
    for record, (tool, args) in zip(records, calls, strict=True):
        assert json.loads(record["query"]) == args, (tool, record["query"])  # the arguments as sent, all
    *refused, served = records
    assert {(r["decision"], r["status"], r["agent"]) for r in refused} == {("error", 400, "support-bot")}
    assert (served["decision"], served["work_unit"], served["rows"]) == ("allow", "T-9", 1)


def test_every_tool_schema_refuses_additional_properties(served: Served) -> None:
    async def run() -> list[Any]:
        async with session(served.base, bearer("support-bot")) as s:
            return list((await s.list_tools()).tools)

    tools = {t.name: t for t in asyncio.run(run())}
    assert set(tools) >= {"list_datasets", "describe_dataset", "query_dataset"}
    assert ("sql" in tools) == CORE_HAS_SQL
    for tool in tools.values():
        assert tool.input_schema["additionalProperties"] is False, tool.name
    # A client that checks arguments against the schema refuses the misspelling before sending it.
    query = tools["query_dataset"].input_schema
    jsonschema.validate({"name": "customers", "where": [["id", "=", 1]], "limit": 2}, query)
    for bad in ({"name": "customers", "wher": []}, {"name": "customers", "limit": "2"}, {"name": 5}, {}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, query)


@pytest.mark.parametrize("modern", [False, True], ids=["handshake", "2026-07-28"])
def test_one_record_per_tool_call_on_either_protocol(served: Served, modern: bool) -> None:
    """The 2026-07-28 protocol's check of Mcp-Param-* headers once listed the tools for every call with
    arguments: a second record for one call."""
    args: list[tuple[str, dict[str, Any]]] = [
        ("list_datasets", {}), ("describe_dataset", {"name": "customers"}),
        ("query_dataset", {"name": "customers", "columns": ["id"], "limit": 2}),
        ("query_dataset", {"name": "orders"}), ("no_such_tool", {"x": 1})]

    async def run() -> None:
        async with session(served.base, bearer("support-bot"), modern=modern) as s:
            for tool, arguments in args:
                await s.call_tool(tool, arguments)

    before = mark(served.http)
    asyncio.run(run())
    records = mcp_records(served.http, before)
    assert [r["action"] for r in records[1:]] == ["list", "describe", "read", "read", "unknown"]
    assert records[0]["action"] == "list" and records[0]["query"] is None  # the session's own tools/list
    assert [json.loads(r["query"]) for r in records[1:]] == [a for _, a in args]
    assert [r["decision"] for r in records[1:]] == ["allow", "allow", "allow", "deny", "error"]


# --- refusals, as the gateway wrote them ---------------------------------------------------------------------

def test_refusals_in_a_tool_call_carry_rests_code_message_and_the_records_request_id(served: Served) -> None:
    http = served.http
    results: dict[str, Any] = {}

    async def run() -> None:
        async with session(served.base, bearer("support-bot")) as s:
            results["forbidden"] = await s.call_tool("query_dataset", {"name": "orders", "limit": 1})
            results["unknown"] = await s.call_tool("query_dataset", {"name": "no_such_dataset"})
            results["masked_filter"] = await s.call_tool("describe_dataset", {"name": "orders"})
            results["pending"] = await s.call_tool("query_dataset", {"name": "guarded", "columns": ["id"]})
            with sqlite3.connect(served.source) as conn:  # the source loses the table under the gateway
                conn.execute(f"ALTER TABLE fragile RENAME TO {MOVED}")
            try:
                results["source"] = await s.call_tool("query_dataset", {"name": "fragile"})
                results["source_rest"] = http.post("/v1/datasets/fragile/query", headers=bearer("support-bot"),
                                                   json={})
            finally:
                with sqlite3.connect(served.source) as conn:
                    conn.execute(f"ALTER TABLE {MOVED} RENAME TO fragile")
        async with session(served.base, bearer("spent-bot")) as s:
            results["budget"] = await s.call_tool("list_datasets", {})

    before = mark(http)
    asyncio.run(run())
    records = {r["request_id"]: r for r in mcp_records(http, before)}
    support = bearer("support-bot")
    expected = {
        "forbidden": http.post("/v1/datasets/orders/query", headers=support, json={"limit": 1}),
        "unknown": http.post("/v1/datasets/no_such_dataset/query", headers=support, json={}),
        "masked_filter": http.get("/v1/datasets/orders", headers=support),
        "source": results.pop("source_rest"),
        "budget": http.get("/v1/datasets", headers=bearer("spent-bot")),
    }
    for case, rest in expected.items():
        error = error_of(results[case])
        assert rest.status_code == records[error["request_id"]]["status"], case
        assert (error["code"], seconds(error["message"])) == (rest_error(rest)["code"],
                                                              seconds(rest_error(rest)["message"])), case
    assert error_of(results["budget"])["code"] == "budget_exceeded"
    source = results["source"].content[0].text
    assert error_of(results["source"])["code"] == "source_error" and MOVED not in source and "fragile" not in source
    assert MOVED not in expected["source"].text

    # Approval pending: its id in the error and at the top, as REST's 202 body has it; then read with it.
    pending = results["pending"].structured_content
    aid = pending["approval_id"]
    assert error_of(results["pending"])["code"] == "approval_pending" and pending["error"]["approval_id"] == aid
    record = records[pending["error"]["request_id"]]
    assert (record["decision"], record["status"], record["dataset"]) == ("pending", 202, "guarded")
    rest = http.post("/v1/datasets/guarded/query", headers=support, json={"columns": ["id"]})
    assert rest.status_code == 202 and rest.json()["error"]["code"] == "approval_pending"
    rest_aid = rest.json()["approval_id"]
    assert pending["error"]["message"].replace(aid, "ID") == rest.json()["error"]["message"].replace(rest_aid, "ID")

    async def again(approval_id: str) -> Any:
        async with session(served.base, support) as s:
            return await s.call_tool("query_dataset", {"name": "guarded", "columns": ["id"],
                                                       "approval_id": approval_id})

    still = error_of(asyncio.run(again(aid)))
    rest_still = http.post("/v1/datasets/guarded/query", headers={**support, "X-Approval-Id": rest_aid},
                           json={"columns": ["id"]})
    assert (still["code"], still["message"].replace(aid, "ID")) == (
        rest_error(rest_still)["code"], rest_error(rest_still)["message"].replace(rest_aid, "ID"))
    assert http.post(f"/admin/v1/approvals/{aid}/approve", headers=bearer("alice")).status_code == 200
    served_read = asyncio.run(again(aid))
    assert not served_read.is_error and len(served_read.structured_content["rows"]) == N_CUSTOMERS


def _forged_none(agent: str) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    now = int(time.time())
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': agent, 'aud': AUDIENCE, 'exp': now + 600})}."


def test_a_connection_refused_for_its_token_shows_the_gateways_error_to_the_client(served: Served) -> None:
    http = served.http
    assert http.post("/admin/v1/revocations", headers=bearer("alice"),
                     json={"agent": "revoked-bot", "reason": "test"}).status_code == 201
    assert http.post("/admin/v1/revocations", headers=bearer("alice"),
                     json={"jti": "mcp-revoked-token", "reason": "test"}).status_code == 201
    cases: dict[str, dict[str, str]] = {
        "no token": {},
        "not a JWT": {"Authorization": "Bearer nope"},
        "basic": {"Authorization": "Basic c3VwcG9ydC1ib3Q6eA=="},
        "expired": {"Authorization": f"Bearer {token('support-bot', ttl=-3600)}"},
        "forged": {"Authorization": f"Bearer {token('support-bot', secret='forged-' + SECRET)}"},
        "alg none": {"Authorization": f"Bearer {_forged_none('support-bot')}"},
        "other audience": {"Authorization": f"Bearer {token('support-bot', aud='someone-else')}"},
        "role as subject": bearer("support"),
        "revoked agent": bearer("revoked-bot"),
        "revoked token": bearer("jti-bot", jti="mcp-revoked-token"),
    }
    hello = {"jsonrpc": "2.0", "id": "hello-7", "method": "tools/list", "params": {}}
    accept = {"Accept": "application/json, text/event-stream"}
    before = mark(http)
    for case, headers in cases.items():
        rest = http.get("/v1/datasets", headers=headers)
        assert rest.status_code in (401, 403), (case, rest.text)
        # What the SDK's client raises: the gateway's message, its error body as data.
        exc = asyncio.run(refused_at_connect(served.base, headers))
        assert exc.error.code == REFUSED and exc.error.message == rest_error(rest)["message"], case
        data = exc.error.data
        assert isinstance(data, dict) and data["error"]["code"] == rest_error(rest)["code"], case
        # On the wire: REST's status and headers, a JSON-RPC error to the request's id.
        raw = http.post("/mcp", headers={**headers, **accept}, json=hello)
        assert raw.status_code == rest.status_code, case
        assert raw.json()["id"] == "hello-7" and raw.json()["error"]["data"]["error"]["code"] == data["error"]["code"]
        assert raw.headers.get("www-authenticate") == rest.headers.get("www-authenticate"), case
        assert raw.headers["x-request-id"] == raw.json()["error"]["data"]["error"]["request_id"]
    records = mcp_records(http, before)
    assert len(records) == 2 * len(cases)  # one per refused connection, one per raw POST
    assert {r["decision"] for r in records} == {"deny"}
    # The token still works for another jti of the same agent.
    assert http.get("/v1/datasets", headers=bearer("jti-bot")).status_code == 200


def test_an_agent_revoked_mid_session_gets_the_gateways_refusal(served: Served) -> None:
    http = served.http

    async def run() -> MCPError:
        async with session(served.base, bearer("late-bot")) as s:
            first = await s.call_tool("query_dataset", {"name": "customers", "columns": ["id"], "limit": 1})
            assert not first.is_error
            r = http.post("/admin/v1/revocations", headers=bearer("alice"), json={"agent": "late-bot"})
            assert r.status_code == 201
            try:
                await s.call_tool("query_dataset", {"name": "customers", "columns": ["id"], "limit": 1})
            except MCPError as exc:
                return exc
            pytest.fail("a revoked agent's call was answered")

    exc = asyncio.run(run())
    rest = http.get("/v1/datasets", headers=bearer("late-bot"))
    assert rest.status_code == 403 and exc.error.message == rest_error(rest)["message"]
    assert "revoked" in exc.error.message


# --- malformed and oversized calls ----------------------------------------------------------------------------

def test_malformed_and_oversized_calls_are_refused_and_recorded(served: Served) -> None:
    http = served.http
    headers = {**bearer("support-bot"), "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2025-11-25"}
    malformed: list[dict[str, Any]] = [
        {"name": "query_dataset", "arguments": [["id", "=", 1]]},
        {"name": "query_dataset", "arguments": "where id = 1"},
        {"arguments": {"name": "customers"}},
        {"name": 5, "arguments": {}},
        {"name": ["query_dataset"], "arguments": {"name": "customers"}},
    ]
    before = mark(http)
    for n, params in enumerate(malformed):
        r = http.post("/mcp", headers=headers, json={"jsonrpc": "2.0", "id": n, "method": "tools/call",
                                                      "params": params})
        body = r.json()
        assert body["id"] == n and body["error"]["code"] == -32602, body  # JSON-RPC's invalid params
        assert body["error"]["data"]["error"]["code"] == "bad_request"
        assert body["error"]["message"] == body["error"]["data"]["error"]["message"]
    # A body over [server] max_body_bytes: 413, as REST, before anything reads it.
    big = {"jsonrpc": "2.0", "id": 99, "method": "tools/call",
           "params": {"name": "query_dataset", "arguments": {"name": "customers", "x": "a" * MAX_BODY}}}
    r = http.post("/mcp", headers=headers, json=big)
    assert r.status_code == 413 and r.json()["error"]["data"]["error"]["code"] == "too_large"
    assert http.post("/v1/datasets/customers/query", headers=bearer("support-bot"),
                     content=json.dumps({"x": "a" * MAX_BODY})).status_code == 413
    records = mcp_records(http, before)
    assert len(records) == len(malformed) + 1
    for record, params in zip(records, malformed, strict=False):
        assert (record["status"], record["decision"]) == (400, "error")
        assert json.loads(record["query"]) == params  # what was sent, as sent
    assert records[-1]["status"] == 413 and records[-1]["query"] is None

    # Arguments within the limit whose JSON is not (1e5 is written 100000.0): refused as too large, not kept.
    numbers = ",".join(["1e5"] * 12000)
    call = ('{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"query_dataset","arguments":'
            '{"name":"customers","x":[' + numbers + "]}}}")
    assert len(call) < MAX_BODY
    before = mark(http)
    result = http.post("/mcp", headers={**headers, "Content-Type": "application/json"}, content=call).json()["result"]
    assert result["isError"] and json.loads(result["content"][0]["text"])["error"]["code"] == "too_large"
    (record,) = mcp_records(http, before)
    assert (record["status"], record["query"]) == (413, None)
