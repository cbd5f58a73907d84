"""/mcp with the official MCP SDK's own client against a real `agentgate serve`: the same token, policy,
masking, revocations and one audit record per tool call (transport "mcp")."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from gateway.transports.mcp import CORE_HAS_SQL
from tests.conftest import DATASETS, bearer, write_workspace
from tests.serving import serving

pytestmark = pytest.mark.system


@asynccontextmanager
async def mcp_session(base: str, headers: dict[str, str]) -> AsyncIterator[ClientSession]:
    async with (httpx2.AsyncClient(headers=headers, timeout=20) as http,
                streamable_http_client(f"{base}/mcp", http_client=http) as (read, write),
                ClientSession(read, write) as session):
        await session.initialize()
        yield session


def audit(http: httpx.Client, agent: str) -> list[dict[str, Any]]:
    got = http.get(f"/admin/v1/audit?agent={agent}&limit=200", headers=bearer("alice"))
    assert got.status_code == 200, got.text
    records: list[dict[str, Any]] = got.json()["records"]
    return records


async def tool_names(session: ClientSession) -> set[str]:
    return {tool.name for tool in (await session.list_tools()).tools}


async def scenario(base: str, http: httpx.Client) -> None:
    support = bearer("support-bot")
    async with mcp_session(base, support) as session:
        sql = {"sql"} if CORE_HAS_SQL else set()
        assert await tool_names(session) == {"list_datasets", "describe_dataset", "query_dataset", *sql}
        before = len(audit(http, "support-bot"))

        listed = await session.call_tool("list_datasets", {})
        assert not listed.is_error
        assert [d["name"] for d in listed.structured_content["datasets"]] == ["customers"]

        described = await session.call_tool("describe_dataset", {"name": "customers"})
        assert not described.is_error
        assert described.structured_content["name"] == "customers"
        assert {c["name"] for c in described.structured_content["columns"]} >= {"id", "email", "note"}

        read = await session.call_tool("query_dataset", {
            "name": "customers", "columns": ["id", "email"], "where": [["id", "=", 1]],
            "work_unit": "MCP-1"})
        assert not read.is_error, read.content
        assert read.structured_content["rows"] == [{"id": 1, "email": "c1@example.com"}]
        assert json.loads(read.content[0].text) == read.structured_content  # type: ignore[union-attr]

        denied = await session.call_tool("query_dataset", {"name": "orders"})
        assert denied.is_error
        error = denied.structured_content["error"]
        assert error["code"] == "forbidden" and error["request_id"] and error["message"]

        unknown = await session.call_tool("drop_everything", {})
        assert unknown.is_error

        after = audit(http, "support-bot")
        records = after[: len(after) - before]
        assert len(records) == 5  # one per tool call, whatever its outcome
        assert {r["transport"] for r in records} == {"mcp"}
        assert sorted(r["decision"] for r in records) == ["allow", "allow", "allow", "deny", "error"]
        (by_unit,) = [r for r in records if r["work_unit"] == "MCP-1"]
        assert by_unit["action"] == "read" and by_unit["dataset"] == "customers" and by_unit["rows"] == 1

    async with mcp_session(base, bearer("analyst-bot")) as session:
        read = await session.call_tool("query_dataset", {
            "name": "customers", "columns": ["id", "email", "note"], "order_by": ["id"], "limit": 2})
        assert not read.is_error, read.content
        rows = read.structured_content["rows"]
        assert [r["id"] for r in rows] == [1, 2] and all(r["email"] is None for r in rows)
        assert read.structured_content["masked"] == ["email", "note"] and all(r["note"] is None for r in rows)
        (rec,) = [r for r in audit(http, "analyst-bot") if r["action"] == "read"]
        assert rec["transport"] == "mcp" and json.loads(rec["masked"]) == ["email", "note"]

    async with mcp_session(base, bearer("nobody-bot")) as session:
        assert await tool_names(session) == {"list_datasets"}
        listed = await session.call_tool("list_datasets", {})
        assert not listed.is_error and listed.structured_content == {"datasets": []}


@pytest.mark.skipif(not CORE_HAS_SQL, reason="the core has no SQL mode")
def test_mcp_sql_tool(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source)

    async def run(base: str) -> None:
        async with mcp_session(base, bearer("analyst-bot")) as session:
            got = await session.call_tool("sql", {"sql": "SELECT id, email FROM customers WHERE id < 3 ORDER BY id",
                                                  "work_unit": "MCP-SQL"})
            assert not got.is_error, got.content
            assert [r["email"] for r in got.structured_content["rows"]] == [None, None]
            refused = await session.call_tool("sql", {"sql": "DELETE FROM customers"})
            assert refused.is_error and refused.structured_content["error"]["code"] == "bad_request"

    with serving(config, tmp_path / "serve.log") as base, httpx.Client(base_url=base, timeout=20) as http:
        asyncio.run(run(base))
        records = [r for r in audit(http, "analyst-bot") if r["action"] == "read"]  # (the client lists tools too)
        assert [(r["decision"], r["transport"]) for r in records] == [("error", "mcp"), ("allow", "mcp")]
        assert records[1]["work_unit"] == "MCP-SQL"


def test_mcp_tools_go_through_the_core(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source)
    with serving(config, tmp_path / "serve.log") as base, httpx.Client(base_url=base, timeout=20) as http:
        asyncio.run(scenario(base, http))

        # No token, or a bad one: 401 before the SDK sees the request, and the refusal is on the trail.
        hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        mcp_headers = {"Accept": "application/json, text/event-stream"}
        refused = http.post("/mcp", json=hello, headers=mcp_headers)
        # A JSON-RPC error to the request's id, the core's error body as its data (what an MCP client shows).
        assert refused.status_code == 401 and refused.json()["id"] == 1
        assert refused.json()["error"]["data"]["error"]["code"] == "unauthenticated"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        bad = http.post("/mcp", json=hello, headers={**mcp_headers, "Authorization": "Bearer nope"})
        assert bad.status_code == 401
        page = http.get("/admin/v1/audit?decision=deny&limit=200", headers=bearer("alice")).json()["records"]
        assert sum(1 for r in page if r["transport"] == "mcp" and r["status"] == 401) == 2

        # A revoked agent is refused too.
        r = http.post("/admin/v1/revocations", headers=bearer("alice"), json={"agent": "support-bot",
                                                                              "reason": "test"})
        assert r.status_code == 201
        gone = http.post("/mcp", json=hello, headers={**mcp_headers, **bearer("support-bot")})
        assert gone.status_code == 403 and gone.json()["error"]["data"]["error"]["code"] == "forbidden"
        assert "revoked" in gone.json()["error"]["message"]

        async def revoked_client() -> None:
            async with mcp_session(base, bearer("support-bot")):
                pass

        with pytest.raises(BaseException):  # noqa: B017 - the SDK client fails the handshake on a 401/403
            asyncio.run(revoked_client())


GUARDED = DATASETS.replace('max_rows = 25\n', 'max_rows = 25\napproval = "required"\n')


def test_mcp_read_that_needs_a_persons_approval(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source, datasets=GUARDED)

    async def read(base: str, approval_id: str | None = None) -> Any:
        args: dict[str, Any] = {"name": "customers", "columns": ["id"], "limit": 2}
        if approval_id is not None:
            args["approval_id"] = approval_id
        async with mcp_session(base, bearer("support-bot")) as session:
            return await session.call_tool("query_dataset", args)

    with serving(config, tmp_path / "serve.log") as base, httpx.Client(base_url=base, timeout=20) as http:
        pending = asyncio.run(read(base))
        assert pending.is_error
        error = pending.structured_content["error"]
        assert error["code"] == "approval_pending" and len(error["approval_id"]) == 32
        approved = http.post(f"/admin/v1/approvals/{error['approval_id']}/approve", headers=bearer("alice"))
        assert approved.status_code == 200
        served = asyncio.run(read(base, error["approval_id"]))
        assert not served.is_error and served.structured_content["rows"] == [{"id": 1}, {"id": 2}]
        records = [r for r in audit(http, "support-bot") if r["action"] == "read"]
        assert [(r["decision"], r["transport"], r["approved_by"]) for r in records] == [
            ("allow", "mcp", "alice"), ("pending", "mcp", None)]
