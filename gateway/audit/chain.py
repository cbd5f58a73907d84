"""The hash chain: records linked onto the trail's tail (each names the hash of the one before it), and the
walk that checks every link and every record's hash.

The signed checkpoints and the prune anchor, which vouch for what the chain alone cannot (a cut tail, where a
pruned trail starts), are integrity.py's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.reading import iter_records
from gateway.audit.record import CONTENT_FIELDS, AuditRecord, canonical, chain_hash

GENESIS = "0" * 64


def link(records: list[AuditRecord], tail_id: int | None, tail_hash: str | None) -> list[AuditRecord]:
    return [rec for rec, _ in link_with_bodies(records, tail_id, tail_hash)]


def link_with_bodies(records: list[AuditRecord], tail_id: int | None,
                     tail_hash: str | None) -> list[tuple[AuditRecord, bytes]]:
    """The records linked onto the tail, each with the canonical bytes its hash covers."""
    next_id, prev = (tail_id + 1, tail_hash) if tail_id is not None and tail_hash else (1, GENESIS)
    out: list[tuple[AuditRecord, bytes]] = []
    for rec in records:
        linked = AuditRecord(**{name: getattr(rec, name) for name in CONTENT_FIELDS}, id=next_id, prev_hash=prev)
        body = canonical(linked)
        # Set on our own fresh copy, once its other fields are final: replace() would cost as much again.
        object.__setattr__(linked, "hash", hashlib.sha256(body).hexdigest())
        out.append((linked, body))
        prev, next_id = linked.hash, next_id + 1
    return out


@dataclass(frozen=True)
class Verification:
    ok: bool
    count: int
    bad_id: int | None = None
    problem: str | None = None
    last: tuple[int, str] | None = None  # id and hash of the last record found intact


async def verify(engine: AsyncEngine, start: tuple[int, str] = (1, GENESIS), *, resume: bool = False) -> Verification:
    """Walk the chain oldest first from `start` (first id, its prev_hash: the anchor after a prune);
    name the first record that does not hold. A walk from the anchor reads every record, so one slipped in
    before it is found too; with `resume`, only the records from `start` on are read (the ones before were
    found intact by an earlier walk)."""
    expected_id, prev = start
    count = 0
    last: tuple[int, str] | None = None
    async for rec in iter_records(engine, after=expected_id - 1 if resume else 0):
        if rec.id != expected_id:
            return Verification(False, count, rec.id, f"record {expected_id} is missing before record {rec.id}")
        if rec.prev_hash != prev:
            return Verification(False, count, rec.id, "prev_hash does not match the record before it "
                                "(a record was deleted, inserted or reordered)")
        if chain_hash(rec) != rec.hash:
            return Verification(False, count, rec.id, "its content does not match its hash (the record was edited)")
        prev, expected_id, count = rec.hash, rec.id + 1, count + 1
        last = (rec.id, rec.hash)
    return Verification(True, count, last=last)
