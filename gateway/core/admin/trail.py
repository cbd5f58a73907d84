"""Reading the audit trail (`admin:audit` read): pages of records, one record, the chain's check, activity over
a window, and the export stream."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Mapping

from gateway import audit
from gateway.audit import integrity
from gateway.auth import Agent
from gateway.common import inputs, tracing
from gateway.common.clock import now, parse_time
from gateway.common.errors import BadRequest, NotFound, Unavailable
from gateway.core.schemas import TEXT, TIME, Param, Schema, whole
from gateway.core.services import Services
from gateway.core.types import ReadRequest, Result, Trace
from gateway.policy import Policy

MAX_AUDIT_PAGE = 1000
TRACE_ID: Schema = {"type": "string", "pattern": f"^{tracing.TRACE_ID.pattern}$",
                    "description": "32 lowercase hex digits (traceparent: 00-<trace id>-<span id>-<flags>)"}
# What the trail's readers take from the query string (any other parameter is a 400), and the id in a path.
FILTER_PARAMS = (
    Param("agent", TEXT, "an agent's records (the token's subject)"),
    Param("dataset", TEXT, "a dataset's records"),
    Param("decision", {"type": "string", "enum": list(audit.DECISIONS)}, "records of this decision"),
    Param("since", TIME, "records at or after this time (ISO 8601)"),
    Param("until", TIME, "records before this time (ISO 8601)"),
    Param("limit", {**whole(1, MAX_AUDIT_PAGE), "default": 100}, "records per page, newest first"),
    Param("work_unit", TEXT, "a work unit's records (X-Work-Unit)"),
    Param("on_behalf_of", TEXT, "records of reads for this person (the token's on_behalf_of)"),
    Param("trace_id", TRACE_ID, "a trace's records: its W3C trace id, as the answer's traceparent header names it"),
    Param("cursor", whole(0, inputs.MAX_WHOLE), "the next_cursor of the previous page"),
)
_FILTERS = frozenset(p.name for p in FILTER_PARAMS)
EXPORT_PARAMS = (Param("format", {"type": "string", "enum": ["jsonl", "csv"], "default": "jsonl"},
                       "JSON lines or CSV"), *FILTER_PARAMS)
VERIFY_PARAMS = (Param("incremental", {"type": "boolean", "default": False},
                       "check only the records added since the last check (1/true, 0/false)"),)
ACTIVITY_PARAMS = (Param("since", TIME, "from (default: a day before `until`)"),
                   Param("until", TIME, "to (default: now)"))
PATH_ID = Param("id", whole(0, inputs.MAX_WHOLE), "the record's id", at="path")


def _audit_filter(params: Mapping[str, str]) -> tuple[audit.AuditFilter, int]:
    unknown = sorted(set(params) - _FILTERS)
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r} (expected: {', '.join(sorted(_FILTERS))})")
    p = {k: v for k, v in params.items() if v != ""}
    try:
        since = parse_time(p["since"]) if "since" in p else None
        until = parse_time(p["until"]) if "until" in p else None
    except ValueError:
        raise BadRequest("'since' and 'until' take ISO 8601 times such as 2026-01-31T12:00:00Z") from None
    if "decision" in p and p["decision"] not in audit.DECISIONS:
        raise BadRequest(f"'decision' is one of: {', '.join(audit.DECISIONS)}")
    limit = inputs.whole(p.get("limit", "100"), MAX_AUDIT_PAGE)
    if limit is None or limit < 1:
        raise BadRequest(f"'limit' is a whole number from 1 to {MAX_AUDIT_PAGE}")
    before_id = inputs.whole(p["cursor"]) if "cursor" in p else None
    if "cursor" in p and before_id is None:
        raise BadRequest("'cursor' is the next_cursor of a previous page")
    texts = [k for k in ("agent", "dataset", "work_unit", "on_behalf_of") if k in p and not inputs.holdable(p[k])]
    if texts:  # no record holds such a text (the trail stores U+FFFD for them): nothing to search for
        raise BadRequest(f"{texts[0]!r} may not hold NUL characters or lone surrogates")
    if "trace_id" in p and not tracing.is_trace_id(p["trace_id"]):
        raise BadRequest("'trace_id' is a W3C trace id: 32 lowercase hex digits, the second part of a traceparent "
                         "header (00-<trace id>-<span id>-<flags>)")
    f = audit.AuditFilter(agent=p.get("agent"), dataset=p.get("dataset"), decision=p.get("decision"), since=since,
                          until=until, work_unit=p.get("work_unit"), on_behalf_of=p.get("on_behalf_of"),
                          trace_id=p.get("trace_id"), before_id=before_id)
    return f, limit


async def read_audit(services: Services, req: ReadRequest, agent: Agent, policy: Policy, trace: Trace) -> Result:
    f, limit = _audit_filter(req.params)
    trace.query = json.dumps(dict(req.params))
    records = await audit.list_records(services.store, f, limit=limit + 1)
    more = len(records) > limit
    records = records[:limit]
    trace.rows = len(records)
    return 200, {"records": [r.to_dict() for r in records],
                 "next_cursor": str(records[-1].id) if more and records else None}


async def audit_record(services: Services, req: ReadRequest, agent: Agent, policy: Policy, trace: Trace) -> Result:
    raw = req.params.get("id", "")
    trace.query = json.dumps({"id": raw})
    rid = inputs.whole(raw)
    record = await audit.get_record(services.store, rid) if rid is not None else None
    if record is None:
        raise NotFound(f"no audit record {raw[:64]}")
    trace.rows = 1
    return 200, {"record": record.to_dict()}


async def audit_verify(services: Services, req: ReadRequest, agent: Agent, policy: Policy, trace: Trace) -> Result:
    flag = req.params.get("incremental", "").lower()
    if flag not in ("", "0", "1", "true", "false"):
        raise BadRequest("'incremental' takes 1/true or 0/false")
    unknown = sorted(set(req.params) - {"incremental"})
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0][:60]!r} (expected incremental)")
    trace.query = json.dumps(dict(req.params)) if req.params else None
    # Off the event loop, and joined with a check already running (gateway/audit/chainwatch.py).
    try:
        done = await services.chain.check(incremental=flag in ("1", "true"))
    except Exception as exc:  # the store did not answer the walk (its own connection): not a 500
        raise Unavailable("the audit chain could not be checked now; try again",
                          reason=f"audit chain check failed: {type(exc).__name__}") from exc
    trace.rows = done.records
    status = services.chain.status()
    last_full = status["last_full"]
    pruned = await integrity.last_prune(services.store)  # where the trail starts after a prune: when, who, how many
    return 200, {"ok": done.ok, "count": done.count, "checkpoints": done.checkpoints, "bad_id": done.bad_id,
                 "problem": done.problem, "incremental": done.kind == "incremental",
                 "full_check_at": last_full["finished_at"] if last_full else None,
                 "checked": done.to_dict(), **status, "pruned": pruned.to_dict() if pruned else None}


async def audit_activity(services: Services, req: ReadRequest, agent: Agent, policy: Policy,
                         trace: Trace) -> Result:
    p = dict(req.params)
    try:
        until = parse_time(p["until"]) if p.get("until") else now()
        since = parse_time(p["since"]) if p.get("since") else until - dt.timedelta(hours=24)
    except (ValueError, OverflowError):  # OverflowError: a day before `until` is before year 1
        raise BadRequest("'since' and 'until' take ISO 8601 times") from None
    if since >= until:
        raise BadRequest("'since' must be before 'until'")
    trace.query = json.dumps(p)
    return 200, await audit.activity(services.store, since, until)


async def audit_export(services: Services, req: ReadRequest, agent: Agent, policy: Policy, trace: Trace) -> Result:
    params = dict(req.params)
    fmt = params.pop("format", "jsonl")
    if fmt not in ("jsonl", "csv"):
        raise BadRequest("'format' is jsonl or csv")
    f, _ = _audit_filter(params)
    trace.query = json.dumps(dict(req.params))
    store = services.store

    async def body() -> AsyncIterator[bytes]:
        async for line in audit.export_lines(store, fmt, f):
            yield line.encode()

    trace.stream = body()
    trace.media_type = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    return 200, None
