"""Fuzz: property-based requests (hypothesis) at every agent and admin endpoint.

Whatever a client sends — bodies, headers, tokens and their claims, path and query parameters — the gateway:
- never answers with a 5xx (no input is a server fault; the sources here never fail on their own), and never
  logs a request as failed (what Gateway.handle logs, with a traceback, for an unexpected exception);
- answers every refusal in the one error shape, `{"error": {"code", "message", "request_id"}}`, whose
  request id is the answer's `X-Request-Id` (MCP: the tool result's text, or the JSON-RPC error's data);
- leaves exactly one audit record per request (per MCP tool call), with that request id and status;
- and after the run the audit chain verifies.

The endpoints: the data API (list, describe, query: the fast path), SQL mode, the proxy (a loopback HTTP
source), the admin API (revocations, audit, record, verify, activity, export, approvals), MCP tool calls
(through `/mcp` in-process), unknown routes and methods, and the review page (no 5xx only: a page view is
several requests). One app for the module: a PostgreSQL store (it refuses what SQLite takes, such as NUL)
and SQLite, PostgreSQL and MariaDB sources.

Profiles: `ci` (selected when CI=true): 20 examples a test, derandomized so a CI run is reproducible;
`local` (the default elsewhere): 60; `deep`: 1,000 (`HYPOTHESIS_PROFILE=deep python -m pytest -q
tests/test_fuzz_endpoints.py`). No deadline: a request's time is the machine's, not the property's. Each test also
runs explicit examples (`@example`) of the inputs that once answered 500 or broke a connection, under every profile.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from gateway.audit import integrity
from gateway.store import make_store_engine
from tests.conftest import (
    DATASETS,
    IN_CI,
    PG_ADMIN,
    POLICY,
    _database,
    client_for,
    loopback_http,
    token,
    write_workspace,
)

pytestmark = pytest.mark.integration

settings.register_profile("ci", max_examples=20, derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("local", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("deep", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if IN_CI else "local"))

FUZZ_DATASETS = DATASETS + """
[datasets.pg_customers]
source = "pg"
table = "customers"
owner = "maria.keller@example.com"

[datasets.pg_customers.columns.email]
class = "pii"

[datasets.maria_customers]
source = "maria"
table = "customers"
owner = "maria.keller@example.com"

[datasets.held]
source = "main"
table = "orders"
owner = "sales-ops@example.com"
approval = "required"

[datasets.tickets]
source = "tix"
path = "/tickets"
owner = "support-leads@example.com"
"""
FUZZ_POLICY = POLICY + """
p, support, pg_customers, read, allow
p, support, maria_customers, read, allow
p, support, held, read, allow
p, support, tickets, read, allow
"""
AGENTS = ("support-bot", "analyst-bot", "alice", "nobody-bot")  # alice: security-admin
DATASET_NAMES = ("customers", "orders", "pg_customers", "maria_customers", "held", "tickets")
COLUMNS = ("id", "name", "email", "country", "balance", "created_at", "active", "note", "amount", "customer_id")
OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "in", "not in", "like", "is null", "is not null", "IN", "~")
# What crafted input is made of: besides any character, the ones that used to answer 500 or pass a check they
# should not (NUL, lone surrogates, digits that are not ASCII, bidi controls, separators, quotes, dots).
NASTY = ("\x00", "\ud800", "\udfff", "\u00b2", "\u0661\u0662", "\u202e", "\u2028", "\r\n", "'", '"', "\\", "%00",
         "%2e%2e", "..", "/", ";", "\uffa0", "\uff0e", "\ufeff", "9" * 25, "-1", " ", "")


class Echo(BaseHTTPRequestHandler):
    """The HTTP source: 200 with what it was asked under its tickets path, 404 elsewhere; never a 5xx."""

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "accept": self.headers.get("accept")}).encode()
        self.send_response(200 if self.path.startswith("/api/tickets") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Failures(logging.Handler):
    """What the gateway logs at ERROR (Gateway.handle: "request … failed", with the traceback of a 500)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(f"{record.name}: {record.getMessage()}")


@dataclass
class Fuzzed:
    client: TestClient
    trail: Trail
    config: Path
    failures: Failures


class Trail:
    """The store's audit table, read on a loop of the test's own (the app runs its loop in another thread)."""

    def __init__(self, url: str):
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.conn: Any = self.loop.run_until_complete(asyncpg.connect(url.replace("+asyncpg", "")))

    def last_id(self) -> int:
        return int(self.loop.run_until_complete(self.conn.fetchval("SELECT coalesce(max(id), 0) FROM audit")))

    def since(self, last: int) -> list[Any]:
        return list(self.loop.run_until_complete(self.conn.fetch(
            "SELECT id, request_id, status, decision, transport FROM audit WHERE id > $1 ORDER BY id", last)))

    def verify(self) -> integrity.Report:
        async def run() -> integrity.Report:
            engine = make_store_engine(self.url)
            try:
                return await integrity.verify_all(engine, None)
            finally:
                await engine.dispose()

        return self.loop.run_until_complete(run())

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory, sqlite_source: str, pg_source: str,
           mariadb_source: str) -> Iterator[Fuzzed]:
    with loopback_http(Echo) as upstream:
        for store in _database(PG_ADMIN, "fuzz", "PostgreSQL"):
            extra = f"""
[sources.pg]
url = "{pg_source}"
timeout_seconds = 5
pool_size = 2

[sources.maria]
url = "{mariadb_source}"
timeout_seconds = 5
pool_size = 2

[sources.tix]
url = "{upstream}"
timeout_seconds = 2

# The fuzz is one client sending thousands of refused requests: limits high enough that each keeps its own
# record (the limiter's folding is tests/test_attacks_unauthenticated_flood.py's).
[limits]
failed_auth_per_minute = 1000000
failed_auth_burst = 1000000
failed_auth_records_per_minute = 1000000
"""
            config = write_workspace(tmp_path_factory.mktemp("fuzz"), source_url=sqlite_source, store_url=store,
                                     datasets=FUZZ_DATASETS, policy=FUZZ_POLICY, extra=extra)
            failures = Failures()
            logging.getLogger("agentgate").addHandler(failures)
            try:
                with client_for(config) as client:
                    trail = Trail(store)
                    try:
                        yield Fuzzed(client, trail, config, failures)
                    finally:
                        trail.close()
            finally:
                logging.getLogger("agentgate").removeHandler(failures)


# --- strategies -------------------------------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=20),  # lone surrogates included
    st.sampled_from(NASTY),
    st.lists(st.sampled_from(NASTY), min_size=1, max_size=4).map("".join),
)
numbers = st.one_of(st.integers(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts,
                    st.dates(min_value=dt.date(1, 1, 2)).map(str), st.datetimes().map(lambda t: t.isoformat()))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)), max_leaves=12)


def nested(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


deep = st.integers(min_value=1, max_value=100_000).map(nested)
where_terms = st.one_of(
    st.tuples(st.sampled_from(COLUMNS), st.sampled_from(OPERATORS), st.one_of(scalars, st.lists(scalars, max_size=5)))
    .map(list),
    st.tuples(st.sampled_from(COLUMNS), st.sampled_from(("is null", "is not null"))).map(list),
    json_values,
)
query_bodies = st.fixed_dictionaries({}, optional={
    "columns": st.one_of(st.lists(st.sampled_from(COLUMNS), max_size=4, unique=True), json_values),
    "where": st.one_of(st.lists(where_terms, max_size=4), json_values),
    "order_by": st.one_of(st.lists(st.sampled_from(COLUMNS).map(lambda c: c), max_size=3, unique=True),
                          st.lists(st.sampled_from(COLUMNS).map(lambda c: "-" + c), max_size=2, unique=True),
                          json_values),
    "limit": st.one_of(st.integers(min_value=-5, max_value=2**70), json_values),
    "cursor": st.one_of(texts, st.binary(max_size=60).map(lambda b: "v2." + b.hex()), json_values),
    "wher": json_values,
})


def encoded(value: Any) -> bytes:
    """JSON as a client may write it: NaN and Infinity included, lone surrogates as \\u escapes."""
    return json.dumps(value, allow_nan=True).encode()


bodies = st.one_of(query_bodies.map(encoded), json_values.map(encoded), deep, st.binary(max_size=200),
                   deep.map(lambda d: b'{"where": [' + d + b"]}"))
sql_literals = st.one_of(
    texts.map(lambda t: "'" + t.replace("'", "''") + "'"),
    numbers.map(str),
    st.sampled_from(["DATE '10000-01-01'", "CAST('10000-01-01' AS DATE)", "INTERVAL '170000000 years'",
                     "CURRENT_DATE + 3000000", "X'FF'", "1e400", "9" * 30, "NULL"]),
)
sql_texts = st.one_of(
    st.tuples(st.sampled_from(COLUMNS), st.sampled_from(DATASET_NAMES), st.sampled_from(COLUMNS), sql_literals)
    .map(lambda t: f"SELECT {t[0]} FROM {t[1]} WHERE {t[2]} = {t[3]}"),
    st.tuples(sql_literals, st.sampled_from(DATASET_NAMES)).map(lambda t: f"SELECT {t[0]} AS x FROM {t[1]}"),
    st.tuples(st.sampled_from(DATASET_NAMES), st.one_of(st.integers(min_value=0), texts))
    .map(lambda t: f"SELECT id FROM {t[0]} LIMIT {t[1]}"),
    texts,
)
sql_bodies = st.one_of(sql_texts.map(lambda s: encoded({"sql": s})), json_values.map(lambda v: encoded({"sql": v})),
                       bodies)


def _claims() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={"on_behalf_of": st.one_of(texts, json_values),
                                               "jti": st.one_of(texts, json_values)})


@st.composite
def authorizations(draw: st.DrawFn) -> str | None:
    """A token a real agent holds, one whose claims are crafted, or no token worth the name."""
    kind = draw(st.sampled_from(("agent", "agent", "agent", "crafted", "garbage", "none")))
    if kind == "agent":
        return f"Bearer {token(draw(st.sampled_from(AGENTS)))}"
    if kind == "crafted":
        sub = draw(st.one_of(st.sampled_from(AGENTS), texts, json_values))
        try:
            return f"Bearer {token(sub, **draw(_claims()))}"  # type: ignore[arg-type]
        except (TypeError, ValueError):  # what PyJWT cannot sign: no such token reaches the gateway
            return f"Bearer {token('support-bot')}"
    if kind == "garbage":
        return draw(st.one_of(texts, st.just("Bearer"), texts.map(lambda t: "Bearer " + t)))
    return None


# Header values as an HTTP server hands them on: any byte but CR, LF and NUL (obs-text, 0x80-0xFF, included).
header_values = st.one_of(
    st.binary(max_size=80).map(lambda b: bytes(c for c in b if c not in b"\r\n\x00")),
    st.sampled_from([b"caf\xe9", "é".encode(), "²".encode(), b"\xff" * 200, b"x" * 300, b"a\tb"]),
)


def headers_with(authorization: str | None, extra: dict[str, bytes] | None = None) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    if authorization is not None:
        out.append((b"authorization", authorization.encode("utf-8", "surrogatepass")))
    for key, value in (extra or {}).items():
        out.append((key.encode(), value))
    return out


def path_part(text: str) -> str:
    """A path or query parameter as a client may percent-encode it (bytes that are not UTF-8 included); a bare
    dot segment encoded too, which the test client would otherwise resolve before sending."""
    part = quote(text.encode("utf-8", "surrogatepass"), safe="")
    return "%2E" * len(part) if part in (".", "..") else part


params = st.dictionaries(st.one_of(st.sampled_from(("agent", "dataset", "decision", "since", "until", "limit",
                                                    "cursor", "work_unit", "on_behalf_of", "format", "status",
                                                    "incremental")), texts),
                         st.one_of(texts, st.integers().map(str), st.sampled_from(("allow", "csv", "jsonl", "1"))),
                         max_size=4)


def query_string(values: dict[str, str]) -> str:
    return "&".join(f"{path_part(k)}={path_part(v)}" for k, v in values.items())


# The admin, with a token minted when drawn (a token minted at import could expire before the module runs).
ADMIN = st.builds(lambda: f"Bearer {token('alice')}")
# For the explicit examples below (each class that once answered 500 or broke a connection, run by every profile).
LONG = {agent: f"Bearer {token(agent, ttl=7 * 86400)}" for agent in AGENTS}


# --- the properties ---------------------------------------------------------------------------------------------


def is_error_shape(body: Any, request_id: str | None) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return (isinstance(error, dict) and isinstance(error.get("code"), str) and isinstance(error.get("message"), str)
            and isinstance(error.get("request_id"), str) and (request_id is None or error["request_id"] == request_id))


def send(f: Fuzzed, method: str, url: str, *, headers: list[tuple[bytes, bytes]], body: bytes | None = None,
         ) -> httpx.Response:
    """One request: no 5xx, one record (its request id and status the answer's), errors in the one shape."""
    before = f.trail.last_id()
    f.failures.seen.clear()
    r = f.client.request(method, url, headers=headers, content=body)
    assert r.status_code < 500, (method, url, r.status_code, r.text[:300])
    assert not f.failures.seen, f.failures.seen
    request_id = r.headers.get("x-request-id")
    recorded = f.trail.since(before)
    assert len(recorded) == 1, (method, url, r.status_code, [dict(x) for x in recorded])
    record = recorded[0]
    assert record["request_id"] == request_id and record["status"] == r.status_code, (dict(record), r.status_code)
    if record["decision"] != "allow":  # refused: the gateway's own answer, in its one shape
        assert is_error_shape(r.json(), request_id), (url, r.status_code, r.text[:300])
    elif r.status_code >= 400:  # served: only a source's own answer passed through (the proxy) is not 2xx
        assert "/proxy/" in url, (url, r.status_code, r.text[:300])
    return r


@example(auth=LONG["support-bot"], name="pg_customers", body=b'{"where": [["name", "=", "\\ud800"]]}',
         work_unit=None, approval=None)
@example(auth=LONG["support-bot"], name="maria_customers", body=b'{"where": [["name", "like", "\\udfff%"]]}',
         work_unit=None, approval=None)
@example(auth=LONG["support-bot"], name="customers", body=nested(100_000), work_unit=None, approval=b"\x01")
@given(auth=authorizations(), name=st.one_of(st.sampled_from(DATASET_NAMES), texts), body=bodies,
       work_unit=st.one_of(st.none(), header_values), approval=st.one_of(st.none(), header_values))
def test_query(fuzzed: Fuzzed, auth: str | None, name: str, body: bytes, work_unit: bytes | None,
               approval: bytes | None) -> None:
    extra = {k: v for k, v in (("x-work-unit", work_unit), ("x-approval-id", approval)) if v is not None}
    send(fuzzed, "POST", f"/v1/datasets/{path_part(name)}/query", headers=headers_with(auth, extra), body=body)


@given(auth=authorizations(), name=st.one_of(st.none(), st.sampled_from(DATASET_NAMES), texts))
def test_list_and_describe(fuzzed: Fuzzed, auth: str | None, name: str | None) -> None:
    url = "/v1/datasets" if name is None else f"/v1/datasets/{path_part(name)}"
    send(fuzzed, "GET", url, headers=headers_with(auth))


@example(auth=LONG["support-bot"], body=b'{"sql": "SELECT id FROM pg_customers WHERE name = \'\\ud800\'"}',
         work_unit=None)
@example(auth=LONG["support-bot"], body=b'{"sql": "SELECT CAST(\'10000-01-01\' AS DATE) AS d FROM pg_customers"}',
         work_unit=None)
@given(auth=authorizations(), body=sql_bodies, work_unit=st.one_of(st.none(), header_values))
def test_sql(fuzzed: Fuzzed, auth: str | None, body: bytes, work_unit: bytes | None) -> None:
    extra = {"x-work-unit": work_unit} if work_unit is not None else {}
    send(fuzzed, "POST", "/v1/sql", headers=headers_with(auth, extra), body=body)


@example(auth=LONG["support-bot"], name="tickets", path=["a"], query=None, accept=b"caf\xe9")
@given(auth=authorizations(), name=st.one_of(st.just("tickets"), st.sampled_from(DATASET_NAMES), texts),
       # Bare `..` and `.` segments are left out: the test client resolves them before sending (the proxy's
       # own tests send them raw).
       path=st.lists(st.one_of(st.sampled_from(("a", "%2e%2e", ".%2e", "..;", "%EF%BC%8E", "x;y", "")), texts),
                     max_size=4),
       query=st.one_of(st.none(), texts), accept=st.one_of(st.none(), header_values))
def test_proxy(fuzzed: Fuzzed, auth: str | None, name: str, path: list[str], query: str | None,
               accept: bytes | None) -> None:
    raw = "/".join(p if p in ("%2e%2e", ".%2e", "..;", "%EF%BC%8E", "x;y") else path_part(p) for p in path)
    url = f"/v1/datasets/{path_part(name)}/proxy/{raw}" + (f"?{path_part(query)}" if query is not None else "")
    extra = {"accept": accept} if accept is not None else {}
    send(fuzzed, "GET", url, headers=headers_with(auth, extra))


@example(auth=LONG["alice"], body=b'{"agent": "\\ud800"}', rid="\u00b2")
@example(auth=LONG["alice"], body=nested(100_000), rid="9" * 25)
@given(auth=st.one_of(ADMIN, authorizations()),
       body=st.one_of(st.fixed_dictionaries({}, optional={"agent": st.one_of(texts, json_values),
                                                          "jti": st.one_of(texts, json_values),
                                                          "reason": st.one_of(texts, json_values)}).map(encoded),
                      bodies),
       rid=st.one_of(texts, st.integers().map(str)))
def test_admin_revocations(fuzzed: Fuzzed, auth: str | None, body: bytes, rid: str) -> None:
    try:
        target = json.loads(body)
    except (ValueError, RecursionError):
        target = None
    if isinstance(target, dict) and target.get("agent") in AGENTS:  # the fuzz's own agents stay usable
        body = encoded({**target, "agent": "fuzzed-" + str(target["agent"])})
    send(fuzzed, "POST", "/admin/v1/revocations", headers=headers_with(auth), body=body)
    send(fuzzed, "DELETE", f"/admin/v1/revocations/{path_part(rid)}", headers=headers_with(auth))
    send(fuzzed, "GET", "/admin/v1/revocations", headers=headers_with(auth))


@example(auth=LONG["alice"], values={"limit": "\u00b2"}, endpoint="audit")
@example(auth=LONG["alice"], values={"cursor": "9" * 25}, endpoint="audit/export")
@example(auth=LONG["alice"], values={"since": "9999-12-31T23:59:59-23:59"}, endpoint="audit/activity")
@example(auth=LONG["alice"], values={"agent": "\x00"}, endpoint="audit")
@given(auth=st.one_of(ADMIN, authorizations()), values=params,
       endpoint=st.sampled_from(("audit", "audit/verify", "audit/activity", "audit/export", "approvals")))
def test_admin_reads(fuzzed: Fuzzed, auth: str | None, values: dict[str, str], endpoint: str) -> None:
    r = send(fuzzed, "GET", f"/admin/v1/{endpoint}?{query_string(values)}", headers=headers_with(auth))
    if endpoint == "audit/export" and r.status_code == 200:
        assert r.text == "" or r.text.endswith("\n")  # streamed to its end: nothing broke after the record


@example(auth=LONG["alice"], rid="\u0661", verb="approve")
@example(auth=LONG["alice"], rid="\x00", verb="deny")
@given(auth=st.one_of(ADMIN, authorizations()),
       rid=st.one_of(texts, st.integers().map(str)), verb=st.sampled_from(("approve", "deny")))
def test_admin_ids(fuzzed: Fuzzed, auth: str | None, rid: str, verb: str) -> None:
    send(fuzzed, "GET", f"/admin/v1/audit/{path_part(rid)}", headers=headers_with(auth))
    send(fuzzed, "POST", f"/admin/v1/approvals/{path_part(rid)}/{verb}", headers=headers_with(auth))


@given(auth=authorizations(), method=st.sampled_from(("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")),
       prefix=st.sampled_from(("/v1/", "/admin/v1/", "/v1/datasets/customers/")), rest=texts,
       body=st.one_of(st.none(), bodies))
def test_unknown_routes_and_methods(fuzzed: Fuzzed, auth: str | None, method: str, prefix: str, rest: str,
                                    body: bytes | None) -> None:
    send(fuzzed, method, prefix + path_part(rest), headers=headers_with(auth), body=body)


MCP_HEADERS = [(b"accept", b"application/json, text/event-stream"), (b"content-type", b"application/json"),
               (b"mcp-protocol-version", b"2025-11-25")]
tool_arguments = st.one_of(
    st.fixed_dictionaries({"name": st.one_of(st.sampled_from(DATASET_NAMES), texts, json_values)},
                          optional={"where": st.one_of(st.lists(where_terms, max_size=3), json_values),
                                    "limit": json_values, "columns": json_values, "cursor": json_values,
                                    "work_unit": st.one_of(texts, json_values),
                                    "approval_id": st.one_of(texts, json_values), "wher": json_values}),
    st.fixed_dictionaries({"sql": st.one_of(sql_texts, json_values)},
                          optional={"work_unit": texts, "approval_id": texts}),
    json_values,
)


@example(auth=LONG["support-bot"], tool="query_dataset",
         arguments={"name": "pg_customers", "where": [["name", "=", "\ud800"]]})
@given(auth=authorizations(), tool=st.one_of(st.sampled_from(("list_datasets", "describe_dataset", "query_dataset",
                                                              "sql")), texts),
       arguments=tool_arguments)
def test_mcp_tool_calls(fuzzed: Fuzzed, auth: str | None, tool: str, arguments: Any) -> None:
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    before = fuzzed.trail.last_id()
    fuzzed.failures.seen.clear()
    r = fuzzed.client.post("/mcp", headers=[*headers_with(auth), *MCP_HEADERS], content=encoded(call))
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert not fuzzed.failures.seen, fuzzed.failures.seen
    recorded = fuzzed.trail.since(before)
    assert len(recorded) == 1 and recorded[0]["transport"] == "mcp", ([dict(x) for x in recorded], r.text[:300])
    record = recorded[0]
    answer = r.json()
    if "result" in answer:  # the tool ran through the core: a refusal is the core's error body as the text
        result = answer["result"]
        assert not result.get("isError") or is_error_shape(json.loads(result["content"][0]["text"]),
                                                            record["request_id"]), result
    else:  # refused before the tool ran (the token, the SDK's own checks): the core's error body is the data
        assert r.status_code == record["status"] or r.status_code == 200, (r.status_code, dict(record))
        assert is_error_shape(answer["error"]["data"], record["request_id"]), answer


@example(rid="\u00b2", values={"cursor": "\u0661\u0662"})
@given(rid=st.one_of(texts, st.integers().map(str)), values=params)
def test_review_page(fuzzed: Fuzzed, rid: str, values: dict[str, str]) -> None:
    fuzzed.client.cookies.set("agentgate_review", token("alice"), path="/admin")
    try:
        # (The export's button, /admin/export, is the admin API's export, fuzzed above; here it would stream the
        # whole trail on every example.)
        for url in (f"/admin/records/{path_part(rid)}", f"/admin/?{query_string(values)}"):
            fuzzed.failures.seen.clear()
            r = fuzzed.client.get(url)
            assert r.status_code < 500, (url, r.status_code, r.text[:300])
            assert not fuzzed.failures.seen, fuzzed.failures.seen
    finally:
        fuzzed.client.cookies.clear()


def test_the_chain_verifies_after_the_run(fuzzed: Fuzzed) -> None:
    """Runs last in this module: every record the fuzz left is in one intact chain."""
    report = fuzzed.trail.verify()
    assert report.ok, (report.bad_id, report.problem)
    assert report.count == fuzzed.trail.last_id()
