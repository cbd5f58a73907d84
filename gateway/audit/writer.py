"""The trail's writer: durable, group-committed writes of audit records onto the hash chain.

Audit before answer: ``AuditTrail.record`` returns only once the record is
committed. Concurrent requests share one transaction (group commit), which is
where throughput comes from; each waits for its own commit. The chain is
extended under a lock in the store (an advisory lock on PostgreSQL, BEGIN
IMMEDIATE on SQLite), so replicas writing at once still form one chain.
PostgreSQL's append is pgwriter.py's; SQLite's is here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import asyncpg
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.audit.bounds import storable
from gateway.audit.chain import link
from gateway.audit.pgwriter import PgChainWriter
from gateway.audit.record import FIELD_ORDER, AuditRecord, from_row
from gateway.audit.unsettled import OWED_PER_GROUP, SETTLE_SECONDS, Unsettled, correction
from gateway.common.errors import Unavailable
from gateway.store import StoreLost, backend_for
from gateway.store import anchor as anchor_table
from gateway.store import audit as audit_table

log = logging.getLogger("agentgate.audit")

# A request waits at most write_timeout for its record (then it is answered 503). The writer gives a group up at
# the first deadline among its records; a waiter is answered this much after its own at the latest, should the
# writer be held up beyond it (waiting for a SQLite thread to finish the statement it abandoned).
WAITER_GRACE_SECONDS = 0.05


class AuditTrail:
    def __init__(self, engine: AsyncEngine, *, batch_max: int = 512, write_timeout: float = 2.0,
                 observe: Callable[[float, int], None] | None = None):
        self._engine = engine
        self._batch_max = batch_max
        self._timeout = write_timeout
        self._observe = observe
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # One group is written at a time, by the writer task or by a caller writing its own record (below).
        self._writing = False
        self._backlog = 0  # records queued or taken by the writer task, not yet written
        self._turn = asyncio.Event()  # set when a caller's own write ends
        self._unsettled = Unsettled()
        own = backend_for(engine).chain_append(engine, write_timeout)  # PostgreSQL's; None: SQLite's, _write's
        self._pg = PgChainWriter(own, self._unsettled) if own is not None else None

    async def start(self) -> None:
        if self._writer is None:
            self._loop = asyncio.get_running_loop()
            self._writer = asyncio.create_task(self._run(), name="audit-writer")

    async def close(self) -> None:
        """Write what is queued, then stop."""
        if self._writer is None:
            return
        if not self._writer.done():
            await self._queue.join()
        while self._writing:  # a caller's own write, still on the connection about to close
            self._turn.clear()
            await self._turn.wait()
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None
        if self._unsettled.doubts or self._unsettled.owed:
            await self._settle_before_closing()
        if self._pg is not None:
            await self._pg.close()

    async def _settle_before_closing(self) -> None:
        """Check the records in doubt and write the corrections owed (Unsettled), if the store answers in time."""
        unsettled = self._unsettled
        wait = unsettled.settle_after - time.time()
        if self._pg is not None and unsettled.doubts and 0 < wait <= SETTLE_SECONDS + self._timeout:
            await asyncio.sleep(wait)
        deadline = time.time() + self._timeout
        try:
            async with asyncio.timeout(self._timeout):
                await self._write([], deadline)
        except Exception as exc:
            unsettled.abandon([], deadline)
            log.error("audit: %s", exc or type(exc).__name__)
        if unsettled.doubts or unsettled.owed:
            log.error("the audit trail stops with %d record(s) unchecked: each was answered 503 after its write "
                      "was given up, and may have been stored all the same (README, Operations: a store silently "
                      "unreachable)", len(unsettled.doubts) + len(unsettled.owed))

    async def record(self, record: AuditRecord) -> AuditRecord:
        """Returns the stored record once it is durable; raises Unavailable if it cannot be, or is not within
        write_timeout (the request is then answered 503, and its record is never stored claiming otherwise)."""
        loop = self._loop
        if self._writer is None or self._writer.done() or loop is None:
            raise Unavailable("the audit trail is not running; no data is served without an audit record")
        # The writer's loop, kept: asking for the running loop costs a system call on Python 3.11 (getpid).
        fut: asyncio.Future[AuditRecord] = loop.create_future()
        item = _Item(storable(record), fut, loop.time() + self._timeout)
        if self._writing or self._backlog:
            self._backlog += 1
            self._queue.put_nowait(item)
            timer = loop.call_at(item.deadline + WAITER_GRACE_SECONDS, _expire, fut, self._timeout)
            try:
                return await fut
            finally:
                timer.cancel()
        # Nobody is writing and nobody waits: the caller writes its own record, sparing the hand-off to the
        # writer task and back (two turns of the event loop, a tenth of a millisecond when load is light).
        # Whoever comes meanwhile queues, and the writer task writes them as one group once this ends.
        self._writing = True
        try:
            await self._commit([item])
        finally:
            self._writing = False
            self._turn.set()
        return fut.result()

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            while self._writing:  # a caller is writing its own record; its end wakes us
                self._turn.clear()
                await self._turn.wait()
            batch = [first]
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._writing = True
            try:
                await self._commit(batch)
            finally:
                self._writing = False
                self._backlog -= len(batch)
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, batch: list[_Item]) -> None:
        # A record whose request was answered (503: its time ran out while it queued) is not written: stored now,
        # it would claim an answer that never left.
        live = [item for item in batch if not item.fut.done()]
        if not live:
            return
        loop = self._loop
        assert loop is not None
        deadline = min(item.deadline for item in live)
        wall_deadline = time.time() + deadline - loop.time()
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(deadline):
                written = await self._write([item.record for item in live], wall_deadline)
        except Exception as exc:  # the store is down, refused, or silent past the deadline: every waiter learns it
            if len(live) > 1 and isinstance(exc, asyncpg.DataError):
                # One record the store cannot take (a NUL character in a text, say) must not cost the others
                # in its group their answers: each is written alone, and only that one is refused.
                log.warning("audit group of %d refused (%s); writing its records one by one", len(live), exc)
                for one in live:
                    await self._commit([one])
                return
            self._given_up(live, exc, wall_deadline)
            return
        except BaseException:  # cancelled (a caller writing its own record, a shutdown): nobody answered 503
            self._unsettled.abandon([False] * len(live), wall_deadline)
            raise
        if self._observe is not None:
            self._observe(time.perf_counter() - started, len(live))
        for item, rec in zip(live, written, strict=True):
            if not item.fut.done():
                item.fut.set_result(rec)
            elif _answered_503(item.fut):  # stored, but its request was answered 503 meanwhile: say so
                self._unsettled.owe(correction(rec))

    def _given_up(self, live: list[_Item], exc: Exception, wall_deadline: float) -> None:
        """A group's write failed or timed out: each waiter still waiting is answered 503, and the group is in
        doubt (Unsettled) unless it surely was not stored."""
        timed_out = isinstance(exc, TimeoutError)
        reason = (f"audit write timed out after {self._timeout:g} s" if timed_out
                  else f"audit write failed: {type(exc).__name__}")
        log.error("audit write failed for %d record(s): %s", len(live), reason if timed_out else exc)
        for item in live:
            if not item.fut.done():
                item.fut.set_exception(Unavailable(
                    "the audit record could not be written; no data is served without one", reason=reason))
        if isinstance(exc, StoreLost):  # refused before its COMMIT (gateway/store/files.py): surely not stored
            self._unsettled.not_stored()
        self._unsettled.abandon([_answered_503(item.fut) for item in live], wall_deadline)

    async def _write(self, records: list[AuditRecord], deadline: float) -> list[AuditRecord]:
        """The records stored, linked (after whatever corrections are owed: Unsettled). `deadline`:
        time.time() after which they must not be stored (their waiters are being answered 503)."""
        if self._pg is not None:
            return await self._pg.write(records, deadline)
        return await self._write_sqlite(records, deadline)

    async def _write_sqlite(self, records: list[AuditRecord], deadline: float) -> list[AuditRecord]:
        unsettled = self._unsettled
        async with self._engine.begin() as conn:  # BEGIN IMMEDIATE: the chain's lock
            if unsettled.doubts:  # under the lock, what a write given up did is known: settled now
                found = (await conn.execute(
                    select(audit_table).where(audit_table.c.id.in_(unsettled.doubted_ids())))).all()
                unsettled.settle([from_row(row) for row in found])
            group = [*unsettled.owed[:OWED_PER_GROUP], *records]
            if not group:
                return []
            tail = (await conn.execute(
                select(audit_table.c.id, audit_table.c.hash).order_by(audit_table.c.id.desc()).limit(1))).first()
            if tail is None:  # an empty trail may still go on from a prune's anchor
                tail = (await conn.execute(select((anchor_table.c.first_id - 1).label("id"),
                                                  anchor_table.c.prev_hash.label("hash")))).first()
            out = link(group, tail.id if tail else None, tail.hash if tail else None)
            await conn.execute(insert(audit_table), [{f: getattr(r, f) for f in FIELD_ORDER} for r in out])
            if time.time() > deadline:  # its waiters are being answered 503: rolled back, never stored late
                raise TimeoutError
            # Until COMMIT returns, whether the group is stored is not known (cut off, it is settled later).
            unsettled.sending(out, len(group) - len(records))
        return out[unsettled.stored():]


@dataclass(slots=True)
class _Item:
    """A record on its way to the store, its waiter, and when the waiter is answered 503 (loop time)."""

    record: AuditRecord
    fut: asyncio.Future[AuditRecord]
    deadline: float


def _expire(fut: asyncio.Future[AuditRecord], timeout: float) -> None:
    if not fut.done():
        fut.set_exception(Unavailable("the audit record could not be written; no data is served without one",
                                      reason=f"audit write timed out after {timeout:g} s"))


def _answered_503(fut: asyncio.Future[AuditRecord]) -> bool:
    """The waiter was answered 503 (its write failed or timed out), not cancelled (a client gone)."""
    return fut.done() and not fut.cancelled() and isinstance(fut.exception(), Unavailable)


# The commands' own records (revoke, approve, prune...) wait as long as their store engine does
# (gateway/store/engines.py).
CLI_WRITE_TIMEOUT = 10.0


async def record_once(engine: AsyncEngine, record: AuditRecord) -> AuditRecord:
    """One record from outside the gateway (the CLI's admin acts), on the same chain; its caller is "cli"
    unless it names another."""
    if record.client is None:
        record = replace(record, client="cli")
    trail = AuditTrail(engine, write_timeout=CLI_WRITE_TIMEOUT)
    await trail.start()
    try:
        return await trail.record(record)
    finally:
        await trail.close()


async def append_locked(conn: AsyncConnection, records: list[AuditRecord],
                        tail: tuple[int, str] | None) -> list[AuditRecord]:
    """Records linked onto `tail` (id and hash; None: the chain's start) and inserted in the caller's transaction,
    which holds the chain's lock and read the tail under it (a prune writes its own record so, with the prune)."""
    out = link([storable(r) for r in records], *(tail or (None, None)))
    await conn.execute(insert(audit_table), [{f: getattr(r, f) for f in FIELD_ORDER} for r in out])
    return out
