"""What keeps the trail verifiable beyond its own hash chain: signed checkpoints and the prune anchor.

The chain detects an edited, inserted, deleted or reordered record, but not a
cut tail: deleting the newest records leaves a valid, shorter chain. A
checkpoint is a signed (HMAC, key from config) statement "record N had hash H
at time T"; the gateway stores one periodically and logs it, and reviewers
may keep copies elsewhere (`audit checkpoint`). Verification checks every
checkpoint still matches the chain, so a cut tail that a checkpoint covers is
found. After `audit prune`, the anchor says where the kept chain starts and
which hash precedes it, so what remains still verifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
from dataclasses import asdict, dataclass, replace
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.audit.chain import GENESIS, Verification, verify
from gateway.audit.reading import get_record
from gateway.audit.record import AuditRecord
from gateway.audit.writer import append_locked
from gateway.common.clock import format_time, now, parse_time
from gateway.store import CHAIN_LOCK, backend_for, reading
from gateway.store import anchor as anchor_table
from gateway.store import audit as audit_table
from gateway.store import checkpoints as checkpoint_table

log = logging.getLogger("agentgate.audit")
PREFIX = "agentgate-checkpoint"


def sign(key: str, *parts: object) -> str:
    return hmac.new(key.encode(), "|".join(str(p) for p in parts).encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    record_id: int
    record_hash: str
    time: str
    signature: str

    def token(self) -> str:
        """The form to keep elsewhere and hand back to `audit verify --checkpoint`."""
        return f"{PREFIX}:{self.record_id}:{self.record_hash}:{self.time}:{self.signature}"

    def valid(self, key: str) -> bool:
        return hmac.compare_digest(self.signature, sign(key, self.record_id, self.record_hash, self.time))


def parse_checkpoint(token: str) -> Checkpoint:
    parts = token.strip().split(":", 3)
    try:
        prefix, rid, digest, rest = parts
        moment, signature = rest.rsplit(":", 1)
        if prefix != PREFIX or len(digest) != 64 or len(signature) != 64:
            raise ValueError
        return Checkpoint(int(rid), digest, moment, signature)
    except ValueError:
        raise ValueError(f"not a checkpoint: expected {PREFIX}:ID:HASH:TIME:SIGNATURE") from None


async def take_checkpoint(engine: AsyncEngine, key: str) -> Checkpoint | None:
    """Sign and store the chain's current tail; None on an empty trail."""
    async with engine.begin() as conn:
        tail = (await conn.execute(select(audit_table.c.id, audit_table.c.hash)
                                   .order_by(audit_table.c.id.desc()).limit(1))).first()
        if tail is None:
            return None
        moment = format_time(now())
        cp = Checkpoint(int(tail.id), tail.hash, moment, sign(key, tail.id, tail.hash, moment))
        await conn.execute(insert(checkpoint_table).values(time=parse_time(moment), record_id=cp.record_id,
                                                           record_hash=cp.record_hash, signature=cp.signature))
    return cp


async def stored_checkpoints(engine: AsyncEngine) -> list[Checkpoint]:
    async with reading(engine).connect() as conn:
        rows = (await conn.execute(select(checkpoint_table).order_by(checkpoint_table.c.id))).fetchall()
    return [Checkpoint(int(r.record_id), r.record_hash, format_time(r.time), r.signature) for r in rows]


@dataclass(frozen=True)
class Anchor:
    first_id: int
    prev_hash: str
    pruned: int
    before: str
    signature: str | None
    record_id: int | None = None  # the last prune's own audit record

    def valid(self, key: str) -> bool:
        return self.signature is not None and hmac.compare_digest(
            self.signature, sign(key, self.first_id, self.prev_hash, self.pruned, self.before))


async def load_anchor(engine: AsyncEngine) -> Anchor | None:
    async with reading(engine).connect() as conn:
        return await _anchor(conn)


async def _first_kept(conn: AsyncConnection, before: dt.datetime) -> tuple[int, Any] | None:
    """Where a prune before `before` cuts the chain (always a prefix): the first record it keeps, the oldest one
    at or after `before` (one past the tail when every record is older), and the tail; None on an empty trail."""
    c = audit_table.c
    keep = (await conn.execute(select(func.min(c.id)).where(c.time >= before))).scalar()
    tail = (await conn.execute(select(c.id, c.hash).order_by(c.id.desc()).limit(1))).first()
    if tail is None:
        return None
    return (int(keep) if keep is not None else int(tail.id) + 1), tail


async def prunable(engine: AsyncEngine, before: dt.datetime) -> int:
    """How many records a prune before `before` would delete now (`audit prune --dry-run`). Changes nothing."""
    async with reading(engine).connect() as conn:
        cut = await _first_kept(conn, before)
        if cut is None:
            return 0
        return int((await conn.execute(select(func.count()).where(audit_table.c.id < cut[0]))).scalar() or 0)


async def prune(engine: AsyncEngine, before: dt.datetime, key: str | None,
                record: AuditRecord | None = None) -> tuple[int, Anchor | None]:
    """Delete the records older than `before` (a prefix of the chain) and move the anchor after them. With
    `record` (who prunes: time, request id, agent, transport), the prune's own audit record is appended in the
    same transaction, so no prune happens without its record: `rows` the records deleted, `query` the
    cut-off and the new anchor, `reason` a sentence."""
    async with engine.begin() as conn:
        await backend_for(conn).lock(conn, CHAIN_LOCK)  # SQLite: BEGIN IMMEDIATE holds it already
        c = audit_table.c
        moment = format_time(before)
        old = await _anchor(conn)
        cut = await _first_kept(conn, before)
        last_pruned = None
        if cut is not None:
            last_pruned = (await conn.execute(select(c.hash).where(c.id == cut[0] - 1))).scalar()
        if cut is None or last_pruned is None:
            if record is not None:  # nothing older than `before`: the attempt is recorded all the same
                tail = (cut[1].id, cut[1].hash) if cut is not None else (
                    (old.first_id - 1, old.prev_hash) if old is not None else None)
                await append_locked(conn, [replace(
                    record, rows=0, query=json.dumps({"before": moment, "pruned": 0}),
                    reason=f"nothing to prune before {moment}")], tail)
            return 0, old
        first_kept, tail = cut
        pruned = (await conn.execute(delete(audit_table).where(c.id < first_kept))).rowcount or 0
        await conn.execute(delete(checkpoint_table).where(checkpoint_table.c.record_id < first_kept))
        total = (old.pruned if old else 0) + pruned
        signature = sign(key, first_kept, last_pruned, total, moment) if key else None
        record_id = None
        if record is not None:
            facts = {"before": moment, "pruned": pruned, "first_id": first_kept, "prev_hash": last_pruned,
                     "total_pruned": total}
            # The chain's tail after the cut: the old tail, or, when every record went, the anchor's.
            link = (tail.id, tail.hash) if tail.id >= first_kept else (first_kept - 1, last_pruned)
            [written] = await append_locked(conn, [replace(
                record, rows=pruned, query=json.dumps(facts),
                reason=f"pruned {pruned} records before {moment}; the trail now starts at record {first_kept}")],
                link)
            record_id = written.id
        values = dict(first_id=first_kept, prev_hash=last_pruned, pruned=total, before=before, time=now(),
                      signature=signature, record_id=record_id)
        if old is None:
            await conn.execute(insert(anchor_table).values(id=1, **values))
        else:
            await conn.execute(update(anchor_table).where(anchor_table.c.id == 1).values(**values))
        return pruned, Anchor(first_kept, last_pruned, total, moment, signature, record_id)


@dataclass(frozen=True)
class PruneFacts:
    """Where the trail starts after a prune, as `audit verify`, the review page and the admin API state it."""

    at: str  # when the last prune ran
    by: str | None  # who ran it, from its own audit record (None: the trail holds no record of it)
    pruned: int | None  # how many records it deleted (None: unknown, as `by`)
    total: int  # how many every prune so far deleted
    before: str  # its cut-off
    first_id: int  # the kept chain starts at this record ...
    prev_hash: str  # ... which follows this hash, the last deleted record's
    record_id: int | None  # the prune's own audit record
    signed: bool  # the anchor is signed ([audit] checkpoint_key); verification checks the signature

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        who = f"by {self.by} (record {self.record_id})" if self.by else "by whom the trail does not say"
        count = f"{self.pruned} records" if self.pruned is not None else "the records"
        return (f"the trail starts at record {self.first_id}, after a prune at {self.at} {who}: {count} before "
                f"{self.before} deleted ({self.total} by every prune); anchor: record {self.first_id} follows hash "
                f"{self.prev_hash}, {'signed' if self.signed else 'unsigned'}")


async def last_prune(engine: AsyncEngine) -> PruneFacts | None:
    """The last prune's facts, from the anchor and the prune's own record; None if the trail was never pruned.
    Two reads by primary key: cheap enough for every verification."""
    async with reading(engine).connect() as conn:
        row = (await conn.execute(select(anchor_table).where(anchor_table.c.id == 1))).first()
        if row is None:
            return None
        rec = None
        if row.record_id is not None:
            rec = (await conn.execute(select(audit_table.c.action, audit_table.c.agent, audit_table.c.rows,
                                             audit_table.c.query).where(audit_table.c.id == row.record_id))).first()
    try:  # the record must be this prune's: a prune record naming the same anchor
        ok = rec is not None and rec.action == "prune" and json.loads(rec.query or "{}").get("first_id") == int(
            row.first_id)
    except (ValueError, AttributeError):
        ok = False
    return PruneFacts(at=format_time(_utc(row.time)), by=rec.agent if ok and rec is not None else None,
                      pruned=int(rec.rows) if ok and rec is not None and rec.rows is not None else None,
                      total=int(row.pruned), before=format_time(_utc(row.before)), first_id=int(row.first_id),
                      prev_hash=row.prev_hash, record_id=int(row.record_id) if ok else None,
                      signed=row.signature is not None)


def _utc(moment: Any) -> dt.datetime:
    return parse_time(moment) if isinstance(moment, str) else moment


async def _anchor(conn: AsyncConnection) -> Anchor | None:
    row = (await conn.execute(select(anchor_table).where(anchor_table.c.id == 1))).first()
    if row is None:
        return None
    return Anchor(int(row.first_id), row.prev_hash, int(row.pruned), format_time(row.before), row.signature,
                  row.record_id)


@dataclass(frozen=True)
class Report:
    ok: bool
    count: int
    checkpoints: int
    bad_id: int | None = None
    problem: str | None = None
    # Where an incremental check may resume (set when ok), and whether this one was one.
    verified: Verified | None = None
    incremental: bool = False


@dataclass(frozen=True)
class Verified:
    """How far the chain was found intact, so the next check reads only what was added since (the review page
    checks on every view; a full walk of millions of records takes minutes). Records before `through` are
    not read again: an edit to one of those is found by the next full check (`audit verify`)."""

    start: tuple[int, str]  # the anchor the walk began from
    through: tuple[int, str] | None  # id and hash of the last record found intact (None: no records)
    count: int
    full_at: dt.datetime  # when the last walk from the anchor was made


async def verify_all(engine: AsyncEngine, key: str | None, external: list[Checkpoint] | None = None,
                     resume: Verified | None = None) -> Report:
    """The chain from its anchor (or, with `resume`, from where an earlier check left it, if the anchor is
    unchanged and its last record still holds), then every stored and external checkpoint against it."""
    anchor = await load_anchor(engine)
    if anchor is not None and key is not None and not anchor.valid(key):
        return Report(False, 0, 0, anchor.first_id, "the prune anchor's signature does not match (it was altered)")
    start = (anchor.first_id, anchor.prev_hash) if anchor else (1, GENESIS)
    incremental = False
    if resume is not None and resume.start == start and resume.through is not None:
        boundary = await get_record(engine, resume.through[0])
        incremental = boundary is not None and boundary.hash == resume.through[1]
    if incremental and resume is not None and resume.through is not None:
        tail = await verify(engine, (resume.through[0] + 1, resume.through[1]), resume=True)
        chain = Verification(tail.ok, resume.count + tail.count, tail.bad_id, tail.problem,
                                   tail.last or resume.through)
        full_at = resume.full_at
    else:
        chain = await verify(engine, start)
        full_at = now()
    if not chain.ok:
        return Report(False, chain.count, 0, chain.bad_id, chain.problem, incremental=incremental)
    checked = 0
    for cp in [*(await stored_checkpoints(engine)), *(external or [])]:
        if key is not None and not cp.valid(key):
            return Report(False, chain.count, checked, cp.record_id,
                          f"checkpoint of record {cp.record_id} has a bad signature (forged or altered)")
        if cp.record_id < start[0]:
            continue  # pruned on purpose, behind the anchor
        record = await get_record(engine, cp.record_id)
        if record is None:
            return Report(False, chain.count, checked, cp.record_id,
                          f"record {cp.record_id}, signed in a checkpoint at {cp.time}, is missing: "
                          "the trail was cut")
        if record.hash != cp.record_hash:
            return Report(False, chain.count, checked, cp.record_id,
                          f"record {cp.record_id} no longer has the hash its checkpoint at {cp.time} signed")
        checked += 1
    return Report(True, chain.count, checked, verified=Verified(start, chain.last, chain.count, full_at),
                  incremental=incremental)


class Checkpointer:
    """Signs the tail every `seconds` while the trail grows, and logs each checkpoint (a copy outside the store)."""

    def __init__(self, engine: AsyncEngine, key: str, seconds: float):
        self._engine, self._key, self._seconds = engine, key, seconds
        self._task: asyncio.Task[None] | None = None
        self._last: int | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-checkpoints")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._seconds)
            try:
                async with reading(self._engine).connect() as conn:
                    tail = (await conn.execute(select(func.max(audit_table.c.id)))).scalar()
                if tail is None or tail == self._last:
                    continue
                cp = await take_checkpoint(self._engine, self._key)
                if cp is not None:
                    self._last = cp.record_id
                    log.info("audit checkpoint %s", cp.token())
            except Exception as exc:  # the store is down: the next round tries again
                log.warning("audit checkpoint failed: %s", exc)
