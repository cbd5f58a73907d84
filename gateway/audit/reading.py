"""Reading the trail: one record, a filtered page (newest first), every record in chunks (oldest first), and
the review page's activity chart. Reads only, each in a read-only store transaction (store.reading)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.record import AuditRecord, from_row
from gateway.common.clock import format_time, parse_time
from gateway.store import audit as audit_table
from gateway.store import reading


@dataclass(frozen=True)
class AuditFilter:
    agent: str | None = None
    dataset: str | None = None
    decision: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    work_unit: str | None = None
    on_behalf_of: str | None = None
    trace_id: str | None = None  # the W3C trace id a request joined (its answer's traceparent names it)
    before_id: int | None = None  # paging, newest first


def _where(stmt: Any, f: AuditFilter) -> Any:
    c = audit_table.c
    if f.agent is not None:
        stmt = stmt.where(c.agent == f.agent)
    if f.dataset is not None:
        # SQL mode records list several datasets, comma-separated.
        stmt = stmt.where((c.dataset == f.dataset) | c.dataset.like(f"{f.dataset},%")
                          | c.dataset.like(f"%,{f.dataset}") | c.dataset.like(f"%,{f.dataset},%"))
    if f.decision is not None:
        stmt = stmt.where(c.decision == f.decision)
    if f.since is not None:
        stmt = stmt.where(c.time >= f.since)
    if f.until is not None:
        stmt = stmt.where(c.time < f.until)
    if f.work_unit is not None:
        stmt = stmt.where(c.work_unit == f.work_unit)
    if f.on_behalf_of is not None:
        stmt = stmt.where(c.on_behalf_of == f.on_behalf_of)
    if f.trace_id is not None:
        stmt = stmt.where(c.trace_id == f.trace_id)
    if f.before_id is not None:
        stmt = stmt.where(c.id < f.before_id)
    return stmt


async def get_record(engine: AsyncEngine, rid: int) -> AuditRecord | None:
    async with reading(engine).connect() as conn:
        row = (await conn.execute(select(audit_table).where(audit_table.c.id == rid))).first()
    return from_row(row) if row is not None else None


async def list_records(engine: AsyncEngine, f: AuditFilter, limit: int = 100) -> list[AuditRecord]:
    stmt = _where(select(audit_table), f).order_by(audit_table.c.id.desc()).limit(limit)
    async with reading(engine).connect() as conn:
        return [from_row(r) for r in (await conn.execute(stmt)).fetchall()]


async def iter_records(engine: AsyncEngine, f: AuditFilter | None = None,
                       chunk: int = 1000, after: int = 0) -> AsyncIterator[AuditRecord]:
    """Oldest first (ids above `after`), in chunks, so an export of millions of records stays in bounded
    memory."""
    last = after
    while True:
        stmt = select(audit_table).where(audit_table.c.id > last)
        if f is not None:
            stmt = _where(stmt, f)
        stmt = stmt.order_by(audit_table.c.id).limit(chunk)
        async with reading(engine).connect() as conn:
            rows = (await conn.execute(stmt)).fetchall()
        if not rows:
            return
        for row in rows:
            rec = from_row(row)
            yield rec
        last = rows[-1].id


async def activity(engine: AsyncEngine, since: dt.datetime, until: dt.datetime, buckets: int = 48,
                   limit: int = 200_000) -> dict[str, Any]:
    """Reads over time by agent, for the review page's chart: counts per time bucket."""
    c = audit_table.c
    stmt = (select(c.time, c.agent, c.decision).where(c.time >= since, c.time < until, c.action == "read")
            .order_by(c.id).limit(limit))
    width = max((until - since).total_seconds() / buckets, 1.0)
    series: dict[str, list[int]] = {}
    denied = [0] * buckets
    async with reading(engine).connect() as conn:
        for moment, agent, decision in (await conn.execute(stmt)).fetchall():
            if isinstance(moment, str):
                moment = parse_time(moment)
            elif moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
            i = min(buckets - 1, int((moment - since).total_seconds() // width))
            series.setdefault(agent or "(unauthenticated)", [0] * buckets)[i] += 1
            if decision != "allow":
                denied[i] += 1
    return {"since": format_time(since), "until": format_time(until), "bucket_seconds": width,
            "series": dict(sorted(series.items())), "refused": denied}
