"""Budgets: what an agent may spend, per minute (requests) and per UTC day (rows): the meter.

The limits, ``policies/budgets.toml``, are part of the policy snapshot (gateway/policy/limits.py: parsed and
validated with it, no store needed). The counters live in the store (table ``usage_counters``, one row per
agent, window kind and window start), so every replica and every restart sees
the same spend. Each counter is changed in one transaction that holds it
(an upsert, ``INSERT ... ON CONFLICT DO UPDATE SET n = n + :x``, which locks
the row on PostgreSQL until commit; SQLite's write transactions take turns,
``BEGIN IMMEDIATE``), never read, decided and written by two transactions.

    before a request: requests in this minute += 1; refused (429) once over
                      requests_per_minute, or when today's rows have reached
                      rows_per_day. A read also sets aside the rows it may
                      serve (its limit, at most what is left today); refused
                      when reads in flight hold what is left.
    after a read:     its rows served count, the rest of what it set aside is
                      given back (all of it when the read fails). So however
                      many reads run at once, on any number of replicas, only
                      one can cross the budget: the one that took what was left.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, delete, func, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.common.errors import BudgetExceeded, Unavailable
from gateway.policy import Limits
from gateway.store import backend_for, reading
from gateway.store import usage_counters as table

log = logging.getLogger("agentgate.budgets")

MINUTE, DAY = "minute", "day"
PRUNE_EVERY_SECONDS = 300.0
# Rows still set aside this long after the agent's last reservation were lost with a gateway that stopped mid-read
# (every source call ends well before, on its timeout): they are released.
RESERVATION_TTL_SECONDS = 600
# Retry-After when what is left today is held by reads in flight: they end within a source timeout.
IN_FLIGHT_RETRY_SECONDS = 1


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _windows(moment: dt.datetime) -> tuple[str, int, str, int]:
    """(minute key, seconds until it turns, day key, seconds until the UTC day turns)."""
    moment = moment.astimezone(dt.UTC)
    minute = moment.replace(second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    to_minute = math.ceil((minute + dt.timedelta(minutes=1) - moment).total_seconds())
    to_day = math.ceil((day + dt.timedelta(days=1) - moment).total_seconds())
    return minute.strftime("%Y-%m-%dT%H:%M"), max(1, to_minute), day.strftime("%Y-%m-%d"), max(1, to_day)


@dataclass(frozen=True)
class Reservation:
    """Rows of one agent's day set aside for one read in flight, until the read is settled."""

    agent: str
    day: str
    rows: int


async def _add(conn: AsyncConnection, agent: str, window: str, start: str, requests: int,
               rows: int) -> tuple[int, int, int, int]:
    """Add to one counter atomically (inserting it on first use); returns its new (requests, rows, reserved,
    reserved_at). The row stays locked until the transaction ends, so what this returns holds until then."""
    stmt = backend_for(conn).upsert_adding(
        table, {"agent": agent, "kind": window, "window_start": start, "requests": requests, "rows": rows},
        keys=[table.c.agent, table.c.kind, table.c.window_start], adding=["requests", "rows"])
    found = (await conn.execute(stmt.returning(table.c.requests, table.c.rows, table.c.reserved,
                                               table.c.reserved_at))).one()
    return int(found[0]), int(found[1]), int(found[2] or 0), int(found[3] or 0)


def _day(agent: str, day: str) -> Any:
    return (table.c.agent == agent) & (table.c.kind == DAY) & (table.c.window_start == day)


class Meter:
    """Charges requests and rows against the budgets, in the store shared by every replica."""

    def __init__(self, engine: AsyncEngine, refused: Callable[[str], None] | None = None):
        self._engine = engine
        self._refused = refused  # told the budget's name at each refusal (metrics)
        self._pruned = time.monotonic()

    async def charge(self, agent: str, limits: Limits, rows: int = 0) -> Reservation | None:
        """Before a request: count it, and for a read that may serve up to `rows` rows, set that many aside (at
        most what is left today); raise BudgetExceeded (429, Retry-After) when a budget is spent. What is set
        aside is settled after the read (settle) or given back when it fails (refund)."""
        if limits.empty:
            return None
        moment = _now()
        minute, to_minute, day, to_day = _windows(moment)
        refused: tuple[str, BudgetExceeded] | None = None  # the budget spent, and the refusal
        held: Reservation | None = None
        try:
            async with self._engine.begin() as conn:
                if limits.requests_per_minute is not None:
                    refused = await _count_request(conn, agent, limits.requests_per_minute, minute, to_minute)
                if limits.rows_per_day is not None:
                    by_rows, held = await _set_aside(conn, agent, limits.rows_per_day, rows, moment, day, to_day,
                                                     refused is not None)
                    refused = refused or by_rows
        except (SQLAlchemyError, OSError) as exc:
            raise Unavailable("the gateway cannot reach its store to check budgets; refusing until it is back",
                              reason=f"budget check failed: {type(exc).__name__}") from exc
        await self._maybe_prune()
        if refused is not None:
            budget, refusal = refused
            if self._refused is not None:
                self._refused(budget)
            raise refusal
        return held

    async def settle(self, held: Reservation, served: int) -> None:
        """After a read: the rows it served count against the day, the rest of its reservation is given back."""
        left = func.coalesce(table.c.reserved, 0)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(update(table).where(_day(held.agent, held.day)).values(
                    rows=table.c.rows + served,
                    # Never below 0: a reservation released as lost may still be settled by its read.
                    reserved=case((left > held.rows, left - held.rows), else_=0)))
        except (SQLAlchemyError, OSError) as exc:
            raise Unavailable("the gateway cannot reach its store to count rows; refusing until it is back",
                              reason=f"budget update failed: {type(exc).__name__}") from exc

    async def refund(self, held: Reservation) -> None:
        """A read that failed gives all it set aside back. Never raises (the read's own error is the answer); run
        to its end even when the request is cancelled. One that cannot reach the store leaves the rows set aside
        until they are released as lost (RESERVATION_TTL_SECONDS)."""
        await asyncio.shield(asyncio.ensure_future(self._refund(held)))

    async def _refund(self, held: Reservation) -> None:
        try:
            await self.settle(held, 0)
        except Unavailable as exc:
            log.warning("could not give back %d rows set aside for %r: %s", held.rows, held.agent, exc.reason)

    async def _maybe_prune(self) -> None:
        """Drop counters of windows long gone (at most every few minutes per replica)."""
        if time.monotonic() - self._pruned < PRUNE_EVERY_SECONDS:
            return
        self._pruned = time.monotonic()
        moment = _now()
        old_minute, _, _, _ = _windows(moment - dt.timedelta(minutes=10))
        _, _, old_day, _ = _windows(moment - dt.timedelta(days=3))
        try:
            async with self._engine.begin() as conn:
                await conn.execute(delete(table).where((table.c.kind == MINUTE) & (table.c.window_start < old_minute)))
                await conn.execute(delete(table).where((table.c.kind == DAY) & (table.c.window_start < old_day)))
        except (SQLAlchemyError, OSError) as exc:
            log.warning("could not prune old usage counters: %s", exc)


async def counters(engine: AsyncEngine, agent: str | None = None) -> list[dict[str, Any]]:
    """The current counters (for tests and operators)."""
    from sqlalchemy import select

    stmt = select(table).order_by(table.c.agent, table.c.kind, table.c.window_start)
    if agent is not None:
        stmt = stmt.where(table.c.agent == agent)
    async with reading(engine).connect() as conn:
        return [dict(r._mapping) for r in (await conn.execute(stmt)).fetchall()]


async def _count_request(conn: AsyncConnection, agent: str, per_minute: int, minute: str,
                         to_minute: int) -> tuple[str, BudgetExceeded] | None:
    """Count one request in its minute; the refusal when that is over requests_per_minute."""
    count, _, _, _ = await _add(conn, agent, MINUTE, minute, 1, 0)
    if count <= per_minute:
        return None
    return "requests_per_minute", BudgetExceeded(
        f"request budget spent: {per_minute} requests per minute; try again in {to_minute} s",
        reason=f"budget requests_per_minute = {per_minute} spent", headers={"Retry-After": str(to_minute)})


async def _set_aside(conn: AsyncConnection, agent: str, cap: int, rows: int, moment: dt.datetime, day: str,
                     to_day: int, refused: bool) -> tuple[tuple[str, BudgetExceeded] | None, Reservation | None]:
    """Count one request in its day and, unless it is `refused` already or the day's rows are spent or held,
    set aside up to `rows` rows for it. Rows still set aside long after the agent's last read began were left
    by a gateway that stopped mid-read: they are released."""
    _, served, reserved, since = await _add(conn, agent, DAY, day, 1, 0)
    stamp = int(moment.timestamp())
    lost = reserved > 0 and stamp - since > RESERVATION_TTL_SECONDS
    if lost:
        log.warning("releasing %d rows of %r's budget still set aside %d s after its last read "
                    "began (a gateway stopped mid-read)", reserved, agent, stamp - since)
        reserved = 0
    refusal, held = (None, None) if refused else _rows_left(agent, cap, rows, day, to_day, served, reserved)
    if held is not None or lost:
        # The row is still locked by the upsert above: setting the sum is as good as adding to it.
        await conn.execute(update(table).where(_day(agent, day)).values(
            reserved=reserved + (held.rows if held else 0), reserved_at=stamp))
    return refusal, held


def _rows_left(agent: str, cap: int, rows: int, day: str, to_day: int, served: int,
               reserved: int) -> tuple[tuple[str, BudgetExceeded] | None, Reservation | None]:
    """The day's rows spent (refused), held by reads in flight (refused, retry soon), or up to `rows` set aside."""
    if served >= cap:
        return ("rows_per_day", BudgetExceeded(
            f"row budget spent: {cap} rows per day (UTC); try again in {to_day} s",
            reason=f"budget rows_per_day = {cap} spent ({served} rows today)",
            headers={"Retry-After": str(to_day)})), None
    if rows > 0 and served + reserved >= cap:
        return ("rows_per_day", BudgetExceeded(
            f"row budget held by reads in flight: {cap} rows per day (UTC), {served} served; "
            f"try again in {IN_FLIGHT_RETRY_SECONDS} s",
            reason=f"budget rows_per_day = {cap} held by reads in flight ({served} rows served, "
                   f"{reserved} set aside)",
            headers={"Retry-After": str(IN_FLIGHT_RETRY_SECONDS)})), None
    return None, (Reservation(agent, day, min(rows, cap - served - reserved)) if rows > 0 else None)
