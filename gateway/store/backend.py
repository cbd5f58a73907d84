"""What the rest of the gateway asks of a store kind: the `StoreBackend` protocol.

One backend per kind, PostgreSQL (gateway/store/postgresql.py) and SQLite (gateway/store/sqlite.py), chosen
once from the engine's dialect (`backend_for`, gateway/store/engines.py), owns everything that differs between
them: how its engine is made, the write lock a transaction takes, the upsert, the change feed's wake-ups, how
a replica learns that the store changed, and the audit chain's append. No other module tests the dialect.

The implementations satisfy these protocols by their shape (they import this module only for the types they
take), so that choosing one (gateway/store/engines.py) may import both without a cycle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import Column, Insert, Table
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.store.pgchain import ChainAppend

# The change feed's bounds (gateway/store/feed.py): opening its connections, and one re-read (or poll) on them.
CONNECT_TIMEOUT = 2.0
REREAD_TIMEOUT = 2.0


class Follower(Protocol):
    """One connection cycle of the store's follower (StoreSync, gateway/store/feed.py), as a kind's change feed
    sees it at each tick."""

    version: int | None  # SQLite: the data_version the last re-read's snapshot includes

    def resync_due(self, now: float) -> bool:
        """Whether the every-second re-read is due at `now` (monotonic)."""
        ...

    def woken(self) -> bool:
        """Whether a wake-up (a notification, a change made here) waits to be acted on."""
        ...

    async def reread(self, version: int | None = None) -> None:
        """Every subscriber re-reads, in one read-only transaction (a whole re-read is its own proof)."""
        ...

    def proved(self, as_of: float) -> None:
        """Everything committed before `as_of` (monotonic) is in this replica's view."""
        ...


class ChangeFeed(Protocol):
    """A kind's way of learning that the store changed, for one StoreSync: a listener (PostgreSQL: LISTEN, and a
    probe echoed back) or a poller (SQLite: PRAGMA data_version). It holds what the current connection cycle
    opened, between `open` and `close`."""

    interval: float  # seconds between two ticks

    async def open(self, reader: AsyncConnection, lost: asyncio.Event) -> None:
        """Start following, beside `reader` (the cycle's connection for re-reads); set `lost` if the feed's own
        connection closes."""
        ...

    async def version(self) -> int | None:
        """What a re-read's snapshot will include, read before it begins (SQLite's data_version; else None)."""
        ...

    async def tick(self, follower: Follower, now: float) -> None:
        """Renew the proof that `follower`'s view is current as of `now`, re-reading first if it may not be."""
        ...

    def close(self) -> None:
        """Let the cycle's connections go at once, without waiting on them (they may be frozen)."""
        ...


class StoreBackend(Protocol):
    """The statements and mechanisms one store kind owns."""

    name: str  # the SQLAlchemy dialect's name

    def make_engine(self, url: URL, wait_seconds: float | None) -> AsyncEngine:
        """The store's engine (see gateway/store/engines.py: make_store_engine)."""
        ...

    async def lock(self, conn: AsyncConnection, key: int) -> None:
        """Take the write lock `key` (a constant of the caller's) for `conn`'s transaction, until it ends."""
        ...

    async def lock_hashed(self, conn: AsyncConnection, key: int) -> None:
        """`lock`, for a key of many (one per agent, say): sent as a parameter, so one prepared statement serves
        every key."""
        ...

    def upsert_adding(self, table: Table, values: Mapping[str, Any], keys: Sequence[Column[Any]],
                      adding: Sequence[str]) -> Insert:
        """INSERT `values`; where a row with the same `keys` is there already, add the `adding` columns of
        `values` to its own instead. The row stays locked until the transaction ends."""
        ...

    async def notify(self, conn: AsyncConnection, topic: str) -> None:
        """Wake every replica's change feed once `conn`'s transaction commits (where the kind can)."""
        ...

    def change_feed(self, engine: AsyncEngine, wake: Callable[[], None], *, probe_seconds: float,
                    poll_seconds: float, probe_timeout: float) -> ChangeFeed:
        """The change feed's half for one StoreSync; `wake` is called on every notification."""
        ...

    def chain_append(self, engine: AsyncEngine, timeout: float) -> ChainAppend | None:
        """The kind's own append for the audit chain's writer (PostgreSQL: one round trip on a connection of the
        writer's own, `timeout` its bound); None: the writer appends in a store transaction of its own, whose
        write lock (SQLite: BEGIN IMMEDIATE) is the chain's."""
        ...
