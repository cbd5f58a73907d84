"""Following the trail as it commits (gateway/audit/follow.py): `agentgate audit export --follow` and
`GET /admin/v1/audit/stream` get every record once, in order, with the chain intact — while replicas write at
once, across a store restart, and resumed with --after / after=.

The attacks on the stream (no token, no grant, too many streams, a revoked reader, a client that stops
reading) are tests/test_attacks_audit_stream.py's."""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select, text

from gateway import audit
from gateway.store import audit as audit_table
from tests.conftest import bearer, client_for, opened_store, token, write_workspace
from tests.followkit import Follower, Stream, assert_whole, stream_workspace
from tests.serving import serving

ROOT = Path(__file__).parent.parent
READ = {"limit": 1}


def _record(n: int) -> audit.AuditRecord:
    return audit.AuditRecord(time=dt.datetime.now(dt.UTC), request_id=f"r{n}", action="read", decision="allow",
                             status=200, agent="support-bot")


async def _append(engine: Any, n: int) -> None:
    """n records appended as the writer appends them: under the chain's lock, onto the tail."""
    async with engine.begin() as conn:
        tail = (await conn.execute(select(audit_table.c.id, audit_table.c.hash).order_by(audit_table.c.id.desc())
                                   .limit(1))).first()
        await audit.append_locked(conn, [_record(i) for i in range(n)], (tail.id, tail.hash) if tail else None)


# --- unit: the proof's premise, the follower's checks, the cap ----------------------------------------------

def _writes_to_the_trail(path: Path) -> set[str]:
    """The functions (or module-level names) of a module whose code inserts into, updates or deletes from the
    audit table."""
    pattern = re.compile(r"(insert|update|delete)\(audit_table\)|(INSERT INTO|UPDATE|DELETE FROM) audit\b")
    source = path.read_text()
    tree = ast.parse(source)
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    named: list[tuple[str, ast.AST]] = [(fn.name, fn) for fn in functions]
    named += [(ast.unparse(n.targets[0]), n) for n in tree.body if isinstance(n, ast.Assign)]  # module-level SQL
    out: set[str] = set()
    for name, node in named:
        segment = ast.get_source_segment(source, node) or ""
        for fn in functions:  # a nested function's statements are its own
            if fn is not node and fn in set(ast.walk(node)):
                segment = segment.replace(ast.get_source_segment(source, fn) or "", "")
        if pattern.search(segment):
            out.add(f"{path.relative_to(ROOT).as_posix()}::{name}")
    return out


@pytest.mark.unit
def test_every_write_to_the_trail_is_an_append_under_the_chains_lock() -> None:
    """Why a follower reading `id > last` misses nothing (gateway/audit/follow.py): every insert into the trail
    reads the tail and inserts after it under the chain's lock, held until its commit, so ids become visible in
    order. A new way of writing to the trail must be added here, after checking it does the same."""
    found = set().union(*(_writes_to_the_trail(p) for p in sorted((ROOT / "gateway").rglob("*.py"))))
    assert found == {
        "gateway/audit/writer.py::_write_sqlite",  # BEGIN IMMEDIATE: SQLite's one write lock, the chain's
        "gateway/audit/writer.py::append_locked",  # its callers hold the lock and read the tail under it
        "gateway/store/pgchain.py::APPEND_FUNCTION_DDL",  # pg_advisory_xact_lock(CHAIN_LOCK), then the tail
        "gateway/store/pgchain.py::_INSERT",  # ChainAppend.append_locked: the lock, the tail, then this
        "gateway/audit/integrity.py::prune",  # deletes a prefix only: no id a follower has yet to read
    }
    pgchain = (ROOT / "gateway/store/pgchain.py").read_text()
    assert "pg_advisory_xact_lock" in pgchain.split("_INSERT =")[0]  # the function takes it before its insert


@pytest.mark.unit
async def test_a_follower_reads_on_after_its_place_and_reports_breaks(tmp_path: Path) -> None:
    async with opened_store(f"sqlite+aiosqlite:///{tmp_path}/store.db") as engine:
        await _append(engine, 5)
        follower = audit.Follow(engine, page=3)
        first, second = await follower.read(), await follower.read()
        assert [r.id for r in first.records] == [1, 2, 3] and first.full and not first.breaks
        assert [r.id for r in second.records] == [4, 5] and not second.full and not second.breaks
        assert (await follower.read()).records == []
        # Resumed after 3 in a new process: record 3's hash is learnt, 4 is checked to follow it.
        resumed = audit.Follow(engine, after=3)
        await resumed.start()
        assert [r.id for r in (await resumed.read()).records] == [4, 5]
        # A record deleted before it was read is a gap, said; a cut tail written again does not link.
        await _append(engine, 2)  # 6, 7
        async with engine.begin() as conn:
            await conn.execute(delete(audit_table).where(audit_table.c.id == 6))
        gap = await follower.read()
        assert [r.id for r in gap.records] == [7] and gap.breaks == [
            "records 6 to 6 are not in the trail (deleted, or pruned before they were read)"]
        async with engine.begin() as conn:
            await conn.execute(delete(audit_table).where(audit_table.c.id >= 5))
        await _append(engine, 4)  # 5, 6, 7 again, then 8: the follower read 7 before
        rewritten = await follower.read()
        assert [r.id for r in rewritten.records] == [8]
        assert rewritten.breaks and "record 8 does not follow record 7" in rewritten.breaks[0]
        # A filtered follower skips records by design: nothing to report.
        since = audit.Follow(engine, filter=audit.AuditFilter(agent="nobody"))
        assert (await since.read()) == audit.Page([], [], False)


@pytest.mark.unit
def test_streams_are_capped_and_each_place_is_given_back_once() -> None:
    streams = audit.Streams(max_open=2, heartbeat_seconds=1)
    one, two = streams.take(), streams.take()
    assert one is not None and two is not None and streams.take() is None and streams.open == 2
    one.release()
    one.release()  # the stream's end and its finaliser both give it back: counted once
    assert streams.open == 1 and streams.take() is not None
    assert streams.stall_seconds == 5.0 and audit.Streams(heartbeat_seconds=15).stall_seconds == 30.0


# --- integration: the admin stream in-process ------------------------------------------------------------------

@pytest.mark.integration
def test_the_admin_stream_sends_records_as_they_commit_beats_and_ends_cleanly(tmp_path: Path, sqlite_source: str,
                                                                              store_url: str) -> None:
    config = stream_workspace(tmp_path, sqlite_source, store_url, stream_max_seconds=2.5, heartbeat=0.3)
    with client_for(config) as client:
        for _ in range(3):
            assert client.post("/v1/datasets/customers/query", json=READ, headers=bearer()).status_code == 200
        got: dict[str, Any] = {}

        def follow() -> None:  # the test client hands the body over once the stream ended
            started = time.monotonic()
            got["answer"] = client.get("/admin/v1/audit/stream", params={"after": "1"}, headers=bearer("alice"))
            got["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=follow)
        thread.start()
        time.sleep(0.8)
        assert client.post("/v1/datasets/customers/query", json=READ, headers=bearer()).status_code == 200
        thread.join(20)
        answer = got["answer"]
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/x-ndjson"
        assert 2.4 <= got["seconds"] < 10  # ended by [audit] stream_max_seconds, cleanly
        lines = answer.text.split("\n")
        records = [json.loads(line) for line in lines if line]
        # 2 and 3 (after=1), the stream's own record (4), and the read written while it was open (5).
        assert [(r["id"], r["action"]) for r in records] == [(2, "read"), (3, "read"), (4, "follow_audit"),
                                                            (5, "read")]
        assert_whole(records, first=2)
        opened = records[2]
        assert (opened["agent"], opened["decision"], opened["status"]) == ("alice", "allow", 200)
        assert json.loads(opened["query"]) == {"after": 1}
        assert lines.count("") >= 4  # heartbeats (and the last line's end) while nothing was written
        export = client.get("/admin/v1/audit/export", params={"format": "jsonl"}, headers=bearer("alice")).text
        assert [json.loads(line) for line in export.splitlines()][1:5] == records  # the export's very lines


@pytest.mark.integration
def test_a_tight_follower_gets_every_id_once_in_order_while_two_gateways_write(tmp_path: Path, sqlite_source: str,
                                                                               pg_store: str) -> None:
    """Two gateways on one PostgreSQL store write at once from several threads; a follower reading pages of 7
    without pausing (the most chances to see a higher id before a lower one) gets each id once, in order."""
    configs = [write_workspace(tmp_path / name, source_url=sqlite_source, store_url=pg_store) for name in "ab"]
    done = threading.Event()
    seen: list[audit.AuditRecord] = []

    async def follow() -> None:
        async with opened_store(pg_store) as engine:
            follower = audit.Follow(engine, page=7)
            while True:
                finished = done.is_set()  # asked before the read: once set, every write has committed
                page = await follower.read()
                seen.extend(page.records)
                if finished and not page.records:
                    return

    with client_for(configs[0]) as a, client_for(configs[1]) as b:
        reader = threading.Thread(target=asyncio.run, args=(follow(),))
        reader.start()

        def write(client: Any) -> None:  # each request leaves its record, whatever it is answered
            for _ in range(40):
                client.post("/v1/datasets/customers/query", json=READ, headers=bearer())

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(write, [a, b] * 4))
        done.set()
        reader.join(60)
    records = [r.to_dict() for r in seen]
    assert len(records) == asyncio.run(_count(pg_store)) >= 320
    assert_whole(records)


# --- system: the command, as a collector runs it ----------------------------------------------------------------

@pytest.mark.system
def test_follow_prints_records_as_they_commit_and_resumes_after_the_last_id(tmp_path: Path,
                                                                             sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source)
    with client_for(config) as client:
        def read() -> None:
            assert client.post("/v1/datasets/customers/query", json=READ, headers=bearer()).status_code == 200

        for _ in range(3):
            read()
        follower = Follower(config)
        try:
            first = follower.take(3)
            read()
            written = time.monotonic()
            (fourth,) = follower.take(1, seconds=10)
            assert time.monotonic() - written < 3  # POLL_SECONDS (0.5) and a read, with room for a busy host
        finally:
            code, err = follower.stop(signal.SIGTERM)
        assert (code, err) == (0, "")
        assert_whole([*first, fourth])
        read()
        read()
        # The collector kept 4: the next run starts after it. No duplicate, no gap.
        resumed = Follower(config, "--after", str(fourth["id"]))
        try:
            later = resumed.take(2)
        finally:
            assert resumed.stop(signal.SIGINT) == (0, "")
        assert [r["id"] for r in later] == [5, 6] and later[0]["prev_hash"] == fourth["hash"]
    once = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "export", "--format", "jsonl", "--after",
                           "4", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert [json.loads(line) for line in once.stdout.splitlines()] == later  # --after without --follow too


@pytest.mark.system
def test_follow_takes_json_lines_only_and_ends_quietly_when_its_reader_goes(tmp_path: Path,
                                                                             sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source)
    with client_for(config) as client:
        client.get("/v1/datasets", headers=bearer())
    refused = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "export", "--format", "csv", "--follow",
                              "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == "agentgate: --follow writes JSON lines only: use --format jsonl\n"
    # `agentgate audit export --follow | head -1`: the reader goes; the follower ends, 0, without a word.
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "audit", "export", "--format", "jsonl",
                             "--follow", "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert json.loads(proc.stdout.readline())["id"] == 1
    proc.stdout.close()
    try:
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    assert proc.stderr.read() == b""


@pytest.mark.system
def test_follow_survives_a_store_restart_without_a_duplicate_or_a_gap(tmp_path: Path, sqlite_source: str,
                                                                      own_pg_cluster: Any) -> None:
    own_pg_cluster.start()
    config = write_workspace(tmp_path, source_url=sqlite_source, store_url=own_pg_cluster.url)

    def reads(n: int) -> None:
        with client_for(config) as client:
            for _ in range(n):
                assert client.post("/v1/datasets/customers/query", json=READ, headers=bearer()).status_code == 200

    reads(3)
    follower = Follower(config)
    try:
        before = follower.take(3)
        own_pg_cluster.stop()
        time.sleep(2.5)  # the follower asks meanwhile, and fails
        own_pg_cluster.start()
        reads(3)
        after = follower.take(3, seconds=60)  # the store is back within the backoff's bound
    finally:
        code, err = follower.stop()
    assert code == 0
    assert_whole([*before, *after])
    lines = err.splitlines()
    assert len(lines) == 2, err  # one line when the store went, one when it came back
    assert lines[0].startswith("agentgate: the store cannot be reached (") and lines[0].endswith(
        "trying again, then following on after record 3")
    assert lines[1] == "agentgate: the store answers again; following on after record 3"


@pytest.mark.system
def test_followers_get_every_id_once_in_order_while_replicas_write(tmp_path: Path, sqlite_source: str,
                                                                   pg_store: str) -> None:
    """Two `agentgate serve` replicas on one PostgreSQL store, written to at once from several clients; the
    command's follower and an admin stream get every record once, in order, linked, and the chain verifies."""
    config = stream_workspace(tmp_path, sqlite_source, pg_store)
    with serving(config, tmp_path / "a.log") as a, serving(config, tmp_path / "b.log") as b:
        follower = Follower(config)
        stream = Stream(a, token("alice"))
        try:
            def write(base: str) -> int:
                with httpx.Client(base_url=base, timeout=30) as http:
                    return sum(http.post("/v1/datasets/customers/query", json=READ,
                                         headers=bearer()).status_code == 200 for _ in range(30))

            with ThreadPoolExecutor(6) as pool:
                assert sum(pool.map(write, [a, b] * 3)) == 180
            total = asyncio.run(_count(pg_store))
            by_command, by_stream = follower.take(total, seconds=60), stream.take(total, seconds=60)
        finally:
            stream.close()
            assert follower.stop()[0] == 0
    assert_whole(by_command)
    assert by_stream == by_command
    verify = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify", "--config", str(config)],
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and verify.stdout.startswith(f"ok {total} records"), verify.stdout


async def _count(url: str) -> int:
    async with opened_store(url) as engine, engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM audit"))).scalar_one())


@pytest.mark.system
def test_the_served_stream_beats_ends_after_its_time_and_resumes_after_its_last_id(tmp_path: Path,
                                                                                    sqlite_source: str) -> None:
    config = stream_workspace(tmp_path, sqlite_source, stream_max_seconds=4, heartbeat=0.5)
    with serving(config, tmp_path / "serve.log") as base, httpx.Client(base_url=base, timeout=10) as http:
        def read() -> None:
            assert http.post("/v1/datasets/customers/query", json=READ, headers=bearer()).status_code == 200

        read()
        stream = Stream(base, token("alice"))
        try:
            assert (stream.status, stream.headers and stream.headers["content-type"]) == (200,
                                                                                         "application/x-ndjson")
            beats: list[float] = []
            opening = stream.take(2)  # the read, then the stream's own record
            assert [(r["id"], r["action"]) for r in opening] == [(1, "read"), (2, "follow_audit")]
            time.sleep(1.6)
            read()
            written = time.monotonic()
            (third,) = stream.take(1, beats=beats)
            assert time.monotonic() - written < 3
            assert len(beats) >= 2  # empty lines every 0.5 s while nothing was written
            assert stream.ended(10) and stream.error is None  # [audit] stream_max_seconds: a clean end
        finally:
            stream.close()
        read()
        resumed = Stream(base, token("alice"), after=third["id"])
        try:
            later = resumed.take(2)
        finally:
            resumed.close()
    # Resumed after 3: the read written meanwhile (4), then the new stream's record (5).
    assert [(r["id"], r["action"]) for r in later] == [(4, "read"), (5, "follow_audit")]
    assert_whole([*opening, third, *later])


# --- the collectors' examples (deploy/collectors/) ----------------------------------------------------------------

COLLECTORS = ROOT / "deploy" / "collectors"


def _collector_script(config: Path, state: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "AGENTGATE_CONFIG"}
    env.update(AGENTGATE_CONFIG=str(config), AGENTGATE_FOLLOW_STATE=str(state),
               AGENTGATE_BIN=str(Path(sys.executable).with_name("agentgate")))
    return subprocess.Popen([str(COLLECTORS / "agentgate-follow.sh")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def _stopped(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM to the script (as a collector stops it): its exit code and stderr, once its whole process group
    (the follower, awk) is gone."""
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(20)
    deadline = time.monotonic() + 10
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "the script left its follower running"
        time.sleep(0.05)
    assert proc.stderr is not None
    return code, proc.stderr.read()


@pytest.mark.system
def test_the_collectors_script_keeps_the_last_id_and_resumes_after_it(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source)
    state = tmp_path / "state" / "last-id"
    with client_for(config) as client:
        def reads(n: int) -> None:
            for _ in range(n):
                assert client.post("/v1/datasets/customers/query", json=READ, headers=bearer()).status_code == 200

        reads(3)
        script = _collector_script(config, state)
        assert script.stdout is not None
        first = [json.loads(script.stdout.readline()) for _ in range(3)]
        _until(lambda: state.exists() and state.read_text() == "3\n")
        assert _stopped(script) == (0, "")
        reads(2)
        again = _collector_script(config, state)  # a restart: on after 3
        assert again.stdout is not None
        later = [json.loads(again.stdout.readline()) for _ in range(2)]
        _until(lambda: state.read_text() == "5\n")
        assert _stopped(again) == (0, "")
    assert_whole([*first, *later])
    vector = tomllib.loads((COLLECTORS / "vector.toml").read_text())
    source = vector["sources"]["agentgate_audit"]
    assert (source["type"], source["mode"], source["decoding"]["codec"]) == ("exec", "streaming", "json")
    assert source["command"][0].endswith("/agentgate-follow.sh") and source["streaming"]["respawn_on_exit"]
    fluent = (COLLECTORS / "fluent-bit.conf").read_text()
    assert "agentgate-follow.sh" in fluent and re.search(r"Oneshot\s+true", fluent)
    assert re.search(r"Name\s+agentgate_jsonl", (COLLECTORS / "parsers.conf").read_text())


def _until(predicate: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.05)
