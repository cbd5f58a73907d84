"""Read path: a 10-row read of a PostgreSQL dataset through the gateway, against asyncpg directly.

The bench creates two PostgreSQL databases of its own (a source with a
10,000-row `customers` table, and the gateway's store), writes a workspace
(agentgate.toml, the shipped model, a small policy, a catalog in which
`email` is classed pii, so the agents see it masked), starts a real
`agentgate serve` subprocess on it, and measures, phase by phase, each for a
bounded time after a short warm-up:

  direct   asyncpg (pool of 20, the gateway's source pool size + overflow),
           SELECT <the 8 columns> FROM customers ORDER BY id LIMIT 10
  gateway  POST /v1/datasets/customers/query {"limit": 10}: JWT, revocation
           check, Casbin decision, masking, the same query, JSON, the audit
           record committed to the PostgreSQL store before the answer

at concurrency 1 (p50/p99 latency) and at concurrency 32 (requests/s, with
p50/p99 under load), with 1 uvicorn worker and then with `--workers 2`.
Direct and gateway take turns (3 rounds of each, a third of the phase's
time each), so that a slow spell of this shared machine lands on both sides
of the comparison, not on one; the rounds are pooled into one phase. The
HTTP client is a minimal HTTP/1.1 keep-alive client on asyncio streams (one
connection per concurrent caller); the same phases through httpx.AsyncClient
show how much of a Python client's own cost would land in the figures. CPU
time is accounted per process group (bench client, gateway, PostgreSQL) for
every phase, because client, gateway and database share the machine's cores.

Every answer's status is checked (and every 50th body parsed: 10 rows, email
masked); at the end the audit records in the store are counted against the
200s the gateway gave. The bench drops its databases, stops the server and
exits by itself.

    python bench/read_path.py                          # 1 then 2 workers, 6 s per phase
    python bench/read_path.py --seconds 10 --workers 2
    python bench/read_path.py --profile /tmp/prof      # also py-spy the gateway at c=32 (needs py-spy)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile, table

ROOT = Path(__file__).resolve().parent.parent
PG = "postgresql://postgres@127.0.0.1:5432"
SECRET = "bench-secret-" + "r" * 40
N_ROWS = 10_000
COLUMNS = ["id", "name", "email", "country", "balance", "created_at", "active", "note"]
DIRECT_SQL = f"SELECT {', '.join(COLUMNS)} FROM customers ORDER BY id LIMIT 10"
BODY = json.dumps({"limit": 10}).encode()
PATH = "/v1/datasets/customers/query"
DIRECT_POOL = 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- setup --------------------------------------------------------------------------------------

async def create_databases(admin: asyncpg.Connection, source_db: str, store_db: str) -> None:
    for db in (source_db, store_db):
        await admin.execute(f'CREATE DATABASE "{db}"')
    conn = await asyncpg.connect(f"{PG}/{source_db}")
    try:
        await conn.execute("""
            CREATE TABLE customers (
                id integer PRIMARY KEY,
                name text NOT NULL,
                email text,
                country char(2) NOT NULL,
                balance numeric(12, 2) NOT NULL,
                created_at timestamptz NOT NULL,
                active boolean NOT NULL,
                note text)""")
        base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        countries = ["DE", "FR", "GB", "US"]
        await conn.copy_records_to_table("customers", records=[
            (i, f"Customer {i:05d}", None if i % 10 == 0 else f"c{i}@example.com", countries[i % 4],
             Decimal(f"{i * 10}.{i % 100:02d}"), base + dt.timedelta(minutes=i), i % 3 != 0,
             None if i % 2 else f"note {i % 5}") for i in range(1, N_ROWS + 1)], columns=COLUMNS)
        await conn.execute("ANALYZE customers")
    finally:
        await conn.close()


def workspace(root: Path, source_db: str, store_db: str, agents: int, pool_size: int | None) -> Path:
    pol = root / "policies"
    pol.mkdir()
    shutil.copy(ROOT / "policies" / "model.conf", pol / "model.conf")
    lines = ["p, reader, customers, read, allow", "p, support, customers, read:pii, allow",
             "p, reader, orders.*, read, allow"]
    lines += [f"g, bench-agent-{i}, reader" for i in range(agents)]
    (pol / "policy.csv").write_text("\n".join(lines) + "\n")
    (pol / "datasets.toml").write_text(
        '[datasets.customers]\nsource = "crm"\ntable = "public.customers"\nowner = "bench@example.com"\n'
        'description = "Customer master data"\n\n[datasets.customers.columns.email]\nclass = "pii"\n')
    (pol / "tests.toml").write_text(
        '[[case]]\nagent = "bench-agent-0"\ndataset = "customers"\naction = "read"\nexpect = "allow"\n\n'
        '[[case]]\nagent = "bench-agent-0"\ndataset = "customers"\naction = "read:pii"\nexpect = "deny"\n')
    cfg = root / "agentgate.toml"
    cfg.write_text(f"""
[auth]
algorithms = ["HS256"]
secret = "{SECRET}"

[store]
url = "{PG}/{store_db}"

[policy]
dir = "policies"

[sources.crm]
url = "{PG}/{source_db}"
{f"pool_size = {pool_size}" if pool_size else ""}
""")
    return cfg


def token(agent: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": agent, "iat": now, "exp": now + 3600, "jti": f"{agent}-{now}"}, SECRET,
                      algorithm="HS256")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`agentgate serve` in its own process group."""

    def __init__(self, cfg: Path, workers: int, dbs: tuple[str, ...]):
        self.dbs = dbs
        self.workers = workers
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        exe = shutil.which("agentgate") or str(Path(sys.executable).with_name("agentgate"))
        self.proc = subprocess.Popen(
            [exe, "serve", "--config", str(cfg), "--port", str(self.port), "--workers", str(workers),
             "--log-level", "warning"], cwd=cfg.parent, start_new_session=True)

    async def ready(self) -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            for _ in range(600):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"agentgate serve exited with {self.proc.returncode}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(self.base + "/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise RuntimeError("agentgate serve did not become ready")

    def pids(self) -> list[int]:
        """The server process and its descendants (the uvicorn workers)."""
        out = [self.proc.pid]
        kids: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    ppid = int(stat.rsplit(")", 1)[1].split()[1])
                    kids.setdefault(ppid, []).append(int(entry))
        i = 0
        while i < len(out):
            out += kids.get(out[i], [])
            i += 1
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


# --- CPU accounting ------------------------------------------------------------------------------

def cpu_by_group(server_pids: list[int], dbs: tuple[str, ...]) -> dict[str, float]:
    """CPU seconds so far: this bench, the gateway processes, PostgreSQL (the backends serving this
    bench's databases and the server's own background processes), and everything else on the machine."""
    out = {"client": time.process_time(), "gateway": 0.0, "postgres": 0.0}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / CLK_TCK
        if pid in server_pids:
            out["gateway"] += seconds
            out[f"pid {pid}"] = seconds
        elif comm.startswith("postgres"):
            # "postgres: 15/main: USER DB HOST(PORT) STATE" for a backend; background workers name no DB.
            words = cmdline.split()
            backend = len(words) >= 5 and "(" in words[4]
            if not backend or words[3] in dbs:
                out["postgres"] += seconds
    with open("/proc/stat") as f:
        jiffies = [int(x) for x in f.readline().split()[1:]]
    busy = (sum(jiffies) - jiffies[3] - jiffies[4]) / CLK_TCK  # all but idle and iowait
    out["other"] = busy - out["gateway"] - out["postgres"] - out["client"]
    return out


# --- clients ------------------------------------------------------------------------------------

class RawClient:
    """HTTP/1.1 keep-alive on one connection: one request in flight at a time."""

    def __init__(self, port: int, agent: str):
        self.port = port
        self.request = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                        f"Authorization: Bearer {token(agent)}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def call(self) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        i = lower.index(b"content-length:") + 15
        length = int(lower[i: lower.index(b"\r\n", i)])
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


@dataclass
class Phase:
    name: str
    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # ms
    done: int = 0
    bad: int = 0
    checked: int = 0
    first_error: str | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    sessions: dict[str, int] = field(default_factory=dict)  # new PostgreSQL sessions per database
    audit_groups: tuple[float, float, float] | None = None  # group commits, their records, their seconds

    @property
    def audit(self) -> tuple[float, float] | None:
        """(records per group commit, ms per group commit), from the single worker's /metrics."""
        if self.audit_groups is None or not self.audit_groups[0]:
            return None
        groups, records, secs = self.audit_groups
        return records / groups, secs / groups * 1000

    @property
    def rps(self) -> float:
        return self.done / self.seconds

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)


def check_body(body: bytes) -> str | None:
    try:
        answer = json.loads(body)
    except ValueError:
        return "not JSON"
    if len(answer.get("rows", ())) != 10:
        return f"{len(answer.get('rows', ()))} rows, not 10"
    if answer.get("masked") != ["email"] or answer["rows"][0].get("email") is not None:
        return "email not masked"
    return None


async def sessions(dbs: tuple[str, ...]) -> dict[str, int]:
    """Sessions PostgreSQL has counted per database (pg_stat_database.sessions, PostgreSQL 14+)."""
    conn = await asyncpg.connect(f"{PG}/postgres")
    try:
        rows = await conn.fetch("SELECT datname, sessions FROM pg_stat_database WHERE datname = ANY($1::text[])",
                                list(dbs))
    finally:
        await conn.close()
    return {r["datname"]: int(r["sessions"] or 0) for r in rows}


async def drive(phase: Phase, calls: list[Callable[[], Awaitable[tuple[int, bytes | None]]]], warmup: float,
                server_pids: list[int], dbs: tuple[str, ...]) -> Phase:
    """Each caller loops for warm-up + phase.seconds; only the timed window is counted."""
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    end = start + phase.seconds
    clock = time.perf_counter
    cpu_before: dict[str, float] = {}

    async def caller(call: Callable[[], Awaitable[tuple[int, bytes | None]]]) -> None:
        n = 0
        while True:
            t0 = clock()
            status, body = await call()
            t1 = clock()
            now = loop.time()
            if now >= end:
                return
            if now - (t1 - t0) < start:
                continue  # warm-up, or started before the window
            phase.done += 1
            phase.latencies.append((t1 - t0) * 1000)
            if status != 200:
                phase.bad += 1
                if phase.first_error is None:
                    phase.first_error = f"{status}: {(body or b'')[:200]!r}"
            elif body is not None and n % 50 == 0:
                phase.checked += 1
                problem = check_body(body)
                if problem is not None:
                    phase.bad += 1
                    phase.first_error = phase.first_error or problem
            n += 1

    async def cpu_marks() -> None:
        await asyncio.sleep(max(0.0, start - loop.time()))
        cpu_before.update(cpu_by_group(server_pids, dbs))
        await asyncio.sleep(max(0.0, end - loop.time()))
        after = cpu_by_group(server_pids, dbs)
        phase.cpu = {k: (after[k] - cpu_before.get(k, 0.0)) / phase.seconds for k in after}

    opened = await sessions(dbs)

    await asyncio.gather(cpu_marks(), *(caller(c) for c in calls))
    await asyncio.sleep(0.6)  # connections closed at the end of the window reach the statistics
    closed = await sessions(dbs)
    phase.sessions = {db: closed.get(db, 0) - opened.get(db, 0) for db in dbs}
    return phase


# --- the phases -----------------------------------------------------------------------------------

async def direct_phase(source_db: str, concurrency: int, seconds: float, warmup: float) -> Phase:
    pool = await asyncpg.create_pool(f"{PG}/{source_db}", min_size=min(concurrency, DIRECT_POOL),
                                     max_size=min(concurrency, DIRECT_POOL))
    assert pool is not None
    try:
        async def call() -> tuple[int, bytes | None]:
            async with pool.acquire() as conn:
                rows = await conn.fetch(DIRECT_SQL)
            data = [dict(r) for r in rows]
            return (200 if len(data) == 10 else 500), None

        phase = Phase(f"direct asyncpg, c={concurrency}", concurrency, seconds)
        return await drive(phase, [call] * concurrency, warmup, [], (source_db,))
    finally:
        await pool.close()


async def raw_phase(server: Server, label: str, concurrency: int, seconds: float, warmup: float) -> Phase:
    clients = [RawClient(server.port, f"bench-agent-{i}") for i in range(concurrency)]
    await asyncio.gather(*(c.connect() for c in clients))
    try:
        phase = Phase(f"{label}, c={concurrency}", concurrency, seconds)
        before = await audit_metrics(server)
        await drive(phase, [c.call for c in clients], warmup, server.pids(), server.dbs)
        after = await audit_metrics(server)
        if before and after and after["count"] > before["count"]:
            phase.audit_groups = (after["count"] - before["count"], after["records"] - before["records"],
                                  after["seconds"] - before["seconds"])
        return phase
    finally:
        await asyncio.gather(*(c.close() for c in clients))


def merged(name: str, parts: list[Phase]) -> Phase:
    """One phase out of the rounds it was measured in: latencies pooled, counts summed, CPU averaged."""
    out = Phase(name, parts[0].concurrency, sum(p.seconds for p in parts))
    for p in parts:
        out.latencies += p.latencies
        out.done, out.bad, out.checked = out.done + p.done, out.bad + p.bad, out.checked + p.checked
        out.first_error = out.first_error or p.first_error
        for db, n in p.sessions.items():
            out.sessions[db] = out.sessions.get(db, 0) + n
        if p.audit_groups is not None:
            total = out.audit_groups or (0.0, 0.0, 0.0)
            out.audit_groups = (total[0] + p.audit_groups[0], total[1] + p.audit_groups[1],
                                total[2] + p.audit_groups[2])
    keys = set.intersection(*(set(p.cpu) for p in parts))
    out.cpu = {k: sum(p.cpu[k] * p.seconds for p in parts) / out.seconds for k in keys}
    return out


async def audit_metrics(server: Server) -> dict[str, float] | None:
    """The audit writer's group-commit counters from /metrics (one worker's: only meaningful with 1)."""
    if server.workers != 1:
        return None
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(server.base + "/metrics")).text
    out: dict[str, float] = {}
    names = {"agentgate_audit_batch_records_sum": "records", "agentgate_audit_batch_records_count": "count",
             "agentgate_audit_write_duration_seconds_sum": "seconds"}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in names:
            out[names[name]] = float(value)
    return out if len(out) == 3 else None


async def httpx_phase(server: Server, label: str, concurrency: int, seconds: float, warmup: float) -> Phase:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.base, limits=limits, timeout=30) as client:
        def make(i: int) -> Callable[[], Awaitable[tuple[int, bytes | None]]]:
            headers = {"Authorization": f"Bearer {token(f'bench-agent-{i}')}", "Content-Type": "application/json"}

            async def call() -> tuple[int, bytes | None]:
                r = await client.post(PATH, content=BODY, headers=headers)
                return r.status_code, r.content
            return call

        phase = Phase(f"{label} (httpx client), c={concurrency}", concurrency, seconds)
        return await drive(phase, [make(i) for i in range(concurrency)], warmup, server.pids(), server.dbs)


async def profile(server: Server, out_dir: Path, concurrency: int, seconds: float) -> Path | None:
    """py-spy the gateway's worker(s) under load at c=concurrency; collapsed stacks to out_dir."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        print("  (py-spy not found: pip install py-spy)")
        return None
    os.makedirs(out_dir, exist_ok=True)
    target = out_dir / f"gateway-c{concurrency}.txt"
    pids = server.pids()
    pid = pids[-1] if len(pids) > 1 else pids[0]  # a worker, when uvicorn supervises workers
    proc = await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250", "--format", "raw",
        "--nonblocking", "-o", str(target), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    await asyncio.sleep(0.5)
    await raw_phase(server, "profiled", concurrency, seconds - 1, 0.2)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        print(f"  (py-spy failed: {err.decode(errors='replace')[-300:]})")
        return None
    (out_dir / f"gateway-c{concurrency}-top.txt").write_text(summarise_profile(target))
    return target


# Where a sampled stack belongs: the first category one of whose markers is in the stack.
PROFILE_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("source: opening connections (pool churn)", ("AsyncAdapt_dbapi_connection.create", "_create_ssl_connection",
                                                  "connect_utils.py", "Connection.close (asyncpg",
                                                  "AsyncConnection.close")),
    ("source: SqlConnector.columns() per request", ("SqlConnector.columns",)),
    ("audit writer (chain hashing, asyncpg insert)", ("PgChainWriter", "AuditTrail._run",
                                                      "link_with_bodies (gateway/audit")),
    ("source: SQLAlchemy statement build/compile/execute, rows", ("sqlalchemy", "SqlConnector", "greenlet",
                                                                  "PreparedStatement", "Registry.guarded")),
    ("Gateway.handle: auth, policy, record, JSON, sha256, cursor", ("Gateway.", "gateway/core/", "gateway/auth/")),
    ("HTTP: uvicorn + starlette + route adapter", ("uvicorn/protocols", "starlette/", "gateway/transports/")),
    ("background: policy file watcher thread", ("WorkerThread.run", "watchfiles")),
    ("background: store sync", ("StoreSync", "Registry.refresh")),
    ("event loop + C extensions (uvloop, asyncpg protocol, httptools)", ("Runner.run (asyncio/runners.py:118)",)),
]


def summarise_profile(path: Path, top: int = 30) -> str:
    """Categories, then self and inclusive time per function, from py-spy's collapsed stacks."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    cats: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        leaf = stack.rsplit(";", 1)[-1]
        cat = next((name for name, marks in PROFILE_CATEGORIES
                    if any(m in (leaf if name.startswith("event loop") else stack) for m in marks)), "other")
        cats[cat] = cats.get(cat, 0) + n
        frames = stack.split(";") if stack else ["(no Python frame)"]
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    lines = [f"{total} samples", "", "share  category"]
    lines += [f"{100 * n / total:5.1f}  {c}" for c, n in sorted(cats.items(), key=lambda x: -x[1])]
    lines += ["", "self %  function"]
    lines += [f"{100 * n / total:6.1f}  {f}" for f, n in sorted(own.items(), key=lambda x: -x[1])[:top]]
    lines += ["", "inclusive %  function"]
    lines += [f"{100 * n / total:6.1f}  {f}" for f, n in sorted(inclusive.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(lines) + "\n"


async def tear_down(admin: Any, server: Server | None, dbs: tuple[str, ...], root: Path) -> None:
    """Stop the server, drop the bench's databases, remove its folder."""
    if server is not None:
        server.stop()
    for db in dbs:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    await admin.close()
    shutil.rmtree(root, ignore_errors=True)


async def audit_count(store_db: str) -> int:
    conn = await asyncpg.connect(f"{PG}/{store_db}")
    try:
        return int(await conn.fetchval("SELECT count(*) FROM audit WHERE action = 'read' AND status = 200"))
    finally:
        await conn.close()


# --- main -----------------------------------------------------------------------------------------

async def run(args: argparse.Namespace) -> int:
    tag = os.getpid()
    source_db, store_db = f"agentgate_bench_{tag}", f"agentgate_bench_{tag}_store"
    admin = await asyncpg.connect(f"{PG}/postgres")
    root = Path(tempfile.mkdtemp(prefix="agentgate-bench-read-"))
    server: Server | None = None
    phases: list[Phase] = []
    summary: list[list[Any]] = []
    served_200 = 0
    seconds, warmup, conc = args.seconds, args.warmup, args.concurrency
    try:
        await create_databases(admin, source_db, store_db)
        cfg = workspace(root, source_db, store_db, max(conc, 1), args.pool_size)
        print(f"databases {source_db} (source, {N_ROWS:,} rows) and {store_db} (store) created; "
              f"{seconds:g} s per phase after {warmup:g} s warm-up", flush=True)

        rounds = args.rounds
        part = seconds / rounds
        for workers in args.workers:
            label = f"gateway, {workers} worker{'s' if workers > 1 else ''}"
            server = Server(cfg, workers, (source_db, store_db))
            await server.ready()
            # Direct and gateway take turns, `rounds` times each, so that a slow spell of this shared machine
            # falls on both sides of the comparison rather than on one phase.
            measured: dict[str, list[Phase]] = {"d1": [], "g1": [], "d32": [], "g32": []}
            for c, d_key, g_key in ((1, "d1", "g1"), (conc, "d32", "g32")):
                for r in range(rounds):
                    warm = warmup if r == 0 else min(warmup, 0.3)
                    measured[d_key].append(await direct_phase(source_db, c, part, warm))
                    measured[g_key].append(await raw_phase(server, label, c, part, warm))
            beside = f"beside {workers} worker{'s' if workers > 1 else ''}"
            d1 = merged(f"direct asyncpg, c=1 ({beside})", measured["d1"])
            d32 = merged(f"direct asyncpg, c={conc} ({beside})", measured["d32"])
            g1 = merged(f"{label}, c=1", measured["g1"])
            g32 = merged(f"{label}, c={conc}", measured["g32"])
            phases += [d1, g1, d32, g32]
            print(f"  {d1.name}: p50 {d1.p50:.3f} ms; {d32.name}: {d32.rps:,.0f} req/s", flush=True)
            print(f"  {g1.name}: p50 {g1.p50:.3f} ms; {g32.name}: {g32.rps:,.0f} req/s", flush=True)
            if args.httpx:
                h1 = await httpx_phase(server, label, 1, seconds, warmup)
                h32 = await httpx_phase(server, label, conc, seconds, warmup)
                phases += [h1, h32]
                print(f"  {h1.name}: p50 {h1.p50:.3f} ms; {h32.name}: {h32.rps:,.0f} req/s", flush=True)
            if args.profile and workers == args.workers[0]:
                path = await profile(server, Path(args.profile), conc, max(seconds, 5))
                if path is not None:
                    print(f"  py-spy profile at c={conc}: {path} (summary: {path.with_name(path.stem + '-top.txt')})")
            summary.append([workers, g1.p50, d1.p50, g1.p50 - d1.p50, g1.p99, d1.p99, g32.rps, d32.rps,
                            g32.rps / d32.rps])
            server.stop()
            server = None
        served_200 = sum(p.done - p.bad for p in phases if p.name.startswith("gateway"))
        audited = await audit_count(store_db)
    finally:
        await tear_down(admin, server, (source_db, store_db), root)

    print()
    print(f"10-row read of a PostgreSQL dataset ({os.cpu_count()} cores shared by client, gateway and PostgreSQL;")
    print("cpu columns: cores busy during the phase, by process group; 'other' is the rest of the machine):")
    rows = []
    for p in phases:
        rows.append([p.name, p.done, p.rps, p.p50, p.p99, max(p.latencies) if p.latencies else float("nan"),
                     p.bad, *(p.cpu.get(k, float("nan")) for k in ("client", "gateway", "postgres", "other")),
                     sum(n for db, n in p.sessions.items() if db == source_db)])
    print(table(["phase", "requests", "req/s", "p50 ms", "p99 ms", "max ms", "errors", "cpu client",
                 "cpu gateway", "cpu postgres", "cpu other", "source sessions"], rows))
    print("  (source sessions: new PostgreSQL sessions to the source database during the phase, warm-up")
    print("   included (pg_stat_database.sessions); a pool that keeps its connections opens none)")
    for p in phases:
        if p.audit is not None:
            print(f"  {p.name}: audit group commits: {p.audit[0]:.1f} records each, {p.audit[1]:.2f} ms each "
                  f"(lock, tail, insert, commit); gateway CPU per answer "
                  f"{1000 * p.cpu.get('gateway', 0) / max(p.rps, 1e-9):.2f} ms")
        per_process = [v for k, v in p.cpu.items() if k.startswith("pid ") and v >= 0.005]
        if len(per_process) > 1:
            print(f"  {p.name}: gateway cores by process: {' / '.join(f'{v:.2f}' for v in per_process)}")
        if p.first_error:
            print(f"  {p.name}: first error: {p.first_error}")
    print()
    print("Gateway against direct (raw HTTP/1.1 keep-alive client):")
    print(table(["workers", "gw p50 ms", "direct p50 ms", "p50 added ms", "gw p99 ms", "direct p99 ms",
                 f"gw req/s c={conc}", f"direct req/s c={conc}", "gw/direct throughput"],
                [[w, a, b, c, d, e, f, g, f"{h:.1%}"] for w, a, b, c, d, e, f, g, h in summary]))
    print()
    print(f"Audit: {audited:,} read records with status 200 in the store; the gateway answered {served_200:,} "
          f"checked 200s in the timed windows (warm-up and profiling requests are audited too, not counted here)")
    for w, _, _, added, _, _, g32, _, _ in summary:
        print(f"Targets ({w} worker{'s' if w > 1 else ''}): p50 within 1 ms of direct: "
              f"{'PASS' if added <= 1.0 else 'FAIL'} (+{added:.3f} ms); >= 2,000 audited reads/s: "
              f"{'PASS' if g32 >= 2000 else 'FAIL'} ({g32:,.0f}/s)")
    errors = sum(p.bad for p in phases)
    if errors or audited < served_200:
        print(f"PROBLEM: {errors} bad answers; audit records {audited:,} < 200s {served_200:,}"
              if audited < served_200 else f"PROBLEM: {errors} bad answers")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per phase")
    parser.add_argument("--warmup", type=float, default=1.5,
                        help="untimed seconds before each phase's first round (0.3 s before the others)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="direct and gateway take turns this many times per phase, --seconds split among them")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="uvicorn workers, one run each")
    parser.add_argument("--no-httpx", dest="httpx", action="store_false",
                        help="skip the httpx.AsyncClient phases")
    parser.add_argument("--pool-size", type=int, help="the source's pool_size in agentgate.toml (default: the "
                        "gateway's own default, 10 plus as many overflow connections)")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the gateway at full concurrency into DIR")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run(args))
    return uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
