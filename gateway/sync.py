"""Keeping a replica in step with the store: revocations and reload requests.

On PostgreSQL a dedicated connection LISTENs; a NOTIFY is only a wake-up (one
sent while the listener is away is lost), the tables are the truth, re-read on
every wake-up, on every reconnect and every second anyway. On SQLite, where
there is no NOTIFY, each worker polls a cheap fingerprint every 50 ms.

A replica that loses its channel says so (``healthy`` turns false at once) and
its callers fail closed until it has reconnected and re-read everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.store import asyncpg_dsn

log = logging.getLogger("agentgate.sync")

CHANNEL = "agentgate"
Refresh = Callable[[AsyncConnection], Awaitable[None]]


async def notify(conn: AsyncConnection, topic: str) -> None:
    """Wake every replica (PostgreSQL; delivered when the caller's transaction commits)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_notify(:channel, :topic)"), {"channel": CHANNEL, "topic": topic})


class StoreSync:
    def __init__(self, engine: AsyncEngine, *, poll_seconds: float = 0.05, heartbeat_seconds: float = 0.25,
                 resync_seconds: float = 1.0):
        self._engine = engine
        self._pg = engine.dialect.name == "postgresql"
        self._poll = poll_seconds
        self._heartbeat = heartbeat_seconds
        self._resync = resync_seconds
        self._subscribers: list[Refresh] = []
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.healthy = False
        self.last_error: str | None = None
        self.synced_at = 0.0

    def subscribe(self, refresh: Refresh) -> None:
        self._subscribers.append(refresh)

    async def start(self) -> None:
        """Sync once (raising if the store cannot be read), then keep in step in the background."""
        await self._refresh_all()
        self.healthy = True
        self._task = asyncio.create_task(self._run(), name="store-sync")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def _refresh_all(self) -> None:
        async with self._engine.connect() as conn:
            for refresh in self._subscribers:
                await refresh(conn)
        self.synced_at = time.monotonic()

    async def _run(self) -> None:
        while True:
            listener: Any = None
            try:
                if self._pg:
                    listener = await self._listen()
                await self._refresh_all()  # notifications sent while we were away are lost: re-read
                if not self.healthy:
                    log.warning("store channel back: in step again")
                self.healthy, self.last_error = True, None
                await self._follow(listener)
            except asyncio.CancelledError:
                if listener is not None:
                    listener.terminate()
                raise
            except Exception as exc:
                if self.healthy:
                    log.error("lost the store channel (%s): refusing requests until resynchronised", exc)
                self.healthy = False
                self.last_error = f"{type(exc).__name__}: {exc}"[:200]
                if listener is not None:
                    listener.terminate()
                await asyncio.sleep(0.1)

    async def _follow(self, listener: Any) -> None:
        interval = self._heartbeat if self._pg else self._poll
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            woke = self._wake.is_set()
            self._wake.clear()
            if self._lost.is_set():
                self._lost.clear()
                raise ConnectionError("the listening connection was closed")
            if listener is not None:
                # A heartbeat on the listening connection itself: a silent channel is not a healthy one.
                async with asyncio.timeout(max(1.0, interval * 4)):
                    await listener.fetchval("SELECT 1")
            if woke or not self._pg or time.monotonic() - self.synced_at >= self._resync:
                async with asyncio.timeout(5.0):
                    await self._refresh_all()

    async def _listen(self) -> Any:
        conn = await asyncpg.connect(asyncpg_dsn(self._engine), timeout=2.0)
        self._lost.clear()

        def on_notify(*_: Any) -> None:
            self._wake.set()

        def on_close(*_: Any) -> None:
            self._lost.set()
            self._wake.set()

        conn.add_termination_listener(on_close)
        await conn.add_listener(CHANNEL, on_notify)
        return conn
