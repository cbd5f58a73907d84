"""A store that is not there, or goes silent.

The faults: the store down when `agentgate serve` starts; an orchestrator that starts the gateway before its
store; a replica silently cut off from its PostgreSQL store (a TCP proxy that stops forwarding, no FIN, no RST);
a SQLite store whose write lock another process holds; a store that stalls and commits a record after the
gateway gave its write up.

The properties: a store down at start is one line on stderr (which store, where, why, what to do) and exit 3,
never a traceback; with --wait-for-store the gateway listens at once, /healthz 200, /readyz 503 saying why and
every other request 503, turns ready once the store answers, or exits 3 with the one line past the wait;
`check` says whether the store is reachable and has its tables. A request whose audit record cannot be stored
is answered 503 within [audit] write_timeout_seconds, never 200 without its record; a record whose write was
given up never stands in the trail as what its request was answered (a late statement is refused by the store,
and one stored all the same is followed by a correction); the chain holds and no record is written twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import select

from gateway.audit import SETTLE_SECONDS, AuditRecord, AuditTrail, iter_records, verify
from gateway.common.errors import ConfigError, Unavailable
from gateway.config import load_settings
from gateway.services import usage
from gateway.store import audit as audit_table
from gateway.store import make_store_engine
from tests.conftest import PgCluster, bearer, opened_store, write_workspace
from tests.faults import FreezableProxy, through
from tests.serving import env, free_port, serving, stop

pytestmark = pytest.mark.system

QUERY = "/v1/datasets/customers/query"
WRITE_TIMEOUT = 1.0
# What "within the write timeout" allows besides it on a loaded 2-core box: the request's own work, a busy loop.
SLACK = 1.5
AUDIT = f"[audit]\nwrite_timeout_seconds = {WRITE_TIMEOUT}\n"


def agentgate(config: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args, "--config", str(config)], env=env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


@contextlib.contextmanager
def started(config: Path, log: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`agentgate serve` on a free port, yielded as soon as it answers /healthz (not waiting for ready)."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port",
                                 str(port), *extra], stdout=out, stderr=subprocess.STDOUT, env=env(),
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"serve exited with {proc.returncode}:\n{log.read_text()}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"serve did not listen within 30 s:\n{log.read_text()}"
            time.sleep(0.05)
        yield proc, base
    finally:
        stop(proc)


def read(base: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{base}{QUERY}", json={"limit": 2}, headers=bearer(), timeout=30, **kwargs)


def timed_reads(base: str, n: int) -> list[tuple[httpx.Response, float]]:
    """n reads at once, each with the time it took to be answered."""
    def one(_: int) -> tuple[httpx.Response, float]:
        began = time.monotonic()
        got = read(base)
        return got, time.monotonic() - began

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def store_records(url: str) -> list[AuditRecord]:
    async def run() -> list[AuditRecord]:
        engine = make_store_engine(url)
        try:
            assert (await verify(engine)).ok, "the audit chain does not verify"
            return [r async for r in iter_records(engine)]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def assert_trail_tells_the_truth(records: list[AuditRecord], served: set[str], refused: set[str]) -> None:
    """Every read answered 200 has exactly one record, of a 200; no record of a read answered 503 stands as
    anything else (unless a correction of it follows); no record is written twice."""
    by_request: dict[str, list[AuditRecord]] = {}
    for rec in records:
        by_request.setdefault(rec.request_id, []).append(rec)
    for rid in served:
        assert [(r.status, r.decision) for r in by_request.get(rid, [])] == [(200, "allow")], rid
    for rid in refused:
        mine = by_request.get(rid, [])
        for claim in (r for r in mine if r.status != 503):
            assert any(r.id > claim.id and r.status == 503 and r.reason is not None
                       and f"record {claim.id} of this request was stored after its answer left" in r.reason
                       for r in mine), f"request {rid} answered 503 is recorded as {claim}"
    twice = [k for k, n in Counter((r.request_id, r.status, r.reason) for r in records).items() if n > 1]
    assert not twice, f"records written twice: {twice}"


# --- a store down at start ---------------------------------------------------------------------------


def test_a_store_down_at_start_is_one_line_and_exit_3(tmp_path: Path, sqlite_source: str) -> None:
    port = free_port()  # nothing listens on it
    config = write_workspace(tmp_path, source_url=sqlite_source,
                             store_url=f"postgresql://postgres@127.0.0.1:{port}/test")
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port",
                           str(free_port())], env=env(), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 3, done.stderr
    assert time.monotonic() - began < 30
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    (line,) = lines
    assert f"PostgreSQL at 127.0.0.1:{port}" in line and "connection refused" in line
    assert "--wait-for-store" in line and "[store] url" in line
    assert "Traceback" not in done.stderr + done.stdout


def test_waiting_for_a_store_that_never_comes_ends_with_the_one_line(tmp_path: Path, sqlite_source: str) -> None:
    port = free_port()
    config = write_workspace(tmp_path, source_url=sqlite_source,
                             store_url=f"postgresql://postgres@127.0.0.1:{port}/test")
    log = tmp_path / "serve.log"
    with started(config, log, "--wait-for-store", "2") as (proc, base):
        assert httpx.get(f"{base}/healthz").status_code == 200
        proc.wait(30)
    assert proc.returncode == 3, log.read_text()
    text = log.read_text()
    assert f"the store (PostgreSQL at 127.0.0.1:{port}, database test) could not be reached within 2 s: " \
           "connection refused" in text
    assert "Traceback" not in text


def test_serve_waits_for_a_store_that_starts_later(tmp_path: Path, sqlite_source: str,
                                                   own_pg_cluster: PgCluster) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source, store_url=own_pg_cluster.url)
    log = tmp_path / "serve.log"
    served: set[str] = set()
    refused: set[str] = set()
    with started(config, log, "--wait-for-store", "30") as (proc, base):
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503
        assert ready.json()["reason"].startswith("waiting for the store (PostgreSQL): connection refused")
        waiting = read(base)
        assert waiting.status_code == 503 and waiting.json()["error"]["code"] == "unavailable"
        assert waiting.headers["X-Request-Id"] == waiting.json()["error"]["request_id"]
        refused.add(waiting.headers["X-Request-Id"])
        for path, method in (("/v1/datasets", "GET"), ("/mcp", "POST"), ("/admin/v1/audit", "GET")):
            got = httpx.request(method, f"{base}{path}", headers=bearer("alice"))
            assert got.status_code == 503 and got.json()["error"]["code"] == "unavailable", path
        assert httpx.get(f"{base}/metrics").status_code == 200

        own_pg_cluster.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/readyz").status_code != 200:
            assert time.monotonic() < deadline, f"not ready 30 s after the store started:\n{log.read_text()}"
            time.sleep(0.1)
        for _ in range(3):
            got = read(base)
            assert got.status_code == 200 and len(got.json()["rows"]) == 2
            served.add(got.headers["X-Request-Id"])
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "Traceback" not in log.read_text()
    assert_trail_tells_the_truth(store_records(own_pg_cluster.url), served, refused)


# --- check -------------------------------------------------------------------------------------------


def test_check_says_whether_the_store_is_reachable_and_has_its_tables(tmp_path: Path, sqlite_source: str,
                                                                     pg_store: str) -> None:
    port = free_port()
    down = write_workspace(tmp_path / "down", source_url=sqlite_source,
                           store_url=f"postgresql://postgres@127.0.0.1:{port}/test")
    done = agentgate(down, "check")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"FAIL store: PostgreSQL at 127.0.0.1:{port}, database test: cannot be reached: connection refused" \
           in done.stdout

    empty = write_workspace(tmp_path / "empty", source_url=sqlite_source, store_url=pg_store)
    done = agentgate(empty, "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "store: PostgreSQL at 127.0.0.1:5432, database agentgate_store_" in done.stdout
    assert ": reachable: ok" in done.stdout
    assert "store tables: none yet (`agentgate serve` makes them at start)" in done.stdout

    async def make() -> None:
        async with opened_store(pg_store):
            pass

    asyncio.run(make())
    done = agentgate(empty, "check")
    assert done.returncode == 0 and "store tables: all " in done.stdout and "warning" not in done.stdout

    fresh = write_workspace(tmp_path / "fresh", source_url=sqlite_source)  # SQLite, no file yet
    done = agentgate(fresh, "check")
    assert done.returncode == 0 and "\nstore: SQLite at " in done.stdout and ": no file yet " in done.stdout
    assert not (tmp_path / "fresh" / "store.db").exists()  # check reads; it makes nothing


# --- a store silently unreachable, or locked -----------------------------------------------------


@pytest.mark.unit
def test_write_timeout_is_validated(tmp_path: Path, sqlite_source: str) -> None:
    assert load_settings(write_workspace(tmp_path, source_url=sqlite_source)).audit.write_timeout_seconds == 2.0
    for bad in ("0", "-1", "61", "nan", "inf", '"2"', "true"):
        config = write_workspace(tmp_path / bad.strip('"'), source_url=sqlite_source,
                                 extra=f"[audit]\nwrite_timeout_seconds = {bad}\n")
        with pytest.raises(ConfigError, match=r"audit\.write_timeout_seconds"):
            load_settings(config)


def test_a_silently_cut_off_store_answers_503_within_the_write_timeout(tmp_path: Path, sqlite_source: str,
                                                                      pg_store: str) -> None:
    with FreezableProxy("127.0.0.1", 5432) as proxy:
        config = write_workspace(tmp_path, source_url=sqlite_source, store_url=through(pg_store, proxy),
                                 extra=AUDIT)
        served: set[str] = set()
        refused: set[str] = set()
        with serving(config, tmp_path / "serve.log") as base:
            reads_until_served(base, 5, served, refused)
            proxy.freeze()
            for got, took in timed_reads(base, 8):
                assert got.status_code == 503 and got.json()["error"]["code"] == "unavailable", got.text
                assert took < WRITE_TIMEOUT + SLACK, f"answered after {took:.2f} s"
                refused.add(got.headers["X-Request-Id"])
            proxy.thaw()
            reads_until_served(base, 5, served, refused)
    assert_trail_tells_the_truth(store_records(pg_store), served, refused)


def reads_until_served(base: str, n: int, served: set[str], refused: set[str]) -> None:
    """Reads until n are answered 200 (a 503 meanwhile: the replica's change feed, through the proxy on a busy
    box, not proven fresh in time, which fails closed too), within 30 s."""
    deadline = time.monotonic() + 30
    while n:
        got = read(base)
        assert got.status_code in (200, 503), got.text
        (served if got.status_code == 200 else refused).add(got.headers["X-Request-Id"])
        n -= got.status_code == 200
        assert time.monotonic() < deadline, "not serving within 30 s"


def test_a_held_sqlite_write_lock_answers_503_within_the_write_timeout(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source, extra=AUDIT)
    served: set[str] = set()
    refused: set[str] = set()
    with serving(config, tmp_path / "serve.log") as base:
        reads_until_served(base, 1, served, refused)
        holder = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # the write lock, held as a stuck process would (busy timeout: 10 s)
            for got, took in timed_reads(base, 6):
                assert got.status_code == 503 and got.json()["error"]["code"] == "unavailable", got.text
                assert took < WRITE_TIMEOUT + SLACK, f"answered after {took:.2f} s"
                refused.add(got.headers["X-Request-Id"])
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        reads_until_served(base, 3, served, refused)
    assert_trail_tells_the_truth(store_records(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"), served, refused)


# --- records whose write was given up -------------------------------------------------------------


def _record(request_id: str) -> AuditRecord:
    return AuditRecord(time=dt.datetime.now(dt.UTC), request_id=request_id, action="read", decision="allow",
                             status=200, agent="support-bot", dataset="customers", rows=2)


@pytest.mark.integration
async def test_a_statement_delivered_after_its_deadline_stores_nothing(pg_store: str) -> None:
    """The group's statement is held in a frozen proxy past the deadline, then delivered: the store refuses it."""
    async with opened_store(pg_store) as direct:
        with FreezableProxy("127.0.0.1", 5432) as proxy:
            engine = make_store_engine(through(pg_store, proxy), wait_seconds=WRITE_TIMEOUT)
            trail = AuditTrail(engine, write_timeout=WRITE_TIMEOUT)
            await trail.start()
            try:
                await trail.record(_record("before"))
                proxy.freeze()
                began = time.monotonic()
                with pytest.raises(Unavailable):
                    await trail.record(_record("frozen"))
                assert time.monotonic() - began < WRITE_TIMEOUT + SLACK
                proxy.thaw()  # the statement held meanwhile reaches the store now
                await asyncio.sleep(SETTLE_SECONDS + 0.5)
                await trail.record(_record("after"))
            finally:
                await trail.close()
                await engine.dispose()
        stored = [r async for r in iter_records(direct)]
        assert [r.request_id for r in stored] == ["before", "after"]
        assert (await verify(direct)).ok


@pytest.mark.integration
async def test_a_record_stored_after_its_request_was_answered_503_is_corrected(pg_store: str) -> None:
    """The store stalls (a lock on the audit table) after the append passed its deadline check; the gateway
    answers 503 at the deadline; the stall ends and the record commits. The next write finds it and appends a
    correction: the trail says the request was answered 503 and served nothing."""
    async with opened_store(pg_store) as direct:
        engine = make_store_engine(pg_store, wait_seconds=WRITE_TIMEOUT)
        trail = AuditTrail(engine, write_timeout=WRITE_TIMEOUT)
        await trail.start()
        try:
            await trail.record(_record("before"))
            locker = await asyncpg.connect(audit_url(pg_store))
            try:
                async with locker.transaction():
                    await locker.execute("LOCK TABLE audit IN ACCESS EXCLUSIVE MODE")
                    began = time.monotonic()
                    late = [trail.record(_record(f"stalled-{i}")) for i in range(4)]
                    got = await asyncio.gather(*late, return_exceptions=True)
                    assert all(isinstance(g, Unavailable) for g in got), got
                    assert time.monotonic() - began < WRITE_TIMEOUT + SLACK
            finally:
                await locker.close()
            await asyncio.sleep(SETTLE_SECONDS + 0.5)
            await trail.record(_record("after"))
        finally:
            await trail.close()
            await engine.dispose()
        stored = [r async for r in iter_records(direct)]
        assert (await verify(direct)).ok
    # Only the first stalled record was sent (the others queued behind it, and were never written).
    assert [(r.request_id, r.status) for r in stored] == [
        ("before", 200), ("stalled-0", 200), ("stalled-0", 503), ("after", 200)]
    correction = stored[2]
    assert correction.decision == "error" and correction.rows is None and correction.response_sha256 is None
    assert correction.reason is not None and f"record {stored[1].id} of this request was stored after its " \
        "answer left and served nothing" in correction.reason
    # Usage counts the corrected request once, refused, with no rows: three requests, the rows of two.
    async with opened_store(pg_store) as direct:
        [unit] = await usage.usage(direct, "agent")
    assert (unit.key, unit.requests, unit.rows) == ("support-bot", 3, 4)


def audit_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.mark.unit
async def test_a_record_never_sent_is_never_written(tmp_path: Path) -> None:
    """Records queued behind a stuck write and answered 503 at their deadline are dropped, not written later."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    async with opened_store(url):
        pass
    engine = make_store_engine(url, wait_seconds=WRITE_TIMEOUT)
    trail = AuditTrail(engine, write_timeout=WRITE_TIMEOUT)
    await trail.start()
    holder = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        got = await asyncio.gather(*(trail.record(_record(f"locked-{i}")) for i in range(10)),
                                   return_exceptions=True)
        assert all(isinstance(g, Unavailable) for g in got)
        holder.execute("ROLLBACK")
        # The write after: on a loaded machine the first try may still meet the stuck write's last moments and
        # time out itself; a record that timed out is never written either, so `ids` below holds one "after".
        deadline = time.monotonic() + 10
        while True:
            try:
                await trail.record(_record("after"))
                break
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
    finally:
        holder.close()
        await trail.close()
    async with engine.connect() as conn:
        ids = (await conn.execute(select(audit_table.c.request_id).order_by(audit_table.c.id))).scalars().all()
    await engine.dispose()
    assert ids == ["after"]

