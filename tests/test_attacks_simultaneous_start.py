"""Simultaneous starts: every replica started at the same instant on a fresh folder, as an orchestrator does.

The fault: the shipped configuration creates its SQLite demo source from a seed on first start, and two replicas
started at once on a fresh folder crashed 4 times in 12 (`attempt to write a readonly database`, `table ...
already exists`): both wrote the same temporary file, or one renamed it from under the other. The property:
the seed runs once, under a lock on a file beside the database (connectors/sql/engine.py, seed_sqlite), and the
others wait and then open the seeded database; the store's tables, the ALTERs that upgrade an older store and
the switch to WAL are made by one process at a time (BEGIN IMMEDIATE on SQLite). Every replica, a supervisor
with its workers among them, comes up and answers the same rows, with no traceback in any log, and the trail
they share verifies.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from tests.conftest import SECRET, token
from tests.serving import env, free_port, stop, wait_ready
from tests.test_attacks_demo_secret import shipped
from tests.test_serve import cli

pytestmark = pytest.mark.system

ROUNDS = 3  # without the lock, every round of 4 failed (4 of 4)
REPLICAS = 4  # the first of them with --workers 2
STARTED = 90.0  # REPLICAS + 1 processes starting at once on a busy 2-core box

# `agentgate` (gateway.cli.main, as the console script runs it) behind a barrier: the slow imports done, each
# process says so and waits for the word to go, so that they all reach the same code within a millisecond or so.
BARRIER = """
import sys, time
from pathlib import Path
import gateway.app, gateway.cli, gateway.store, connectors.sql
Path(sys.argv[1]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.001)
sys.exit(gateway.cli.main(sys.argv[3:]))
"""


@contextlib.contextmanager
def together(root: Path, commands: Sequence[Sequence[str]], logs: Sequence[Path]) -> Iterator[
        list[subprocess.Popen[bytes]]]:
    """`agentgate COMMAND` for each command, released at the same instant; stopped (SIGTERM) afterwards."""
    go = root / "go"
    environ = env()
    environ["AGENTGATE_JWT_SECRET"] = SECRET  # the shipped config's secret, so that tests mint tokens for it
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, (command, log) in enumerate(zip(commands, logs, strict=True)):
            with log.open("wb") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-c", BARRIER, str(root / f"ready-{i}"), str(go), *command],
                    stdout=out, stderr=subprocess.STDOUT, env=environ, cwd=Path(__file__).parent,
                    start_new_session=True))
        deadline = time.monotonic() + STARTED
        while not all((root / f"ready-{i}").exists() for i in range(len(procs))):
            for proc, log in zip(procs, logs, strict=True):
                if proc.poll() is not None:
                    pytest.fail(f"exited before the barrier with {proc.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail("not at the barrier in time")
            time.sleep(0.01)
        go.touch()
        yield procs
    finally:
        for proc in procs:
            stop(proc)


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_replicas_started_at_once_on_a_fresh_folder_all_serve_the_seeded_source(tmp_path: Path,
                                                                                round_: int) -> None:
    config = shipped(tmp_path / "ws")
    ports = [free_port() for _ in range(REPLICAS)]
    commands = [["serve", "--config", str(config), "--port", str(port), *(["--workers", "2"] if i == 0 else [])]
                for i, port in enumerate(ports)]
    logs = [tmp_path / f"serve-{i}.log" for i in range(REPLICAS)]
    agent = {"Authorization": f"Bearer {token('support-bot', aud='agentgate')}"}
    answers = []
    with together(tmp_path, commands, logs) as procs:
        deadline = time.monotonic() + STARTED
        for proc, port, log in zip(procs, ports, logs, strict=True):
            base = f"http://127.0.0.1:{port}"
            wait_ready(proc, base, log, deadline)
            r = httpx.post(f"{base}/v1/datasets/customers/query", headers=agent,
                           json={"columns": ["id", "name", "email"], "order_by": ["id"], "limit": 100}, timeout=20)
            assert r.status_code == 200, (r.text, log.read_text())
            answers.append(r.json()["rows"])
    texts = [log.read_text() for log in logs]
    for proc, text in zip(procs, texts, strict=True):
        assert proc.returncode in (0, -15), text
        assert "Traceback" not in text and "ERROR" not in text, text
    # The seed ran once; everyone else found it made.
    assert sum(text.count("created source 'demo' from its seed") for text in texts) == 1, texts
    var = config.parent / "var"
    assert not list(var.glob("demo.db.seed*")), list(var.iterdir())
    conn = sqlite3.connect(var / "demo.db")
    try:
        seeded = conn.execute("SELECT count(*) FROM customers").fetchone()[0]
    finally:
        conn.close()
    assert len(answers[0]) == min(100, seeded) > 0
    assert all(rows == answers[0] for rows in answers)
    verified = cli("audit", "verify", "--config", config)
    assert (verified.returncode, verified.stdout.strip()) == (0, f"ok {REPLICAS} records"), verified.stderr


def _store_columns(path: Path) -> dict[str, list[str]]:
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        # Sorted: a column added by an upgrade comes last; a column made twice would show twice.
        return {t: sorted(r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')) for t in tables}
    finally:
        conn.close()


@pytest.mark.parametrize("store", ["fresh", "older release"])
def test_processes_making_one_sqlite_store_at_once_make_it_once(tmp_path: Path, store: str) -> None:
    """Six commands at once that each make the store's tables (create_all), upgrade an older one (ALTER TABLE
    ADD COLUMN) and switch a new one to WAL: all succeed, and the store has each table and column once."""
    config = shipped(tmp_path / "ws")
    database = config.parent / "var" / "agentgate.db"
    made = cli("approvals", "list", "--config", config)  # the store as this release makes it
    assert made.returncode == 0, made.stderr
    expected = _store_columns(database)
    if store == "fresh":
        for path in database.parent.glob("agentgate.db*"):
            path.unlink()
    else:  # as an earlier release left it: nullable columns added since then missing
        conn = sqlite3.connect(database)
        conn.execute("DROP INDEX ix_audit_work_unit")  # the release before had none
        for table, column in (("approvals", "owner"), ("audit", "work_unit"), ("revocations", "reason")):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.commit()
        conn.close()
        assert _store_columns(database) != expected
    count = 6
    logs = [tmp_path / f"cli-{i}.log" for i in range(count)]
    with together(tmp_path, [["approvals", "list", "--config", str(config)]] * count, logs) as procs:
        for proc in procs:
            proc.wait(STARTED)
    for proc, log in zip(procs, logs, strict=True):
        assert (proc.returncode, log.read_text().strip()) == (0, "no pending approvals")
    assert _store_columns(database) == expected
    conn = sqlite3.connect(database)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
