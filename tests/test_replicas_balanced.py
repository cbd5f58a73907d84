"""deploy/compose's topology without containers: two `agentgate serve` replicas on one PostgreSQL store, behind a
real HAProxy running the shipped deploy/compose/haproxy.cfg (the addresses set through its environment).

Shows what the README's "Running several replicas" and "Deploying" promise: reads spread over both replicas; a
replica killed outright fails only the reads it was answering; a revocation through the balancer holds on both
replicas within the documented 100 ms. The store is a database owned by a role made as the README says (no
superuser). Under CI a missing haproxy fails these tests; elsewhere they are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import IN_CI, PG_ADMIN, token, write_workspace
from tests.serving import START_TIMEOUT, env, free_port, stop, wait_ready

pytestmark = pytest.mark.system

HAPROXY_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "compose" / "haproxy.cfg"
QUERY = "/v1/datasets/customers/query"
BOUND_SECONDS = 0.1  # README, Revocation: every replica refuses within 100 ms


def _admin(*statements: str) -> None:
    async def run() -> None:
        engine = create_async_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                for statement in statements:
                    await conn.execute(text(statement))
        finally:
            await engine.dispose()

    try:
        asyncio.run(asyncio.wait_for(run(), 30))
    except OSError as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is not reachable ({exc}); CI requires it", pytrace=False)
        pytest.skip(f"PostgreSQL is not reachable ({exc})")


@contextlib.contextmanager
def owned_store() -> Iterator[str]:
    """A fresh store database owned by a fresh role with no other privilege, as README "Running several
    replicas" creates it (trust authentication on loopback: no password)."""
    name = f"agentgate_lb_{os.getpid()}_{secrets.token_hex(3)}"
    _admin(f'CREATE ROLE "{name}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE',
           f'CREATE DATABASE "{name}" OWNER "{name}"', f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC')
    try:
        yield f"postgresql://{name}@127.0.0.1:5432/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'DROP ROLE IF EXISTS "{name}"')


def _haproxy() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")  # Debian's place, off some PATHs
    if found is None:
        message = "haproxy is not installed (Debian package haproxy; .ci/run installs it)"
        if IN_CI:
            pytest.fail(f"{message}; CI requires it", pytrace=False)
        pytest.skip(message)
    return found


@dataclass
class Replica:
    """One `agentgate serve` process on a free loopback port."""

    config: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] = field(init=False)
    killed: bool = False

    def __post_init__(self) -> None:
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = self.config.parent / f"serve-{self.port}.log"
        self.http = httpx.Client(base_url=self.base, timeout=10)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config),
                                          "--port", str(self.port), "--log-level", "warning"],
                                         stdout=out, stderr=subprocess.STDOUT, env=env(), start_new_session=True)

    def kill(self) -> None:
        """SIGKILL: no drain, no shutdown, as the OOM killer or a lost node."""
        self.killed = True
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

    def close(self) -> None:
        self.http.close()
        stop(self.proc)
        if not self.killed:  # a clean shutdown: 0, or uvicorn re-raising the SIGTERM it handled
            assert self.proc.returncode in (0, -signal.SIGTERM), self.log.read_text()[-3000:]
            assert "Traceback" not in self.log.read_text()


@contextlib.contextmanager
def balancer(haproxy: str, replicas: list[Replica], log: Path) -> Iterator[str]:
    """HAProxy on the shipped config, listening on a free loopback port, the replicas as its two servers."""
    port = free_port()
    variables = {"AGENTGATE_LB_BIND": f"127.0.0.1:{port}", "AGENTGATE_1": f"127.0.0.1:{replicas[0].port}",
                 "AGENTGATE_2": f"127.0.0.1:{replicas[1].port}"}
    with log.open("wb") as out:
        proc = subprocess.Popen([haproxy, "-db", "-f", str(HAPROXY_CONFIG)], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, **variables}, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while not _answers(base):
            assert proc.poll() is None, f"haproxy exited {proc.returncode}: {log.read_text()}"
            assert time.monotonic() < deadline, f"haproxy did not answer: {log.read_text()}"
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _answers(base: str) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    return False


@dataclass
class Topology:
    lb: str
    a: Replica
    b: Replica


@contextlib.contextmanager
def topology_in(root: Path, source: str) -> Iterator[Topology]:
    """The store, two replicas started together, HAProxy in front; everything stopped afterwards."""
    haproxy = _haproxy()  # before anything starts
    with owned_store() as store, contextlib.ExitStack() as stack:
        config = write_workspace(root, source_url=source, store_url=store)
        a = Replica(config)
        stack.callback(a.close)
        b = Replica(config)
        stack.callback(b.close)
        deadline = time.monotonic() + 2 * START_TIMEOUT  # two starting at once on a shared machine
        for r in (a, b):
            wait_ready(r.proc, r.base, r.log, deadline)
        with balancer(haproxy, [a, b], root / "haproxy.log") as lb:
            yield Topology(lb, a, b)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, sqlite_source: str) -> Iterator[Topology]:
    """For the tests that leave both replicas running (each reads as its own agent)."""
    with topology_in(tmp_path_factory.mktemp("balanced"), sqlite_source) as topology:
        yield topology


@pytest.fixture
def fresh(tmp_path: Path, sqlite_source: str) -> Iterator[Topology]:
    with topology_in(tmp_path, sqlite_source) as topology:
        yield topology


def answered(replica: Replica) -> Counter[str]:
    """Requests this replica answered, by decision: its own /metrics (agentgate_requests_total)."""
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(replica.http.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "agentgate_requests_total":
                counts[sample.labels["decision"]] += int(sample.value)
    return counts


def read(http: httpx.Client, tok: str) -> int:
    return http.post(QUERY, json={"limit": 1}, headers={"Authorization": f"Bearer {tok}"}).status_code


def test_reads_through_the_balancer_spread_over_both_replicas(shared: Topology) -> None:
    topology, tok = shared, token("support-bot")
    before = {r.base: answered(r)["allow"] for r in (topology.a, topology.b)}
    with httpx.Client(base_url=topology.lb, timeout=10) as lb:
        statuses = [read(lb, tok) for _ in range(40)]
    assert statuses == [200] * 40
    served = {r.base: answered(r)["allow"] - before[r.base] for r in (topology.a, topology.b)}
    print(f"\n40 reads through HAProxy, answered per replica: {sorted(served.values())}")
    assert sum(served.values()) == 40
    assert all(n >= 10 for n in served.values()), served  # round robin: about 20 each


def test_a_revocation_through_the_balancer_holds_on_both_replicas_within_the_bound(shared: Topology) -> None:
    topology, bot, admin = shared, token("analyst-bot"), token("alice")
    with httpx.Client(base_url=topology.lb, timeout=10) as lb:
        assert {read(lb, bot) for _ in range(6)} == {200}
        denied = {r.base: answered(r)["deny"] for r in (topology.a, topology.b)}
        revoked = lb.post("/admin/v1/revocations", json={"agent": "analyst-bot", "reason": "incident"},
                          headers={"Authorization": f"Bearer {admin}"})
        assert revoked.status_code == 201, revoked.text
        time.sleep(BOUND_SECONDS)  # the documented bound, counted from the revocation's answer
        after = [read(lb, bot) for _ in range(20)]
    assert 200 not in after and after.count(403) >= 18, after  # 503 is the documented alternative, not data
    refused = {r.base: answered(r)["deny"] - denied[r.base] for r in (topology.a, topology.b)}
    assert all(n >= 1 for n in refused.values()), refused  # both replicas refused, not one of them twice
    assert read(topology.a.http, bot) == read(topology.b.http, bot) == 403


@dataclass
class Attempt:
    started: float
    ended: float
    status: int  # 0: no HTTP answer at all


def _stream(lb: str, tok: str, reads: int, out: list[Attempt], halt: threading.Event) -> None:
    """One client reading through the balancer, one read at a time (so at most one in flight)."""
    with httpx.Client(base_url=lb, timeout=10) as http:
        for _ in range(reads):
            if halt.is_set():
                return
            started = time.monotonic()
            try:
                status = read(http, tok)
            except httpx.TransportError:
                status = 0
            out.append(Attempt(started, time.monotonic(), status))


def test_a_replica_killed_mid_stream_fails_only_the_reads_in_flight(fresh: Topology) -> None:
    clients, reads, tok = 4, 80, token("support-bot")
    results: list[list[Attempt]] = [[] for _ in range(clients)]
    halt = threading.Event()
    threads = [threading.Thread(target=_stream, args=(fresh.lb, tok, reads, out, halt)) for out in results]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 10
        while sum(map(len, results)) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        killed_at = time.monotonic()
        fresh.b.kill()
        killed = time.monotonic()
    except BaseException:
        halt.set()  # the clients stop at their next read
        raise
    finally:
        for t in threads:
            t.join(60)
    attempts = [a for out in results for a in out]
    failed = [a for a in attempts if a.status != 200]
    after = [a for a in attempts if a.started > killed]
    print(f"\n{len(attempts)} reads, B killed after {sum(a.ended < killed_at for a in attempts)}: "
          f"{len(failed)} failed (in flight at the kill: {sorted({a.status for a in failed})}), "
          f"{len(after)} started after it")
    assert len(attempts) == clients * reads
    assert all(a.status in (0, 502, 503) for a in failed), failed
    # Every failed read was in flight at the kill: sent before it, answered after it.
    assert all(a.started <= killed and a.ended >= killed_at for a in failed), (killed_at, killed, failed)
    assert len(failed) <= clients  # one read in flight per client at most
    assert len(after) >= 100 and all(a.status == 200 for a in after)
