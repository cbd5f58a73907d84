"""Replicas as users run them: several `agentgate serve` processes on one store, driven with the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import SECRET, terminate_backends, token, write_workspace
from tests.serving import free_port

pytestmark = pytest.mark.system

AGENTGATE = str(Path(sys.executable).with_name("agentgate"))


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENTGATE, *args, "--config", str(config)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "AGENTGATE_JWT_SECRET": SECRET})


class Replica:
    def __init__(self, config: Path, *extra: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = config.parent / f"serve-{self.port}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen([AGENTGATE, "serve", "--config", str(config), "--port", str(self.port),
                                          "--log-level", "warning", *extra],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.http = httpx.Client(base_url=self.base, timeout=10)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.http.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"replica did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def read(self, tok: str) -> int:
        return self.http.post("/v1/datasets/customers/query", json={"limit": 1},
                              headers={"Authorization": f"Bearer {tok}"}).status_code

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def until(predicate: Callable[[], bool], seconds: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > seconds:
            raise AssertionError(f"not within {seconds}s")
        time.sleep(0.002)
    return time.monotonic() - start


@pytest.fixture
def pg_pair(tmp_path: Path, sqlite_source: str, pg_store: str) -> Iterator[tuple[Path, Replica, Replica, str]]:
    config = write_workspace(tmp_path, source_url=sqlite_source, store_url=pg_store)
    a = Replica(config)
    try:
        b = Replica(config)
        try:
            yield config, a, b, pg_store
        finally:
            b.stop()
    finally:
        a.stop()


def test_cli_revocation_reaches_every_replica_within_100ms(pg_pair: tuple[Path, Replica, Replica, str]) -> None:
    config, a, b, _ = pg_pair
    first, second = token("support-bot", jti="first"), token("support-bot", jti="second")
    assert a.read(first) == b.read(first) == 200
    done = cli(config, "revoke", "agent", "support-bot", "--reason", "incident 7")
    exited = time.monotonic()
    assert done.returncode == 0, done.stderr
    until(lambda: b.read(first) == 403, 1.0)
    took = time.monotonic() - exited
    print(f"\nCLI revoke -> replica B refuses: {took * 1000:.1f} ms (includes one request to B)")
    assert took < 0.1
    assert a.read(first) == 403
    assert cli(config, "restore", "agent", "support-bot").returncode == 0
    until(lambda: a.read(first) == 200 and b.read(first) == 200, 1.0)
    assert cli(config, "revoke", "token", "first").returncode == 0
    until(lambda: b.read(first) == 403, 1.0)
    assert b.read(second) == 200 and a.read(second) == 200  # the agent's other tokens still work
    assert cli(config, "restore", "token", "first").returncode == 0
    assert cli(config, "restore", "token", "first").returncode == 0  # nothing to lift is not an error
    listed = cli(config, "audit", "list", "--json")
    assert '"action": "revoke"' in listed.stdout and '"agent": "cli:' in listed.stdout
    assert cli(config, "audit", "verify").stdout.startswith("ok ")


def test_policy_edits_reach_both_replicas_and_bad_edits_are_refused(
        pg_pair: tuple[Path, Replica, Replica, str]) -> None:
    config, a, b, _ = pg_pair
    policy = config.parent / "policies" / "policy.csv"
    newcomer = token("newcomer")
    assert a.read(newcomer) == b.read(newcomer) == 403
    good = policy.read_text() + "g, newcomer, support\n"
    policy.write_text(good)
    took = until(lambda: a.read(newcomer) == 200 and b.read(newcomer) == 200, 2.0)
    print(f"\npolicy edit live on both replicas after {took * 1000:.0f} ms")
    policy.write_text(good + "p, half a line\n")
    until(lambda: "refused" in a.http.get("/readyz").json() and "refused" in b.http.get("/readyz").json(), 2.0)
    assert a.read(newcomer) == b.read(newcomer) == 200  # the last good policy keeps serving
    assert a.http.get("/readyz").status_code == 200
    policy.write_text(good)
    until(lambda: "refused" not in a.http.get("/readyz").json(), 2.0)
    assert cli(config, "reload").returncode == 0
    time.sleep(0.5)
    trail = cli(config, "audit", "list", "--json", "--limit", "500").stdout
    assert trail.count('"action": "reload"') >= 5  # two accepted, two refused, one accepted, the CLI's request


def test_replicas_fail_closed_without_the_store_and_recover(pg_pair: tuple[Path, Replica, Replica, str]) -> None:
    _, a, b, store = pg_pair
    tok = token("support-bot")
    assert a.read(tok) == b.read(tok) == 200

    terminate_backends(store)
    # Both notice the lost channel and refuse (503) until resynchronised; then recover by themselves.
    seen = {a.base: set(), b.base: set()}  # type: dict[str, set[int]]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(200 in s and 503 in s for s in seen.values()):
        for r in (a, b):
            seen[r.base].add(r.read(tok))
    assert all(503 in s for s in seen.values()), seen
    until(lambda: a.read(tok) == 200 and b.read(tok) == 200, 5.0)


def test_sqlite_workers_obey_the_same_revocations(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source)
    server = Replica(config, "--workers", "2")
    try:
        tok = token("support-bot")
        assert all(server.read(tok) == 200 for _ in range(10))
        assert cli(config, "revoke", "agent", "support-bot").returncode == 0
        time.sleep(0.1)
        assert [server.read(tok) for _ in range(20)] == [403] * 20  # whichever worker answers
    finally:
        server.stop()


def test_sighup_reloads_the_policy(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source)
    server = Replica(config)
    try:
        server.proc.send_signal(signal.SIGHUP)
        until(lambda: '"agent": "signal:SIGHUP"' in cli(config, "audit", "list", "--json").stdout, 5.0)
        assert server.http.get("/readyz").status_code == 200
    finally:
        server.stop()
