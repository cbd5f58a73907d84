"""Following the trail: records handed on as they commit, oldest first, resumable after the last id handed on.

`agentgate audit export --follow` (gateway/cli/follow.py) and `GET /admin/v1/audit/stream`
(gateway/core/admin/stream.py) read through a `Follow`: a page of the records with ids above the last one
handed on, then the next page, and when a page comes back short, a pause of POLL_SECONDS before asking again.
The chain's append notifies nobody (a NOTIFY would cost every group of records a statement more, for readers
that are rarely there), so a record reaches a follower at most POLL_SECONDS after its commit, plus one read.

Why asking for `id > last` misses nothing: ids become visible in the order they are given. Every append to
the trail — the writer's groups (writer.py on SQLite; pgwriter.py through APPEND_FUNCTION or its locked
transaction, gateway/store/pgchain.py) and a prune's own record (integrity.py, append_locked) — reads the
chain's tail and inserts the ids after it while holding the chain's lock, and holds it until its transaction
has committed: on PostgreSQL the transaction-level advisory lock CHAIN_LOCK, which every replica, worker and
command takes; on SQLite the database's one write lock (BEGIN IMMEDIATE). PostgreSQL makes a transaction's
commit visible before it releases the transaction's locks; SQLite has one writer at a time. So the next
append reads a tail that includes every earlier commit, gives higher ids, and commits after them: a read that
sees record N sees every record below N. (tests/test_audit_follow.py holds every insert into the trail to
those places, and follows while replicas write at once.)

What a follower does check: that each record follows the one before it, its id the next and its prev_hash
that one's hash. A break — records deleted, or pruned before they were read, a cut tail written again — is
reported (`Page.breaks`), not hidden; the records are handed on all the same. A filtered follow skips
records by design and is not checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.reading import AuditFilter, get_record, page_after
from gateway.audit.record import AuditRecord

POLL_SECONDS = 0.5  # a short page waits this long before the next read: a record's latency to a follower
PAGE = 500  # records per read (the most one follower holds at once)


@dataclass(frozen=True)
class Page:
    records: list[AuditRecord]
    breaks: list[str]  # where the chain does not run on from the record before (one sentence each)
    full: bool  # as many records as asked for: more may wait, read again at once


@dataclass
class Follow:
    """A follower's place in the trail: `after`, the last id handed on (0: from the start), and that record's
    hash when known, which the next record must name as its prev_hash."""

    engine: AsyncEngine
    after: int = 0
    filter: AuditFilter | None = None
    page: int = PAGE
    last_hash: str | None = field(default=None, repr=False)

    async def start(self) -> None:
        """Resuming after a record still in the trail: learn its hash, so the first record read is checked to
        follow it."""
        if self.after > 0 and self.filter is None and self.last_hash is None:
            record = await get_record(self.engine, self.after)
            self.last_hash = record.hash if record is not None else None

    async def read(self) -> Page:
        """The next page (empty when nothing new has committed), and the place moved past it."""
        records = await page_after(self.engine, self.after, self.filter, self.page)
        breaks = [] if self.filter is not None else self._breaks(records)
        if records:
            self.after, self.last_hash = records[-1].id, records[-1].hash
        return Page(records, breaks, len(records) >= self.page)

    def _breaks(self, records: list[AuditRecord]) -> list[str]:
        out: list[str] = []
        prev_id, prev_hash = self.after, self.last_hash
        for rec in records:
            if prev_id and rec.id != prev_id + 1:
                out.append(f"records {prev_id + 1} to {rec.id - 1} are not in the trail (deleted, or pruned "
                           "before they were read)")
            elif prev_hash is not None and rec.prev_hash != prev_hash:
                out.append(f"record {rec.id} does not follow record {prev_id} as it was read: its prev_hash is "
                           "not that record's hash (the trail was cut and written again, or edited)")
            prev_id, prev_hash = rec.id, rec.hash
        return out


class Streams:
    """The admin API's open streams of the trail in this process, and their bounds: at most `max_open` at once,
    each at most `max_seconds` long (then it ends cleanly and its client resumes after its last id), with an
    empty line every `heartbeat_seconds` while no record is sent."""

    def __init__(self, max_open: int = 16, max_seconds: float = 3600.0, heartbeat_seconds: float = 15.0):
        self.max_open = max_open
        self.max_seconds = max_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.open = 0

    @property
    def stall_seconds(self) -> float:
        """How long one chunk may wait for a client that reads nothing before its connection is closed: the
        stream's slot must not be held by a client that stopped reading."""
        return max(5.0, 2 * self.heartbeat_seconds)

    def take(self) -> Slot | None:
        """A place among the open streams, or None when all are taken."""
        if self.open >= self.max_open:
            return None
        self.open += 1
        return Slot(self)


class Slot:
    """One open stream's place; given back once, however the stream ends (or never starts)."""

    def __init__(self, streams: Streams):
        self._streams: Streams | None = streams

    def release(self) -> None:
        if self._streams is not None:
            self._streams.open -= 1
            self._streams = None
