"""Orphaned workers: the supervisor of `agentgate serve --workers N` killed outright (`kill -9`, the OOM killer).

The attack: nothing told the workers, so they kept serving, unsupervised, and held the port: a restart on it
failed with "Address already in use". The property (gateway/runtime/parentwatch.py): every worker stops when its
supervisor dies, gracefully (a request in flight is answered and its audit record written) and within a
bound, and a new `serve` on the same port starts and answers. On Linux the kernel's parent-death signal does it;
the portable watch of the parent alone does it too, and a worker that will not stop is ended after its grace.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import DATASETS, POLICY, bearer, loopback_http, records, write_workspace
from tests.faults import SlowSource
from tests.serving import env, free_port, stop

pytestmark = pytest.mark.system

STARTED = 60.0  # a start on a busy 2-core box, workers included
GONE = 20.0  # generous: the stops measured take ~1-3 s (a graceful stop: the app's shutdown runs)


def launch(config: Path, log: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config),
                                 "--port", str(port), *extra], stdout=out, stderr=subprocess.STDOUT, env=env(),
                                cwd=Path(__file__).parent, start_new_session=True)


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, workers: int) -> None:
    """/readyz answers 200 and every worker has started (each says so in the log)."""
    deadline = time.monotonic() + STARTED
    while True:
        if proc.poll() is not None:
            pytest.fail(f"agentgate serve exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.TransportError):
            if (httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
                    and log.read_text().count("Application startup complete.") >= workers):
                return
        if time.monotonic() > deadline:
            pytest.fail(f"agentgate serve was not ready within {STARTED:g} s:\n{log.read_text()}")
        time.sleep(0.1)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process; None when it is gone (or a zombie: it has exited)."""
    try:
        after = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if after[0] in "ZX" else (after[0], int(after[1]))


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None and stat[1] == pid:
            found.add(int(entry.name))
    return found


def wait_gone(pids: set[int], within: float) -> float:
    """Seconds until every one of pids has exited; fails past `within`."""
    started = time.monotonic()
    while left := {pid for pid in pids if _stat(pid) is not None}:
        if time.monotonic() - started > within:
            pytest.fail(f"still running {within:g} s after their supervisor's death: {sorted(left)}")
        time.sleep(0.05)
    return time.monotonic() - started




@contextlib.contextmanager
def workspace(root: Path, source_url: str) -> Iterator[Path]:
    """A workspace whose `tickets` dataset is read from a slow HTTP source (a request held in flight)."""
    SlowSource.arrived, SlowSource.release = threading.Semaphore(0), threading.Event()
    with loopback_http(SlowSource) as tickets:
        yield write_workspace(
            root, source_url=source_url, policy=POLICY + "p, support, tickets, read, allow\n",
            datasets=DATASETS + '\n[datasets.tickets]\nsource = "tix"\npath = "/tickets"\nowner = "o@example.com"\n',
            extra=f'\n[sources.tix]\nurl = "{tickets}"\n')


@pytest.mark.parametrize("workers", [2, 1])
def test_a_killed_supervisors_workers_stop_and_the_port_is_free_again(tmp_path: Path, sqlite_source: str,
                                                                      workers: int) -> None:
    extra = ("--workers", str(workers)) if workers > 1 else ()
    log, port = tmp_path / "serve.log", free_port()
    with workspace(tmp_path, sqlite_source) as config:
        proc = launch(config, log, port, *extra)
        try:
            wait_ready(proc, port, log, workers)
            started = children(proc.pid)  # the workers, and multiprocessing's resource tracker
            if workers > 1:
                assert len(started) >= workers, started
            with ThreadPoolExecutor(1) as pool:
                # A read in flight when the supervisor dies: its source holds it.
                def read() -> httpx.Response:
                    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                        return http.get("/v1/datasets/tickets/proxy/open", headers=bearer("support-bot"))
                reading = pool.submit(read)
                assert SlowSource.arrived.acquire(timeout=20)
                killed = time.monotonic()
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                if workers > 1:
                    time.sleep(0.5)  # the workers are told at once; the read is still held meanwhile
                    SlowSource.release.set()
                    answered = reading.result(timeout=30)
                    # Gracefully: answered, with its record written, before the worker went.
                    assert answered.status_code == 200, answered.text
                else:
                    SlowSource.release.set()
                    with pytest.raises(httpx.TransportError):  # one process killed: nothing answers, trivially
                        reading.result(timeout=30)
            took = wait_gone(started, GONE)
            print(f"workers={workers}: every child gone {took:.2f} s after the kill "
                  f"({time.monotonic() - killed:.2f} s with the held read)")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left, should the test fail
        text = log.read_text()
        assert "Traceback" not in text, text
        if workers > 1:
            assert text.count(f"the supervisor (pid {proc.pid}) is gone") == workers, text
            tail = [r for r in records(config) if r["dataset"] == "tickets"]
            assert [(r["status"], r["decision"]) for r in tail] == [(200, "allow")], tail

        # A new serve on the same port starts (no "Address already in use") and answers.
        again_log = tmp_path / "again.log"
        again = launch(config, again_log, port, *extra)
        try:
            wait_ready(again, port, again_log, workers)
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        finally:
            stop(again)
        assert again.returncode in (0, -signal.SIGTERM), again_log.read_text()
        assert "Traceback" not in again_log.read_text()


# A process under watch: it prints its pid, then waits. On SIGTERM it exits (a graceful stop), or, with
# "stubborn", ignores it (a stop that hangs); the watch's grace ends it either way. With "getppid", it runs as
# where there is no pidfd (macOS, Linux before 5.3): the watch looks at os.getppid() every 0.5 s.
WATCHED = """
import os, signal, sys, time
from gateway.runtime import parentwatch
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if sys.argv[3] == "getppid":
    del os.pidfd_open
parentwatch.watch(os.getppid(), grace=float(sys.argv[2]), deathsig=False)
print(os.getpid(), flush=True)
while True:
    time.sleep(1)
"""
# Its parent, to be killed: starts it, passes its pid on, and waits.
PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]], stdout=subprocess.PIPE, text=True)
print(child.stdout.readline().strip(), flush=True)
child.wait()
"""


@pytest.mark.parametrize(("behaviour", "watch"), [("graceful", "pidfd"), ("graceful", "getppid"),
                                                  ("stubborn", "pidfd")])
def test_the_portable_watch_alone_stops_an_orphan_within_its_grace(behaviour: str, watch: str) -> None:
    """No parent-death signal (as off Linux): the thread watching the parent sees it gone and sends SIGTERM; a
    process that ignores it is ended when its grace runs out."""
    grace = 2.0
    parent = subprocess.Popen([sys.executable, "-c", PARENT, WATCHED, behaviour, str(grace), watch],
                              stdout=subprocess.PIPE, text=True, env=env(), cwd=Path(__file__).parent.parent,
                              start_new_session=True)
    try:
        assert parent.stdout is not None
        watched = int(parent.stdout.readline())
        assert _stat(watched) is not None
        time.sleep(0.6)  # the watch has looked at least once
        killed = time.monotonic()
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        wait_gone({watched}, GONE)
        took = time.monotonic() - killed
        print(f"{behaviour}, {watch}: gone {took:.2f} s after its parent's death")
        if behaviour == "stubborn":
            assert took >= grace  # SIGTERM ignored: only the grace's end stopped it
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
