"""The review page's counts: the reads a filter selects in a time window, allowed and refused apart, over time,
by agent and by dataset. Counted by the store (GROUP BY), never by loading records, and bounded twice: at most
reading.MAX_COUNTED records are read (the newest; the answer names the time it counts from when the window reaches past
them), and at most `top` + `most_refused` groups come back per dimension, the rest summed as "others".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.audit import reading as reading_module
from gateway.audit.reading import AuditFilter, Counted, _where, counted, time_bucket
from gateway.audit.record import DECISIONS
from gateway.common.clock import format_time
from gateway.store import audit as audit_table
from gateway.store import reading

BUCKETS = 48
TOP = 8  # agents (datasets) with the most allowed reads, each drawn on its own
MOST_REFUSED = 3  # and those with the most refused reads, when they are not among them


def _zero() -> dict[str, int]:
    return dict.fromkeys(DECISIONS, 0)


async def summarize(engine: AsyncEngine, f: AuditFilter, since: dt.datetime, until: dt.datetime, *,
                    buckets: int = BUCKETS, top: int = TOP, most_refused: int = MOST_REFUSED,
                    cap: int | None = None) -> dict[str, Any]:
    """The reads (action `read`) `f` selects from `since` to `until` (f's own times and paging ignored), in one
    read-only transaction, as of the trail's newest record when it began: `{"since", "until", "bucket_seconds",
    "newest_id", "counted_from" (null, or the time counting starts at when capped), "totals" {decision: n},
    "over_time" [{decision: n}] * buckets, "agents" and "datasets" {"top": [{"name", decision: n}], "others":
    {"groups", decision: n}}}`."""
    cap = reading_module.MAX_COUNTED if cap is None else cap  # read when called: tests lower it to reach it
    window = replace(f, since=since, until=until, before_id=None, after_id=None)
    width, bucket = time_bucket(since, until, buckets)
    async with reading(engine).connect() as conn:
        scope = await counted(conn, since, cap)
        over_time = await _over_time(conn, window, scope, bucket, buckets)
        totals = _zero()
        for slot in over_time:
            for decision, n in slot.items():
                totals[decision] = totals.get(decision, 0) + n
        agents = await _ranked(conn, window, scope, audit_table.c.agent, top, most_refused, totals)
        datasets = await _ranked(conn, window, scope, audit_table.c.dataset, top, most_refused, totals)
    return {"since": format_time(since), "until": format_time(until), "bucket_seconds": width,
            "newest_id": scope.newest, "counted_from": format_time(scope.floor_time) if scope.floor_time else None,
            "cap": cap, "totals": totals, "over_time": over_time, "agents": agents, "datasets": datasets}


def _reads(stmt: Any, f: AuditFilter, scope: Counted) -> Any:
    return scope.bound(_where(stmt, f).where(audit_table.c.action == "read"))


async def _over_time(conn: AsyncConnection, f: AuditFilter, scope: Counted, bucket: Any,
                     buckets: int) -> list[dict[str, int]]:
    rows = _reads(select(bucket.label("slot"), audit_table.c.decision), f, scope).subquery()
    stmt = select(rows.c.slot, rows.c.decision, func.count()).group_by(rows.c.slot, rows.c.decision)
    slots = [_zero() for _ in range(buckets)]
    for slot, decision, n in (await conn.execute(stmt)).fetchall():
        slots[slot][decision] = slots[slot].get(decision, 0) + n
    return slots


async def _ranked(conn: AsyncConnection, f: AuditFilter, scope: Counted, key: Any, top: int, most_refused: int,
                  totals: dict[str, int]) -> dict[str, Any]:
    """The `top` groups by allowed reads, and the `most_refused` by refused ones not among them; the rest as
    others. Ranked by the store (window functions), so no more groups than that ever come back."""
    d = audit_table.c.decision
    counts = [func.sum(case((d == name, 1), else_=0)).label(f"n_{name}") for name in DECISIONS]
    groups = _reads(select(key.label("name"), func.count().label("n_total"), *counts), f, scope).group_by(key)
    g = groups.subquery()
    refused = g.c.n_total - g.c.n_allow
    name = func.coalesce(g.c.name, "")  # one order on every store (NULLs sort first on one, last on another)
    ranked = select(g, func.row_number().over(order_by=(g.c.n_allow.desc(), g.c.n_total.desc(), name))
                    .label("by_allowed"),
                    func.row_number().over(order_by=(refused.desc(), name)).label("by_refused"),
                    func.count().over().label("n_groups")).subquery()
    stmt = (select(ranked).where(or_(ranked.c.by_allowed <= top,
                                     and_(ranked.c.by_refused <= most_refused, ranked.c.n_total > ranked.c.n_allow)))
            .order_by(ranked.c.by_allowed))
    shown: list[dict[str, Any]] = []
    others: dict[str, Any] = {**totals, "groups": 0}
    for row in (await conn.execute(stmt)).fetchall():
        values = row._mapping
        entry = {"name": values["name"], **{n: int(values[f"n_{n}"] or 0) for n in DECISIONS}}
        shown.append(entry)
        others["groups"] = int(values["n_groups"]) - len(shown)
        for n in DECISIONS:
            others[n] -= entry[n]
    return {"top": shown, "others": others}
