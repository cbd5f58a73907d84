"""The SQLite store's files deleted or replaced under a running gateway.

The attack (or the accident): while `agentgate serve` answers agents, its store is taken from under it — `rm
store.db*`, `mv other.db store.db` (another store, or a backup of this one), the `-wal` file deleted, the store's
folder removed. A process keeps writing to the files it opened whatever the path names now: the gateway answered
200 on and on while every record went to a file nobody could open again.

The property (gateway/store/files.py): no request is answered 200 unless its record is in the store the gateway
opened, which someone can still read (here through hard links made before the files went); every request sent
after the files went answers 503; /readyz answers 503 and says why; nothing is written to a file now at the path
(no empty store is made in place of a deleted one, a replacing file gets no record). The loss is final for the
process: a file put back is not taken up until the gateway restarts, after which it serves again and the chain
verifies.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import bearer, write_workspace
from tests.serving import env, serving

pytestmark = pytest.mark.system

QUERY = {"columns": ["id", "name"], "order_by": ["id"], "limit": 5}
SUFFIXES = ("", "-wal", "-shm")


@dataclass
class Answer:
    sent: float  # time.monotonic() when the request was sent
    status: int
    request_id: str | None


@dataclass
class Load:
    """Agents reading the whole time, from a few threads; every answer kept."""

    base: str
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=20) as http:
            while not self.stop.is_set():
                sent = time.monotonic()
                got = http.post("/v1/datasets/customers/query", headers=bearer("support-bot"), json=QUERY)
                self.answers.append(Answer(sent, got.status_code, got.headers.get("x-request-id")))


@contextmanager
def loaded(base: str, threads: int = 4) -> Iterator[Load]:
    load = Load(base)
    workers = [threading.Thread(target=load.run, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    try:
        yield load
    finally:
        load.stop.set()
        for w in workers:
            w.join(30)


def keep(store: Path, into: Path) -> Path:
    """Hard links to the store's files as they are now: the store the gateway opened stays readable (as an
    operator's backup or a process holding it open would keep it) after its names are gone."""
    into.mkdir()
    for suffix in SUFFIXES:
        if Path(f"{store}{suffix}").exists():
            os.link(f"{store}{suffix}", into / f"{store.name}{suffix}")
    return into / store.name


def recorded(store: Path) -> dict[str, int]:
    """request_id -> status of every record in a store file."""
    with sqlite3.connect(store) as db:
        return {rid: status for rid, status in db.execute("SELECT request_id, status FROM audit")}


def until(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def readyz(base: str) -> httpx.Response:
    return httpx.get(f"{base}/readyz", timeout=10)


def take_away(base: str, store: Path, kept_dir: Path, act: Callable[[], None]) -> tuple[list[Answer], float, Path]:
    """Agents read; the store's files are kept (hard links), then `act` takes them away under the load. Returns
    every answer, when `act` had ended, and the kept store."""
    with loaded(base) as load:
        until(lambda: sum(a.status == 200 for a in load.answers) >= 20)
        kept = keep(store, kept_dir)
        act()
        gone = time.monotonic()
        # The load goes on: every request sent from now on is refused.
        until(lambda: sum(a.sent > gone for a in load.answers) >= 40)
    return list(load.answers), gone, kept


def assert_failed_closed(base: str, answers: list[Answer], gone: float, kept: Path, reason: str) -> None:
    after = [a for a in answers if a.sent > gone]
    assert after and {a.status for a in after} == {503}, sorted({a.status for a in after})
    # Every 200 answered, before the files went or in flight as they went, has its record in the store opened.
    served = [a for a in answers if a.status == 200]
    assert len(served) >= 20
    have = recorded(kept)
    assert [a.request_id for a in served if have.get(a.request_id or "") != 200] == []
    ready = readyz(base)
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable", ready.text
    assert ready.json()["reason"].startswith("store file lost: ") and reason in ready.json()["reason"], ready.text
    got = httpx.post(f"{base}/v1/datasets/customers/query", headers=bearer("support-bot"), json=QUERY, timeout=10)
    assert got.status_code == 503 and got.json()["error"]["code"] == "unavailable", got.text


def verify(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify", "--config", str(config)],
                          capture_output=True, text=True, env=env(), cwd=Path(__file__).parent, timeout=60)


def test_a_store_deleted_under_the_gateway_fails_closed_until_restarted(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source)
    store = tmp_path / "store.db"
    with serving(config, tmp_path / "serve.log") as base:

        def delete() -> None:
            for suffix in SUFFIXES:
                Path(f"{store}{suffix}").unlink()

        answers, gone, kept = take_away(base, store, tmp_path / "kept", delete)
        assert_failed_closed(base, answers, gone, kept, "store.db is gone (deleted or moved)")
        # Nothing made a store in its place (SQLite's open would have made an empty one).
        assert not any(Path(f"{store}{suffix}").exists() for suffix in SUFFIXES)
        # Put back (a copy, as from a backup: another file): this process does not take it up.
        with sqlite3.connect(kept) as source, sqlite3.connect(store) as target:
            source.backup(target)
        assert readyz(base).status_code == 503
        assert httpx.post(f"{base}/v1/datasets/customers/query", headers=bearer("support-bot"), json=QUERY,
                          timeout=10).status_code == 503
        before = len(recorded(store))
    assert len(recorded(store)) == before  # not a record written to the file put back
    # Restarted on the file put back: it serves, and the chain holds.
    with serving(config, tmp_path / "serve-again.log") as base:
        got = httpx.post(f"{base}/v1/datasets/customers/query", headers=bearer("support-bot"), json=QUERY, timeout=10)
        assert got.status_code == 200, got.text
        assert recorded(store)[got.headers["x-request-id"]] == 200
    checked = verify(config)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_store_replaced_under_the_gateway_fails_closed(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source)
    store = tmp_path / "store.db"
    other = tmp_path / "other.db"
    with serving(config, tmp_path / "serve.log") as base:
        # The most tempting replacement: a copy of this very store (a backup), whose tables take records.
        httpx.post(f"{base}/v1/datasets/customers/query", headers=bearer("support-bot"), json=QUERY, timeout=10)
        with sqlite3.connect(store) as source, sqlite3.connect(other) as target:
            source.backup(target)
        copied = recorded(other)
        os.link(other, tmp_path / "other-kept.db")  # the replacing file, read alone: see below
        answers, gone, kept = take_away(base, store, tmp_path / "kept", lambda: os.replace(other, store))
        assert_failed_closed(base, answers, gone, kept, "store.db is another file now")
    # The file that took the store's place got no record. (Read through a name of its own: at the store's path it
    # would be read with the -wal file left there, the replaced store's, and show that store's records.)
    assert recorded(tmp_path / "other-kept.db") == copied


def test_the_wal_deleted_under_the_gateway_fails_closed(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source)
    store = tmp_path / "store.db"
    with serving(config, tmp_path / "serve.log") as base:
        answers, gone, kept = take_away(base, store, tmp_path / "kept", Path(f"{store}-wal").unlink)
        assert_failed_closed(base, answers, gone, kept, "store.db-wal is gone (deleted or moved)")


def test_the_store_folder_removed_under_the_gateway_fails_closed(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source, store_url="sqlite:///var/store.db")
    store = tmp_path / "var" / "store.db"
    with serving(config, tmp_path / "serve.log") as base:
        answers, gone, kept = take_away(base, store, tmp_path / "kept",
                                        lambda: shutil.rmtree(tmp_path / "var"))
        assert_failed_closed(base, answers, gone, kept, f"its folder {tmp_path / 'var'} is gone")
        assert not (tmp_path / "var").exists()
