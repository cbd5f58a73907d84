"""The PostgreSQL audit writer's optimistic append: one statement chained onto the tail it last saw, falling back
to the lock and a fresh tail whenever another writer moved the chain on, so the chain stays one valid chain."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit import (
    LATER_FIELDS,
    AuditRecord,
    AuditTrail,
    canonical,
    chain_hash,
    get_record,
    integrity,
    verify,
)
from gateway.common.errors import Unavailable
from gateway.store import audit as audit_table
from gateway.store import make_store_engine, pgchain
from tests.conftest import bearer, client_for, opened_store, write_workspace

pytestmark = [pytest.mark.integration, pytest.mark.postgres]
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
async def store(pg_store: str) -> AsyncIterator[AsyncEngine]:
    async with opened_store(pg_store) as engine:
        yield engine


def record(i: int, who: str = "a") -> AuditRecord:
    return AuditRecord(time=START + dt.timedelta(seconds=i), request_id=f"{who}-{i}", action="read",
                             decision="allow", status=200, agent=who, dataset="customers", duration_ms=1.5)


async def count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(audit_table))).scalar_one())


async def test_the_optimistic_path_is_taken_and_the_chain_holds(store: AsyncEngine) -> None:
    trail = AuditTrail(store)
    await trail.start()
    try:
        first = await trail.record(record(0))
        assert trail._pg is not None and trail._pg._tail == (first.id, first.hash)
        locked = trail._pg._append_locked

        async def refuse(conn: object, records: list[AuditRecord]) -> list[AuditRecord]:
            raise AssertionError("the one-statement append should have served this group")

        trail._pg._append_locked = refuse  # type: ignore[method-assign]
        # Concurrent callers share groups; every group after the first goes the one-statement way.
        got = await asyncio.gather(*(trail.record(record(i)) for i in range(1, 200)))
        trail._pg._append_locked = locked  # type: ignore[method-assign]
    finally:
        await trail.close()
    assert sorted(r.id for r in got) == list(range(2, 201))
    assert (await verify(store)).count == 200


async def test_two_writers_interleaving_fall_back_and_form_one_chain(store: AsyncEngine) -> None:
    other = make_store_engine(store.url.render_as_string(hide_password=False))
    a, b = AuditTrail(store), AuditTrail(other)
    await a.start()
    await b.start()
    try:
        for i in range(30):  # strictly alternating: every write finds its tail stale and must re-read it
            ra = await a.record(record(i, "a"))
            rb = await b.record(record(i, "b"))
            assert rb.id == ra.id + 1 and rb.prev_hash == ra.hash
        # And at once, with groups of several records racing each other.
        await asyncio.gather(*(t.record(record(i, who)) for i in range(100)
                               for t, who in ((a, "a"), (b, "b"))))
    finally:
        await a.close()
        await b.close()
        await other.dispose()
    result = await verify(store)
    assert result.ok and result.count == 260


async def test_stored_rows_are_what_the_hashes_cover(store: AsyncEngine) -> None:
    """The one-statement append sends records as JSON: every field must land in its column exactly (times to the
    microsecond, floats bit for bit, text as it was), or verification would fail."""
    odd = [AuditRecord(time=dt.datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=dt.UTC), request_id=f"r{i}",
                             action="read", decision="allow", status=200, agent=agent, query=query,
                             duration_ms=duration, source_ms=source, rows=rows, bytes=2**40, row_filter=rf)
           for i, (agent, query, duration, source, rows, rf) in enumerate([
               ("a", '{"limit": 1}', 0.1 + 0.2, 1e-5, 0, None),
               ("ünï €😀", 'tab\t"quote"\\ line\nend \u2028', 123456.789012, 1e16, None, "region = 'EU'"),
               ("b", None, float("nan"), None, 7, None),  # not JSON: the locked transaction takes it
               ("c", "\x01\x1f", 0.0, -0.0, 2**31 - 1, ""),
           ])]
    trail = AuditTrail(store)
    await trail.start()
    try:
        await trail.record(record(0))
        stored = [await trail.record(r) for r in odd]
    finally:
        await trail.close()
    assert (await verify(store)).ok
    for rec in stored:
        back = await get_record(store, rec.id)
        assert back is not None and chain_hash(back) == rec.hash


async def test_after_a_cut_tail_the_chain_goes_on_from_what_is_there(store: AsyncEngine) -> None:
    """As before: the append links onto the tail in the store (a cut tail is for checkpoints to find), never onto
    a record that is no longer there."""
    trail = AuditTrail(store)
    await trail.start()
    try:
        for i in range(5):
            await trail.record(record(i))
        async with store.begin() as conn:
            await conn.execute(delete(audit_table).where(audit_table.c.id == 5))
        after = await trail.record(record(5))
    finally:
        await trail.close()
    assert after.id == 5 and (await verify(store)).ok
    assert await count(store) == 5


async def test_chaining_after_a_prune_of_everything(store: AsyncEngine) -> None:
    trail = AuditTrail(store)
    await trail.start()
    try:
        for i in range(3):
            await trail.record(record(i))
        pruned, anchor = await integrity.prune(store, START + dt.timedelta(days=1), None)
        assert pruned == 3 and anchor is not None and anchor.first_id == 4
        # The known tail is gone: the locked path takes over, and goes on from the anchor.
        after = await trail.record(record(10))
    finally:
        await trail.close()
    assert after.id == 4 and after.prev_hash == anchor.prev_hash
    assert (await integrity.verify_all(store, None)).ok and await count(store) == 1


async def test_a_lost_connection_recovers(store: AsyncEngine) -> None:
    trail = AuditTrail(store)
    await trail.start()
    try:
        await trail.record(record(0))
        assert trail._pg is not None and trail._pg._conn is not None
        trail._pg._conn.terminate()  # as a store failover would
        again = await trail.record(record(1))
    finally:
        await trail.close()
    assert again.id == 2 and (await verify(store)).ok


async def test_a_caller_cancelled_while_writing_its_own_record_leaves_the_trail_writing(store: AsyncEngine) -> None:
    """With nothing else pending, a caller writes its own record (no hand-off to the writer task). Cancelled
    mid-write (a shutdown, say), it must not leave the connection busy or the others waiting: whatever queued
    behind it is written, by the writer task, onto one valid chain."""
    trail = AuditTrail(store)
    await trail.start()
    try:
        await trail.record(record(0))
        own = asyncio.create_task(trail.record(record(1)))
        await asyncio.sleep(0)  # it has sent its statement and waits for the store
        assert trail._writing and trail._backlog == 0
        queued = [asyncio.create_task(trail.record(record(i))) for i in range(2, 12)]
        await asyncio.sleep(0)
        own.cancel()
        got = await asyncio.gather(*queued)
        with pytest.raises(asyncio.CancelledError):
            await own
        after = await trail.record(record(12))
    finally:
        await trail.close()
    assert len({r.id for r in got}) == 10 and after.id == max(r.id for r in got) + 1
    result = await verify(store)
    assert result.ok and result.count in (12, 13)  # the cancelled record may have been committed, or not


async def test_a_record_the_store_refuses_fails_alone(store: AsyncEngine) -> None:
    """A record the store refuses (here a request id over its column's 64 characters) must not fail the whole
    group commit, answering 503 to every request that shared it."""
    trail = AuditTrail(store)
    await trail.start()
    try:
        await trail.record(record(0))
        poisoned = AuditRecord(time=START, request_id="x" * 65, action="read", decision="deny", status=400)
        got = await asyncio.gather(*[trail.record(record(i)) for i in range(1, 6)], trail.record(poisoned),
                                   *[trail.record(record(i)) for i in range(6, 11)], return_exceptions=True)
    finally:
        await trail.close()
    refused = [g for g in got if isinstance(g, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], Unavailable)
    assert (await verify(store)).count == 11


async def test_a_nul_or_a_lone_surrogate_is_stored_as_a_replacement_character(store: AsyncEngine) -> None:
    """PostgreSQL's text cannot hold NUL, which a request body or a token's claim may carry: such a request is
    recorded (NUL as U+FFFD) and answered like any other, not refused for want of a record."""
    trail = AuditTrail(store)
    await trail.start()
    try:
        got = await trail.record(AuditRecord(time=START, request_id="nul", action="read", decision="error",
                                                   status=400, agent="a\x00b\ud800", query='{"limit": 1}\x00'))
    finally:
        await trail.close()
    assert (got.agent, got.query) == ("a\ufffdb\ufffd", '{"limit": 1}\ufffd')
    assert (await verify(store)).ok


async def test_without_the_append_function_the_locked_path_serves(store: AsyncEngine,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A store role that may not create functions: every group takes the locked transaction, still one chain."""
    monkeypatch.setattr(pgchain, "APPEND_FUNCTION_DDL", "CREATE FUNCTION refused(")  # fails like a missing grant
    trail = AuditTrail(store)
    await trail.start()
    try:
        got = await asyncio.gather(*(trail.record(record(i)) for i in range(20)))
        assert trail._pg is not None and not trail._pg._function
    finally:
        await trail.close()
    assert sorted(r.id for r in got) == list(range(1, 21)) and (await verify(store)).count == 20


def test_a_body_with_a_nul_is_answered_400_and_recorded(tmp_path: Path, sqlite_source: str, pg_store: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source, store_url=pg_store)
    with client_for(config) as gw:
        got = gw.post("/v1/datasets/customers/query", content=b'{"limit": 1}\x00', headers=bearer())
        assert got.status_code == 400 and got.json()["error"]["code"] == "bad_request"
        page = gw.get("/admin/v1/audit?agent=support-bot&limit=1", headers=bearer("alice"))
        (rec,) = page.json()["records"]
        assert (rec["status"], rec["query"]) == (400, '{"limit": 1}\ufffd')


@pytest.mark.unit
def test_canonical_bytes_are_jsons_whatever_the_content() -> None:
    """The chain hashes canonical bytes; records written before orjson was used must keep verifying, so the
    fast encoder must give exactly json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)."""
    import json
    import random

    rng = random.Random(7)
    alphabet = [chr(c) for c in range(0, 0x80)] + ["\u2028", "\u2029", "é", "ß", "漢", "😀", "\ufeff", "\x7f",
                                                  "\\", '"', "/"]
    floats = [0.0, -0.0, 1e-5, 1e-4, 0.1, 1.5, 123.456, 1e15, 1e16, 1e300, 5e-324, float("inf"), float("nan")]
    for i in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        rec = AuditRecord(time=START + dt.timedelta(microseconds=rng.randint(0, 10**12)), request_id=f"r{i}",
                                action="read", decision="allow", status=200, agent=text, query=text[::-1],
                                rows=rng.choice([None, 0, 2**63 - 1, 2**64, -5]), duration_ms=rng.choice(floats),
                                source_ms=rng.choice([None, *floats]), row_filter=rng.choice([None, text]),
                                token_id=rng.choice([None, text]), client=rng.choice([None, "10.0.0.1", text]),
                                user_agent=rng.choice([None, text[::-1]]), trace_id=rng.choice([None, "ab" * 16]))
        body = rec.to_dict()
        del body["hash"]
        for name in LATER_FIELDS:  # fields added later are left out while null
            if body[name] is None:
                del body[name]
        expected = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert canonical(rec) == expected.encode("utf-8", "surrogatepass"), (text, rec)
