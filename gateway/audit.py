"""The audit trail: typed records, a hash chain, durable group-committed writes,
and the reading side (list, export, verify).

Audit before answer: ``AuditTrail.record`` returns only once the record is
committed. Concurrent requests share one transaction (group commit), which is
where throughput comes from; each waits for its own commit. The chain is
extended under a lock in the store (an advisory lock on PostgreSQL, BEGIN
IMMEDIATE on SQLite), so replicas writing at once still form one chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import asyncpg
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.errors import Unavailable
from gateway.store import asyncpg_dsn
from gateway.store import audit as audit_table

log = logging.getLogger("agentgate.audit")

GENESIS = "0" * 64
CHAIN_LOCK = 7243002
DECISIONS = ("allow", "deny", "pending", "error")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    time: dt.datetime
    request_id: str
    action: str
    decision: str
    status: int
    agent: str | None = None
    on_behalf_of: str | None = None
    work_unit: str | None = None
    dataset: str | None = None
    query: str | None = None
    reason: str | None = None
    rows: int | None = None
    bytes: int | None = None
    duration_ms: float | None = None
    source_ms: float | None = None
    response_sha256: str | None = None
    approved_by: str | None = None
    rule: str | None = None
    columns: str | None = None
    masked: str | None = None
    transport: str | None = None
    row_filter: str | None = None  # the row filter applied to the read, its claim values filled in
    id: int = 0
    prev_hash: str = ""
    hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready; the order is the contract's."""
        out = {name: getattr(self, name) for name in FIELD_ORDER}  # not asdict(): it deep-copies every value
        out["time"] = format_time(self.time)
        return out


FIELD_ORDER = ("id", "time", "request_id", "agent", "on_behalf_of", "work_unit", "action", "dataset", "query",
               "decision", "reason", "status", "rows", "bytes", "duration_ms", "source_ms", "response_sha256",
               "approved_by", "rule", "columns", "masked", "transport", "row_filter", "prev_hash", "hash")
# Fields added after the first release: left out of the hashed content while null, so records written
# before they existed keep their hashes.
LATER_FIELDS = ("row_filter",)
assert set(FIELD_ORDER) == {f.name for f in fields(AuditRecord)}


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_time(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> dt.datetime:
    """ISO 8601 (a trailing Z allowed); naive times are UTC."""
    moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def canonical(record: AuditRecord) -> bytes:
    """The bytes the chain hashes: every field but `hash`, in a fixed, typed-stable form."""
    body = record.to_dict()
    del body["hash"]
    for name in LATER_FIELDS:
        if body[name] is None:
            del body[name]
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(record: AuditRecord) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


def _from_row(row: Any) -> AuditRecord:
    values = dict(row._mapping)
    moment = values["time"]
    if isinstance(moment, str):
        moment = parse_time(moment)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    values["time"] = moment
    return AuditRecord(**values)


class AuditTrail:
    def __init__(self, engine: AsyncEngine, *, batch_max: int = 512, write_timeout: float = 5.0,
                 observe: Callable[[float, int], None] | None = None):
        self._engine = engine
        self._batch_max = batch_max
        self._timeout = write_timeout
        self._observe = observe
        self._queue: asyncio.Queue[tuple[AuditRecord, asyncio.Future[AuditRecord]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._pg = _PgChainWriter(engine) if engine.dialect.name == "postgresql" else None

    async def start(self) -> None:
        if self._writer is None:
            self._writer = asyncio.create_task(self._run(), name="audit-writer")

    async def close(self) -> None:
        """Write what is queued, then stop."""
        if self._writer is None:
            return
        if not self._writer.done():
            await self._queue.join()
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer
        self._writer = None
        if self._pg is not None:
            await self._pg.close()

    async def record(self, record: AuditRecord) -> AuditRecord:
        """Returns the stored record once it is durable; raises Unavailable if it cannot be."""
        if self._writer is None or self._writer.done():
            raise Unavailable("the audit trail is not running; no data is served without an audit record")
        fut: asyncio.Future[AuditRecord] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((record, fut))
        return await fut

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self._batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self._timeout):
                    written = await self._write([r for r, _ in batch])
            except Exception as exc:  # the store is down or refused: every waiter learns it
                log.error("audit write failed for %d record(s): %s", len(batch), exc)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(Unavailable(
                            "the audit record could not be written; no data is served without one",
                            reason=f"audit write failed: {type(exc).__name__}"))
                for _ in batch:
                    self._queue.task_done()
                continue
            if self._observe is not None:
                self._observe(time.perf_counter() - started, len(batch))
            for (_, fut), rec in zip(batch, written, strict=True):
                if not fut.done():
                    fut.set_result(rec)
            for _ in batch:
                self._queue.task_done()

    async def _write(self, records: list[AuditRecord]) -> list[AuditRecord]:
        if self._pg is not None:
            return await self._pg.write(records)
        async with self._engine.begin() as conn:
            tail = (await conn.execute(
                select(audit_table.c.id, audit_table.c.hash).order_by(audit_table.c.id.desc()).limit(1))).first()
            out = _chain(records, tail.id if tail else None, tail.hash if tail else None)
            await conn.execute(insert(audit_table), [{f: getattr(r, f) for f in FIELD_ORDER} for r in out])
        return out


def _chain(records: list[AuditRecord], tail_id: int | None, tail_hash: str | None) -> list[AuditRecord]:
    next_id, prev = (tail_id + 1, tail_hash) if tail_id is not None and tail_hash else (1, GENESIS)
    out: list[AuditRecord] = []
    for rec in records:
        rec = replace(rec, id=next_id, prev_hash=prev)
        rec = replace(rec, hash=chain_hash(rec))
        out.append(rec)
        prev, next_id = rec.hash, next_id + 1
    return out


class _PgChainWriter:
    """PostgreSQL: the writer's own asyncpg connection and prepared statements, so a group of
    records costs one lock, one tail read, one pipelined insert and one commit."""

    _INSERT = 'INSERT INTO audit ({}) VALUES ({})'.format(
        ", ".join(f'"{f}"' for f in FIELD_ORDER), ", ".join(f"${i}" for i in range(1, len(FIELD_ORDER) + 1)))

    def __init__(self, engine: AsyncEngine):
        self._dsn = asyncpg_dsn(engine)
        self._conn: Any = None

    async def write(self, records: list[AuditRecord]) -> list[AuditRecord]:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self._dsn, timeout=5.0)
        conn = self._conn
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", CHAIN_LOCK)
                tail = await conn.fetchrow("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")
                out = _chain(records, tail["id"] if tail else None, tail["hash"] if tail else None)
                await conn.executemany(self._INSERT, [tuple(getattr(r, f) for f in FIELD_ORDER) for r in out])
            return out
        except BaseException:
            # The connection's state is unknown (cancelled mid-transaction, or gone): start afresh.
            self._conn = None
            conn.terminate()
            raise

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


async def record_once(engine: AsyncEngine, record: AuditRecord) -> AuditRecord:
    """One record from outside the gateway (the CLI's admin acts), on the same chain."""
    trail = AuditTrail(engine)
    await trail.start()
    try:
        return await trail.record(record)
    finally:
        await trail.close()


@dataclass(frozen=True)
class AuditFilter:
    agent: str | None = None
    dataset: str | None = None
    decision: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    work_unit: str | None = None
    on_behalf_of: str | None = None
    before_id: int | None = None  # paging, newest first


def _where(stmt: Any, f: AuditFilter) -> Any:
    c = audit_table.c
    if f.agent is not None:
        stmt = stmt.where(c.agent == f.agent)
    if f.dataset is not None:
        # SQL mode records list several datasets, comma-separated.
        stmt = stmt.where((c.dataset == f.dataset) | c.dataset.like(f"{f.dataset},%")
                          | c.dataset.like(f"%,{f.dataset}") | c.dataset.like(f"%,{f.dataset},%"))
    if f.decision is not None:
        stmt = stmt.where(c.decision == f.decision)
    if f.since is not None:
        stmt = stmt.where(c.time >= f.since)
    if f.until is not None:
        stmt = stmt.where(c.time < f.until)
    if f.work_unit is not None:
        stmt = stmt.where(c.work_unit == f.work_unit)
    if f.on_behalf_of is not None:
        stmt = stmt.where(c.on_behalf_of == f.on_behalf_of)
    if f.before_id is not None:
        stmt = stmt.where(c.id < f.before_id)
    return stmt


async def get_record(engine: AsyncEngine, rid: int) -> AuditRecord | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(audit_table).where(audit_table.c.id == rid))).first()
    return _from_row(row) if row is not None else None


async def list_records(engine: AsyncEngine, f: AuditFilter, limit: int = 100) -> list[AuditRecord]:
    stmt = _where(select(audit_table), f).order_by(audit_table.c.id.desc()).limit(limit)
    async with engine.connect() as conn:
        return [_from_row(r) for r in (await conn.execute(stmt)).fetchall()]


async def iter_records(engine: AsyncEngine, f: AuditFilter | None = None,
                       chunk: int = 1000) -> AsyncIterator[AuditRecord]:
    """Oldest first, in chunks, so an export of millions of records stays in bounded memory."""
    last = 0
    while True:
        stmt = select(audit_table).where(audit_table.c.id > last)
        if f is not None:
            stmt = _where(stmt, f)
        stmt = stmt.order_by(audit_table.c.id).limit(chunk)
        async with engine.connect() as conn:
            rows = (await conn.execute(stmt)).fetchall()
        if not rows:
            return
        for row in rows:
            rec = _from_row(row)
            yield rec
        last = rows[-1].id


async def export_lines(engine: AsyncEngine, fmt: str, f: AuditFilter | None = None) -> AsyncIterator[str]:
    """The trail as JSON lines or CSV (header first), oldest first, one record at a time."""
    if fmt == "jsonl":
        async for rec in iter_records(engine, f):
            yield json.dumps(rec.to_dict(), separators=(",", ":")) + "\n"
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(FIELD_ORDER), lineterminator="\n")
    writer.writeheader()
    yield buffer.getvalue()
    async for rec in iter_records(engine, f):
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(rec.to_dict())
        yield buffer.getvalue()


async def activity(engine: AsyncEngine, since: dt.datetime, until: dt.datetime, buckets: int = 48,
                   limit: int = 200_000) -> dict[str, Any]:
    """Reads over time by agent, for the review page's chart: counts per time bucket."""
    c = audit_table.c
    stmt = (select(c.time, c.agent, c.decision).where(c.time >= since, c.time < until, c.action == "read")
            .order_by(c.id).limit(limit))
    width = max((until - since).total_seconds() / buckets, 1.0)
    series: dict[str, list[int]] = {}
    denied = [0] * buckets
    async with engine.connect() as conn:
        for moment, agent, decision in (await conn.execute(stmt)).fetchall():
            if isinstance(moment, str):
                moment = parse_time(moment)
            elif moment.tzinfo is None:
                moment = moment.replace(tzinfo=dt.UTC)
            i = min(buckets - 1, int((moment - since).total_seconds() // width))
            series.setdefault(agent or "(unauthenticated)", [0] * buckets)[i] += 1
            if decision != "allow":
                denied[i] += 1
    return {"since": format_time(since), "until": format_time(until), "bucket_seconds": width,
            "series": dict(sorted(series.items())), "refused": denied}


@dataclass(frozen=True)
class Verification:
    ok: bool
    count: int
    bad_id: int | None = None
    problem: str | None = None


async def verify(engine: AsyncEngine, start: tuple[int, str] = (1, GENESIS)) -> Verification:
    """Walk the chain oldest first from `start` (first id, its prev_hash: the anchor after a prune);
    name the first record that does not hold."""
    expected_id, prev = start
    count = 0
    async for rec in iter_records(engine):
        if rec.id != expected_id:
            return Verification(False, count, rec.id, f"record {expected_id} is missing before record {rec.id}")
        if rec.prev_hash != prev:
            return Verification(False, count, rec.id, "prev_hash does not match the record before it "
                                "(a record was deleted, inserted or reordered)")
        if chain_hash(rec) != rec.hash:
            return Verification(False, count, rec.id, "its content does not match its hash (the record was edited)")
        prev, expected_id, count = rec.hash, rec.id + 1, count + 1
    return Verification(True, count)
