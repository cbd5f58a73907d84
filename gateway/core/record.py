"""The audit record of one request, built by a pure function from what the pipeline gathered.

Everything the record says is decided before `build_record` is called (the outcome, the trace, the answer's
bytes and digest, the time): the function only lays it out, so its fields can be tested without a store.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from gateway.audit import AuditRecord, bounded_query
from gateway.common.textsafe import cap
from gateway.core.types import Outcome, ReadRequest, Trace

# A token id (jti) longer than this is recorded capped (real ones are UUIDs or shorter): no record grows with a
# token's size.
TOKEN_ID_MAX = 256


def build_record(req: ReadRequest, trace: Trace, outcome: Outcome, body: bytes, digest: str | None, *,
                 action: str, at: dt.datetime, elapsed: float) -> AuditRecord:
    """The record of `req`: `action` its operation's (core.operations), `body` the answer's bytes and `digest`
    their SHA-256, None for a streamed answer (its bytes leave after the record: neither is counted), `at` when
    it is written and `elapsed` the seconds since the request began."""
    who = trace.agent
    query, query_bytes, query_sha256 = recorded_query(req, trace)
    return AuditRecord(
        time=at, request_id=req.request_id, action=action,
        decision=outcome.decision, status=outcome.status, agent=who.name if who else None,
        on_behalf_of=who.on_behalf_of if who else None, work_unit=outcome.work_unit,
        dataset=trace.dataset, query=query, reason=trace.reason, rows=trace.rows,
        bytes=None if digest is None else len(body), duration_ms=round(elapsed * 1000, 3),
        source_ms=round(trace.source_ms, 3) if trace.source_ms is not None else None,
        response_sha256=digest, rule=trace.rule,
        approved_by=trace.approved_by,
        columns=orjson.dumps(trace.columns).decode() if trace.columns is not None else None,
        masked=orjson.dumps(trace.masked).decode() if trace.masked is not None else None, transport=req.transport,
        row_filter=trace.row_filter, token_id=cap(who.jti, TOKEN_ID_MAX) if who else None, client=req.client,
        user_agent=req.user_agent, trace_id=trace.span.trace_id if trace.span is not None else req.trace_id,
        query_bytes=query_bytes, query_sha256=query_sha256)


def query_text(req: ReadRequest) -> str | None:
    """What was asked, as text: an HTTP dataset's path and query string, else the body as sent."""
    if req.operation == "proxy":  # what was asked of an HTTP dataset: its path and query string
        path, query = req.params.get("path", ""), req.params.get("query", "")
        return "/" + path + (f"?{query}" if query else "")
    if req.body is None or req.body_too_large:
        return None
    return req.body.decode("utf-8", errors="replace")


def recorded_query(req: ReadRequest, trace: Trace) -> tuple[str | None, int | None, str | None]:
    """The record's query, query_bytes and query_sha256 (audit.bounded_query): what was acted on when the
    operation named it, else the request's body (measured as it came) or proxied path."""
    if trace.query:
        return bounded_query(trace.query)
    text = query_text(req)
    return bounded_query(text, req.body if text is not None and req.operation != "proxy" else None)


def refusal_sample(req: ReadRequest, trace: Trace, action: str) -> dict[str, Any]:
    """What a summary of refusals shows of the first request it counts (ratelimit.py caps each text)."""
    return {"client": req.client, "action": action, "dataset": req.dataset, "query": query_text(req),
            "reason": trace.reason, "user_agent": req.user_agent, "transport": req.transport}
