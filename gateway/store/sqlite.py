"""The SQLite store: one file shared by a host's workers and replicas, its writers taking turns.

Its write transactions take the database's lock up front (BEGIN IMMEDIATE), so a transaction that must not
interleave with another (the chain's tail read and appended, a revocation or approval made once, a counter
added to) is serialised already: the locks PostgreSQL takes for them are nothing to take here. There is no
NOTIFY: each replica polls ``PRAGMA data_version`` to learn that another connection committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Insert, Table, event
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.store import files as storefile
from gateway.store.backend import REREAD_TIMEOUT, Follower
from gateway.store.transactions import READ_ONLY


class SQLiteBackend:
    name = "sqlite"

    def make_engine(self, url: URL, wait_seconds: float | None) -> AsyncEngine:
        if url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        busy = wait_seconds if wait_seconds is not None else 10.0
        engine = create_async_engine(url, connect_args={"timeout": busy})
        _serialise_writers(engine, busy)
        if url.database:  # held to the files it opens: a store deleted or replaced under it fails closed
            storefile.guard(engine, url.database, busy)
        return engine

    async def lock(self, conn: AsyncConnection, key: int) -> None:
        """Nothing to take: the transaction holds the database's write lock already (BEGIN IMMEDIATE)."""

    async def lock_hashed(self, conn: AsyncConnection, key: int) -> None:
        """Nothing to take (as `lock`)."""

    def upsert_adding(self, table: Table, values: Mapping[str, Any], keys: Sequence[Column[Any]],
                      adding: Sequence[str]) -> Insert:
        stmt = sqlite.insert(table).values(**values)
        return stmt.on_conflict_do_update(index_elements=list(keys),
                                          set_={name: table.c[name] + stmt.excluded[name] for name in adding})

    async def notify(self, conn: AsyncConnection, topic: str) -> None:
        """Nothing to send: every replica polls (SQLiteFeed)."""

    def change_feed(self, engine: AsyncEngine, wake: Callable[[], None], *, probe_seconds: float,
                    poll_seconds: float, probe_timeout: float) -> SQLiteFeed:
        return SQLiteFeed(poll_seconds)

    def chain_append(self, engine: AsyncEngine, timeout: float) -> None:
        """None: the chain's writer appends in a write transaction of its own (BEGIN IMMEDIATE: the chain's lock)."""
        return None


SQLITE = SQLiteBackend()


def _serialise_writers(engine: AsyncEngine, busy_seconds: float = 10.0) -> None:
    """Let several workers share one SQLite store: WAL, a busy timeout, and write
    transactions that take the lock up front (BEGIN IMMEDIATE), so two writers
    never both read the chain's tail before one of them appends."""

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # Switching the journal mode needs the database to itself: only when it is not WAL yet.
        cur.execute("PRAGMA journal_mode")
        if str(cur.fetchone()[0]).lower() != "wal":
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={max(1, round(busy_seconds * 1000))}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        # A reader (see `reading`) takes a WAL snapshot and waits on nobody; a writer takes the lock up front.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


class SQLiteFeed:
    """The change feed's SQLite half: every `interval` it asks whether another connection has committed since
    the last re-read (``PRAGMA data_version``, one call on the cycle's own re-read connection) and if so
    re-reads; if not, the view is current as of the question."""

    def __init__(self, poll_seconds: float):
        self.interval = poll_seconds
        self._reader: AsyncConnection | None = None

    async def open(self, reader: AsyncConnection, lost: asyncio.Event) -> None:
        self._reader = reader

    async def version(self) -> int:
        """SQLite's count of commits by other connections, in one call on the driver's own connection (outside
        any transaction: the driver runs in autocommit mode, see _serialise_writers)."""
        assert self._reader is not None
        raw = await self._reader.get_raw_connection()
        async with asyncio.timeout(REREAD_TIMEOUT):
            rows = await raw.driver_connection.execute_fetchall("PRAGMA data_version")  # type: ignore[union-attr]
        return int(next(iter(rows))[0])

    async def tick(self, follower: Follower, now: float) -> None:
        version = await self.version()
        if version != follower.version or follower.resync_due(now):
            await follower.reread(version)
        else:  # no commit by anyone else since the last re-read's snapshot: it is current as of `now`
            follower.proved(now)

    def close(self) -> None:
        self._reader = None  # the follower closes its own re-read connection
