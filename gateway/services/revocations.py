"""Revocations: the emergency stop on an agent or one token, overriding policy.

Stored in the store (so every replica and the CLI share them) and held in
memory here (so no request pays a store round trip). ``StoreSync`` keeps the
memory fresh; while it cannot, ``check`` refuses everything (fail closed).
A revocation taken through this replica applies here before it is answered.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.auth import Agent
from gateway.common.clock import format_time, now, parse_time
from gateway.common.errors import Forbidden, Unavailable
from gateway.store import StoreSync, backend_for, notify, reading
from gateway.store import revocations as table

KINDS = ("agent", "token")
REVOKE_LOCK = 7243003  # the store's write lock (PostgreSQL: advisory): one revocation of a subject at a time
# Seconds a request waits for a proof that this replica's view is current, then 503. Waiting is safe (a view
# proven current after the request arrived is as good as one proven before), so this bounds latency only: a
# process starved of CPU for a moment (a busy host) answers late rather than 503. A lost channel ends the wait
# at once (gateway/store/feed.py).
CURRENT_WAIT = 1.0
T = TypeVar("T")


@dataclass(frozen=True)
class Revocation:
    id: int
    kind: str
    subject: str
    reason: str | None
    created_by: str
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "agent" if self.kind == "agent" else "jti": self.subject,
                "reason": self.reason, "created_by": self.created_by, "created_at": self.created_at}


async def add(engine: AsyncEngine, kind: str, subject: str, reason: str | None, by: str) -> tuple[Revocation, bool]:
    """Revoke an agent or a token, once: while a revocation of it is in force, that one is answered and no
    second is stored (True: this call stored it). Two admins revoking at once still make one."""
    assert kind in KINDS
    async with engine.begin() as conn:
        await backend_for(conn).lock(conn, REVOKE_LOCK)  # SQLite's write transactions take turns already
        found = (await conn.execute(select(table).where(
            table.c.lifted_at.is_(None), table.c.kind == kind, table.c.subject == subject).order_by(table.c.id)
            .limit(1))).first()
        if found is not None:
            return _row(found), False
        result = await conn.execute(insert(table).values(kind=kind, subject=subject, reason=reason, created_by=by,
                                                         created_at=now()).returning(*table.c))
        stored = _row(result.one())
        await notify(conn, "revocations")
    return stored, True


async def lift(engine: AsyncEngine, by: str, *, rid: int | None = None, kind: str | None = None,
               subject: str | None = None) -> list[Revocation]:
    """Lift one revocation by id, or every active one on (kind, subject); returns what was lifted."""
    which = (table.c.id == rid) if rid is not None else (table.c.kind == kind) & (table.c.subject == subject)
    cond = table.c.lifted_at.is_(None) & which
    async with engine.begin() as conn:
        lifted = [_row(r) for r in (await conn.execute(select(table).where(cond))).fetchall()]
        if lifted:
            await conn.execute(update(table).where(table.c.id.in_([r.id for r in lifted]))
                               .values(lifted_at=now(), lifted_by=by))
            await notify(conn, "revocations")
    return lifted


async def active(conn: AsyncConnection) -> list[Revocation]:
    rows = await conn.execute(select(table).where(table.c.lifted_at.is_(None)).order_by(table.c.id))
    return [_row(r) for r in rows.fetchall()]


def _row(r: Any) -> Revocation:
    # With its zone, as every time the gateway shows (SQLite hands the stored UTC time back without one).
    created = r.created_at if isinstance(r.created_at, dt.datetime) else parse_time(str(r.created_at))
    return Revocation(id=r.id, kind=r.kind, subject=r.subject, reason=r.reason, created_by=r.created_by,
                      created_at=format_time(created))


class Registry:
    """The in-memory list this replica checks every request against."""

    def __init__(self, engine: AsyncEngine, sync: StoreSync, observe: Callable[[int, int], None] | None = None):
        self._engine = engine
        self._sync = sync
        self._observe = observe  # told how many agents and tokens are revoked, at each change (metrics)
        self._agents: dict[str, Revocation] = {}
        self._tokens: dict[str, Revocation] = {}
        self._fingerprint: tuple[Any, ...] | None = None
        self._refreshing = asyncio.Lock()
        # Reads in flight, by agent name and by jti, so a revocation can stop them mid-way.
        self._inflight: dict[str, set[asyncio.Task[Any]]] = {}
        self._stopped: set[asyncio.Task[Any]] = set()  # of those, the ones a revocation has cancelled
        sync.subscribe(self.refresh)

    @property
    def items(self) -> list[Revocation]:
        return sorted([*self._agents.values(), *self._tokens.values()], key=lambda r: r.id)

    async def wait_current(self) -> None:
        """Before `check`: when this replica's view is not proven current but its channel is up (a stalled event
        loop, say), wait briefly for the next proof rather than refuse at once (see gateway/store/feed.py)."""
        if not self._sync.current():
            await self._sync.wait_current(CURRENT_WAIT)

    def check(self, agent: Agent) -> None:
        if not self._sync.current():  # its view of the store may be stale: fail closed (see gateway/store/feed.py)
            raise Unavailable("the gateway has lost contact with its store; refusing until it is back",
                              reason=f"revocation channel lost: {self._sync.why()}")
        hit = self._agents.get(agent.name) or (self._tokens.get(agent.jti) if agent.jti else None)
        if hit is not None:
            raise Forbidden(f"this {'agent' if hit.kind == 'agent' else 'token'} has been revoked",
                            reason=f"revoked ({hit.kind} revocation {hit.id}: {hit.reason or 'no reason given'})")

    async def refresh(self, conn: AsyncConnection) -> None:
        """Re-read the active list when its fingerprint changed (new revocation, or one lifted)."""
        # One at a time: a re-read that began before a revocation must not apply its older list after one
        # that began after it (the sync task and this replica's own revoke/restore both refresh).
        async with self._refreshing:
            fp = (await conn.execute(select(func.max(table.c.id), func.count(table.c.lifted_at)))).one()
            fingerprint = tuple(fp)
            if fingerprint == self._fingerprint:
                return
            self._apply(await active(conn))
            self._fingerprint = fingerprint

    def _apply(self, items: list[Revocation]) -> None:
        self._agents = {r.subject: r for r in items if r.kind == "agent"}
        self._tokens = {r.subject: r for r in items if r.kind == "token"}
        if self._observe is not None:
            self._observe(len(self._agents), len(self._tokens))
        for r in items:
            for task in list(self._inflight.get(r.subject, ())):
                if task not in self._stopped:
                    self._stopped.add(task)
                    task.cancel()

    async def revoke(self, kind: str, subject: str, reason: str | None, by: str) -> tuple[Revocation, bool]:
        """The revocation in force (True: stored by this call)."""
        stored = await add(self._engine, kind, subject, reason, by)
        # Refuse from this replica's very next request, without waiting for the wake-up.
        async with reading(self._engine).connect() as conn:
            await self.refresh(conn)
        return stored

    async def restore(self, rid: int, by: str) -> Revocation | None:
        lifted = await lift(self._engine, by, rid=rid)
        async with reading(self._engine).connect() as conn:
            await self.refresh(conn)
        return lifted[0] if lifted else None

    async def guarded(self, agent: Agent, work: Awaitable[T]) -> T:
        """Run a read so that revoking its agent or token while it runs stops it (403, no data). The read runs in
        the request's own task (no task of its own to create and schedule on every read); a revocation cancels
        that task, and the cancellation is taken back here and turned into the refusal."""
        task = asyncio.current_task()
        if task is None:
            return await work
        keys = [agent.name] + ([agent.jti] if agent.jti else [])
        for key in keys:
            self._inflight.setdefault(key, set()).add(task)
        try:
            return await work
        except asyncio.CancelledError:
            if task in self._stopped:
                self._stopped.discard(task)
                if task.uncancel() == 0:  # no one else (shutdown, a client gone) cancelled it too
                    self.check(agent)  # raises Forbidden for the revocation that stopped it
                    raise Forbidden("access was revoked while the read ran", reason="revoked mid-read") from None
            raise
        finally:
            if task in self._stopped:  # cancelled for a revocation, but the read swallowed it: take it back
                self._stopped.discard(task)
                task.uncancel()
            for key in keys:
                bucket = self._inflight.get(key)
                if bucket is not None:
                    bucket.discard(task)
                    if not bucket:
                        del self._inflight[key]
