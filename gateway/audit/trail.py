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
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import asyncpg
import orjson
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.common.errors import Unavailable
from gateway.common.textsafe import cap, spreadsheet_cell
from gateway.store.database import anchor as anchor_table
from gateway.store.database import asyncpg_dsn, reading
from gateway.store.database import audit as audit_table
from gateway.store.files import StoreLost

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
    token_id: str | None = None  # the verified token's jti: what `revoke token` takes
    client: str | None = None  # the caller's address (a trusted proxy's X-Forwarded-For), or "cli"
    user_agent: str | None = None  # capped (textsafe.cap)
    trace_id: str | None = None  # the W3C traceparent's trace-id, when the request carried a valid one
    # When `query` was capped (bounded_query): the length in bytes and the SHA-256 of the whole text or body.
    query_bytes: int | None = None
    query_sha256: str | None = None
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
               "approved_by", "rule", "columns", "masked", "transport", "row_filter", "token_id", "client",
               "user_agent", "trace_id", "query_bytes", "query_sha256", "prev_hash", "hash")
# Fields added after the first release: left out of the hashed content while null, so records written
# before they existed keep their hashes.
LATER_FIELDS = ("row_filter", "token_id", "client", "user_agent", "trace_id", "query_bytes", "query_sha256")
assert set(FIELD_ORDER) == {f.name for f in fields(AuditRecord)}


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_time(moment: dt.datetime) -> str:
    if moment.tzinfo is not dt.UTC:  # now() and the store give UTC already
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        moment = moment.astimezone(dt.UTC)
    if moment.year < 1000:  # strftime's %Y does not pad these; the hashed form must not change
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # isoformat is a fifth of strftime's cost and gives the same text once "+00:00" becomes "Z".
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"


def parse_time(value: str) -> dt.datetime:
    """ISO 8601 (a trailing Z allowed); naive times are UTC. ValueError for anything else, also for a time whose
    zone takes it out of years 1-9999 in UTC (`9999-12-31T23:59-23:59`: no comparison with it can be made)."""
    if not (value.isascii() and value.isprintable()):  # ISO 8601 is; fromisoformat ignores what follows a NUL
        raise ValueError(f"{value[:40]!r} is not an ISO 8601 time")
    moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    if moment.tzinfo is not dt.UTC:
        try:
            moment.astimezone(dt.UTC)
        except OverflowError:
            raise ValueError(f"{value[:40]!r} is out of range in UTC") from None
    return moment


# The hashed fields, already in sorted order: the dict is built sorted, so the encoder need not sort it
# (same bytes as json.dumps(..., sort_keys=True), for less work per record).
_HASHED = tuple(sorted(name for name in FIELD_ORDER if name != "hash"))
_CANONICAL_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# AuditRecord's fields but the chain link, for building a linked copy without dataclasses.replace (slow).
_CONTENT = tuple(f.name for f in fields(AuditRecord) if f.name not in ("id", "prev_hash", "hash"))


_FLOAT_FIELDS = tuple(f.name for f in fields(AuditRecord) if str(f.type).startswith("float"))


def canonical(record: AuditRecord) -> bytes:
    """The bytes the chain hashes: every field but `hash`, in a fixed, typed-stable form."""
    body = {name: getattr(record, name) for name in _HASHED}
    body["time"] = format_time(record.time)
    for name in LATER_FIELDS:
        if body[name] is None:
            del body[name]
    if all(_same_in_orjson(getattr(record, name)) for name in _FLOAT_FIELDS):
        try:
            return orjson.dumps(body)  # a fifth of json's cost; the same bytes (strings, ints, these floats)
        except TypeError:
            pass  # what orjson refuses (a lone surrogate, an int over 64 bits): json's own answer, as ever
    return _CANONICAL_JSON.encode(body).encode()


def _same_in_orjson(value: object) -> bool:
    """orjson writes floats as json does (shortest repr) except the exponent form, used by json below 1e-4 and
    from 1e16 on ("1e-05", orjson "1e-5"), and NaN/Infinity (orjson: null). Those go through json."""
    return not isinstance(value, float) or value == 0.0 or 1e-4 <= abs(value) < 1e16


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


# A request waits at most write_timeout for its record (then it is answered 503). The writer gives a group up at
# the first deadline among its records; a waiter is answered this much after its own at the latest, should the
# writer be held up beyond it (waiting for a SQLite thread to finish the statement it abandoned).
WAITER_GRACE_SECONDS = 0.05
# Records in doubt (below) kept for checking, at most; beyond, the oldest are given up (and logged).
DOUBT_MAX = 10_000
# A PostgreSQL write abandoned at its deadline is checked this long after it: past any error in the measure of
# the server's clock (the append refuses to insert once the server's clock passes the deadline).
SETTLE_SECONDS = 1.0


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
        self._unsettled = _Unsettled()
        self._pg = (_PgChainWriter(engine, self._unsettled, write_timeout) if engine.dialect.name == "postgresql"
                    else None)

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
        """Check the records in doubt and write the corrections owed (_Unsettled), if the store answers in time."""
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
        item = _Item(_storable(record), fut, loop.time() + self._timeout)
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
                self._unsettled.owe(_correction(rec))

    async def _write(self, records: list[AuditRecord], deadline: float) -> list[AuditRecord]:
        """The records stored, linked (after whatever corrections are owed: _Unsettled). `deadline`:
        time.time() after which they must not be stored (their waiters are being answered 503)."""
        if self._pg is not None:
            return await self._pg.write(records, deadline)
        unsettled = self._unsettled
        async with self._engine.begin() as conn:  # BEGIN IMMEDIATE: the chain's lock
            if unsettled.doubts:  # under the lock, what a write given up did is known: settled now
                found = (await conn.execute(
                    select(audit_table).where(audit_table.c.id.in_(unsettled.doubted_ids())))).all()
                unsettled.settle([_from_row(row) for row in found])
            group = [*unsettled.owed[:OWED_PER_GROUP], *records]
            if not group:
                return []
            tail = (await conn.execute(
                select(audit_table.c.id, audit_table.c.hash).order_by(audit_table.c.id.desc()).limit(1))).first()
            if tail is None:  # an empty trail may still go on from a prune's anchor
                tail = (await conn.execute(select((anchor_table.c.first_id - 1).label("id"),
                                                  anchor_table.c.prev_hash.label("hash")))).first()
            out = _chain(group, tail.id if tail else None, tail.hash if tail else None)
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


# Owed corrections written ahead of one group, at most: after an outage that left many, each write stays small
# (one that misses its deadline would hand them back, and the next would carry them all again).
OWED_PER_GROUP = 64


# How a correction's reason begins, the corrected record's id right after it (usage counts by it).
CORRECTION_PREFIX = "answered 503 (audit write timed out): record "
CORRECTED_ID = re.compile(re.escape(CORRECTION_PREFIX) + r"([0-9]{1,19}) ")


def _correction(stored: AuditRecord) -> AuditRecord:
    """The record of what a request was answered when its own record was stored after its answer left: 503, no
    data. Same request (request_id, agent, dataset, query...); `reason` names the record it corrects."""
    return replace(stored, time=now(), decision="error", status=503, rows=None, bytes=None, response_sha256=None,
                   reason=f"{CORRECTION_PREFIX}{stored.id} of this request was stored "
                          "after its answer left and served nothing", id=0, prev_hash="", hash="")



class _Unsettled:
    """Audit records whose requests were answered 503 while their write was abandoned after being sent (its
    deadline passed, the connection was lost): the store may hold them all the same, claiming an answer that
    never left. Each is checked under the chain's lock at a later write (on PostgreSQL once SETTLE_SECONDS have
    passed: no statement held up on the way can insert by then), and one found stored is followed by its
    correction (_correction), so the trail says what the request was really answered. Corrections are owed
    until written, and written first in the next group; one whose own write is in doubt is checked alike.

    The writers say what they send (`sending`) and what came of it (`stored`, `not_stored`); the trail says
    which waiters were answered 503 when a write is given up (`abandon`). A record in doubt is kept as its id
    and hash (its content, if stored, is read back from the store): a long silence costs little memory."""

    def __init__(self) -> None:
        # (id, hash) of each record in doubt as linked and sent; and, for a correction, the correction itself
        self.doubts: list[tuple[int, str, AuditRecord | None]] = []
        self.owed: list[AuditRecord] = []  # corrections to write, ahead of the next group
        self.settle_after = 0.0  # time.time() before which a PostgreSQL check would not be conclusive
        self._sending: tuple[list[AuditRecord], int] | None = None  # a group sent, its first n the owed ones

    def sending(self, group: list[AuditRecord], corrections: int) -> None:
        self._sending = (group, corrections)

    def stored(self) -> int:
        """The group sent is committed; returns how many owed corrections led it (no longer owed)."""
        corrections = self._sending[1] if self._sending is not None else 0
        del self.owed[:corrections]
        self._sending = None
        return corrections

    def not_stored(self) -> None:
        self._sending = None

    def abandon(self, answered: list[bool], deadline: float) -> None:
        """The group sent was given up, whether or not the store committed it: its owed corrections, and the
        records whose waiters were `answered` 503, are in doubt. `deadline`: the group's, time.time()."""
        if self._sending is None:
            return
        group, corrections = self._sending
        self._sending = None
        del self.owed[:corrections]
        self.doubts.extend((rec.id, rec.hash, rec) for rec in group[:corrections])
        self.doubts.extend((rec.id, rec.hash, None) for rec, told in zip(group[corrections:], answered, strict=True)
                           if told)
        if len(self.doubts) > DOUBT_MAX:
            lost = self.doubts[:-DOUBT_MAX]
            del self.doubts[:-DOUBT_MAX]
            log.error("%d audit record(s) answered 503 after a write given up are no longer checked (ids %d to "
                      "%d): the trail may hold them as they would have been answered", len(lost), lost[0][0],
                      lost[-1][0])
        self.settle_after = max(self.settle_after, deadline + SETTLE_SECONDS)

    def owe(self, correction: AuditRecord) -> None:
        self.owed.append(correction)

    def doubted_ids(self) -> list[int]:
        return [rid for rid, _, _ in self.doubts]

    def settle(self, found: list[AuditRecord]) -> None:
        """`found`: the records the store holds at the ids in doubt (read under the chain's lock)."""
        there = {rec.id: rec for rec in found}
        for rid, digest, correction in self.doubts:
            stored = there.get(rid)
            if stored is not None and stored.hash != digest:
                stored = None  # another writer's record took that id: ours was not stored
            if correction is not None and stored is None:
                self.owed.append(replace(correction, id=0, prev_hash="", hash=""))  # to be written again
            elif correction is None and stored is not None:
                log.warning("audit record %d was stored after its request was answered 503 (its write was given "
                            "up); a correction record follows it", rid)
                self.owed.append(_correction(stored))
        self.doubts.clear()


def _chain(records: list[AuditRecord], tail_id: int | None, tail_hash: str | None) -> list[AuditRecord]:
    return [rec for rec, _ in _chain_with_bodies(records, tail_id, tail_hash)]


def _chain_with_bodies(records: list[AuditRecord], tail_id: int | None,
                       tail_hash: str | None) -> list[tuple[AuditRecord, bytes]]:
    """The records linked onto the tail, each with the canonical bytes its hash covers."""
    next_id, prev = (tail_id + 1, tail_hash) if tail_id is not None and tail_hash else (1, GENESIS)
    out: list[tuple[AuditRecord, bytes]] = []
    for rec in records:
        linked = AuditRecord(**{name: getattr(rec, name) for name in _CONTENT}, id=next_id, prev_hash=prev)
        body = canonical(linked)
        # Set on our own fresh copy, once its other fields are final: replace() would cost as much again.
        object.__setattr__(linked, "hash", hashlib.sha256(body).hexdigest())
        out.append((linked, body))
        prev, next_id = linked.hash, next_id + 1
    return out


APPEND_FUNCTION = "agentgate_audit_append_v2"
# The PostgreSQL append, one round trip whether it succeeds or not: under the chain's lock, and with a snapshot
# taken after the lock (every statement of a volatile function takes its own, so rows committed by whoever held
# the lock before are seen), it inserts the group only if the chain's tail is the one the group was linked
# onto; otherwise it inserts nothing and returns the tail as it is, to link onto and ask again. The records
# come as JSON objects keyed by column (json_populate_recordset: columns follow the table, no signature to
# change when a field is added). It refuses (query_canceled) once the server's clock is past `deadline`: the
# writer has given the group up and its requests were answered 503, so a statement held up on the way (a
# silent network, a stuck proxy) and delivered late never stores records claiming what those requests were
# not answered. (v1, without the deadline, stays for replicas of an earlier release.)
APPEND_FUNCTION_DDL = f"""
CREATE OR REPLACE FUNCTION {APPEND_FUNCTION}(tail_id bigint, tail_hash text, records json, deadline timestamptz)
RETURNS TABLE (chain_id bigint, chain_hash text) LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    cur_id bigint;
    cur_hash text;
BEGIN
    PERFORM pg_advisory_xact_lock({CHAIN_LOCK});
    IF clock_timestamp() > deadline THEN
        RAISE EXCEPTION 'agentgate: audit group past its deadline (its requests were answered 503)'
            USING ERRCODE = 'query_canceled';
    END IF;
    SELECT a.id, a.hash INTO cur_id, cur_hash FROM audit AS a ORDER BY a.id DESC LIMIT 1;
    IF cur_id = tail_id AND cur_hash = tail_hash THEN
        INSERT INTO audit SELECT * FROM json_populate_recordset(NULL::audit, records);
    ELSE
        chain_id := cur_id;
        chain_hash := cur_hash;
        RETURN NEXT;
    END IF;
END
$fn$"""
APPEND_TRIES = 8  # then the locked transaction, which always gets through


_TEXT_FIELDS = tuple(f.name for f in fields(AuditRecord) if str(f.type).startswith("str"))

# No field of a record grows with what a client sends. The query (a body, SQL text, an MCP call's arguments, a
# proxied path) is kept whole up to QUERY_MAX_BYTES bytes of UTF-8, else its start, with the whole one's length
# and SHA-256 in query_bytes and query_sha256. Every other text a client, a token or an admin's input can reach
# is kept whole up to FIELD_MAX characters, else as textsafe.cap keeps it (its start, its length and the start of
# its SHA-256, within the limit). Real values are far shorter: names, addresses, ids, a policy line.
QUERY_MAX_BYTES = 4096
FIELD_MAX = {"agent": 256, "on_behalf_of": 256, "work_unit": 128, "dataset": 1024, "reason": 1024,
             "approved_by": 512, "rule": 1024, "columns": 4096, "masked": 4096, "row_filter": 4096,
             "token_id": 256, "client": 256, "user_agent": 256}
_CAPPED = tuple(FIELD_MAX.items())
_QUERY_FITS = QUERY_MAX_BYTES // 4  # characters that surely fit: UTF-8 takes at most 4 bytes a character
_SHORTEST_CAP = min(_QUERY_FITS, *FIELD_MAX.values())  # no text longer than this: nothing to cap (one C call)


def bounded_query(text: str | None, raw: bytes | None = None) -> tuple[str | None, int | None, str | None]:
    """(the query as a record keeps it, query_bytes, query_sha256): the text whole, None, None when it fits in
    QUERY_MAX_BYTES bytes of UTF-8; else its first QUERY_MAX_BYTES bytes (whole characters), and the length and
    SHA-256 of the whole: of `raw`, the body as it came, when the text was decoded from it."""
    if text is None or len(text) <= _QUERY_FITS:
        return text, None, None
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= QUERY_MAX_BYTES:
        return text, None, None
    whole = raw if raw is not None else data
    return data[:QUERY_MAX_BYTES].decode("utf-8", "ignore"), len(whole), hashlib.sha256(whole).hexdigest()


def _bounded(record: AuditRecord) -> AuditRecord:
    """The record with every field within its bound (above), whichever way in built it."""
    over: dict[str, Any] = {}
    for name, limit in _CAPPED:
        value = getattr(record, name)
        if value is not None and len(value) > limit:
            over[name] = cap(value, limit)
    query = record.query
    if query is not None and len(query) > _QUERY_FITS:
        text, size, digest = bounded_query(query)
        if size is not None:
            over["query"] = text
            if record.query_sha256 is None:  # else the way in measured the body as received
                over["query_bytes"], over["query_sha256"] = size, digest
    return replace(record, **over) if over else record


def _storable(record: AuditRecord) -> AuditRecord:
    """The record bounded (_bounded), and with what a store cannot hold replaced by U+FFFD: NUL characters
    (PostgreSQL's text has none) and lone surrogates (not UTF-8), which a request body or a token's claims may
    carry. Such a request is then answered and recorded like any other, not refused for want of a record."""
    texts = [v for name in _TEXT_FIELDS if isinstance(v := getattr(record, name), str)]
    if texts and max(map(len, texts)) > _SHORTEST_CAP and (bounded := _bounded(record)) is not record:
        record = bounded
        texts = [v for name in _TEXT_FIELDS if isinstance(v := getattr(record, name), str)]
    joined = "".join(texts)
    if joined.isascii() and "\x00" not in joined:  # the common case, in two C calls
        return record
    cleaned: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        value = getattr(record, name)
        if isinstance(value, str) and (fixed := _clean(value)) is not value:
            cleaned[name] = fixed
    return replace(record, **cleaned) if cleaned else record


def _clean(text: str) -> str:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _json_safe(record: AuditRecord) -> bool:
    """JSON carries the record exactly into its columns (floats finite, a four-digit year)."""
    return record.time.year >= 1000 and all(
        (v := getattr(record, name)) is None or math.isfinite(v) for name in _FLOAT_FIELDS)


class _PgChainWriter:
    """PostgreSQL: the writer's own asyncpg connection. A group of records is linked onto the tail this writer
    last saw and appended by APPEND_FUNCTION in one round trip (one statement, its own transaction and
    commit). When another writer (replica, worker, CLI) has moved the tail on, the function answers with the
    new tail, and the group is linked onto that and sent again. A trail still empty or emptied by a prune, and
    records JSON cannot carry, take the locked transaction (lock, tail, insert, commit)."""

    _INSERT = 'INSERT INTO audit ({}) VALUES ({})'.format(
        ", ".join(f'"{f}"' for f in FIELD_ORDER), ", ".join(f"${i}" for i in range(1, len(FIELD_ORDER) + 1)))
    _APPEND = f"SELECT chain_id, chain_hash FROM {APPEND_FUNCTION}($1, $2, $3, $4)"

    def __init__(self, engine: AsyncEngine, unsettled: _Unsettled, timeout: float):
        self._dsn = asyncpg_dsn(engine)
        self._unsettled = unsettled
        self._timeout = timeout
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
            # group was committed (the trail settles that later: _Unsettled): start afresh, tail included.
            self._conn, self._tail = None, None
            conn.terminate()
            raise
        return out[unsettled.stored():]

    async def _connect(self) -> Any:
        # A transaction this writer leaves open (the locked path, the network gone silent mid-way) is ended by
        # the server after write_timeout: it holds the chain's lock, which every replica's writer needs.
        idle_ms = str(max(1, round(self._timeout * 1000)))
        conn = await asyncpg.connect(self._dsn, timeout=self._timeout,
                                     server_settings={"idle_in_transaction_session_timeout": idle_ms})
        try:
            try:
                async with conn.transaction():  # under the lock: replicas starting at once replace it in turn
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", CHAIN_LOCK)
                    await conn.execute(APPEND_FUNCTION_DDL)
                self._function = True
            except asyncpg.PostgresError as exc:
                # A store role that may not create (or replace another role's) functions: use the function if
                # it is there, else the locked transaction for every group. Slower, never wrong.
                self._function = bool(await conn.fetchval(
                    "SELECT to_regprocedure($1) IS NOT NULL", f"{APPEND_FUNCTION}(bigint,text,json,timestamptz)"))
                log.warning("cannot create %s (%s); audit groups are written %s", APPEND_FUNCTION, exc,
                            "with the existing one" if self._function else "in locked transactions")
            # The server's clock against ours (to the round trip's half), for the deadline the append checks.
            before = time.time()
            server_now = await conn.fetchval("SELECT clock_timestamp()")
            self._offset = server_now.timestamp() - (before + time.time()) / 2
            if self._function:  # the tail, so that the first group goes the one-statement way too
                tail = await conn.fetchrow("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")
                self._tail = (tail["id"], tail["hash"]) if tail is not None else None
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _settle(self, conn: Any) -> None:
        """Which records in doubt the store holds, read under the chain's lock: a statement that took it before
        has committed by then, and one that takes it after finds its deadline passed and stores nothing."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", CHAIN_LOCK)
            rows = await conn.fetch("SELECT * FROM audit WHERE id = ANY($1::bigint[])", self._unsettled.doubted_ids())
        self._unsettled.settle([AuditRecord(**dict(row)) for row in rows])

    async def _append(self, conn: Any, records: list[AuditRecord], corrections: int,
                      deadline: dt.datetime) -> list[AuditRecord] | None:
        """The group appended in one round trip per try; None if the locked transaction must do it."""
        if not self._function or not all(_json_safe(r) for r in records):
            return None
        for _ in range(APPEND_TRIES):
            if self._tail is None:
                return None
            linked = _chain_with_bodies(records, *self._tail)
            # The canonical bytes are the record as JSON (bar its hash, and later fields while null): the
            # stored row is, by construction, what the hash covers.
            payload = ",".join(f'{body[:-1].decode()},"hash":"{rec.hash}"}}' for rec, body in linked)
            self._unsettled.sending([rec for rec, _ in linked], corrections)
            moved = await conn.fetchrow(self._APPEND, *self._tail, f"[{payload}]", deadline)
            if moved is None:
                return [rec for rec, _ in linked]
            self._unsettled.not_stored()
            tail_id, tail_hash = moved["chain_id"], moved["chain_hash"]
            self._tail = (tail_id, tail_hash) if tail_id is not None else None
        return None

    async def _append_locked(self, conn: Any, records: list[AuditRecord], corrections: int) -> list[AuditRecord]:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", CHAIN_LOCK)
            tail = await conn.fetchrow("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")
            if tail is None:  # an empty trail may still go on from a prune's anchor
                tail = await conn.fetchrow("SELECT first_id - 1 AS id, prev_hash AS hash FROM audit_anchor")
            out = _chain(records, tail["id"] if tail else None, tail["hash"] if tail else None)
            self._unsettled.sending(out, corrections)
            await conn.executemany(self._INSERT, [tuple(getattr(r, f) for f in FIELD_ORDER) for r in out])
        return out

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


# The commands' own records (revoke, approve, prune...) wait as long as their store engine does (store.py).
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
    out = _chain([_storable(r) for r in records], *(tail or (None, None)))
    await conn.execute(insert(audit_table), [{f: getattr(r, f) for f in FIELD_ORDER} for r in out])
    return out


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
    async with reading(engine).connect() as conn:
        row = (await conn.execute(select(audit_table).where(audit_table.c.id == rid))).first()
    return _from_row(row) if row is not None else None


async def list_records(engine: AsyncEngine, f: AuditFilter, limit: int = 100) -> list[AuditRecord]:
    stmt = _where(select(audit_table), f).order_by(audit_table.c.id.desc()).limit(limit)
    async with reading(engine).connect() as conn:
        return [_from_row(r) for r in (await conn.execute(stmt)).fetchall()]


async def iter_records(engine: AsyncEngine, f: AuditFilter | None = None,
                       chunk: int = 1000, after: int = 0) -> AsyncIterator[AuditRecord]:
    """Oldest first (ids above `after`), in chunks, so an export of millions of records stays in bounded
    memory."""
    last = after
    while True:
        stmt = select(audit_table).where(audit_table.c.id > last)
        if f is not None:
            stmt = _where(stmt, f)
        stmt = stmt.order_by(audit_table.c.id).limit(chunk)
        async with reading(engine).connect() as conn:
            rows = (await conn.execute(stmt)).fetchall()
        if not rows:
            return
        for row in rows:
            rec = _from_row(row)
            yield rec
        last = rows[-1].id


async def export_lines(engine: AsyncEngine, fmt: str, f: AuditFilter | None = None) -> AsyncIterator[str]:
    """The trail as JSON lines or CSV (header first), oldest first, one record at a time. JSON lines are exact;
    a CSV cell that a spreadsheet would run as a formula starts with a single quote (textsafe.spreadsheet_cell)."""
    if fmt == "jsonl":
        async for rec in iter_records(engine, f):
            yield json.dumps(rec.to_dict(), separators=(",", ":")) + "\n"
        return
    buffer = io.StringIO()
    # CRLF ends a row (RFC 4180), so the writer quotes every cell holding a CR or an LF: a bare CR in an agent's
    # name would otherwise end the row in a spreadsheet and let the rest of the cell forge a row of its own.
    writer = csv.DictWriter(buffer, fieldnames=list(FIELD_ORDER), lineterminator="\r\n")
    writer.writeheader()
    yield buffer.getvalue()
    async for rec in iter_records(engine, f):
        buffer.seek(0)
        buffer.truncate()
        writer.writerow({k: spreadsheet_cell(v) if isinstance(v, str) else v for k, v in rec.to_dict().items()})
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
    async with reading(engine).connect() as conn:
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
