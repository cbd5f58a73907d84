"""One read path whichever way a read comes in: the query API, SQL mode, an HTTP dataset's proxy and the MCP
tools each leave exactly one audit record per read, with the same decision, masking and row filter, against a
real `agentgate serve`, a real PostgreSQL source, a loopback HTTP upstream and the MCP SDK's own client."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DATASETS, POLICY, bearer, loopback_http, write_workspace
from tests.serving import serving
from tests.test_http_sources import UPSTREAM_SECRET, Upstream
from tests.test_mcp import mcp_session

pytestmark = pytest.mark.system

CATALOG = DATASETS + """
[datasets.customers.row_filters]
support = "country = {claims.region}"

[datasets.tickets]
source = "tix"
path = "/tickets"
owner = "support-leads@example.com"
"""
GRANTS = POLICY + "p, support, tickets, read, allow\n"


@pytest.fixture
def upstream() -> Iterator[str]:
    with loopback_http(type("Handler", (Upstream,), {"seen": []})) as base:
        yield base


class Trail:
    """The store's audit table, read directly (as a reviewer with SQL would), from a position on."""

    def __init__(self, store: Path):
        self.store = store
        self.seen = self._last()

    def _last(self) -> int:
        with sqlite3.connect(self.store) as db:
            return int(db.execute("SELECT COALESCE(MAX(id), 0) FROM audit").fetchone()[0])

    def new(self) -> list[dict[str, Any]]:
        with sqlite3.connect(self.store) as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute("SELECT * FROM audit WHERE id > ? ORDER BY id", (self.seen,))]
        self.seen = rows[-1]["id"] if rows else self.seen
        return rows


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def test_every_interface_leaves_exactly_one_record_per_read(tmp_path: Path, pg_source: str, upstream: str) -> None:
    extra = f'[sources.tix]\nurl = "{upstream}"\nheaders = {{ Authorization = "{UPSTREAM_SECRET}" }}\n'
    config = write_workspace(tmp_path, source_url=pg_source, datasets=CATALOG, policy=GRANTS, extra=extra)
    agent = bearer("support-bot", region="FR", on_behalf_of="jane@example.com")
    with serving(config, tmp_path / "serve.log") as base, httpx.Client(base_url=base, timeout=20) as http:
        trail = Trail(tmp_path / "store.db")

        # 1. The query API.
        got = http.post("/v1/datasets/customers/query", headers={**agent, "X-Work-Unit": "T-1"},
                        json={"columns": ["id", "email", "country"], "order_by": ["id"], "limit": 3})
        assert got.status_code == 200, got.text
        assert [r["country"] for r in got.json()["rows"]] == ["FR"] * 3
        (rec,) = trail.new()
        assert (rec["transport"], rec["action"], rec["dataset"], rec["decision"], rec["rows"]) == (
            "http", "read", "customers", "allow", 3)
        assert rec["row_filter"] == '[support] country = "FR"' and rec["response_sha256"] == sha(got.content)
        assert rec["on_behalf_of"] == "jane@example.com" and rec["work_unit"] == "T-1"

        # 2. SQL mode.
        got = http.post("/v1/sql", headers=agent, json={"sql": "SELECT country, COUNT(*) AS n FROM customers "
                                                                "GROUP BY country"})
        assert got.status_code == 200, got.text
        assert got.json()["rows"] == [{"country": "FR", "n": 15}]
        (rec,) = trail.new()
        assert (rec["transport"], rec["action"], rec["dataset"], rec["decision"]) == (
            "http", "read", "customers", "allow")
        assert rec["row_filter"] == 'customers: [support] country = "FR"'
        assert rec["response_sha256"] == sha(got.content)

        # 3. An HTTP dataset through its proxy.
        got = http.get("/v1/datasets/tickets/proxy/open?team=emea", headers=agent)
        assert got.status_code == 200, got.text
        (rec,) = trail.new()
        assert (rec["transport"], rec["action"], rec["dataset"], rec["decision"], rec["query"]) == (
            "http", "read", "tickets", "allow", "/open?team=emea")
        assert rec["response_sha256"] == sha(got.content) and rec["row_filter"] is None

        # 4. The MCP tools (count from the first call on: setting the session up reads nothing).
        async def mcp() -> tuple[Any, Any, Any]:
            async with mcp_session(base, agent) as session:
                trail.new()
                queried = await session.call_tool("query_dataset", {
                    "name": "customers", "columns": ["id", "email", "country"], "order_by": ["id"], "limit": 3,
                    "work_unit": "T-1"})
                first = trail.new()
                selected = await session.call_tool("sql", {"sql": "SELECT COUNT(*) AS n FROM customers"})
                second = trail.new()
                return (queried, first), (selected, second), None

        (queried, first), (selected, second), _ = asyncio.run(mcp())
        assert not queried.is_error and not selected.is_error, (queried.content, selected.content)
        # (The SDK's client lists the tools before its first call: that request is recorded as a `list`.)
        assert {r["action"] for r in first + second} <= {"read", "list"}
        (rec,) = [r for r in first if r["action"] == "read"]
        assert (rec["transport"], rec["action"], rec["dataset"], rec["decision"], rec["rows"]) == (
            "mcp", "read", "customers", "allow", 3)
        assert rec["row_filter"] == '[support] country = "FR"' and rec["work_unit"] == "T-1"
        # What the agent got over MCP is exactly what the record's digest covers.
        answer = json.dumps(queried.structured_content, separators=(",", ":"), ensure_ascii=False).encode()
        assert rec["response_sha256"] == sha(answer)
        assert [r["country"] for r in queried.structured_content["rows"]] == ["FR"] * 3
        (rec,) = [r for r in second if r["action"] == "read"]
        assert (rec["transport"], rec["dataset"], rec["rows"]) == ("mcp", "customers", 1)
        assert selected.structured_content["rows"] == [{"n": 15}]

        # A refused read is one record too, whichever way it came.
        other = bearer("support-bot")  # no region claim: the row filter cannot apply
        assert http.post("/v1/datasets/customers/query", headers=other, json={}).status_code == 403
        assert http.post("/v1/sql", headers=other, json={"sql": "SELECT id FROM customers"}).status_code == 403
        refused = trail.new()
        assert [(r["decision"], r["status"]) for r in refused] == [("deny", 403), ("deny", 403)]
        assert all("lacks claim 'region'" in r["reason"] for r in refused)

        verified = http.get("/admin/v1/audit/verify", headers=bearer("alice"))
        assert verified.status_code == 200 and verified.json()["ok"] is True
