"""Budgets: what an agent may spend, per minute (requests) and per UTC day (rows).

``policies/budgets.toml`` is part of the policy snapshot (validated and reloaded
with it). The counters live in the store (table ``usage_counters``, one row per
agent, window kind and window start), so every replica and every restart sees
the same spend. Each counter is changed by one atomic upsert
(``INSERT ... ON CONFLICT DO UPDATE SET n = n + :x``), never read-modify-write.

    before a request: requests in this minute += 1; refused (429) once over
                      requests_per_minute, or when today's rows have reached
                      rows_per_day
    after a read:     today's rows += rows served (the read that crosses the
                      budget is served; the next one is refused)
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.errors import BudgetExceeded, ConfigError, Unavailable
from gateway.store import usage_counters as table

log = logging.getLogger("agentgate.budgets")

LIMIT_KEYS = ("requests_per_minute", "rows_per_day")
MINUTE, DAY = "minute", "day"
PRUNE_EVERY_SECONDS = 300.0


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int | None = None
    rows_per_day: int | None = None

    @property
    def empty(self) -> bool:
        return self.requests_per_minute is None and self.rows_per_day is None


@dataclass(frozen=True)
class Budgets:
    """budgets.toml: a default and per-agent limits (an agent's keys override the default's)."""

    default: Limits = Limits()
    agents: Mapping[str, Limits] = field(default_factory=dict)

    def for_agent(self, agent: str) -> Limits:
        own = self.agents.get(agent)
        if own is None:
            return self.default
        return Limits(
            requests_per_minute=(own.requests_per_minute if own.requests_per_minute is not None
                                 else self.default.requests_per_minute),
            rows_per_day=own.rows_per_day if own.rows_per_day is not None else self.default.rows_per_day)


NO_BUDGETS = Budgets()


def load_budgets(path: Path) -> Budgets:
    """Parse and validate budgets.toml; no file means no limits."""
    if not path.exists():
        return NO_BUDGETS
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    for key in raw:
        if key not in ("default", "agents"):
            raise ConfigError(path, key, "unknown key (expected [default] and [agents.NAME])")
    default = _limits(path, "default", raw.get("default", {}))
    agents_raw = raw.get("agents", {})
    if not isinstance(agents_raw, dict):
        raise ConfigError(path, "agents", "must be a table of [agents.NAME] tables")
    agents = {name: _limits(path, f"agents.{name}", body) for name, body in agents_raw.items()}
    return Budgets(default=default, agents=agents)


def _limits(path: Path, where: str, body: Any) -> Limits:
    if not isinstance(body, dict):
        raise ConfigError(path, where, "must be a table")
    values: dict[str, int] = {}
    for key, value in body.items():
        if key not in LIMIT_KEYS:
            raise ConfigError(path, f"{where}.{key}", f"unknown key (expected {' or '.join(LIMIT_KEYS)})")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(path, f"{where}.{key}", "must be a whole number, 0 or more")
        values[key] = value
    return Limits(**values)


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


async def _add(conn: AsyncConnection, agent: str, window: str, start: str, requests: int, rows: int) -> tuple[int, int]:
    """Add to one counter atomically (inserting it on first use); returns its new (requests, rows)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table).values(agent=agent, kind=window, window_start=start, requests=requests, rows=rows)
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c.agent, table.c.kind, table.c.window_start],
        set_={"requests": table.c.requests + stmt.excluded.requests, "rows": table.c.rows + stmt.excluded.rows})
    found = (await conn.execute(stmt.returning(table.c.requests, table.c.rows))).one()
    return int(found[0]), int(found[1])


class Meter:
    """Charges requests and rows against the budgets, in the store shared by every replica."""

    def __init__(self, engine: AsyncEngine):
        self._engine = engine
        self._pruned = time.monotonic()

    async def charge(self, agent: str, limits: Limits) -> None:
        """Before a request: count it; raise BudgetExceeded (429, Retry-After) when a budget is spent."""
        if limits.empty:
            return
        minute, to_minute, day, to_day = _windows(_now())
        refused: BudgetExceeded | None = None
        try:
            async with self._engine.begin() as conn:
                if limits.requests_per_minute is not None:
                    count, _ = await _add(conn, agent, MINUTE, minute, 1, 0)
                    if count > limits.requests_per_minute:
                        refused = BudgetExceeded(
                            f"request budget spent: {limits.requests_per_minute} requests per minute; "
                            f"try again in {to_minute} s",
                            reason=f"budget requests_per_minute = {limits.requests_per_minute} spent",
                            headers={"Retry-After": str(to_minute)})
                if limits.rows_per_day is not None:
                    _, rows = await _add(conn, agent, DAY, day, 1, 0)
                    if refused is None and rows >= limits.rows_per_day:
                        refused = BudgetExceeded(
                            f"row budget spent: {limits.rows_per_day} rows per day (UTC); "
                            f"try again in {to_day} s",
                            reason=f"budget rows_per_day = {limits.rows_per_day} spent ({rows} rows today)",
                            headers={"Retry-After": str(to_day)})
        except (SQLAlchemyError, OSError) as exc:
            raise Unavailable("the gateway cannot reach its store to check budgets; refusing until it is back",
                              reason=f"budget check failed: {type(exc).__name__}") from exc
        await self._maybe_prune()
        if refused is not None:
            raise refused

    async def add_rows(self, agent: str, limits: Limits, rows: int) -> None:
        """After a read: add the rows served to today's counter."""
        if limits.rows_per_day is None or rows <= 0:
            return
        _, _, day, _ = _windows(_now())
        try:
            async with self._engine.begin() as conn:
                await _add(conn, agent, DAY, day, 0, rows)
        except (SQLAlchemyError, OSError) as exc:
            raise Unavailable("the gateway cannot reach its store to count rows; refusing until it is back",
                              reason=f"budget update failed: {type(exc).__name__}") from exc

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
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in (await conn.execute(stmt)).fetchall()]
