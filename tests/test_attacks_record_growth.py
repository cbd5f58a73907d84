"""Growing the audit store with what a client sends: huge bodies, headers, names, paths and claims.

No field of a record grows with what a client sends (gateway/audit/bounds.py FIELD_MAX, QUERY_MAX_BYTES): the query is
kept up to 4 KiB, with the whole one's length and SHA-256 beside it; every other text is kept capped. A work unit
or approval id over 128 characters or with a control character is a 400, recorded with it escaped and capped.
Requests without a valid token are nobody's usage. Every way in is tried (REST query, SQL mode, the proxy, MCP,
the admin API, the review page, the command line), on SQLite and PostgreSQL stores, and the chain verifies.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from gateway import cli
from gateway.audit import FIELD_MAX, QUERY_MAX_BYTES
from gateway.store import make_store_engine
from tests.conftest import bearer, client_for, token, write_workspace

pytestmark = pytest.mark.integration

BIG = 200_000  # characters of a client's oversized text: far over every cap, well under max_body_bytes
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}


@pytest.fixture
def config(tmp_path: Path, sqlite_source: str, store_url: str) -> Path:
    return write_workspace(tmp_path, source_url=sqlite_source, store_url=store_url)


@pytest.fixture
def client(config: Path) -> Iterator[TestClient]:
    with client_for(config) as c:
        yield c


def trail(client: TestClient, **filters: str) -> list[dict[str, Any]]:
    """The records, newest first, through the admin API (whose own reads are records too)."""
    got = client.get("/admin/v1/audit", params={"limit": "1000", **filters}, headers=bearer("alice"))
    assert got.status_code == 200, got.text
    return list(got.json()["records"])


def last(client: TestClient, request_id: str) -> dict[str, Any]:
    return next(r for r in trail(client) if r["request_id"] == request_id)


def assert_bounded(record: dict[str, Any]) -> None:
    for name, limit in FIELD_MAX.items():
        value = record[name]
        assert value is None or len(value) <= limit, (name, len(value))
    if record["query"] is not None:
        assert len(record["query"].encode("utf-8")) <= QUERY_MAX_BYTES
    assert len(json.dumps(record)) < 20_000  # the whole record, every field together


def assert_measured(record: dict[str, Any], whole: bytes) -> None:
    """The record keeps the start of `whole` and its length and SHA-256."""
    assert record["query_bytes"] == len(whole) and record["query_sha256"] == hashlib.sha256(whole).hexdigest()
    kept = record["query"].encode("utf-8")
    assert 0 < len(kept) <= QUERY_MAX_BYTES and whole.startswith(kept), kept[:80]


def request_id(response: Any) -> str:
    return str(response.headers["x-request-id"])


def verified(client: TestClient) -> None:
    checked = client.get("/admin/v1/audit/verify", headers=bearer("alice")).json()
    assert checked["ok"] is True, checked


# --- bodies: REST query, SQL mode, MCP, the admin API ------------------------------------------------------------

def test_huge_bodies_are_kept_capped_with_their_length_and_digest_on_every_way_in(client: TestClient) -> None:
    # REST query: a filter value of 200,000 characters (served: no row matches it).
    body = json.dumps({"where": [["name", "=", "x" * BIG]], "limit": 1}).encode()
    r = client.post("/v1/datasets/customers/query", content=body, headers=bearer())
    assert r.status_code == 200, r.text
    rec = last(client, request_id(r))
    assert_bounded(rec)
    assert_measured(rec, body)  # the body as it came, byte for byte

    # Not UTF-8: the length and digest are the bytes received, not a decoding of them.
    raw = b'{"limit": 1, "x": "' + b"\xff" * BIG + b'"}'
    r = client.post("/v1/datasets/customers/query", content=raw, headers=bearer())
    assert r.status_code == 400
    rec = last(client, request_id(r))
    assert_bounded(rec)
    assert rec["query_bytes"] == len(raw) and rec["query_sha256"] == hashlib.sha256(raw).hexdigest()

    # Multi-byte characters: cut on a character's boundary, never in the middle of one.
    body = json.dumps({"where": [["name", "=", "é漢😀" * 30_000]]}, ensure_ascii=False).encode()
    r = client.post("/v1/datasets/customers/query", content=body, headers=bearer())
    rec = last(client, request_id(r))
    assert_bounded(rec)
    assert_measured(rec, body)
    assert "\ufffd" not in rec["query"]

    # SQL mode: the statement is what the record keeps, measured whole; one over SQL mode's own limit (400) is
    # kept as its body.
    sql = "SELECT id FROM customers WHERE name = '" + "y" * 50_000 + "'"
    r = client.post("/v1/sql", json={"sql": sql}, headers=bearer())
    assert r.status_code == 200, r.text
    rec = last(client, request_id(r))
    assert_bounded(rec)
    assert_measured(rec, sql.encode())
    body = json.dumps({"sql": "SELECT id FROM customers WHERE name = '" + "y" * BIG + "'"}).encode()
    r = client.post("/v1/sql", content=body, headers=bearer())
    assert r.status_code == 400, r.text
    rec = last(client, request_id(r))
    assert_bounded(rec)
    assert_measured(rec, body)

    # MCP: the arguments as sent, measured whole.
    arguments = {"name": "customers", "where": [["name", "=", "z" * BIG]], "limit": 1}
    r = client.post("/mcp", headers={**bearer(), **MCP_HEADERS}, json={
        "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "query_dataset", "arguments": arguments}})
    assert r.status_code == 200 and not r.json()["result"]["isError"], r.text[:300]
    rec = next(x for x in trail(client) if x["transport"] == "mcp")
    assert_bounded(rec)
    assert_measured(rec, json.dumps(arguments, separators=(",", ":")).encode())

    # The admin API: a revocation's body, and a listing's query string.
    r = client.post("/admin/v1/revocations", json={"agent": "ghost-" + "g" * BIG, "reason": "r" * BIG},
                    headers=bearer("alice"))
    assert r.status_code == 201, r.text
    rec = last(client, request_id(r))
    assert_bounded(rec)
    assert rec["query_bytes"] > 2 * BIG and len(rec["query_sha256"]) == 64
    r = client.get("/admin/v1/audit", params={"agent": "a" * 20_000, "dataset": "d" * 20_000},
                   headers=bearer("alice"))
    assert r.status_code == 200
    rec = last(client, request_id(r))
    assert_bounded(rec)
    assert rec["query_bytes"] > 40_000

    # A body under the cap is kept whole, with nothing beside it.
    r = client.post("/v1/datasets/customers/query", content=b'{"limit": 1}', headers=bearer())
    rec = last(client, request_id(r))
    assert (rec["query"], rec["query_bytes"], rec["query_sha256"]) == ('{"limit": 1}', None, None)
    for rec in trail(client):
        assert_bounded(rec)
    verified(client)


# --- headers: X-Work-Unit and X-Approval-Id ---------------------------------------------------------------------

def test_long_or_control_character_work_units_and_approval_ids_are_400_and_recorded_capped(
        client: TestClient) -> None:
    fine = "W" * 128
    r = client.post("/v1/datasets/customers/query", json={"limit": 1}, headers={**bearer(), "X-Work-Unit": fine})
    assert r.status_code == 200
    assert last(client, request_id(r))["work_unit"] == fine  # up to the cap, kept whole
    spaced = "ticket 42 (Q3 review)"
    r = client.post("/v1/datasets/customers/query", json={"limit": 1}, headers={**bearer(), "X-Work-Unit": spaced})
    assert r.status_code == 200 and last(client, request_id(r))["work_unit"] == spaced

    refused: list[tuple[str, bytes]] = [
        ("X-Work-Unit", b"W" * 129),
        ("X-Work-Unit", b"W" * 50_000),
        ("X-Work-Unit", b"T-1\x1b[2K\rforged line"),
        ("X-Work-Unit", b"T-1\x7f"),
        ("X-Work-Unit", b"T-1\x85"),  # C1 (NEL), as latin-1 reads the byte
        ("X-Work-Unit", b"\t"),
        ("X-Approval-Id", b"a" * 129),
        ("X-Approval-Id", b"0123\x1b[31m"),
    ]
    for header, value in refused:
        for path, method in (("/v1/datasets/customers/query", "POST"), ("/v1/datasets", "GET"),
                             ("/v1/sql", "POST")):
            r = client.request(method, path, headers={**bearer(), header: value},
                               json={"limit": 1} if path.endswith("query") else {"sql": "SELECT id FROM customers"}
                               if path == "/v1/sql" else None)
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", (header, value, r.text)
            rec = last(client, request_id(r))
            assert (rec["status"], rec["decision"], rec["rows"]) == (400, "error", None)
            assert_bounded(rec)
            if header == "X-Work-Unit":
                kept = rec["work_unit"]
                assert kept and kept.isprintable() and len(kept) <= 128, kept  # escaped, one line
                if len(value) > 128:
                    assert f"[{len(value)} chars, sha256 " in kept
            else:
                assert "approval id" in rec["reason"]

    # Without a token: 401 still, and the record's work unit is bounded all the same.
    r = client.get("/v1/datasets", headers={"X-Work-Unit": "V" * 50_000})
    assert r.status_code == 401
    rec = last(client, request_id(r))
    assert rec["agent"] is None and len(rec["work_unit"]) <= 128

    # MCP's work_unit and approval_id arguments are the same headers.
    for argument in ({"work_unit": "M" * 5000}, {"work_unit": "m\x1b[2K"}, {"approval_id": "p" * 500}):
        r = client.post("/mcp", headers={**bearer(), **MCP_HEADERS}, json={
            "jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "query_dataset", "arguments": {"name": "customers", "limit": 1, **argument}}})
        result = r.json()["result"]
        assert result["isError"] and result["structuredContent"]["error"]["code"] == "bad_request", result
    mcp = [x for x in trail(client) if x["transport"] == "mcp"]
    assert len(mcp) == 3 and all(x["status"] == 400 for x in mcp)
    assert all(x["work_unit"] is None or (x["work_unit"].isprintable() and len(x["work_unit"]) <= 128) for x in mcp)
    verified(client)


# --- names: the dataset in the URL, the token's sub and on_behalf_of, proxied paths -----------------------------

def test_long_names_paths_and_claims_are_kept_capped(client: TestClient) -> None:
    long_name = "d" * 30_000
    answers = [
        client.get(f"/v1/datasets/{long_name}", headers=bearer()),
        client.post(f"/v1/datasets/{long_name}/query", json={}, headers=bearer()),
        client.get(f"/v1/datasets/{long_name}/proxy/x", headers=bearer()),
        client.get(f"/v1/datasets/{long_name}"),  # no token
        client.post("/v1/sql", json={"sql": f"SELECT * FROM {long_name}"}, headers=bearer()),
    ]
    assert [a.status_code for a in answers] == [403, 403, 403, 401, 403], [a.text[:200] for a in answers]
    for a in answers:
        rec = last(client, request_id(a))
        assert_bounded(rec)
        assert rec["dataset"] is None or "30000 chars" in rec["dataset"] or rec["dataset"] == long_name[:1024]

    # A proxied path and query string 50,000 characters long (the test client's URLs stop at 64 KiB): kept as the
    # query, capped and measured.
    path = "p/" * 10_000
    query = "q=" + "v" * 30_000
    for headers in (bearer(), {}):
        r = client.get(f"/v1/datasets/customers/proxy/{path}?{query}", headers=headers)
        assert r.status_code in (400, 401), r.text[:200]
        rec = last(client, request_id(r))
        assert_bounded(rec)
        assert_measured(rec, f"/{path}?{query}".encode())

    # A token whose sub, on_behalf_of and jti are long (an identity provider's, or a leaked key's; tokens over
    # 16,384 characters are refused whole, 401).
    huge = token("agent-" + "s" * 5000, on_behalf_of="person-" + "o" * 3000, jti="j" * 2000)
    r = client.get("/v1/datasets", headers={"Authorization": f"Bearer {huge}"})
    assert r.status_code == 200  # an agent no policy names: it reads nothing
    rec = last(client, request_id(r))
    assert_bounded(rec)
    assert rec["agent"].startswith("agent-sss") and "[5006 chars, sha256 " in rec["agent"]
    assert rec["on_behalf_of"].startswith("person-ooo")
    r = client.post("/v1/datasets/customers/query", json={"limit": 1},
                    headers=bearer(on_behalf_of="person-" + "o" * 10_000))
    assert r.status_code == 200
    rec = last(client, request_id(r))
    assert rec["agent"] == "support-bot" and len(rec["on_behalf_of"]) <= 256
    verified(client)


def test_the_review_page_and_the_command_line_keep_records_bounded(client: TestClient, config: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    signed = client.post("/admin/login", data={"token": token("alice")}, follow_redirects=False)
    assert signed.status_code in (302, 303), signed.text[:200]
    page = client.get("/admin/", params={"agent": "a" * 30_000, "dataset": "b" * 30_000})
    assert page.status_code in (200, 400), page.text[:200]
    web = [r for r in trail(client) if r["transport"] == "web"]
    assert any(r["action"] == "read_audit" and (r["query_bytes"] or 0) > 60_000 for r in web), [
        (r["action"], r["query_bytes"], r["status"]) for r in web]
    for rec in web:
        assert_bounded(rec)

    # The command line's own records go through the same bound.
    assert cli.main(["revoke", "agent", "cli-" + "c" * BIG, "--reason", "why " * BIG, "--config", str(config)]) == 0
    capsys.readouterr()
    rec = next(r for r in trail(client) if r["action"] == "revoke" and r["transport"] == "cli")
    assert_bounded(rec)
    assert rec["query_bytes"] > 4 * BIG
    verified(client)


# --- usage: requests without a valid token are nobody's --------------------------------------------------------

def test_requests_without_a_valid_token_count_in_no_usage(client: TestClient, config: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    ok = client.post("/v1/datasets/customers/query", json={"limit": 2}, headers={**bearer(), "X-Work-Unit": "W-real"})
    assert ok.status_code == 200
    flood = [
        client.post("/v1/datasets/customers/query", json={"limit": 2}, headers={"X-Work-Unit": "W-real"}),
        client.post("/v1/datasets/customers/query", json={"limit": 2}, headers={"X-Work-Unit": "W-flood"}),
        client.get("/v1/datasets", headers={"X-Work-Unit": "W-flood", "Authorization": "Bearer not-a-token"}),
        # A token signed with another key, and one whose subject is a role: 401 both.
        client.get("/v1/datasets", headers={"X-Work-Unit": "W-flood",
                                            "Authorization": f"Bearer {token(secret='another-' + 'k' * 40)}"}),
        client.get("/v1/datasets", headers={**bearer("support"), "X-Work-Unit": "W-flood"}),
    ]
    assert [r.status_code for r in flood] == [401] * 5
    priced = config.parent / "priced.toml"
    priced.write_text(config.read_text() + "\n[cost]\nper_request = 1\n")
    units: dict[str, Any] = {}
    for by in ("work-unit", "agent", "dataset"):
        assert cli.main(["usage", "--by", by, "--json", "--config", str(priced)]) == 0
        units[by] = {u[by.replace("-", "_")]: u for u in json.loads(capsys.readouterr().out)}
    assert set(units["work-unit"]) == {"W-real"}
    assert units["work-unit"]["W-real"]["requests"] == 1 and units["work-unit"]["W-real"]["cost"] == 1
    assert set(units["agent"]) == {"support-bot"}  # no null agent, no role
    assert units["dataset"]["customers"]["requests"] == 1


# --- an older store --------------------------------------------------------------------------------------------

def test_records_from_before_query_bytes_keep_verifying(tmp_path: Path, sqlite_source: str, store_url: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source, store_url=store_url)
    with client_for(config) as c:
        for i in range(3):
            assert c.post("/v1/datasets/customers/query", json={"limit": i + 1}, headers=bearer()).status_code == 200

    async def as_the_release_before() -> None:
        engine = make_store_engine(store_url)
        try:
            # Seen once in a full CI run on SQLite: the store still locked (past the 10 s busy timeout) just
            # after the in-process gateway above stopped; not reproduced alone. Try again for a while rather
            # than fail on it; the property tested is the upgrade.
            for attempt in range(3):
                try:
                    async with engine.begin() as conn:
                        for column in ("query_bytes", "query_sha256"):
                            await conn.execute(text(f'ALTER TABLE audit DROP COLUMN "{column}"'))
                    return
                except OperationalError:
                    if attempt == 2:
                        raise
                    await asyncio.sleep(2)
        finally:
            await engine.dispose()

    asyncio.run(as_the_release_before())
    with client_for(config) as c:  # starts on the older store: adds the columns back, empty
        big = json.dumps({"where": [["name", "=", "x" * 10_000]]}).encode()
        r = c.post("/v1/datasets/customers/query", content=big, headers=bearer())
        assert r.status_code == 200
        assert_measured(last(c, request_id(r)), big)
        old = [x for x in trail(c) if x["id"] <= 3]
        assert len(old) == 3 and all(x["query_bytes"] is None and x["query_sha256"] is None for x in old)
        verified(c)
        # Once set, the new fields are hashed like any other: an edit to one breaks the chain.
        rid = last(c, request_id(r))["id"]

    async def forge() -> None:
        engine = make_store_engine(store_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE audit SET query_bytes = 12 WHERE id = :id"), {"id": rid})
        finally:
            await engine.dispose()

    asyncio.run(forge())
    with client_for(config) as c:
        checked = c.get("/admin/v1/audit/verify", headers=bearer("alice")).json()
        assert checked["ok"] is False and checked["bad_id"] == rid, checked
