"""Admin operations behind /admin/v1/: revocations, approvals and reading the audit trail.

Called by the core like any read (same authentication, same audit record) and
authorised by the same policy on admin objects (`admin:revocations` write,
`admin:audit` read, `admin:approvals` read and write).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from gateway.audit import integrity
from gateway.audit import trail as audit
from gateway.auth.tokens import Agent
from gateway.common import inputs
from gateway.common.errors import BadRequest, Forbidden, NotFound, Unavailable
from gateway.policy.loader import Policy
from gateway.services import approvals

if TYPE_CHECKING:
    from gateway.core.pipeline import Gateway, ReadRequest, Trace

MAX_AUDIT_PAGE = 1000
APPROVALS_PAGE, MAX_APPROVALS_PAGE = 100, 1000  # approvals listed per page: by default, and at most


async def require(policy: Policy, agent: Agent, obj: str, act: str, trace: Trace) -> None:
    decision = await policy.decide(agent.name, obj, act)
    trace.rule = decision.rule
    if not decision.allowed:
        raise Forbidden(f"not allowed: {act} on {obj}", reason=decision.reason)


def _json_body(raw: bytes | None) -> dict[str, Any]:
    data = inputs.json_body(raw or b"{}")
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


async def revoke(gw: Gateway, req: ReadRequest, agent: Agent, policy: Policy,
                 trace: Trace) -> tuple[int, dict[str, Any] | None]:
    await require(policy, agent, "admin:revocations", "write", trace)
    body = _json_body(req.body)
    unknown = sorted(set(body) - {"agent", "jti", "reason"})
    if unknown:
        raise BadRequest(f"unknown key {unknown[0]!r} (expected agent or jti, and reason)")
    targets = [(k, body[k]) for k in ("agent", "jti") if k in body]
    if len(targets) != 1 or not isinstance(targets[0][1], str) or not targets[0][1]:
        raise BadRequest('give exactly one of {"agent": NAME} or {"jti": TOKEN_ID}')
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BadRequest("'reason' must be a string")
    key, subject = targets[0]
    if not inputs.holdable(subject) or (reason is not None and not inputs.holdable(reason)):
        # No token can carry such a name (auth refuses them), and no store can hold it.
        raise BadRequest(f"'{key}' and 'reason' may not hold NUL characters or lone surrogates")
    trace.query = json.dumps({key: subject, "reason": reason})
    if subject == (agent.name if key == "agent" else agent.jti):
        # An admin locking itself out by mistake (or a stolen admin token silencing its owner's session first)
        # is refused; another admin, or `agentgate revoke` on the command line, can still do it.
        raise Forbidden("an admin may not revoke itself nor the token it is using: ask another admin, or run "
                        "`agentgate revoke` on the command line", reason=f"self-revocation refused ({key})")
    stored, created = await gw.revocations.revoke("agent" if key == "agent" else "token", subject, reason,
                                                  agent.name)
    # Idempotent: a subject already revoked keeps its one revocation, and its id is answered (201 as for a new
    # one, as the contract says, with already_revoked true).
    trace.reason = None if created else f"already revoked (revocation {stored.id}); nothing stored"
    return 201, {"id": stored.id, "already_revoked": not created, "created_at": stored.created_at}


async def restore(gw: Gateway, req: ReadRequest, agent: Agent, policy: Policy,
                  trace: Trace) -> tuple[int, dict[str, Any] | None]:
    await require(policy, agent, "admin:revocations", "write", trace)
    raw = req.params.get("id", "")
    rid = inputs.whole(raw, inputs.MAX_INT32)
    if rid is None:
        raise NotFound(f"no active revocation {raw[:64]!r}")
    lifted = await gw.revocations.restore(rid, agent.name)
    if lifted is None:
        trace.query = json.dumps({"id": rid})
        raise NotFound(f"no active revocation {rid}")
    trace.query = json.dumps({"id": lifted.id, "agent" if lifted.kind == "agent" else "jti": lifted.subject})
    return 204, None


async def list_revocations(gw: Gateway, req: ReadRequest, agent: Agent, policy: Policy,
                           trace: Trace) -> tuple[int, dict[str, Any] | None]:
    await require(policy, agent, "admin:revocations", "write", trace)
    items = [r.to_dict() for r in gw.revocations.items]
    trace.rows = len(items)
    return 200, {"revocations": items}


def _audit_filter(params: Mapping[str, str]) -> tuple[audit.AuditFilter, int]:
    allowed = {"agent", "dataset", "decision", "since", "until", "limit", "work_unit", "on_behalf_of", "cursor"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0]!r} (expected: {', '.join(sorted(allowed))})")
    p = {k: v for k, v in params.items() if v != ""}
    try:
        since = audit.parse_time(p["since"]) if "since" in p else None
        until = audit.parse_time(p["until"]) if "until" in p else None
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
    f = audit.AuditFilter(agent=p.get("agent"), dataset=p.get("dataset"), decision=p.get("decision"), since=since,
                          until=until, work_unit=p.get("work_unit"), on_behalf_of=p.get("on_behalf_of"),
                          before_id=before_id)
    return f, limit


async def read_audit(gw: Gateway, req: ReadRequest, agent: Agent, policy: Policy,
                     trace: Trace) -> tuple[int, dict[str, Any] | None]:
    await require(policy, agent, "admin:audit", "read", trace)
    f, limit = _audit_filter(req.params)
    trace.query = json.dumps(dict(req.params))
    records = await audit.list_records(gw.store, f, limit=limit + 1)
    more = len(records) > limit
    records = records[:limit]
    trace.rows = len(records)
    return 200, {"records": [r.to_dict() for r in records],
                 "next_cursor": str(records[-1].id) if more and records else None}


async def audit_record(gw: Gateway, req: ReadRequest, agent: Agent, policy: Policy,
                       trace: Trace) -> tuple[int, dict[str, Any] | None]:
    await require(policy, agent, "admin:audit", "read", trace)
    raw = req.params.get("id", "")
    trace.query = json.dumps({"id": raw})
    rid = inputs.whole(raw)
    record = await audit.get_record(gw.store, rid) if rid is not None else None
    if record is None:
        raise NotFound(f"no audit record {raw[:64]}")
    trace.rows = 1
    return 200, {"record": record.to_dict()}


async def audit_verify(gw: Gateway, req: ReadRequest, agent: Agent, policy: Policy,
                       trace: Trace) -> tuple[int, dict[str, Any] | None]:
    await require(policy, agent, "admin:audit", "read", trace)
    flag = req.params.get("incremental", "").lower()
    if flag not in ("", "0", "1", "true", "false"):
        raise BadRequest("'incremental' takes 1/true or 0/false")
    unknown = sorted(set(req.params) - {"incremental"})
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0][:60]!r} (expected incremental)")
    trace.query = json.dumps(dict(req.params)) if req.params else None
    # Off the event loop, and joined with a check already running (gateway/audit/chainwatch.py).
    try:
        done = await gw.chain.check(incremental=flag in ("1", "true"))
    except Exception as exc:  # the store did not answer the walk (its own connection): not a 500
        raise Unavailable("the audit chain could not be checked now; try again",
                          reason=f"audit chain check failed: {type(exc).__name__}") from exc
    trace.rows = done.records
    status = gw.chain.status()
    last_full = status["last_full"]
    pruned = await integrity.last_prune(gw.store)  # where the trail starts after a prune: when, who, how many
    return 200, {"ok": done.ok, "count": done.count, "checkpoints": done.checkpoints, "bad_id": done.bad_id,
                 "problem": done.problem, "incremental": done.kind == "incremental",
                 "full_check_at": last_full["finished_at"] if last_full else None,
                 "checked": done.to_dict(), **status, "pruned": pruned.to_dict() if pruned else None}


async def audit_activity(gw: Gateway, req: ReadRequest, agent: Agent, policy: Policy,
                         trace: Trace) -> tuple[int, dict[str, Any] | None]:
    await require(policy, agent, "admin:audit", "read", trace)
    p = dict(req.params)
    try:
        until = audit.parse_time(p["until"]) if p.get("until") else audit.now()
        since = audit.parse_time(p["since"]) if p.get("since") else until - dt.timedelta(hours=24)
    except (ValueError, OverflowError):  # OverflowError: a day before `until` is before year 1
        raise BadRequest("'since' and 'until' take ISO 8601 times") from None
    if since >= until:
        raise BadRequest("'since' must be before 'until'")
    trace.query = json.dumps(p)
    return 200, await audit.activity(gw.store, since, until)


async def audit_export(gw: Gateway, req: ReadRequest, agent: Agent, policy: Policy,
                       trace: Trace) -> tuple[int, dict[str, Any] | None]:
    await require(policy, agent, "admin:audit", "read", trace)
    params = dict(req.params)
    fmt = params.pop("format", "jsonl")
    if fmt not in ("jsonl", "csv"):
        raise BadRequest("'format' is jsonl or csv")
    f, _ = _audit_filter(params)
    trace.query = json.dumps(dict(req.params))

    async def body() -> AsyncIterator[bytes]:
        async for line in audit.export_lines(gw.store, fmt, f):
            yield line.encode()

    trace.stream = body()
    trace.media_type = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    return 200, None


async def list_approvals(gw: Gateway, req: ReadRequest, agent: Agent, policy: Policy,
                         trace: Trace) -> tuple[int, dict[str, Any] | None]:
    await require(policy, agent, "admin:approvals", "read", trace)
    unknown = sorted(set(req.params) - {"status", "limit", "before"})
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0][:60]!r} (expected status, limit, before)")
    status = req.params.get("status") or "pending"
    if status not in (*approvals.STATUSES, "all"):
        raise BadRequest(f"'status' is one of: {', '.join(approvals.STATUSES)}, all")
    limit = inputs.whole(req.params.get("limit") or str(APPROVALS_PAGE), MAX_APPROVALS_PAGE)
    if limit is None or limit < 1:
        raise BadRequest(f"'limit' is a whole number from 1 to {MAX_APPROVALS_PAGE}")
    before = req.params.get("before") or None
    trace.query = json.dumps({"status": status, "limit": limit, "before": before})
    if before is not None and (len(before) > 64 or not inputs.holdable(before)
                               or await approvals.get(gw.store, before) is None):
        raise BadRequest("'before' is the `next` of a previous page (an approval's id)")
    # Newest first, one page at a time: a new request is never hidden behind old ones.
    items = await approvals.listing(gw.store, None if status == "all" else status, limit + 1, before)
    more = len(items) > limit
    items = items[:limit]
    trace.rows = len(items)
    return 200, {"approvals": [a.to_dict() for a in items], "next": items[-1].id if more else None}


async def _decide(gw: Gateway, req: ReadRequest, agent: Agent, policy: Policy, trace: Trace,
                  approve: bool) -> tuple[int, dict[str, Any] | None]:
    await require(policy, agent, "admin:approvals", "write", trace)
    aid = req.params.get("id", "")
    trace.query = json.dumps({"approval_id": aid})
    # An id no approval can have (ids are 32 hex digits) is not looked up: the store may not even take it.
    decided = (await approvals.decide(gw.store, aid, approve, agent.name, gw.approval_ttl)
               if len(aid) <= 64 and inputs.holdable(aid) else None)
    if decided is None:
        raise NotFound(f"no pending approval {aid[:64]!r}")
    trace.query = json.dumps({"approval_id": aid, "agent": decided.agent, "dataset": decided.dataset,
                              "by": agent.name})
    if approve:
        trace.approved_by = agent.name
    return 200, {"approval": decided.to_dict()}


async def approve(gw: Gateway, req: ReadRequest, agent: Agent, policy: Policy,
                  trace: Trace) -> tuple[int, dict[str, Any] | None]:
    return await _decide(gw, req, agent, policy, trace, True)


async def deny_approval(gw: Gateway, req: ReadRequest, agent: Agent, policy: Policy,
                        trace: Trace) -> tuple[int, dict[str, Any] | None]:
    return await _decide(gw, req, agent, policy, trace, False)


OPERATIONS = {
    "list_approvals": list_approvals,
    "approve": approve,
    "deny_approval": deny_approval,
    "audit_record": audit_record,
    "audit_verify": audit_verify,
    "audit_activity": audit_activity,
    "audit_export": audit_export,
    "revoke": revoke,
    "restore": restore,
    "list_revocations": list_revocations,
    "read_audit": read_audit,
}
