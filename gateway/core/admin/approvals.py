"""People's approvals of reads (`admin:approvals`): listing them a page at a time, approving and denying."""

from __future__ import annotations

import json

from gateway.auth import Agent
from gateway.common import inputs
from gateway.common.errors import BadRequest, NotFound
from gateway.core.schemas import Param, whole
from gateway.core.services import Services
from gateway.core.types import ReadRequest, Result, Trace
from gateway.policy import Policy
from gateway.services import approvals

APPROVALS_PAGE, MAX_APPROVALS_PAGE = 100, 1000  # approvals listed per page: by default, and at most
# What list_approvals reads from the query string (any other parameter is a 400), and the id in a decision's path.
LIST_PARAMS = (
    Param("status", {"type": "string", "enum": [*approvals.STATUSES, "all"], "default": "pending"},
          "the approvals in this state"),
    Param("limit", {**whole(1, MAX_APPROVALS_PAGE), "default": APPROVALS_PAGE}, "approvals per page"),
    Param("before", {"type": "string", "maxLength": 64}, "the `next` of the previous page"),
)
PATH_ID = Param("id", {"type": "string", "maxLength": 64}, "the approval's id (approval_id of the 202)", at="path")


async def list_approvals(services: Services, req: ReadRequest, agent: Agent, policy: Policy,
                         trace: Trace) -> Result:
    unknown = sorted(set(req.params) - {p.name for p in LIST_PARAMS})
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
                               or await approvals.get(services.store, before) is None):
        raise BadRequest("'before' is the `next` of a previous page (an approval's id)")
    # Newest first, one page at a time: a new request is never hidden behind old ones.
    items = await approvals.listing(services.store, None if status == "all" else status, limit + 1, before)
    more = len(items) > limit
    items = items[:limit]
    trace.rows = len(items)
    return 200, {"approvals": [a.to_dict() for a in items], "next": items[-1].id if more else None}


async def approve(services: Services, req: ReadRequest, agent: Agent, policy: Policy, trace: Trace) -> Result:
    return await _decide(services, req, agent, trace, True)


async def deny_approval(services: Services, req: ReadRequest, agent: Agent, policy: Policy,
                        trace: Trace) -> Result:
    return await _decide(services, req, agent, trace, False)


async def _decide(services: Services, req: ReadRequest, agent: Agent, trace: Trace, approve: bool) -> Result:
    aid = req.params.get("id", "")
    trace.query = json.dumps({"approval_id": aid})
    # An id no approval can have (ids are 32 hex digits) is not looked up: the store may not even take it.
    decided = (await approvals.decide(services.store, aid, approve, agent.name, services.approval_ttl)
               if len(aid) <= 64 and inputs.holdable(aid) else None)
    if decided is None:
        raise NotFound(f"no pending approval {aid[:64]!r}")
    trace.query = json.dumps({"approval_id": aid, "agent": decided.agent, "dataset": decided.dataset,
                              "by": agent.name})
    if approve:
        trace.approved_by = agent.name
    return 200, {"approval": decided.to_dict()}
