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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.store.database import asyncpg_dsn, reading

log = logging.getLogger("agentgate.sync")

CHANNEL = "agentgate"
FEED_NAME = "agentgate-feed"  # the listening connection's application_name, as pg_stat_activity shows it
CONNECT_TIMEOUT = 2.0
REREAD_TIMEOUT = 2.0
Refresh = Callable[[AsyncConnection], Awaitable[None]]


async def notify(conn: AsyncConnection, topic: str) -> None:
    """Wake every replica (PostgreSQL; delivered when the caller's transaction commits)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_notify(:channel, :topic)"), {"channel": CHANNEL, "topic": topic})


@dataclass
class _Link:
    """One connection cycle: the listener (PostgreSQL) and the connection the re-reads run on."""

    reader: AsyncConnection
    feed: Any = None  # asyncpg.Connection
    version: int | None = None  # SQLite: the data_version the last re-read's snapshot includes
    lost: asyncio.Event = field(default_factory=asyncio.Event)  # the feed's connection was closed


class StoreSync:
    def __init__(self, engine: AsyncEngine, *, probe_seconds: float = 0.025, poll_seconds: float = 0.025,
                 max_staleness: float = 0.075, probe_timeout: float = 0.1, resync_seconds: float = 1.0):
        self._engine = engine
        self._pg = engine.dialect.name == "postgresql"
        self._interval = probe_seconds if self._pg else poll_seconds
        self.max_staleness = max_staleness
        self._probe_timeout = probe_timeout
        self._resync = resync_seconds
        self._subscribers: list[Refresh] = []
        self._wake = asyncio.Event()
        self._renewed = asyncio.Event()  # set (and cleared) at each new proof
        self._probe_channel = f"agentgate_probe_{secrets.token_hex(8)}"  # this replica's own
        self._echo: tuple[str, asyncio.Future[None]] | None = None  # the probe awaited: its payload, its echo
        self._probes = 0
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

    def _proved(self, as_of: float) -> None:
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
        link = _Link(reader)
        try:
            if self._pg:
                link.feed = await self._listen(link)
            await self._reread(link)
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
        if link.feed is not None:
            link.feed.terminate()
        with contextlib.suppress(Exception, TimeoutError):
            async with asyncio.timeout(1.0):
                await link.reader.invalidate()
        with contextlib.suppress(Exception, TimeoutError):
            async with asyncio.timeout(1.0):
                await link.reader.close()

    async def _follow(self, link: _Link) -> None:
        due = time.monotonic() + self._interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - time.monotonic())):
                    await self._wake.wait()
            if link.lost.is_set():
                raise ConnectionError("the listening connection was closed")
            if self._wake.is_set():
                await self._reread(link)  # a wake-up: re-read at once (a whole re-read is its own proof)
            now = time.monotonic()
            if now < due:
                continue
            due = now + self._interval
            if link.feed is None:  # SQLite's poll
                version = await self._data_version(link)
                if version != link.version or now - self.synced_at >= self._resync:
                    await self._reread(link, version)
                else:  # no commit by anyone else since the last re-read's snapshot: it is current as of `now`
                    self._proved(now)
                continue
            if now - self.synced_at >= self._resync:
                await self._reread(link)  # on PostgreSQL, the re-read every second
            await self._probe(link.feed)
            if self._wake.is_set():  # notifications that came before the echo are acted on first
                await self._reread(link)
            self._proved(now)

    async def _reread(self, link: _Link, version: int | None = None) -> None:
        """Every subscriber re-reads in one read-only transaction; its snapshot starts after `started` (and, on
        SQLite, after `version` was read)."""
        self._wake.clear()
        started = time.monotonic()
        if not self._pg and version is None:
            version = await self._data_version(link)
        # No `async with begin()`: on a timeout the link is dropped, never rolled back over a frozen socket.
        async with asyncio.timeout(REREAD_TIMEOUT):
            for refresh in self._subscribers:
                await refresh(link.reader)
            await link.reader.commit()  # ends the snapshot (on SQLite, lets checkpoints pass it)
        link.version = version
        self.synced_at = started
        self._proved(started)

    @staticmethod
    async def _data_version(link: _Link) -> int:
        """SQLite's count of commits by other connections, in one call on the driver's own connection (outside
        any transaction: the driver runs in autocommit mode, see gateway/store/database.py)."""
        raw = await link.reader.get_raw_connection()
        async with asyncio.timeout(REREAD_TIMEOUT):
            rows = await raw.driver_connection.execute_fetchall("PRAGMA data_version")  # type: ignore[union-attr]
        return int(next(iter(rows))[0])

    async def _probe(self, feed: Any) -> None:
        """Send a notification to ourselves and wait for it to come back (see the module's docstring)."""
        self._probes += 1
        payload = str(self._probes)
        echoed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._echo = (payload, echoed)
        try:
            async with asyncio.timeout(self._probe_timeout):
                await feed.execute(f"SELECT pg_notify('{self._probe_channel}', '{payload}')")
                await echoed
        except TimeoutError:
            raise TimeoutError(f"the change feed did not echo its probe within "
                               f"{self._probe_timeout * 1000:.0f} ms") from None
        finally:
            self._echo = None

    async def _listen(self, link: _Link) -> Any:
        # synchronous_commit off: a probe is a tiny transaction of its own, and need not wait for a WAL flush.
        conn = await asyncpg.connect(asyncpg_dsn(self._engine), timeout=CONNECT_TIMEOUT,
                                     server_settings={"application_name": FEED_NAME, "synchronous_commit": "off"})

        def on_notify(*_: Any) -> None:
            self._wake.set()

        def on_probe(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            echo = self._echo
            if echo is not None and payload == echo[0] and not echo[1].done():
                echo[1].set_result(None)

        def on_close(*_: Any) -> None:
            link.lost.set()
            self._wake.set()

        try:
            conn.add_termination_listener(on_close)
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await conn.add_listener(CHANNEL, on_notify)
                await conn.add_listener(self._probe_channel, on_probe)
        except BaseException:
            conn.terminate()
            raise
        return conn
