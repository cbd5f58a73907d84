"""The PostgreSQL store: shared by every replica, its serialisation by advisory locks, its wake-ups by NOTIFY.

A transaction that must not interleave with another of its kind takes a transaction-scoped advisory lock
(``pg_advisory_xact_lock``), released at its end. Changes are announced with ``pg_notify`` on one channel, and
each replica's change feed LISTENs on a connection of its own (PostgreSQLFeed; the whole protocol is described
in gateway/store/feed.py). The audit chain is appended in one round trip by a function of its own
(gateway/store/pgchain.py).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg
from sqlalchemy import Column, Insert, Table, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.store.backend import CONNECT_TIMEOUT, Follower
from gateway.store.pgchain import ChainAppend

CHANNEL = "agentgate"
FEED_NAME = "agentgate-feed"  # the listening connection's application_name, as pg_stat_activity shows it
_LOCK_HASHED = text("SELECT pg_advisory_xact_lock(:k)")
_NOTIFY = text("SELECT pg_notify(:channel, :topic)")


class PostgreSQLBackend:
    name = "postgresql"

    def make_engine(self, url: URL, wait_seconds: float | None) -> AsyncEngine:
        wait = wait_seconds if wait_seconds is not None else 5.0
        return create_async_engine(url, pool_size=10, max_overflow=10, pool_timeout=wait,
                                   connect_args={"timeout": wait, "command_timeout": max(10.0, wait)})

    async def lock(self, conn: AsyncConnection, key: int) -> None:
        await conn.execute(text(f"SELECT pg_advisory_xact_lock({int(key)})"))

    async def lock_hashed(self, conn: AsyncConnection, key: int) -> None:
        await conn.execute(_LOCK_HASHED, {"k": key})

    def upsert_adding(self, table: Table, values: Mapping[str, Any], keys: Sequence[Column[Any]],
                      adding: Sequence[str]) -> Insert:
        # ON CONFLICT DO UPDATE locks the row until commit: what RETURNING answers holds until then.
        stmt = postgresql.insert(table).values(**values)
        return stmt.on_conflict_do_update(index_elements=list(keys),
                                          set_={name: table.c[name] + stmt.excluded[name] for name in adding})

    async def notify(self, conn: AsyncConnection, topic: str) -> None:
        """Delivered when the caller's transaction commits (a wake-up only: the tables are the truth)."""
        await conn.execute(_NOTIFY, {"channel": CHANNEL, "topic": topic})

    def change_feed(self, engine: AsyncEngine, wake: Callable[[], None], *, probe_seconds: float,
                    poll_seconds: float, probe_timeout: float) -> PostgreSQLFeed:
        return PostgreSQLFeed(asyncpg_dsn(engine), wake, probe_seconds, probe_timeout)

    def chain_append(self, engine: AsyncEngine, timeout: float) -> ChainAppend:
        return ChainAppend(asyncpg_dsn(engine), timeout)


POSTGRESQL = PostgreSQLBackend()


def asyncpg_dsn(engine: AsyncEngine) -> str:
    """The store's URL as asyncpg itself takes it (for the listener and the audit writer)."""
    url = make_url(engine.url.render_as_string(hide_password=False)).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class PostgreSQLFeed:
    """The change feed's PostgreSQL half: a dedicated connection LISTENs on CHANNEL, and every `interval`
    sends a notification to itself on a channel of its own and waits for its echo (the probe, see
    gateway/store/feed.py), re-reading every second anyway."""

    def __init__(self, dsn: str, wake: Callable[[], None], probe_seconds: float, probe_timeout: float):
        self.interval = probe_seconds
        self._dsn = dsn
        self._wake = wake
        self._probe_timeout = probe_timeout
        self._probe_channel = f"agentgate_probe_{secrets.token_hex(8)}"  # this replica's own
        self._echo: tuple[str, asyncio.Future[None]] | None = None  # the probe awaited: its payload, its echo
        self._probes = 0
        self._conn: Any = None  # asyncpg.Connection: the cycle's listener

    async def open(self, reader: AsyncConnection, lost: asyncio.Event) -> None:
        self._conn = await self._listen(lost)

    async def version(self) -> None:
        return None

    async def tick(self, follower: Follower, now: float) -> None:
        if follower.resync_due(now):
            await follower.reread()  # the re-read every second
        await self._probe()
        if follower.woken():  # notifications that came before the echo are acted on first
            await follower.reread()
        follower.proved(now)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def _probe(self) -> None:
        """Send a notification to ourselves and wait for it to come back (see gateway/store/feed.py)."""
        self._probes += 1
        payload = str(self._probes)
        echoed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._echo = (payload, echoed)
        try:
            async with asyncio.timeout(self._probe_timeout):
                await self._conn.execute(f"SELECT pg_notify('{self._probe_channel}', '{payload}')")
                await echoed
        except TimeoutError:
            raise TimeoutError(f"the change feed did not echo its probe within "
                               f"{self._probe_timeout * 1000:.0f} ms") from None
        finally:
            self._echo = None

    async def _listen(self, lost: asyncio.Event) -> Any:
        # synchronous_commit off: a probe is a tiny transaction of its own, and need not wait for a WAL flush.
        conn = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT,
                                     server_settings={"application_name": FEED_NAME, "synchronous_commit": "off"})

        def on_notify(*_: Any) -> None:
            self._wake()

        def on_probe(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            echo = self._echo
            if echo is not None and payload == echo[0] and not echo[1].done():
                echo[1].set_result(None)

        def on_close(*_: Any) -> None:
            lost.set()
            self._wake()

        try:
            conn.add_termination_listener(on_close)
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await conn.add_listener(CHANNEL, on_notify)
                await conn.add_listener(self._probe_channel, on_probe)
        except BaseException:
            conn.terminate()
            raise
        return conn
