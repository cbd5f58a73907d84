"""core.record.build_record: the audit record of one request, from what the pipeline gathered, with no store.

Each case states every field that matters for it; the last test holds build_record to the expression the
pipeline used before the record was built by a function of its own (issue 14), canonical bytes and all, so a
trail written before the change and one written after it are the same bytes for the same requests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from connectors.base import HttpAnswer
from gateway.audit import QUERY_MAX_BYTES, AuditRecord, bounded_query, canonical
from gateway.auth import Agent
from gateway.common.errors import BadRequest
from gateway.common.textsafe import cap
from gateway.core.record import TOKEN_ID_MAX, build_record, query_text, refusal_sample
from gateway.core.types import Outcome, ReadRequest, Trace

pytestmark = pytest.mark.unit

AT = dt.datetime(2026, 1, 31, 12, 0, 0, 123456, tzinfo=dt.UTC)
ALICE = Agent(name="alice", on_behalf_of="bob@example.com", jti="tok-1", claims={}, expires_at=0.0)
BODY = b'{"columns":["id"],"limit":5}'


def _request(**fields: Any) -> ReadRequest:
    base: dict[str, Any] = {"request_id": "r1", "operation": "query", "authorization": "Bearer x",
                            "dataset": "orders", "body": BODY, "client": "10.0.0.7", "user_agent": "curl/8",
                            "trace_id": "0af7651916cd43dd8448eb211c80319c"}
    return ReadRequest(**{**base, **fields})


def _outcome(status: int = 200, decision: str = "allow", work_unit: str | None = None) -> Outcome:
    return Outcome(status, decision, {}, {}, work_unit)


def test_an_allowed_read_records_who_what_and_how_much() -> None:
    trace = Trace(agent=ALICE, dataset="orders", rule="p, analyst, orders, read", rows=5, source_ms=1.23456,
                  columns=["id", "total"], masked=["email"], row_filter="region = 'eu'", approved_by="carol")
    body = b'{"rows":[]}'
    digest = hashlib.sha256(body).hexdigest()
    record = build_record(_request(), trace, _outcome(work_unit="wu-9"), body, digest, action="read", at=AT,
                          elapsed=0.0123456)
    assert record == AuditRecord(
        time=AT, request_id="r1", action="read", decision="allow", status=200, agent="alice",
        on_behalf_of="bob@example.com", work_unit="wu-9", dataset="orders", query=BODY.decode(), reason=None,
        rows=5, bytes=len(body), duration_ms=12.346, source_ms=1.235, response_sha256=digest,
        approved_by="carol", rule="p, analyst, orders, read", columns='["id","total"]', masked='["email"]',
        transport="http", row_filter="region = 'eu'", token_id="tok-1", client="10.0.0.7", user_agent="curl/8",
        trace_id="0af7651916cd43dd8448eb211c80319c", query_bytes=None, query_sha256=None)


def test_a_refusal_before_any_token_verified_names_no_agent() -> None:
    trace = Trace(dataset="orders", reason="no bearer token")
    body = b'{"error":{}}'
    record = build_record(_request(authorization=None), trace, _outcome(401, "deny"), body,
                          hashlib.sha256(body).hexdigest(), action="read", at=AT, elapsed=0.001)
    assert (record.agent, record.on_behalf_of, record.token_id) == (None, None, None)
    assert (record.status, record.decision, record.reason) == (401, "deny", "no bearer token")
    assert record.query == BODY.decode()  # what was asked, even of a caller never identified
    assert (record.rule, record.rows, record.columns, record.masked) == (None, None, None, None)


def test_an_error_is_recorded_with_its_reason_and_the_bytes_answered() -> None:
    trace = Trace(agent=ALICE, dataset="orders", reason="internal error")
    body = b'{"error":{"code":"internal"}}'
    record = build_record(_request(), trace, _outcome(500, "error"), body, "d" * 64, action="read", at=AT,
                          elapsed=0.5)
    assert (record.status, record.decision, record.reason) == (500, "error", "internal error")
    assert (record.bytes, record.response_sha256, record.duration_ms) == (len(body), "d" * 64, 500.0)


async def _lines() -> AsyncIterator[bytes]:
    yield b"{}\n"


def test_a_streamed_answer_counts_no_bytes_and_no_digest() -> None:
    stream = _lines()
    trace = Trace(agent=ALICE, query='{"format":"csv"}', stream=stream, media_type="text/csv; charset=utf-8")
    record = build_record(_request(operation="audit_export", dataset=None, body=None), trace, _outcome(), b"",
                          None, action="export_audit", at=AT, elapsed=0.002)
    assert (record.bytes, record.response_sha256) == (None, None)
    assert (record.action, record.query) == ("export_audit", '{"format":"csv"}')
    # A stream that did not start (the export refused): its error's bytes are counted as any answer's.
    refused = build_record(_request(operation="audit_export", dataset=None, body=None), trace,
                           _outcome(503, "error"), b"{}", "e" * 64, action="export_audit", at=AT, elapsed=0.002)
    assert (refused.bytes, refused.response_sha256) == (2, "e" * 64)


def test_a_raw_http_pass_through_records_the_path_and_query_string() -> None:
    answer = HttpAnswer(status=200, content_type="text/plain", body=b"hello", headers={}, source_ms=2.0)
    req = _request(operation="proxy", dataset="weather", body=None,
                   params={"path": "v1/today", "query": "city=Oslo", "accept": "text/plain"})
    trace = Trace(agent=ALICE, dataset="weather", source_ms=2.0, raw=answer)
    record = build_record(req, trace, _outcome(), answer.body, hashlib.sha256(b"hello").hexdigest(),
                          action="read", at=AT, elapsed=0.003)
    assert record.query == "/v1/today?city=Oslo"
    assert (record.query_bytes, record.query_sha256) == (None, None)
    assert (record.bytes, record.source_ms) == (5, 2.0)
    assert query_text(_request(operation="proxy", body=None, params={"path": "a"})) == "/a"


def test_a_long_token_id_is_recorded_capped() -> None:
    long = Agent(name="alice", on_behalf_of=None, jti="j" * 5000, claims={}, expires_at=0.0)
    record = build_record(_request(), Trace(agent=long), _outcome(), b"{}", "f" * 64, action="read", at=AT,
                          elapsed=0.0)
    assert record.token_id == cap("j" * 5000, TOKEN_ID_MAX)
    assert record.token_id is not None and len(record.token_id) <= TOKEN_ID_MAX


def test_a_body_over_the_query_bound_is_kept_capped_with_its_length_and_digest() -> None:
    body = json.dumps({"where": [["note", "=", "x" * (2 * QUERY_MAX_BYTES)]]}).encode()
    record = build_record(_request(body=body), Trace(agent=ALICE), _outcome(), b"{}", "0" * 64, action="read",
                          at=AT, elapsed=0.0)
    assert record.query is not None and len(record.query.encode()) == QUERY_MAX_BYTES
    assert (record.query_bytes, record.query_sha256) == (len(body), hashlib.sha256(body).hexdigest())


def test_what_the_operation_named_replaces_the_body() -> None:
    record = build_record(_request(operation="sql", body=b'{"sql":"SELECT 1"}'), Trace(query="SELECT 1"),
                          _outcome(400, "deny"), b"{}", "0" * 64, action="read", at=AT, elapsed=0.0)
    assert record.query == "SELECT 1"
    over = _request(body=None, body_too_large=True)
    assert build_record(over, Trace(), _outcome(413, "deny"), b"{}", "0" * 64, action="read", at=AT,
                        elapsed=0.0).query is None


def test_a_refusal_sample_shows_the_request_as_a_summary_does() -> None:
    trace = Trace(reason="no bearer token")
    assert refusal_sample(_request(transport="mcp"), trace, "read") == {
        "client": "10.0.0.7", "action": "read", "dataset": "orders", "query": BODY.decode(),
        "reason": "no bearer token", "user_agent": "curl/8", "transport": "mcp"}


def _as_before(req: ReadRequest, trace: Trace, status: int, decision: str, work_unit: str | None, body: bytes,
               digest: str | None, action: str, elapsed: float) -> AuditRecord:
    """The record exactly as Gateway.handle built it inline before issue 14 (its expression, copied)."""
    streamed = trace.stream is not None and status == 200
    who = trace.agent
    if trace.query:
        query, query_bytes, query_sha256 = bounded_query(trace.query)
    else:
        text = query_text(req)
        query, query_bytes, query_sha256 = bounded_query(
            text, req.body if text is not None and req.operation != "proxy" else None)
    return AuditRecord(
        time=AT, request_id=req.request_id, action=action,
        decision=decision, status=status, agent=who.name if who else None,
        on_behalf_of=who.on_behalf_of if who else None, work_unit=work_unit,
        dataset=trace.dataset, query=query, reason=trace.reason, rows=trace.rows,
        bytes=None if streamed else len(body), duration_ms=round(elapsed * 1000, 3),
        source_ms=round(trace.source_ms, 3) if trace.source_ms is not None else None,
        response_sha256=digest, rule=trace.rule,
        approved_by=trace.approved_by,
        columns=orjson.dumps(trace.columns).decode() if trace.columns is not None else None,
        masked=orjson.dumps(trace.masked).decode() if trace.masked is not None else None, transport=req.transport,
        row_filter=trace.row_filter, token_id=cap(who.jti, TOKEN_ID_MAX) if who else None, client=req.client,
        user_agent=req.user_agent, trace_id=req.trace_id, query_bytes=query_bytes, query_sha256=query_sha256)


@pytest.mark.parametrize("case", range(6))
def test_records_are_the_bytes_they_were(case: int) -> None:
    reqs = [_request(), _request(authorization=None, client=None, user_agent=None, trace_id=None),
            _request(operation="proxy", body=None, params={"path": "p", "query": ""}),
            _request(operation="revoke", dataset=None, body=b'{"agent":"eve"}', transport="web"),
            _request(body="é\ud800".encode("utf-8", "surrogatepass")),
            _request(operation="unknown", dataset=None, body=None, route_error=BadRequest("no such endpoint"))]
    traces = [Trace(agent=ALICE, dataset="orders", rows=3, source_ms=0.0004, columns=[], masked=["a\u2028"]),
              Trace(reason="x" * 3000), Trace(agent=ALICE, dataset="weather", source_ms=12.0),
              Trace(agent=ALICE, query='{"agent": "eve", "reason": null}', reason="already revoked"),
              Trace(agent=Agent("a", None, None, {}, 0.0), rule="r"), Trace()]
    req, trace = reqs[case], traces[case]
    status, decision = [(200, "allow"), (401, "deny"), (200, "allow"), (201, "allow"), (400, "deny"),
                        (404, "deny")][case]
    outcome = Outcome(status, decision, None, {}, "wu" if case % 2 else None)
    body, digest, elapsed = b'{"k":1}', hashlib.sha256(b'{"k":1}').hexdigest(), 0.000123456 * case
    built = build_record(req, trace, outcome, body, digest, action=f"act{case}", at=AT, elapsed=elapsed)
    before = _as_before(req, trace, status, decision, outcome.work_unit, body, digest, f"act{case}", elapsed)
    assert built == before
    assert canonical(built) == canonical(before)
