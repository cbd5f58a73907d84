"""Transactions that only read: `reading(engine)`, and the store's one-statement ping.

Every store kind honours the mark `reading` sets: SQLite begins such a transaction deferred (a WAL snapshot that
waits on no writer, see gateway/store/sqlite.py); PostgreSQL's are plain transactions anyway.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

READ_ONLY = "agentgate_read_only"


def reading(engine: AsyncEngine) -> AsyncEngine:
    """The store engine for transactions that only read (the same pool). On SQLite these begin as plain
    (deferred) transactions: in WAL mode a reader sees a snapshot and never queues behind the write lock, nor
    holds writers off. Writing in one of them is a mistake: it may fail at once with SQLITE_BUSY."""
    return engine.execution_options(**{READ_ONLY: True})


async def ping(engine: AsyncEngine) -> None:
    async with reading(engine).connect() as conn:
        await conn.execute(text("SELECT 1"))
