"""Keeping a replica in step with the store: revocations and reload requests.

A replica serves only while it can show that its view of the store is current: that everything committed
more than ``max_staleness`` (75 ms) ago is in it. ``current()`` answers that at each request, from the time
of the last proof; the background task renews the proof, and without one the replica refuses (503). A request
that finds the proof too old while the channel is up (the event loop stalled, say) first waits a little for
the next one (``wait_current``): deciding on a view proven after it arrived is as good as deciding at once.

On PostgreSQL a dedicated connection LISTENs. A NOTIFY is only a wake-up (one sent while the listener is
away is lost): the tables are the truth, re-read on every wake-up, on every reconnect and every second
anyway. Every 25 ms the listener sends a notification to itself, on a channel of its own, and waits for it
to come back (the probe). The server delivers a session's notifications in commit order, so the echo proves
that every notification committed before the probe was sent has arrived, and it is acted on before the
proof counts. A round trip such as ``SELECT 1`` would prove only that the connection answers, not that
notifications still flow through it (behind a transaction-pooling proxy, say). A probe unanswered within
100 ms means the channel is lost: drop it, reconnect, re-read everything.

On SQLite, where there is no NOTIFY, each worker asks every 25 ms whether another connection has committed
since its last re-read (``PRAGMA data_version``, one call) and if so re-reads, in a read-only transaction (a
WAL snapshot: it never waits for the writers, nor holds them off), on a connection of its own (never queued
behind the pool).

This module holds what the kinds share (the proof, the re-reads, losing and regaining the channel); each kind's
half, the listener and its probe or the poll, is its backend's (ChangeFeed: gateway/store/postgresql.py,
gateway/store/sqlite.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.store.backend import CONNECT_TIMEOUT, REREAD_TIMEOUT
from gateway.store.engines import backend_for
from gateway.store.transactions import reading

log = logging.getLogger("agentgate.sync")

Refresh = Callable[[AsyncConnection], Awaitable[None]]


async def notify(conn: AsyncConnection, topic: str) -> None:
    """Wake every replica (PostgreSQL; delivered when the caller's transaction commits)."""
    await backend_for(conn).notify(conn, topic)


@dataclass
class _Link:
    """One connection cycle: the connection the re-reads run on, as the kind's change feed sees it (Follower,
    gateway/store/backend.py)."""

    sync: StoreSync
    reader: AsyncConnection
    version: int | None = None  # SQLite: the data_version the last re-read's snapshot includes
    lost: asyncio.Event = field(default_factory=asyncio.Event)  # the feed's connection was closed

    def resync_due(self, now: float) -> bool:
        return now - self.sync.synced_at >= self.sync.resync_seconds

    def woken(self) -> bool:
        return self.sync.woken()

    async def reread(self, version: int | None = None) -> None:
        await self.sync.reread(self, version)

    def proved(self, as_of: float) -> None:
        self.sync.proved(as_of)


class StoreSync:
    def __init__(self, engine: AsyncEngine, *, probe_seconds: float = 0.025, poll_seconds: float = 0.025,
                 max_staleness: float = 0.075, probe_timeout: float = 0.1, resync_seconds: float = 1.0):
        self._engine = engine
        self.max_staleness = max_staleness
        self.resync_seconds = resync_seconds
        self._subscribers: list[Refresh] = []
        self._wake = asyncio.Event()
        self._renewed = asyncio.Event()  # set (and cleared) at each new proof
        # The store kind's half: a listener (PostgreSQL) or a poller (SQLite).
        self._feed = backend_for(engine).change_feed(engine, self.wake, probe_seconds=probe_seconds,
                                                     poll_seconds=poll_seconds, probe_timeout=probe_timeout)
        self._link: _Link | None = None
        self._task: asyncio.Task[None] | None = None
        self.healthy = False  # the channel is up (False from a lost channel until reconnected and re-read)
        self.last_error: str | None = None
        self.synced_at = 0.0  # monotonic time the last full re-read began
        self.fresh_at = 0.0  # monotonic: everything committed before this moment is in this replica's view

    def subscribe(self, refresh: Refresh) -> None:
        self._subscribers.append(refresh)

    def current(self) -> bool:
        """Whether this replica may serve: its channel is up and its view proven current within the bound.
        Asked at each request, so a stalled background task (or event loop) refuses rather than serves."""
        return self.healthy and time.monotonic() - self.fresh_at <= self.max_staleness

    async def wait_current(self, seconds: float) -> bool:
        """current(), waiting up to `seconds` for the next proof when the channel is up but the last proof is too
        old. A lost channel answers at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self.current():
            remaining = deadline - loop.time()
            if not self.healthy or remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._renewed.wait()
        return True

    def proved(self, as_of: float) -> None:
        """Everything committed before `as_of` (monotonic) is in this replica's view."""
        if as_of > self.fresh_at:
            self.fresh_at = as_of
            self._renewed.set()
            self._renewed.clear()

    def why(self) -> str:
        """Why current() is false, for refusals and /readyz."""
        if not self.healthy:
            return str(self.last_error)
        age = (time.monotonic() - self.fresh_at) * 1000
        return (f"no proof for {age:.0f} ms that this replica's view of the store is current "
                f"(bound {self.max_staleness * 1000:.0f} ms)")

    async def start(self) -> None:
        """Connect and sync once (raising if the store cannot be read), then keep in step in the background."""
        self._link = await self._connect()
        self.healthy = True
        self._task = asyncio.create_task(self._run(), name="store-sync")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop()

    def wake(self) -> None:
        self._wake.set()

    def woken(self) -> bool:
        return self._wake.is_set()

    async def _run(self) -> None:
        while True:
            try:
                if self._link is None:
                    self._link = await self._connect()  # notifications sent while we were away are lost: re-read
                    if not self.healthy:
                        log.warning("store channel back: in step again")
                    self.healthy, self.last_error = True, None
                await self._follow(self._link)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                was_healthy = self.healthy
                if was_healthy:
                    log.error("lost the store channel (%s): refusing requests until resynchronised", exc)
                self.healthy = False
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
                self._renewed.set()  # requests waiting for a proof learn at once that none is coming
                self._renewed.clear()
                await self._drop()
                await asyncio.sleep(0.0 if was_healthy else 0.1)  # a first retry at once, then paced

    async def _connect(self) -> _Link:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader = await reading(self._engine).connect()
        link = _Link(self, reader)
        try:
            await self._feed.open(reader, link.lost)
            await self.reread(link)
        except BaseException:
            await self._drop(link)
            raise
        return link

    async def _drop(self, link: _Link | None = None) -> None:
        """Close a link without waiting on it (its connections may be frozen): no graceful goodbye."""
        if link is None:
            link, self._link = self._link, None
        if link is None:
            return
        self._feed.close()
        with contextlib.suppress(Exception, TimeoutError):
            async with asyncio.timeout(1.0):
                await link.reader.invalidate()
        with contextlib.suppress(Exception, TimeoutError):
            async with asyncio.timeout(1.0):
                await link.reader.close()

    async def _follow(self, link: _Link) -> None:
        due = time.monotonic() + self._feed.interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - time.monotonic())):
                    await self._wake.wait()
            if link.lost.is_set():
                raise ConnectionError("the listening connection was closed")
            if self._wake.is_set():
                await self.reread(link)  # a wake-up: re-read at once (a whole re-read is its own proof)
            now = time.monotonic()
            if now < due:
                continue
            due = now + self._feed.interval
            await self._feed.tick(link, now)

    async def reread(self, link: _Link, version: int | None = None) -> None:
        """Every subscriber re-reads in one read-only transaction; its snapshot starts after `started` (and, on
        SQLite, after `version` was read)."""
        self._wake.clear()
        started = time.monotonic()
        if version is None:
            version = await self._feed.version()
        # No `async with begin()`: on a timeout the link is dropped, never rolled back over a frozen socket.
        async with asyncio.timeout(REREAD_TIMEOUT):
            for refresh in self._subscribers:
                await refresh(link.reader)
            await link.reader.commit()  # ends the snapshot (on SQLite, lets checkpoints pass it)
        link.version = version
        self.synced_at = started
        self.proved(started)
