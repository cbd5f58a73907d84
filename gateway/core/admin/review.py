"""One view of the reviewers' page (`admin:audit` read): a page of the filtered trail, the counts of the same
filter's reads in its time window, and the chain's check, in one operation, so that a view leaves one audit
record naming what was viewed (its filters and page). The page (gateway/transports/review/) lays it out.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace

from sqlalchemy.exc import SQLAlchemyError

from gateway import audit
from gateway.audit import summary
from gateway.auth import Agent
from gateway.common import inputs
from gateway.common.clock import now
from gateway.common.errors import BadRequest, Unavailable
from gateway.core.admin import trail
from gateway.core.services import Services
from gateway.core.types import ReadRequest, Result, Trace
from gateway.policy import Policy

PAGE_SIZE = 50
DEFAULT_WINDOW = dt.timedelta(hours=24)
FILTERS = ("agent", "dataset", "decision", "since", "until", "work_unit", "on_behalf_of", "trace_id")
# The page's own: keyset paging by record id (older: ids below `before`; newer: ids above `after`; `cursor`, the
# older links' name before paging went both ways, is `before`), and a full check of the chain asked for.
PAGING = ("before", "after", "cursor", "full_check")
PARAMS = (*FILTERS, *PAGING)
# A filter's value longer than this is refused: no record field holds more (gateway/audit/bounds.py).
MAX_VALUE = max(audit.FIELD_MAX.values())


def _paging(params: dict[str, str]) -> tuple[int | None, int | None, bool]:
    ids: dict[str, int | None] = {}
    for name in ("before", "after", "cursor"):
        raw = params.get(name)
        ids[name] = inputs.whole(raw) if raw is not None else None
        if raw is not None and ids[name] is None:
            raise BadRequest(f"{name!r} is a record id (a whole number) from the page's links"
                             + (" (the next_cursor of a previous page)" if name == "cursor" else ""))
    if sum(ids[name] is not None for name in ids) > 1:
        raise BadRequest("'before' and 'after' page one way each: give one of them")
    if ids["cursor"] is not None:
        ids["before"] = ids["cursor"]
    full = params.get("full_check")
    if full not in (None, "0", "1"):
        raise BadRequest("'full_check' takes 1 (or 0)")
    return ids["before"], ids["after"], full == "1"


def _window(f: audit.AuditFilter) -> tuple[dt.datetime, dt.datetime, bool]:
    """The counts' window: the filter's since and until; unset, the day before `until` (default now)."""
    until = f.until or now()
    try:
        since = f.since or until - DEFAULT_WINDOW
    except OverflowError:  # a day before `until` is before year 1
        raise BadRequest("'until' is too early for a day's window; give 'since' too") from None
    if since >= until:
        raise BadRequest("'since' must be before 'until' (which is now when not given)")
    return since, until, f.since is None and f.until is None


async def audit_review(services: Services, req: ReadRequest, agent: Agent, policy: Policy, trace: Trace) -> Result:
    params = {k: v for k, v in req.params.items() if v != ""}
    trace.query = json.dumps(params)  # what was viewed: the filters and the page (a refused view's too; capped)
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0][:60]!r} (expected: {', '.join(PARAMS)})")
    before, after, full = _paging(params)
    long = [k for k in FILTERS if len(params.get(k, "")) > MAX_VALUE]
    if long:
        raise BadRequest(f"{long[0]!r} is longer than any record's field ({MAX_VALUE:,} characters)")
    f, _ = trail._audit_filter({k: v for k, v in params.items() if k in FILTERS})
    since, until, default = _window(f)
    try:
        page = await audit.record_page(services.store, replace(f, before_id=before, after_id=after), PAGE_SIZE)
        counts = await summary.summarize(services.store, f, since, until)
    except (SQLAlchemyError, TimeoutError) as exc:  # the store did not answer (in time): the page says so
        raise Unavailable("the audit trail could not be read now; try again",
                          reason=f"audit trail read failed: {type(exc).__name__}") from exc
    # The chain's check, as GET /admin/v1/audit/verify gives it (incremental unless a full check was asked for).
    _, chain = await trail.audit_verify(services, replace(req, params={} if full else {"incremental": "1"}),
                                        agent, policy, trace)
    trace.query = json.dumps(params)  # audit_verify set its own
    trace.rows = len(page.records)
    return 200, {"records": [r.to_dict() for r in page.records], "newer": page.newer, "older": page.older,
                 "page_size": PAGE_SIZE, "summary": {**counts, "default_window": default}, "chain": chain}
