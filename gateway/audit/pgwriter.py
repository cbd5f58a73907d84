"""The PostgreSQL chain append: a group of records linked and stored in one round trip (APPEND_FUNCTION), on a
connection of the writer's own, under the chain's advisory lock (CHAIN_LOCK), which replicas share.

The writer (writer.AuditTrail) hands each group here when the store is PostgreSQL (its backend has an append of
its own); the SQLite path is its own. The SQL, the function and the lock are the PostgreSQL backend's
(gateway/store/pgchain.py: ChainAppend); the records, their links and what is in doubt are this module's.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any

import asyncpg

from gateway.audit.chain import link, link_with_bodies
from gateway.audit.record import FLOAT_FIELDS, AuditRecord
from gateway.audit.unsettled import OWED_PER_GROUP, Unsettled
from gateway.store.pgchain import COLUMNS, ChainAppend

APPEND_TRIES = 8  # then the locked transaction, which always gets through


def _json_safe(record: AuditRecord) -> bool:
    """JSON carries the record exactly into its columns (floats finite, a four-digit year)."""
    return record.time.year >= 1000 and all(
        (v := getattr(record, name)) is None or math.isfinite(v) for name in FLOAT_FIELDS)


class PgChainWriter:
    """PostgreSQL: the writer's own asyncpg connection. A group of records is linked onto the tail this writer
    last saw and appended by APPEND_FUNCTION in one round trip (one statement, its own transaction and
    commit). When another writer (replica, worker, CLI) has moved the tail on, the function answers with the
    new tail, and the group is linked onto that and sent again. A trail still empty or emptied by a prune, and
    records JSON cannot carry, take the locked transaction (lock, tail, insert, commit)."""

    def __init__(self, store: ChainAppend, unsettled: Unsettled):
        self._store = store
        self._unsettled = unsettled
        self._conn: Any = None
        self._tail: tuple[int, str] | None = None  # (id, hash) of the chain's tail as this writer last saw it
        self._function = False  # APPEND_FUNCTION is there to call
        self._offset = 0.0  # the server's clock less ours, in seconds (measured at each connect)

    async def write(self, records: list[AuditRecord], deadline: float) -> list[AuditRecord]:
        """`deadline`: time.time() after which the group must not be stored (its waiters are answered 503)."""
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        conn = self._conn
        unsettled = self._unsettled
        try:
            if unsettled.doubts and time.time() > unsettled.settle_after:
                await self._settle(conn)
            owed = unsettled.owed[:OWED_PER_GROUP]
            group = [*owed, *records]
            if not group:
                return []
            server_deadline = dt.datetime.fromtimestamp(deadline + self._offset, dt.UTC)
            out = await self._append(conn, group, len(owed), server_deadline)
            if out is None:
                out = await self._append_locked(conn, group, len(owed))
            self._tail = (out[-1].id, out[-1].hash)
        except BaseException as exc:
            if isinstance(exc, asyncpg.PostgresError):  # the server refused it: nothing of it was committed
                unsettled.not_stored()
            # The connection's state is unknown (cancelled mid-statement, or gone), and so is whether the
            # group was committed (the trail settles that later: Unsettled): start afresh, tail included.
            self._conn, self._tail = None, None
            conn.terminate()
            raise
        return out[unsettled.stored():]

    async def _connect(self) -> Any:
        opened = await self._store.connect()
        self._function, self._offset = opened.function, opened.offset
        if opened.function:  # the tail, so that the first group goes the one-statement way too
            self._tail = opened.tail
        return opened.conn

    async def _settle(self, conn: Any) -> None:
        """Which records in doubt the store holds, read under the chain's lock (ChainAppend.held)."""
        rows = await self._store.held(conn, self._unsettled.doubted_ids())
        self._unsettled.settle([AuditRecord(**row) for row in rows])

    async def _append(self, conn: Any, records: list[AuditRecord], corrections: int,
                      deadline: dt.datetime) -> list[AuditRecord] | None:
        """The group appended in one round trip per try; None if the locked transaction must do it."""
        if not self._function or not all(_json_safe(r) for r in records):
            return None
        for _ in range(APPEND_TRIES):
            if self._tail is None:
                return None
            linked = link_with_bodies(records, *self._tail)
            # The canonical bytes are the record as JSON (bar its hash, and later fields while null): the
            # stored row is, by construction, what the hash covers.
            payload = ",".join(f'{body[:-1].decode()},"hash":"{rec.hash}"}}' for rec, body in linked)
            self._unsettled.sending([rec for rec, _ in linked], corrections)
            stored, self._tail = await self._store.append(conn, self._tail, f"[{payload}]", deadline)
            if stored:
                return [rec for rec, _ in linked]
            self._unsettled.not_stored()
        return None

    async def _append_locked(self, conn: Any, records: list[AuditRecord], corrections: int) -> list[AuditRecord]:
        """The group appended in a locked transaction (lock, tail, insert, commit): ChainAppend.append_locked."""
        out: list[AuditRecord] = []

        def rows(tail_id: int | None, tail_hash: str | None) -> list[tuple[Any, ...]]:
            out.extend(link(records, tail_id, tail_hash))
            self._unsettled.sending(out, corrections)
            return [tuple(getattr(r, f) for f in COLUMNS) for r in out]

        await self._store.append_locked(conn, rows)
        return out

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
