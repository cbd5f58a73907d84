"""The store at start: its tables made (or upgraded), its shared secrets, and waiting a turn for a locked SQLite.

Replicas may start together on one store: on PostgreSQL one makes the tables under a lock while the others wait
for it; on SQLite they take turns for the write lock, trying again while SQLite says it is locked.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import insert, inspect, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.engines import backend_for
from gateway.store.schema import meta, metadata
from gateway.store.transactions import reading

T = TypeVar("T")

# Replicas started together on one SQLite store take turns for its write lock to make (or upgrade) its tables:
# one waiting past the gateway's short lock wait ([audit] write_timeout_seconds) tries again, for this long.
START_LOCK_SECONDS = 30.0
TABLES_LOCK = 7243001  # held while the tables are made: one replica makes them, the others wait for it


def busy(exc: BaseException) -> bool:
    """Whether `exc` is SQLite's "database is locked" (another connection holds the lock: the store is there)."""
    return isinstance(exc, OperationalError) and "database is locked" in str(exc.orig)


async def at_start(work: Callable[[], Awaitable[T]]) -> T:
    """`work`, tried again while SQLite says the store is locked, for up to START_LOCK_SECONDS."""
    deadline = time.monotonic() + START_LOCK_SECONDS
    while True:
        try:
            return await work()
        except OperationalError as exc:
            if not busy(exc) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def create_tables(engine: AsyncEngine) -> None:
    await at_start(lambda: _create_tables(engine))


async def _create_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await backend_for(engine).lock(conn, TABLES_LOCK)
        await conn.run_sync(metadata.create_all)
        await conn.run_sync(_add_new_columns)
        await conn.run_sync(_add_new_indexes)


def _add_new_columns(conn: Any) -> None:
    """Upgrade a store made by an earlier release: add the (nullable) columns it lacks. create_all makes
    missing tables only, never missing columns."""
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have and column.nullable:
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(text(f"ALTER TABLE {conn.dialect.identifier_preparer.format_table(table)} "
                                  f"ADD COLUMN {conn.dialect.identifier_preparer.format_column(column)} {kind}"))


def _add_new_indexes(conn: Any) -> None:
    """Upgrade a store made by an earlier release: make the indexes it lacks (create_all makes a missing table's
    indexes only). On a large trail the first start after the upgrade takes the time to build them."""
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        have = {i["name"] for i in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in have:
                index.create(conn)


async def shared_secret(engine: AsyncEngine, key: str) -> str:
    """A random secret kept in the store, the same on every replica (e.g. the cursor key)."""
    return await at_start(lambda: _shared_secret(engine, key))


async def _shared_secret(engine: AsyncEngine, key: str) -> str:
    async with reading(engine).connect() as conn:
        found = (await conn.execute(select(meta.c.value).where(meta.c.key == key))).scalar_one_or_none()
    if found is not None:
        return str(found)
    value = secrets.token_urlsafe(32)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(meta).values(key=key, value=value))
        return value
    except IntegrityError:  # another replica made it first: use theirs
        async with reading(engine).connect() as conn:
            return str((await conn.execute(select(meta.c.value).where(meta.c.key == key))).scalar_one())
