"""Revocation propagation under load: from a revocation being stored to the first refusal elsewhere.

Two setups (``--store``, default both):

- ``pg``: two ``agentgate serve`` replicas, A and B, on a PostgreSQL store the bench creates. Each agent is
  revoked through A's admin API and B is measured.
- ``sqlite``: one ``agentgate serve --workers 2`` on a SQLite store (SQLite stores are one machine's). Each
  agent is revoked through one worker's admin API and the other worker is measured (each connection's worker
  is found in /proc); the workers take turns.

``--frozen-feed`` (pg): B's store connections go through a TCP proxy (tests/faults.py, in a process of its
own). 50 ms before each revocation, B's listening connection is frozen silently (no FIN, no RST), as behind a
lost NAT entry or a stuck proxy; it is thawed once B refuses. A 503 then counts as a refusal too.

The clock starts when the admin API has answered (the revocation is stored, as the SPEC counts "at once").
From then on the measured replica is probed every 2 ms (on 8 connections, a probe waiting for a free one)
until it answers 403. Two figures per revocation: when its first refusal was *decided* (the time in the
probe's audit record, written just after the decision) and when it was *answered* (which adds the wait for
the refusal's own audit record, long on a busy SQLite store). Every answer to a probe sent more than
``--bound`` ms after the revocation was stored must be a refusal: a 200 is counted as a violation. The
replica that took the command must refuse its very next request. Meanwhile another process keeps
``--concurrency`` (32) audited reads in flight over every replica, on plain keep-alive connections.

    python bench/revocation.py [--store pg sqlite] [--frozen-feed] [--count 100] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import multiprocessing
import multiprocessing.connection
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._common import percentile, table  # noqa: E402

PG = "postgresql://postgres@127.0.0.1:5432"
SECRET = "bench-secret-" + "b" * 40
QUERY = "/v1/datasets/items/query"
FEED_NAME = "agentgate-feed"  # gateway/store/postgresql.py: the listening connection's application_name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(agent: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": agent, "exp": now + 3600, "iat": now, "jti": secrets.token_hex(8)}, SECRET,
                      algorithm="HS256")


def workspace(root: Path, count: int) -> None:
    pol = root / "policies"
    pol.mkdir()
    shutil.copy(ROOT / "policies" / "model.conf", pol / "model.conf")
    lines = ["p, reader, items, read, allow", "p, admin, admin:*, *, allow", "g, root-admin, admin",
             "g, loader, reader"]
    lines += [f"g, agent-{i}, reader" for i in range(count)]
    (pol / "policy.csv").write_text("\n".join(lines) + "\n")
    (pol / "datasets.toml").write_text('[datasets.items]\nsource = "local"\ntable = "items"\nowner = "bench"\n')
    (root / "seed.sql").write_text("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);\n"
                                   "INSERT INTO items VALUES (1, 'one');\n")


def config(root: Path, name: str, store_url: str) -> Path:
    cfg = root / f"{name}.toml"
    cfg.write_text(f"""
[auth]
secret = "{SECRET}"

[store]
url = "{store_url}"

[sources.local]
url = "sqlite:///items.db"
seed = "seed.sql"
""")
    return cfg


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path


def start(cfg: Path, *extra: str) -> Server:
    exe = shutil.which("agentgate") or str(Path(sys.executable).with_name("agentgate"))
    port = free_port()
    log = cfg.with_suffix(".log")
    with log.open("wb") as out:
        proc = subprocess.Popen([exe, "serve", "--config", str(cfg), "--port", str(port), "--log-level", "warning",
                                 *extra], cwd=cfg.parent, start_new_session=True, stdout=out,
                                stderr=subprocess.STDOUT)
    return Server(proc, f"http://127.0.0.1:{port}", log)


def stop(servers: list[Server]) -> None:
    for s in servers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(s.proc.pid, signal.SIGTERM)
    for s in servers:
        try:
            s.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(s.proc.pid, signal.SIGKILL)


async def wait_ready(server: Server) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        for _ in range(400):
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(server.base + "/readyz")).status_code == 200:
                    return
            if server.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{server.base} did not become ready:\n{server.log.read_text()[-3000:]}")


# --- which worker holds a connection (/proc) ---------------------------------------------------------

def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    found.add(target[8:-1])
    return found


def worker_of(server: Server, client_port: int) -> int | None:
    """The pid of the worker whose accepted socket is the peer of our connection from `client_port`."""
    server_port = int(server.base.rsplit(":", 1)[1])
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == server_port and int(f[2].split(":")[1], 16) == client_port:
            inode = f[9]
    if inode is None:
        return None
    for pid in _children(server.proc.pid):
        if inode in _socket_inodes(pid):
            return pid
    return None


# --- a lean HTTP/1.1 client (httpx costs more CPU per request than the gateway does, on this machine) ---------

class Conn:
    """One keep-alive connection, one request at a time: it stays with one worker."""

    def __init__(self, base: str):
        self.port = int(base.rsplit(":", 1)[1])
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Conn:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    @property
    def local_port(self) -> int:
        assert self.writer is not None
        return int(self.writer.get_extra_info("sockname")[1])

    async def post(self, path: str, agent: str, body: bytes = b"{}") -> int:
        return await self.send(request(self.port, path, token(agent), body))

    async def send(self, raw: bytes) -> int:
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lower = head.lower()
        i = lower.index(b"content-length:") + 15
        await self.reader.readexactly(int(lower[i: lower.index(b"\r\n", i)]))
        return int(head[9:12])


def request(port: int, path: str, tok: str, body: bytes = b"{}", work_unit: str | None = None) -> bytes:
    unit = f"X-Work-Unit: {work_unit}\r\n" if work_unit else ""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {tok}\r\n{unit}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


# --- load: audited reads at a fixed concurrency, in a process of its own ---------------------------------

def _load(bases: list[str], concurrency: int, stop_evt: Any, out: Any) -> None:
    counts: dict[int, int] = {}

    async def worker(base: str, full: asyncio.Event) -> None:
        async with Conn(base) as conn:
            raw = request(conn.port, QUERY, token("loader"))
            while not stop_evt.is_set():
                status = await conn.send(raw)
                counts[status] = counts.get(status, 0) + 1
                if sum(counts.values()) >= 20 * concurrency:
                    full.set()

    async def main() -> None:
        full = asyncio.Event()
        workers = [asyncio.create_task(worker(bases[i % len(bases)], full)) for i in range(concurrency)]
        await full.wait()  # at full speed: tell the bench to start measuring
        out.send("running")
        warm = dict(counts)
        await asyncio.gather(*workers)
        out.send((warm, counts))  # what was answered while the bench measured: after minus warm

    asyncio.run(main())


# --- the freezing proxy, in a process of its own (it forwards B's whole store traffic) ---------------------

def _proxy(host: str, port: int, conn: Any) -> None:
    from tests.faults import FreezableProxy

    with FreezableProxy(host, port) as proxy:
        conn.send(proxy.port)
        while True:
            cmd, arg = conn.recv()
            if cmd == "freeze":
                conn.send(proxy.freeze(port=arg))
            elif cmd == "thaw":
                proxy.thaw()
                conn.send(None)
            else:
                return


@dataclass
class Figures:
    label: str
    answered: dict[str, list[float]] = field(default_factory=dict)  # ms from the commit, by what was answered
    stored_at: dict[str, float] = field(default_factory=dict)  # work unit of a revocation's probes: wall time
    decided: dict[str, list[float]] = field(default_factory=dict)  # ms, from the probes' audit records
    taker_refused: int = 0
    violations: int = 0  # 200s to requests sent after the bound
    late_503: int = 0  # 503s to requests sent after the bound
    after_bound: int = 0
    timeouts: int = 0
    load: dict[int, int] = field(default_factory=dict)
    round_trips: list[float] = field(default_factory=list)  # ms, every probe to the measured replica
    channel_lost: int = 0

    def add(self, table: dict[str, list[float]], key: str, value: float) -> None:
        table.setdefault(key, []).append(value)


PROBE_EVERY = 0.002  # seconds between two probes of the measured replica, whatever their answers take
PROBERS = 8  # connections the probes take turns on (a probe waits for a free one)
REFUSED = "403"
REFUSED_OR_503 = "403 or 503"


async def measure(label: str, taker: Conn, others: list[Conn], count: int, bound_ms: float, figures: Figures,
                  before: Any = None, after: Any = None, agent_offset: int = 0) -> None:
    """Each revocation: revoke through `taker`, and probe the other replica every 2 ms (on whichever of `others`,
    connections to it, is free) until it answers 403. Probes carry a work unit naming the revocation, so that
    their audit records tell when each was decided."""
    boss = token("root-admin")
    port = others[0].port
    for i in range(count):
        agent = f"agent-{agent_offset + i}"
        unit = f"probe-{agent_offset + i}"
        tok = token(agent)
        plain = request(port, QUERY, tok)
        probe = request(port, QUERY, tok, work_unit=unit)
        deadline = time.perf_counter() + 10
        while await others[0].send(plain) != 200:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{label}: the other replica does not serve {agent} before its revocation")
            await asyncio.sleep(0.01)
        if before is not None:
            await before()
        status = await taker.send(request(taker.port, "/admin/v1/revocations", boss,
                                          f'{{"agent": "{agent}"}}'.encode()))
        stored, figures.stored_at[unit] = time.perf_counter(), time.time()  # answered: the revocation is stored
        assert status == 201, status
        taker_next = asyncio.create_task(taker.post(QUERY, agent))  # meanwhile: probing starts at once

        answers: list[tuple[float, float, int]] = []
        refused = asyncio.Event()
        idle: asyncio.Queue[Conn] = asyncio.Queue()
        for c in others:
            idle.put_nowait(c)

        probes = []
        while not refused.is_set():
            if time.perf_counter() - stored > 5:
                figures.timeouts += 1
                break
            conn = await idle.get()
            probes.append(asyncio.create_task(_probe(conn, probe, answers, refused, idle)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROBE_EVERY):
                    await refused.wait()
        await asyncio.gather(*probes)
        figures.taker_refused += await taker_next == 403
        for sent, got, status in answers:
            figures.round_trips.append((got - sent) * 1000)
            if (sent - stored) * 1000 > bound_ms:
                figures.after_bound += 1
                figures.violations += status == 200
                figures.late_503 += status == 503
        for name, statuses in ((REFUSED, {403}), (REFUSED_OR_503, {403, 503})):
            firsts = [got for _, got, status in answers if status in statuses]
            if firsts:
                figures.add(figures.answered, name, (min(firsts) - stored) * 1000)
        if after is not None:
            await after()


async def _probe(conn: Conn, raw: bytes, answers: list[tuple[float, float, int]], refused: asyncio.Event,
                 idle: asyncio.Queue[Conn]) -> None:
    sent = time.perf_counter()
    status = await conn.send(raw)
    answers.append((sent, time.perf_counter(), status))
    idle.put_nowait(conn)
    if status == 403:
        refused.set()


def decided(figures: Figures, records: list[tuple[str, int, Any]]) -> None:
    """From the probes' audit records (work unit, status, time): when the first refusal of each was decided."""
    first: dict[tuple[str, str], float] = {}
    for unit, status, moment in records:
        when = moment if isinstance(moment, dt.datetime) else dt.datetime.fromisoformat(str(moment))
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)  # the store keeps UTC
        for name, statuses in ((REFUSED, {403}), (REFUSED_OR_503, {403, 503})):
            if status in statuses and unit in figures.stored_at:
                key = (name, unit)
                first[key] = min(first.get(key, math.inf), when.timestamp())
    for (name, unit), at in first.items():
        figures.add(figures.decided, name, (at - figures.stored_at[unit]) * 1000)


async def run_pg(root: Path, store_db: str, args: argparse.Namespace) -> Figures:
    figures = Figures("PostgreSQL, 2 replicas" + (", B's feed frozen before each revocation"
                                                   if args.frozen_feed else ""))
    url = f"{PG}/{store_db}"
    proxy_proc = None
    ctl: Any = None
    b_url = url
    if args.frozen_feed:
        ctl, child = multiprocessing.Pipe()
        proxy_proc = multiprocessing.get_context("spawn").Process(target=_proxy, args=("127.0.0.1", 5432, child),
                                                                 daemon=True)
        proxy_proc.start()
        b_url = f"postgresql://postgres@127.0.0.1:{ctl.recv()}/{store_db}"
    servers = [start(config(root, "a", url))]
    try:
        await wait_ready(servers[0])  # one at a time: the first seeds the source
        servers.append(start(config(root, "b", b_url)))
        await wait_ready(servers[1])
        a, b = servers
        admin = await asyncpg.connect(f"{PG}/postgres")

        async def freeze() -> None:
            ports = [r["client_port"] for r in await admin.fetch(
                "SELECT client_port FROM pg_stat_activity WHERE application_name = $1 AND datname = $2",
                FEED_NAME, store_db)]
            frozen = 0
            for p in ports:
                ctl.send(("freeze", p))
                frozen = max(frozen, ctl.recv())
            if frozen != 1:
                raise RuntimeError(f"expected to freeze B's listening connection, froze {frozen}")
            await asyncio.sleep(0.05)  # as in the report: the revocation 50 ms after the feed froze

        async def thaw() -> None:
            ctl.send(("thaw", None))
            ctl.recv()

        async with contextlib.AsyncExitStack() as stack:
            taker = await stack.enter_async_context(Conn(a.base))
            others = [await stack.enter_async_context(Conn(b.base)) for _ in range(PROBERS)]
            with load([a.base, b.base], args.concurrency) as counts:
                await measure(figures.label, taker, others, args.count, args.bound, figures,
                              before=freeze if args.frozen_feed else None,
                              after=thaw if args.frozen_feed else None)
        figures.load = counts
        await admin.close()
        store = await asyncpg.connect(url)
        decided(figures, [(r["work_unit"], r["status"], r["time"]) for r in await store.fetch(
            "SELECT work_unit, status, time FROM audit WHERE work_unit LIKE 'probe-%'")])
        await store.close()
    finally:
        stop(servers)
        if proxy_proc is not None:
            ctl.send(("close", None))
            proxy_proc.join(5)
    figures.channel_lost = sum(s.log.read_text().count("lost the store channel") for s in servers)
    return figures


async def by_worker(server: Server, stack: contextlib.AsyncExitStack) -> list[list[Conn]]:
    """PROBERS + 1 connections to each of the two workers (one takes the commands, the others probe)."""
    found: dict[int, list[Conn]] = {}
    for _ in range(400):
        c = Conn(server.base)
        await c.__aenter__()
        await c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # accepted by a worker by now
        pid = worker_of(server, c.local_port)
        if pid is not None and len(found.setdefault(pid, [])) <= PROBERS:
            found[pid].append(c)
            stack.push_async_callback(c.__aexit__)
        else:
            await c.__aexit__()
        if len(found) == 2 and all(len(v) == PROBERS + 1 for v in found.values()):
            return [found[pid] for pid in sorted(found)]  # the same order for both halves: workers take turns
    raise RuntimeError("could not reach both workers on connections of their own")


async def run_sqlite(root: Path, args: argparse.Namespace) -> Figures:
    figures = Figures("SQLite, serve --workers 2")
    server = start(config(root, "sqlite", "sqlite:///store.db"), "--workers", "2")
    try:
        await wait_ready(server)
        with load([server.base], args.concurrency) as counts:
            half = args.count // 2
            for offset, n, (taker, probed) in ((0, half, (0, 1)), (half, args.count - half, (1, 0))):
                # Fresh connections for each half (idle ones are closed by the server after 5 s).
                async with contextlib.AsyncExitStack() as stack:
                    workers = await by_worker(server, stack)
                    await measure(figures.label, workers[taker][0], workers[probed][1:], n, args.bound, figures,
                                  agent_offset=offset)
        figures.load = counts
    finally:
        stop([server])
    db = sqlite3.connect(root / "store.db")
    decided(figures, db.execute("SELECT work_unit, status, time FROM audit WHERE work_unit LIKE 'probe-%'").fetchall())
    db.close()
    figures.channel_lost = server.log.read_text().count("lost the store channel")
    return figures


@contextlib.contextmanager
def load(bases: list[str], concurrency: int) -> Any:
    """Audited reads at `concurrency` while the block runs; yields {status: count, 0: ...}, and the seconds the
    load ran under key -1, once it has stopped."""
    counts: dict[int, int] = {}
    if concurrency <= 0:
        yield counts
        return
    ctx = multiprocessing.get_context("spawn")
    stop_evt = ctx.Event()
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=_load, args=(bases, concurrency, stop_evt, theirs), daemon=True)
    proc.start()
    if not mine.poll(60) or mine.recv() != "running":
        raise RuntimeError("the load did not start")
    started = time.perf_counter()
    before: dict[int, int] = {}
    try:
        yield counts
    finally:
        stop_evt.set()
        if mine.poll(60):
            before, after = mine.recv()
            counts.update({s: n - before.get(s, 0) for s, n in after.items()})
        counts[-1] = round(time.perf_counter() - started, 3)  # type: ignore[assignment]
        proc.join(10)


def report(f: Figures, count: int, bound: float, frozen: bool) -> None:
    seconds = f.load.pop(-1, 0.0)
    reads = sum(f.load.values())
    print(f"\n{f.label}: {count} revocations in {seconds:.1f} s, under a load of {reads:,} audited reads "
          f"({reads / max(seconds, 1e-9):,.0f}/s: {', '.join(f'{n:,} x {s}' for s, n in sorted(f.load.items()))})")
    print(f"  a probe of the measured replica meanwhile (request to answer): p50 {percentile(f.round_trips, 50):.1f} "
          f"ms, p99 {percentile(f.round_trips, 99):.1f} ms")
    rows: list[list[object]] = []
    for name in (REFUSED_OR_503, REFUSED) if frozen else (REFUSED,):
        for how, values in (("decided", f.decided.get(name, [])), ("answered", f.answered.get(name, []))):
            rows.append([f"first {name}, {how}", len(values), percentile(values, 50), percentile(values, 99),
                         max(values, default=float("nan")), sum(v <= bound for v in values)])
    print(table(["from the commit to", "n", "p50 ms", "p99 ms", "max ms", f"<= {bound:g} ms"], rows))
    print(f"  the replica that took it refused its very next request: {f.taker_refused}/{count}")
    print(f"  requests sent after the bound: {f.after_bound}, of which 200 (violations): {f.violations}, "
          f"503: {f.late_503}; no refusal within 5 s: {f.timeouts}; 'lost the store channel' in the logs: "
          f"{f.channel_lost}")


async def run(args: argparse.Namespace) -> None:
    store_db = f"agentgate_bench_rev_{os.getpid()}"
    admin = await asyncpg.connect(f"{PG}/postgres")
    root = Path(tempfile.mkdtemp(prefix="agentgate-bench-rev-"))
    try:
        workspace(root, args.count)
        results = []
        for store in args.store:
            if store == "pg":
                await admin.execute(f'CREATE DATABASE "{store_db}"')
                try:
                    results.append(await run_pg(root, store_db, args))
                finally:
                    await admin.execute(f'DROP DATABASE IF EXISTS "{store_db}" WITH (FORCE)')
            else:
                results.append(await run_sqlite(root, args))
        print(f"\nbound {args.bound:g} ms; concurrency {args.concurrency}; load average {os.getloadavg()[0]:.1f}")
        for f, store in zip(results, args.store, strict=True):
            report(f, args.count, args.bound, args.frozen_feed and store == "pg")
    finally:
        await admin.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--store", nargs="+", choices=["pg", "sqlite"], default=["pg", "sqlite"])
    parser.add_argument("--frozen-feed", action="store_true", help="pg: freeze B's feed before each revocation")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32, help="audited reads in flight meanwhile (0: none)")
    parser.add_argument("--bound", type=float, default=100.0, help="ms")
    asyncio.run(run(parser.parse_args()))
