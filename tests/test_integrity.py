"""Tamper evidence on both stores: the chain, signed checkpoints (cut tails), pruning with an anchor,
and several writers forming one chain."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import delete, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit import AuditRecord, AuditTrail, chain_hash, integrity, verify
from gateway.store import anchor as anchor_table
from gateway.store import audit as audit_table
from gateway.store import checkpoints as checkpoint_table
from gateway.store import create_tables, make_store_engine
from tests.conftest import opened_store, write_workspace

pytestmark = pytest.mark.integration

KEY = "checkpoint-key-" + "k" * 32
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[AsyncEngine]:
    async with opened_store(store_url) as engine:
        yield engine


async def fill(engine: AsyncEngine, n: int, day: int = 0) -> list[AuditRecord]:
    trail = AuditTrail(engine)
    await trail.start()
    try:
        out = []
        for i in range(n):
            moment = START + dt.timedelta(days=day, minutes=i)
            out.append(await trail.record(AuditRecord(
                time=moment, request_id=f"r{day}-{i}", action="read", decision="allow", status=200,
                agent=f"agent-{i % 3}", dataset="customers", rows=i, query='{"limit": 5}')))
        return out
    finally:
        await trail.close()


async def run(engine: AsyncEngine, stmt: object) -> None:
    async with engine.begin() as conn:
        await conn.execute(stmt)  # type: ignore[call-overload]


async def test_the_chain_finds_edits_deletions_insertions_and_reordering(store: AsyncEngine) -> None:
    await fill(store, 10)
    assert (await verify(store)).count == 10
    await run(store, update(audit_table).where(audit_table.c.id == 4).values(rows=999))
    bad = await verify(store)
    assert not bad.ok and bad.bad_id == 4 and "edited" in (bad.problem or "")
    await run(store, update(audit_table).where(audit_table.c.id == 4).values(rows=3))
    assert (await verify(store)).ok
    await run(store, delete(audit_table).where(audit_table.c.id == 7))
    bad = await verify(store)
    assert not bad.ok and bad.bad_id == 8 and "missing" in (bad.problem or "")


async def test_reordering_and_insertion_are_found(store: AsyncEngine) -> None:
    records = await fill(store, 6)
    # Swap the content of records 2 and 3 (ids stay in order): the links no longer hold.
    a, b = records[1], records[2]
    await run(store, update(audit_table).where(audit_table.c.id == 2).values(request_id=b.request_id, rows=b.rows,
                                                                           hash=b.hash, prev_hash=b.prev_hash))
    await run(store, update(audit_table).where(audit_table.c.id == 3).values(request_id=a.request_id, rows=a.rows,
                                                                           hash=a.hash, prev_hash=a.prev_hash))
    bad = await verify(store)
    assert not bad.ok and bad.bad_id == 2


async def test_a_forged_record_with_a_recomputed_hash_breaks_the_next_link(store: AsyncEngine) -> None:
    records = await fill(store, 5)
    forged = AuditRecord(**{**records[2].to_dict(), "time": records[2].time, "rows": 0})
    forged = AuditRecord(**{**forged.to_dict(), "time": forged.time, "hash": chain_hash(forged)})
    await run(store, update(audit_table).where(audit_table.c.id == 3).values(rows=0, hash=forged.hash))
    bad = await verify(store)
    assert not bad.ok and bad.bad_id == 4 and "prev_hash" in (bad.problem or "")


async def test_checkpoints_find_a_cut_tail(store: AsyncEngine) -> None:
    await fill(store, 8)
    cp = await integrity.take_checkpoint(store, KEY)
    assert cp is not None and cp.record_id == 8 and cp.valid(KEY)
    assert (await integrity.verify_all(store, KEY)).ok
    await run(store, delete(audit_table).where(audit_table.c.id >= 6))
    assert (await verify(store)).ok  # the chain alone cannot tell a shorter trail from a cut one
    report = await integrity.verify_all(store, KEY)
    assert not report.ok and report.bad_id == 8 and "cut" in (report.problem or "")
    # An attacker who also deletes the stored checkpoints is still caught by a copy kept elsewhere.
    await run(store, delete(checkpoint_table))
    assert (await integrity.verify_all(store, KEY)).ok
    external = integrity.parse_checkpoint(cp.token())
    assert not (await integrity.verify_all(store, KEY, [external])).ok


async def test_forged_checkpoints_are_refused(store: AsyncEngine) -> None:
    await fill(store, 3)
    cp = await integrity.take_checkpoint(store, KEY)
    assert cp is not None
    forged = integrity.Checkpoint(cp.record_id, "0" * 64, cp.time, cp.signature)
    report = await integrity.verify_all(store, KEY, [forged])
    assert not report.ok and "bad signature" in (report.problem or "")
    with pytest.raises(ValueError):
        integrity.parse_checkpoint("agentgate-checkpoint:x")


async def test_prune_keeps_the_rest_verifiable(store: AsyncEngine) -> None:
    await fill(store, 5, day=0)
    await fill(store, 5, day=10)
    await integrity.take_checkpoint(store, KEY)
    pruned, anchor = await integrity.prune(store, START + dt.timedelta(days=5), KEY)
    assert pruned == 5 and anchor is not None and anchor.first_id == 6
    report = await integrity.verify_all(store, KEY)
    assert report.ok and report.count == 5 and report.checkpoints == 1
    await fill(store, 2, day=20)  # the chain goes on after the anchor
    assert (await integrity.verify_all(store, KEY)).count == 7
    pruned, anchor = await integrity.prune(store, START + dt.timedelta(days=15), KEY)
    assert pruned == 5 and anchor is not None and anchor.pruned == 10
    assert (await integrity.verify_all(store, KEY)).ok
    # Moving the anchor to hide a deleted head is caught by its signature.
    await run(store, delete(audit_table).where(audit_table.c.id == 11))
    await run(store, update(anchor_table).values(first_id=12))
    report = await integrity.verify_all(store, KEY)
    assert not report.ok and "anchor" in (report.problem or "")


async def test_nothing_to_prune(store: AsyncEngine) -> None:
    assert await integrity.prune(store, START, KEY) == (0, None)
    await fill(store, 3, day=3)
    pruned, anchor = await integrity.prune(store, START, KEY)
    assert pruned == 0 and anchor is None and (await verify(store)).count == 3


async def test_replicas_writing_at_once_form_one_chain(store: AsyncEngine) -> None:
    other = make_store_engine(store.url.render_as_string(hide_password=False))
    try:
        await asyncio.gather(*(fill(e, 40, day=d) for d, e in enumerate([store, other, store, other])))
    finally:
        await other.dispose()
    result = await verify(store)
    assert result.ok and result.count == 160


@pytest.mark.system
def test_cli_checkpoint_prune_and_verify(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source, extra=f'\n[audit]\ncheckpoint_key = "{KEY}"\n')
    engine_url = f"sqlite+aiosqlite:///{tmp_path}/store.db"

    async def prepare() -> None:
        engine = make_store_engine(engine_url)
        await create_tables(engine)
        await fill(engine, 4, day=0)
        await fill(engine, 4, day=30)
        await engine.dispose()

    asyncio.run(prepare())
    exe = [sys.executable, "-m", "gateway.cli"]

    def agentgate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*exe, *args, "--config", str(config)], capture_output=True, text=True, timeout=60,
                              env=dict(os.environ))

    cp = agentgate("audit", "checkpoint")
    assert cp.returncode == 0 and cp.stdout.startswith("agentgate-checkpoint:8:")
    token = cp.stdout.strip()
    done = agentgate("audit", "prune", "--before", "2026-01-15", "--yes")
    assert done.returncode == 0 and "pruned 4 records" in done.stdout
    ok = agentgate("audit", "verify", "--checkpoint", token)
    assert ok.returncode == 0 and ok.stdout.startswith("ok 5 records"), ok.stdout + ok.stderr

    async def cut() -> None:
        engine = make_store_engine(engine_url)
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM audit WHERE id >= 8"))
            await conn.execute(text("DELETE FROM audit_checkpoints"))
        await engine.dispose()

    asyncio.run(cut())
    bad = agentgate("audit", "verify", "--checkpoint", token)
    assert bad.returncode == 1 and "FAIL record 8" in bad.stdout and "cut" in bad.stdout
    assert agentgate("audit", "verify", "--checkpoint", "nonsense").returncode == 2


async def test_a_resumed_check_reads_only_what_was_added(store: AsyncEngine) -> None:
    await fill(store, 5)
    full = await integrity.verify_all(store, KEY)
    assert full.ok and not full.incremental and full.verified is not None and full.verified.count == 5
    await fill(store, 3, day=1)
    more = await integrity.verify_all(store, KEY, resume=full.verified)
    assert more.ok and more.incremental and more.count == 8
    assert more.verified is not None and more.verified.full_at == full.verified.full_at
    # A record added since and then edited is found by the resumed check.
    await fill(store, 2, day=2)
    await run(store, update(audit_table).where(audit_table.c.id == 10).values(rows=999))
    broken = await integrity.verify_all(store, KEY, resume=more.verified)
    assert not broken.ok and broken.incremental and broken.bad_id == 10 and broken.verified is None
    await run(store, update(audit_table).where(audit_table.c.id == 10).values(rows=1))
    # The last record the earlier check passed, changed (hash and all): the check walks from the anchor again.
    await run(store, update(audit_table).where(audit_table.c.id == 8).values(hash="0" * 64))
    again = await integrity.verify_all(store, KEY, resume=more.verified)
    assert not again.ok and not again.incremental and again.bad_id == 8


async def test_a_prune_since_makes_the_next_check_a_full_one(store: AsyncEngine) -> None:
    await fill(store, 4)
    await fill(store, 4, day=3)
    first = await integrity.verify_all(store, KEY)
    await integrity.prune(store, START + dt.timedelta(days=1), KEY)
    after = await integrity.verify_all(store, KEY, resume=first.verified)
    assert after.ok and not after.incremental and after.count == 4
