"""Reading the trail: one record, a filtered page (newest first, or a page of newer ones: keyset by id), every
record in chunks (oldest first), and reads over time (the activity answer). Reads only, each in a read-only store
transaction (store.reading). The review page's counts are gateway/audit/summary.py's."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import case, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.audit.record import AuditRecord, from_row
from gateway.common.clock import format_time, parse_time
from gateway.store import audit as audit_table
from gateway.store import reading

# The most records one count over a window reads (the review page's, the activity answer's): its newest ones. The
# review page's counts of 500,000 records took 0.7 s on PostgreSQL and 1.3 s on SQLite (2 cores; README, The review
# page); a window holding more is counted from a later time, which the answer names.
MAX_COUNTED = 500_000


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
    before_id: int | None = None  # paging, newest first: ids below this
    after_id: int | None = None  # paging back towards the newest: ids above this


@dataclass(frozen=True)
class RecordPage:
    """A page of records, newest first, and whether the filter holds newer and older ones beyond it."""

    records: list[AuditRecord]
    newer: bool
    older: bool


def _utc(moment: dt.datetime) -> dt.datetime:
    # SQLite keeps times as text of their fields: a bound in another zone must be written as the store's (UTC).
    return moment.astimezone(dt.UTC) if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _like(text: str) -> str:
    """`text` matched as itself by LIKE (escape character backslash): a name holding % or _ is no pattern."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _where(stmt: Any, f: AuditFilter) -> Any:
    """`stmt` narrowed to the records `f` selects (all its conditions hold)."""
    c = audit_table.c
    if f.agent is not None:
        stmt = stmt.where(c.agent == f.agent)
    if f.dataset is not None:
        # SQL mode records list several datasets, comma-separated.
        name = _like(f.dataset)
        stmt = stmt.where((c.dataset == f.dataset) | c.dataset.like(f"{name},%", escape="\\")
                          | c.dataset.like(f"%,{name}", escape="\\") | c.dataset.like(f"%,{name},%", escape="\\"))
    if f.decision is not None:
        stmt = stmt.where(c.decision == f.decision)
    if f.since is not None:
        stmt = stmt.where(c.time >= _utc(f.since))
    if f.until is not None:
        stmt = stmt.where(c.time < _utc(f.until))
    if f.work_unit is not None:
        stmt = stmt.where(c.work_unit == f.work_unit)
    if f.on_behalf_of is not None:
        stmt = stmt.where(c.on_behalf_of == f.on_behalf_of)
    if f.trace_id is not None:
        stmt = stmt.where(c.trace_id == f.trace_id)
    if f.before_id is not None:
        stmt = stmt.where(c.id < f.before_id)
    if f.after_id is not None:
        stmt = stmt.where(c.id > f.after_id)
    return stmt


async def get_record(engine: AsyncEngine, rid: int) -> AuditRecord | None:
    async with reading(engine).connect() as conn:
        row = (await conn.execute(select(audit_table).where(audit_table.c.id == rid))).first()
    return from_row(row) if row is not None else None


async def list_records(engine: AsyncEngine, f: AuditFilter, limit: int = 100) -> list[AuditRecord]:
    stmt = _where(select(audit_table), f).order_by(audit_table.c.id.desc()).limit(limit)
    async with reading(engine).connect() as conn:
        return [from_row(r) for r in (await conn.execute(stmt)).fetchall()]


async def record_page(engine: AsyncEngine, f: AuditFilter, limit: int) -> RecordPage:
    """Up to `limit` records `f` selects, newest first: the newest ones, the ones just below `f.before_id` (older),
    or the ones just above `f.after_id` (newer). Keyset by id, in one read-only transaction: no OFFSET, so a page
    deep in a trail of millions costs what the first one does."""
    c = audit_table.c
    towards_newer = f.after_id is not None and f.before_id is None
    order = c.id.asc() if towards_newer else c.id.desc()
    async with reading(engine).connect() as conn:
        rows = (await conn.execute(_where(select(audit_table), f).order_by(order).limit(limit + 1))).fetchall()
        more = len(rows) > limit
        records = [from_row(r) for r in rows[:limit]]
        if towards_newer:
            records.reverse()
        # The other way, past the page's edge (where the reviewer came from): anything there? The first page has
        # nothing newer.
        back = False
        if records and (f.before_id is not None or f.after_id is not None):
            edge = (replace(f, before_id=records[-1].id, after_id=None) if towards_newer
                    else replace(f, after_id=records[0].id, before_id=None))
            back = (await conn.execute(_where(select(c.id), edge).limit(1))).first() is not None
    return RecordPage(records, newer=more if towards_newer else back, older=back if towards_newer else more)


async def page_after(engine: AsyncEngine, after: int, f: AuditFilter | None = None,
                     limit: int = 1000) -> list[AuditRecord]:
    """Up to `limit` records with ids above `after`, oldest first, in one read-only transaction."""
    stmt = select(audit_table).where(audit_table.c.id > after)
    if f is not None:
        stmt = _where(stmt, f)
    stmt = stmt.order_by(audit_table.c.id).limit(limit)
    async with reading(engine).connect() as conn:
        return [from_row(row) for row in (await conn.execute(stmt)).fetchall()]


async def iter_records(engine: AsyncEngine, f: AuditFilter | None = None,
                       chunk: int = 1000, after: int = 0) -> AsyncIterator[AuditRecord]:
    """Oldest first (ids above `after`), in chunks, so an export of millions of records stays in bounded
    memory."""
    last = after
    while True:
        page = await page_after(engine, last, f, chunk)
        if not page:
            return
        for rec in page:
            yield rec
        last = page[-1].id


@dataclass(frozen=True)
class Counted:
    """Which records a count over a window covers: ids up to `newest` (the trail's newest as the count began), and
    above `floor` when the window reaches back past the newest `cap` records of the trail (0: no floor). So a count
    reads at most `cap` records, and never leaves out the newest: `floor_time` is the oldest counted record's time."""

    newest: int
    floor: int = 0
    floor_time: dt.datetime | None = None

    def bound(self, stmt: Any) -> Any:
        c = audit_table.c
        stmt = stmt.where(c.id <= self.newest)
        return stmt.where(c.id > self.floor) if self.floor else stmt


async def counted(conn: AsyncConnection, since: dt.datetime, cap: int) -> Counted:
    """The records a count from `since` on covers (Counted), from primary-key lookups only."""
    c = audit_table.c
    newest = (await conn.execute(select(func.max(c.id)))).scalar() or 0
    floor = newest - cap
    if floor <= 0 or (await conn.execute(select(c.id).where(c.id <= floor).limit(1))).first() is None:
        return Counted(newest)  # the whole trail is within the cap (after a prune ids start higher)
    first = (await conn.execute(select(c.time).where(c.id > floor).order_by(c.id).limit(1))).scalar_one()
    first = parse_time(first) if isinstance(first, str) else _utc(first)
    if _utc(since) >= first:
        return Counted(newest)  # the window starts after the oldest record the cap keeps: nothing left out
    return Counted(newest, floor, first)


def time_bucket(since: dt.datetime, until: dt.datetime, buckets: int) -> tuple[float, Any]:
    """The width in seconds of `buckets` equal slices of [since, until) (at least 1 s), and a SQL expression
    giving a record's slice, 0 to buckets - 1: comparisons with bound times, the same on every store, nested as a
    binary search (six comparisons a record for 48 slices, not up to 47)."""
    width = max((until - since).total_seconds() / buckets, 1.0)
    start = _utc(since)
    starts = [start + dt.timedelta(seconds=width * i) for i in range(buckets)]  # each slice's first moment

    def within(low: int, high: int) -> Any:
        if low == high:
            return literal_column(str(low))
        middle = (low + high + 1) // 2
        return case((audit_table.c.time < starts[middle], within(low, middle - 1)), else_=within(middle, high))

    return width, within(0, buckets - 1)


async def activity(engine: AsyncEngine, since: dt.datetime, until: dt.datetime, buckets: int = 48,
                   cap: int | None = None) -> dict[str, Any]:
    """Reads over time by agent (every decision) and refused reads, counted by the store per time bucket: at most
    the newest `cap` records of the trail (`counted_from`: the oldest one's time when the window reaches past
    them, else null)."""
    c = audit_table.c
    cap = MAX_COUNTED if cap is None else cap
    width, bucket = time_bucket(since, until, buckets)
    series: dict[str, list[int]] = {}
    denied = [0] * buckets
    async with reading(engine).connect() as conn:
        scope = await counted(conn, since, cap)
        rows = scope.bound(select(bucket.label("slot"), c.agent, c.decision).where(
            c.time >= _utc(since), c.time < _utc(until), c.action == "read")).subquery()
        stmt = (select(rows.c.slot, rows.c.agent, rows.c.decision, func.count())
                .group_by(rows.c.slot, rows.c.agent, rows.c.decision))
        for slot, agent, decision, n in (await conn.execute(stmt)).fetchall():
            series.setdefault(agent or "(unauthenticated)", [0] * buckets)[slot] += n
            if decision != "allow":
                denied[slot] += n
    return {"since": format_time(since), "until": format_time(until), "bucket_seconds": width,
            "series": dict(sorted(series.items())), "refused": denied,
            "counted_from": format_time(scope.floor_time) if scope.floor_time else None}
