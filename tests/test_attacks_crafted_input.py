"""Attack: crafted input that makes the gateway fail instead of refusing — a 500, or a source connection broken
for the next agent.

Each class is tried several ways, through every way in it reaches (REST, SQL mode, the admin API, MCP, the review
page, the command line), on SQLite and PostgreSQL stores where the store takes the input, and on SQLite,
PostgreSQL and MariaDB sources where a source does. Every answer is a 4xx in the one error shape with exactly one
audit record, and no log line says a request "failed" (what Gateway.handle logs for an unexpected exception):

1. JSON nested past what a parser takes (100,000 brackets): query, SQL, admin and MCP bodies, MCP tool arguments.
2. Header values that are not ASCII, passed to an HTTP source (Accept), beside a work unit that is not ASCII.
3. Numbers that are not ASCII digits (`'²'.isdigit()` is true and `int('²')` raises; `int('١٢')` is 12) or past a
   column's range: admin ids, limits, cursors and times, the review page's, the command line's, Content-Length.
4. NUL and lone surrogates (no store holds the first, no driver sends the second): token claims, names given to
   `revoke` (admin API and command line), admin filters and ids, `where` values, SQL text, MCP tool calls.
5. A driver exception on a source connection: the connection is discarded, so the next agent's read succeeds
   (every source here has a pool of one connection; a lone surrogate in SQL mode once answered 500, and the
   next agent on PostgreSQL got 502).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.testclient import TestClient

from connectors.base import InvalidQuery, SourceRefused
from connectors.sql import SqlConnector, make_engine
from gateway import cli
from tests.conftest import (
    DATASETS,
    POLICY,
    bearer,
    client_for,
    dialect_fixtures,
    loopback_http,
    records,
    token,
    write_workspace,
)

pytestmark = pytest.mark.integration

ADMIN = bearer("alice")
# One connection per source, so a connection left broken by one request is the one the next request gets; limits
# on refused requests high enough that each keeps its own record (the limiter is another test's).
EXTRA = """pool_size = 1

[limits]
failed_auth_per_minute = 100000
failed_auth_burst = 100000
failed_auth_records_per_minute = 100000
"""
NUL_AND_SURROGATES = ("a\x00b", "\x00", "\ud800", "x\udfff", "\udcff")
DEEP = [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"where": [' + b"[" * 10_000 + b"]" * 10_000 + b"]}"]
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "MCP-Protocol-Version": "2025-11-25"}


@dataclass
class Gw:
    dialect: str
    client: TestClient
    config: Path


gateways, gw = dialect_fixtures(
    lambda root, url: write_workspace(root, source_url=url, extra=EXTRA),
    lambda dialect, url, client, config: Gw(dialect.split("_")[0], client, config))


@pytest.fixture
def store_gw(store_url: str, tmp_path: Path, sqlite_source: str) -> Iterator[TestClient]:
    """The gateway on a SQLite store, then on a PostgreSQL one."""
    with client_for(write_workspace(tmp_path, source_url=sqlite_source, store_url=store_url, extra=EXTRA)) as c:
        yield c


@pytest.fixture(autouse=True)
def no_failed_requests(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever a test sends, the gateway never logs a request as failed (an unexpected exception, a 500)."""
    with caplog.at_level(logging.ERROR, logger="agentgate"):
        yield
    failed = [r.getMessage() for r in caplog.records if r.name.startswith("agentgate") and r.levelno >= logging.ERROR]
    assert not failed, failed


def raw(value: str) -> str:
    """JSON text of a string, a lone surrogate written as the \\u escape a client sends."""
    return json.dumps(value)


def trail(client: TestClient, limit: int = 1000) -> list[dict[str, Any]]:
    """The newest records, as a reviewer reads them (the admin API)."""
    got = client.get("/admin/v1/audit", params={"limit": str(limit)}, headers=ADMIN)
    assert got.status_code == 200, got.text
    return list(got.json()["records"])


def refused(client: TestClient, response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """`response` is `status` with the one error shape, and left exactly one record saying so."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    request_id = response.headers["x-request-id"]
    assert body == {"error": {"code": code, "message": body["error"]["message"], "request_id": request_id}}, body
    mine = [r for r in trail(client, 10) if r["request_id"] == request_id]  # the request just made is among them
    assert len(mine) == 1 and mine[0]["status"] == status, mine
    return mine[0]


def read_works(client: TestClient, dataset: str = "customers") -> None:
    """Another agent's next reads, through the query API and SQL mode, are served."""
    got = client.post(f"/v1/datasets/{dataset}/query", json={"limit": 2}, headers=bearer("analyst-bot"))
    assert got.status_code == 200 and len(got.json()["rows"]) == 2, got.text
    got = client.post("/v1/sql", json={"sql": f"SELECT id FROM {dataset} ORDER BY id LIMIT 2"},
                      headers=bearer("analyst-bot"))
    assert got.status_code == 200 and [r["id"] for r in got.json()["rows"]] == [1, 2], got.text


def mcp_call(client: TestClient, tool: str, arguments: Any, agent: str = "support-bot") -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    return client.post("/mcp", content=json.dumps(body), headers={**bearer(agent), **MCP_HEADERS})


def mcp_refusal(client: TestClient, response: httpx.Response, status: int = 400) -> dict[str, Any]:
    """A tool call refused through the core: its error body (a tool error, or a JSON-RPC error's data), whose
    request id has exactly one record with that status."""
    answer = response.json()
    if "result" in answer:
        assert answer["result"]["isError"], answer
        error = json.loads(answer["result"]["content"][0]["text"])
    else:
        error = answer["error"]["data"]
    mine = [r for r in trail(client, 10) if r["request_id"] == error["error"]["request_id"]]
    assert len(mine) == 1 and mine[0]["status"] == status and mine[0]["transport"] == "mcp", (mine, answer)
    return dict(error["error"])


# --- 1. JSON nested past the parser ---------------------------------------------------------------------------


def test_deeply_nested_bodies_are_refused_with_400_on_every_way_in(store_gw: TestClient) -> None:
    client = store_gw
    for body in DEEP:
        refused(client, client.post("/v1/datasets/customers/query", content=body, headers=bearer()), 400,
                "bad_request")
        refused(client, client.post("/v1/sql", content=body, headers=bearer()), 400, "bad_request")
        refused(client, client.post("/admin/v1/revocations", content=body, headers=ADMIN), 400, "bad_request")
        # MCP: a body that is no JSON-RPC message the SDK can read is its parse error (no tool call, no record).
        got = client.post("/mcp", content=body, headers={**bearer(), **MCP_HEADERS})
        assert got.status_code == 400 and got.json()["error"]["code"] == -32700, got.text
    # A tool call nested past the SDK's parser (200 levels) is refused through the core, and recorded; within it
    # (150 levels) the core answers as REST does.
    for depth, message in ((250, "nested too deeply"), (150, "a 'where' term is [column, operator, value]")):
        where: list[Any] = []
        for _ in range(depth - 1):
            where = [where]
        got = mcp_call(client, "query_dataset", {"name": "customers", "where": where})
        assert message in mcp_refusal(client, got)["message"]
    # A body short enough to be recorded whole (under 4 KiB), too deep to parse: the review page shows its record
    # (it pretty-prints a record's JSON, and used to fail on this one).
    got = client.post("/v1/datasets/customers/query", content=b"[" * 1500 + b"]" * 1500, headers=bearer())
    record = refused(client, got, 400, "bad_request")
    client.cookies.set("agentgate_review", token("alice"), path="/admin")
    try:
        page = client.get(f"/admin/records/{record['id']}")
        assert page.status_code == 200 and got.headers["x-request-id"] in page.text, page.text[:300]
    finally:
        client.cookies.clear()
    read_works(client)


# --- 2. header values that are not ASCII, to an HTTP source -----------------------------------------------------


class Echo(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []  # what the source was asked: path, Accept, the header names

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append({"path": self.path, "accept": self.headers.get("accept", ""),
                          "names": ",".join(sorted(k.lower() for k in self.headers))})
        body = json.dumps(self.seen[-1]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_header_values_that_are_not_ascii_are_refused_before_the_http_source(tmp_path: Path,
                                                                              sqlite_source: str) -> None:
    seen: list[dict[str, str]] = []
    with loopback_http(type("Handler", (Echo,), {"seen": seen})) as base:
        datasets = DATASETS + '\n[datasets.tickets]\nsource = "tix"\npath = "/tickets"\nowner = "a@example.com"\n'
        config = write_workspace(tmp_path, source_url=sqlite_source, datasets=datasets,
                                 policy=POLICY + "p, support, tickets, read, allow\n",
                                 extra=EXTRA + f'\n[sources.tix]\nurl = "{base}"\ntimeout_seconds = 2\n')
        with client_for(config) as client:
            # As an HTTP server hands them on: bytes 0x80-0xFF read as Latin-1 (é, ², NBSP), UTF-8 bytes of
            # non-Latin text, a control character.
            for accept in (b"caf\xe9", "text/html; q=²".encode(), "application/json\u00a0".encode("latin-1"),
                           "текст/html".encode(), b"text/\x7fhtml", b"text/\x01html"):
                got = client.get("/v1/datasets/tickets/proxy/a", headers=[*bearer().items(), (b"accept", accept)])
                record = refused(client, got, 400, "bad_request")
                assert "Accept" in got.json()["error"]["message"] and record["dataset"] == "tickets"
            assert seen == []  # the source was not contacted
            for accept in ("application/json", "text/html;q=0.9,\t*/*;q=0.1"):
                got = client.get("/v1/datasets/tickets/proxy/a", headers={**bearer(), "Accept": accept})
                assert got.status_code == 200 and got.json()["accept"] == accept, got.text
            # A work unit that is not ASCII is the gateway's to judge (kept, or refused), never passed on, never a 500.
            for unit in ("Ticket-ü".encode(), b"caf\xe9", "票-42".encode()):
                got = client.get("/v1/datasets/tickets/proxy/a", headers=[*bearer().items(), (b"x-work-unit", unit)])
                assert got.status_code in (200, 400), got.text
                assert [r for r in trail(client, 10) if r["request_id"] == got.headers["x-request-id"]]
            assert seen and all("x-work-unit" not in s["names"].split(",") for s in seen), seen


# --- 3. digits that are not ASCII, numbers past a column ----------------------------------------------------------

# Superscript two, Arabic-Indic twelve and one, full-width one; past 64 bits, past int()'s digits, past 32 bits.
NOT_NUMBERS = ("\u00b2", "\u0661\u0662", "\u0661", "\uff11", "9" * 25, "9" * 5000, "2147483648", "-1", " 1", "")


def test_ids_limits_and_cursors_take_ascii_digits_only(store_gw: TestClient) -> None:
    client = store_gw
    made = client.post("/admin/v1/revocations", json={"agent": "support-bot"}, headers=ADMIN)
    assert made.status_code == 201 and made.json()["id"] == 1, made.text
    for value in NOT_NUMBERS:
        if value:  # an empty path segment is another route
            refused(client, client.delete(f"/admin/v1/revocations/{value}", headers=ADMIN), 404, "not_found")
            refused(client, client.get(f"/admin/v1/audit/{value}", headers=ADMIN), 404, "not_found")
            refused(client, client.post(f"/admin/v1/approvals/{value}/approve", headers=ADMIN), 404, "not_found")
        for key in ("limit", "cursor"):
            # (An empty parameter is no parameter; a cursor is a record id, which may pass 2**31.)
            if value and not (key == "cursor" and value == "2147483648"):
                refused(client, client.get("/admin/v1/audit", params={key: value}, headers=ADMIN), 400,
                        "bad_request")
                # The export used to fail mid-stream (a 200 already sent) on a cursor past 64 bits.
                refused(client, client.get("/admin/v1/audit/export", params={key: value}, headers=ADMIN), 400,
                        "bad_request")
    # The revocation is still in force (Arabic-Indic one is not 1), and 1 is.
    assert client.get("/v1/datasets", headers=bearer()).status_code == 403
    assert client.get("/admin/v1/audit/1", headers=ADMIN).status_code == 200
    # Times: digits that are not ASCII, and zones that carry a time out of years 1-9999.
    for since in ("\u0662\u0660\u0662\u0666-01-01", "\uff12\uff10\uff12\uff16-01-01", "2026-01-01T00:00:00\u00b2",
                  "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "0001-01-01T00:00:00\x00"):
        for path in ("/admin/v1/audit", "/admin/v1/audit/activity", "/admin/v1/audit/export"):
            refused(client, client.get(path, params={"since": since}, headers=ADMIN), 400, "bad_request")
    refused(client, client.get("/admin/v1/audit/activity", params={"until": "0001-01-01T00:00:00Z"},
                               headers=ADMIN), 400, "bad_request")
    # Content-Length in digits that are not ASCII (a server in front would refuse it; the ASGI app is its own).
    got = client.post("/v1/datasets/customers/query", content=b'{"limit": 1}',
                      headers=[*bearer().items(), (b"content-length", "²".encode())])
    assert got.status_code in (200, 403, 400), got.text
    got = client.post("/v1/datasets/customers/query", content=b"{}",
                      headers=[*bearer("analyst-bot").items(), (b"content-length", b"9" * 5000)])
    refused(client, got, 413, "too_large")


def test_the_review_page_takes_ascii_digits_only(store_gw: TestClient) -> None:
    client = store_gw
    client.cookies.set("agentgate_review", token("alice"), path="/admin")
    for value in ("\u00b2", "\u0661", "9" * 25, "9" * 5000):
        got = client.get(f"/admin/records/{value}")
        assert got.status_code == 404 and "no audit record" in got.text, got.text[:300]
        got = client.get("/admin/", params={"cursor": value})
        assert got.status_code == 400 and "next_cursor" in got.text, got.text[:300]
    assert client.get("/admin/records/1").status_code == 200


def run_cli(*args: str) -> int:
    """`agentgate ARGS` in this process: its exit code (argparse's refusals exit 2 by SystemExit)."""
    try:
        return cli.main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.unit
def test_the_command_line_takes_ascii_digits_only(tmp_path: Path, sqlite_source: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = str(write_workspace(tmp_path, source_url=sqlite_source))
    for value in ("\u00b2", "\u0661\u0662", "\uff11", "9" * 5000, "-1"):
        for args in (("audit", "list", "--limit", value), ("token", "issue", "--agent", "a", "--ttl", value),
                     ("serve", "--port", value), ("serve", "--workers", value),
                     ("approvals", "list", "--limit", value)):
            assert run_cli(*args, "--config", config) == 2, args
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "whole number" in err[0] and "Traceback" not in err[0], err
    for since in ("\u0661d", "9999999999d", "999999999d", "\u0662\u0660\u0662\u0666-01-01"):
        assert run_cli("usage", "--by", "agent", "--since", since, "--config", config) == 2, since
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    for since in ("\u0662\u0660\u0662\u0666-01-01", "0001-01-01T00:00:00+23:59"):
        assert run_cli("audit", "list", "--since", since, "--config", config) == 2, since
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert run_cli("audit", "list", "--limit", "12", "--config", config) == 0


# --- 4. NUL and lone surrogates ---------------------------------------------------------------------------------


def test_tokens_whose_claims_hold_nul_or_lone_surrogates_are_401_on_every_way_in(store_gw: TestClient) -> None:
    client = store_gw
    for claim in ("sub", "on_behalf_of", "jti"):
        for value in ("a\x00b", "\ud800", "\udcff"):
            jwt = token(value) if claim == "sub" else token("support-bot", **{claim: value})
            auth = {"Authorization": f"Bearer {jwt}"}
            for got in (client.get("/v1/datasets", headers=auth),
                        client.post("/v1/datasets/customers/query", json={}, headers=auth),
                        client.post("/v1/sql", json={"sql": "SELECT id FROM customers"}, headers=auth),
                        client.get("/admin/v1/audit", headers=auth)):
                record = refused(client, got, 401, "unauthenticated")
                assert got.json()["error"]["message"] == f"invalid {claim}"
                assert record["agent"] is None and record["token_id"] is None
            got = client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                              headers={**auth, **MCP_HEADERS})
            assert got.status_code == 401 and got.json()["error"]["data"]["error"]["message"] == f"invalid {claim}"
            got = client.post("/admin/login", data={"token": jwt}, headers={"Origin": "http://testserver"})
            assert got.status_code == 401 and f"invalid {claim}" in got.text


def test_revoking_a_name_no_store_can_hold_is_refused_and_recorded(store_gw: TestClient, store_url: str,
                                                                   tmp_path: Path) -> None:
    client = store_gw
    for key in ("agent", "jti", "reason"):
        for value in NUL_AND_SURROGATES:
            body = ('{"agent": "someone", "reason": ' + raw(value) + "}" if key == "reason"
                    else f'{{"{key}": {raw(value)}}}')
            got = client.post("/admin/v1/revocations", content=body, headers=ADMIN)
            assert "NUL" in refused(client, got, 400, "bad_request")["reason"]
    assert client.get("/admin/v1/revocations", headers=ADMIN).json()["revocations"] == []
    # Admin filters and ids holding them: refused, not sent to the store (PostgreSQL refuses NUL in a text).
    for value in ("a%00b", "%00", "x%00"):
        for key in ("agent", "dataset", "work_unit", "on_behalf_of"):
            refused(client, client.get(f"/admin/v1/audit?{key}={value}", headers=ADMIN), 400, "bad_request")
            refused(client, client.get(f"/admin/v1/audit/export?{key}={value}", headers=ADMIN), 400,
                    "bad_request")
        refused(client, client.post(f"/admin/v1/approvals/{value}/approve", headers=ADMIN), 404, "not_found")
        refused(client, client.post(f"/admin/v1/approvals/{value}/deny", headers=ADMIN), 404, "not_found")
    # The command line: a NUL (only in-process: no real command line carries one) or bytes that are not UTF-8
    # (Python reads them as lone surrogates): exit 2, one line, nothing stored.
    config = str(client.app.state.settings.path)  # type: ignore[attr-defined]
    for value in NUL_AND_SURROGATES:
        for args in (("revoke", "agent", value), ("revoke", "token", value), ("restore", "agent", value),
                     ("revoke", "agent", "x", "--reason", value), ("approve", value, "--by", "maria"),
                     ("deny", "x", "--by", value), ("audit", "list", "--agent", value),
                     ("token", "issue", "--agent", value)):
            assert run_cli(*args, "--config", config) == 2, args
    assert client.get("/admin/v1/revocations", headers=ADMIN).json()["revocations"] == []


def test_where_values_holding_nul_or_lone_surrogates_are_400_and_the_next_read_is_served(gw: Gw) -> None:
    client = gw.client
    for value in NUL_AND_SURROGATES:
        for term in (f'["name", "=", {raw(value)}]', f'["name", "in", ["a", {raw(value)}]]',
                     f'["name", "like", {raw(value + "%")}]', f'["created_at", ">", {raw(value)}]',
                     f'["name", "not in", [{raw(value)}]]'):
            got = client.post("/v1/datasets/customers/query", content=f'{{"where": [{term}]}}', headers=bearer())
            refused(client, got, 400, "bad_request")
        read_works(client)
        where = [["name", "=", value]]
        got = mcp_call(client, "query_dataset", {"name": "customers", "where": where})
        assert mcp_refusal(client, got)["code"] == "bad_request"
        read_works(client)


def test_sql_holding_nul_or_lone_surrogates_is_400_and_the_next_read_is_served(gw: Gw) -> None:
    client = gw.client
    for value in NUL_AND_SURROGATES:
        for sql in (f"SELECT id FROM customers WHERE name = '{value}'", f"SELECT '{value}' AS x FROM customers",
                    f"SELECT id FROM customers -- {value}", f'SELECT id AS "{value}" FROM customers'):
            got = client.post("/v1/sql", content=json.dumps({"sql": sql}), headers=bearer())
            refused(client, got, 400, "bad_request")
            assert mcp_refusal(client, mcp_call(client, "sql", {"sql": sql}))["code"] == "bad_request"
        read_works(client)


# --- 5. a driver exception discards its connection ----------------------------------------------------------------

# Statements whose answers the driver cannot make Python values of: PostgreSQL's dates run to year 5874897,
# Python's to 9999; its intervals past timedelta's 999,999,999 days.
UNCONVERTIBLE = {
    "pg": ["SELECT CAST('10000-01-01' AS DATE) AS d FROM customers",
           "SELECT CURRENT_DATE + 3000000 AS d FROM customers",
           "SELECT INTERVAL '170000000 years' AS i FROM customers",
           "SELECT CAST('294276-01-01' AS TIMESTAMP) AS t FROM customers"],
}


def test_an_answer_the_driver_cannot_convert_is_400_and_the_next_read_is_served(gw: Gw) -> None:
    client = gw.client
    for sql in UNCONVERTIBLE.get(gw.dialect, []):
        got = client.post("/v1/sql", json={"sql": sql}, headers=bearer())
        record = refused(client, got, 400, "bad_request")
        assert got.json()["error"]["message"] == "the source refused the statement"
        assert "cannot convert" in record["reason"], record["reason"]
        read_works(client)


@pytest.mark.parametrize("dialect", ["pg_source", "mariadb_source", "sqlite_source"])
def test_a_connection_the_driver_failed_on_is_not_handed_to_the_next_read(dialect: str,
                                                                          request: pytest.FixtureRequest) -> None:
    """The connector's last line, handed what the gateway refuses before it (so only a direct call reaches it):
    the driver fails on a lone surrogate before the statement is sent — asyncpg mid-protocol, which left the
    connection answering "another operation is in progress", then "connection is closed", to the next read."""
    url = request.getfixturevalue(dialect)

    async def run() -> None:
        source = SqlConnector("main", make_engine(url, timeout_seconds=5, pool_size=1), timeout_seconds=5)
        try:
            for bad in ("SELECT '\ud800' AS x", "SELECT id FROM customers WHERE name = '\ud800'",
                        "SELECT 1 AS \"\udcff\""):
                if "\ud800" in bad:
                    with pytest.raises(InvalidQuery):
                        await source.run_select(bad, 5)
                else:  # aiomysql sends \udcff as the byte it stands for (surrogateescape): MariaDB may take it
                    with contextlib.suppress(InvalidQuery, SourceRefused):
                        await source.run_select(bad, 5)
                page = await source.run_select("SELECT id FROM customers ORDER BY id LIMIT 2", 5)
                assert [r["id"] for r in page.rows] == [1, 2]
            if dialect == "pg_source":  # a value of the answer the driver cannot convert: refused, and the same
                with pytest.raises(SourceRefused):
                    await source.run_select("SELECT CAST('10000-01-01' AS DATE) AS d", 5)
                assert (await source.run_select("SELECT 7 AS n", 5)).rows == [{"n": 7}]
        finally:
            await source.close()

    asyncio.run(run())


def test_a_table_value_the_driver_cannot_convert_is_502_and_the_next_read_is_served(
        tmp_path: Path, pg_source: str) -> None:
    """The query API's PostgreSQL reads run on an asyncpg pool of their own: a row holding a date past year 9999
    fails in the driver (the data's, not the agent's fault: 502), and its connection is closed, not pooled."""
    async def table(*statements: str) -> None:
        engine = create_async_engine(pg_source, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                for sql in statements:
                    await conn.execute(text(sql))
        finally:
            await engine.dispose()

    asyncio.run(table("CREATE TABLE far_dates (id integer PRIMARY KEY, d date)",
                      "INSERT INTO far_dates VALUES (1, '2026-01-01'), (2, '10000-01-01')"))
    try:
        datasets = DATASETS + '\n[datasets.far]\nsource = "main"\ntable = "far_dates"\nowner = "a@example.com"\n'
        config = write_workspace(tmp_path, source_url=pg_source, datasets=datasets,
                                 policy=POLICY + "p, support, far, read, allow\n", extra=EXTRA)
        with client_for(config) as client:
            for _ in range(3):
                got = client.post("/v1/datasets/far/query", json={}, headers=bearer())
                assert got.status_code == 502 and got.json()["error"]["code"] == "source_error", got.text
                assert "cannot convert" in records(config)[-1]["reason"]
                got = client.post("/v1/datasets/far/query", json={"where": [["id", "=", 1]]}, headers=bearer())
                assert got.status_code == 200 and got.json()["rows"] == [{"id": 1, "d": "2026-01-01"}], got.text
                read_works(client)
    finally:
        asyncio.run(table("DROP TABLE far_dates"))
