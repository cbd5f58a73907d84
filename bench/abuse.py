"""Abuse: what a client without credentials, or with the heaviest allowed requests, costs everyone else.

Each part runs against a real `agentgate serve` on 127.0.0.1 with a PostgreSQL source and store (databases of
its own, dropped at the end), stops by itself and prints its figures:

  flood    (a) an unauthenticated flood at full speed for --seconds (60): the store's growth in MB, and an
           authenticated agent's p50/p99 unloaded (before and after) and during the flood, with their ratios;
           checks that the records plus the summaries' rows account for every refused request, exactly
  shapes   (b) 1,000 distinct large query shapes (100 terms binding 1,000 values each; on an 8-column table,
           then a 500-column one): the gateway's RSS before, every 100 shapes, and after
  healthz  (c) /healthz p50/p99/max, idle and while the heaviest allowed reads run in turn for --seconds (30):
           a query of 100 terms binding 1,000 values over every row of a 100,000-row table (max_rows 100,000,
           the catalog's cap), and a SQL statement of 1,000 literals over the same rows

    python bench/abuse.py                    # every part
    python bench/abuse.py flood              # --seconds 60 --connections 16 --baseline-seconds 10
    python bench/abuse.py flood --compare-unlimited   # also the same flood with the limits off (the old cost)
    python bench/abuse.py shapes             # --shapes 1000 --tables customers,wide
    python bench/abuse.py healthz            # --seconds 30 --rows 100000 --baseline-seconds 5

A part is an entry of PARTS: its help, its options, and an async function taking the parsed arguments and
returning the exit status (0, or 1 when a correctness check fails). `gateway_on_postgres` sets up and tears
down the databases and the server for any part.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile, table
from read_path import BODY, PATH, PG, RawClient, Server, create_databases, tear_down, token, workspace

from gateway.config import LimitSettings

MB = 1024 * 1024


# --- shared by the parts -------------------------------------------------------------------------

@dataclass
class Gateway:
    server: Server
    source_db: str
    store_db: str
    config: Path


@contextlib.asynccontextmanager
async def gateway_on_postgres(extra_config: str = "", workers: int = 1, agents: int = 4) -> AsyncIterator[Gateway]:
    """Databases of its own (a 10,000-row `customers` source, an empty store), a workspace (read_path's, plus
    `extra_config`), `agentgate serve` on it; all gone afterwards. The server is stopped (SIGTERM) before the
    databases are dropped; a part may stop it earlier (gateway.server.stop()) to read the store after a clean
    shutdown."""
    tag = f"{os.getpid()}_{int(time.time() * 1000) % 100000}"
    source_db, store_db = f"agentgate_abuse_{tag}", f"agentgate_abuse_{tag}_store"
    admin = await asyncpg.connect(f"{PG}/postgres")
    root = Path(tempfile.mkdtemp(prefix="agentgate-bench-abuse-"))
    server: Server | None = None
    try:
        await create_databases(admin, source_db, store_db)
        config = workspace(root, source_db, store_db, agents, None)
        if extra_config:
            config.write_text(config.read_text() + "\n" + extra_config + "\n")
        server = Server(config, workers, (source_db, store_db))
        await server.ready()
        yield Gateway(server, source_db, store_db, config)
    finally:
        await tear_down(admin, server, (source_db, store_db), root)


async def agent_latencies(port: int, seconds: float, agent: str = "bench-agent-0") -> list[float]:
    """An authenticated agent reading 10 rows in a loop (one keep-alive connection, one read at a time) for
    `seconds`: each read's latency in ms. Any answer but 200 is an error."""
    client = RawClient(port, agent)
    await client.connect()
    out: list[float] = []
    try:
        end = time.perf_counter() + seconds
        while (t0 := time.perf_counter()) < end:
            status, body = await client.call()
            out.append((time.perf_counter() - t0) * 1000)
            if status != 200:
                raise RuntimeError(f"the agent's read answered {status}: {body[:200]!r}")
    finally:
        await client.close()
    return out


# --- (a) flood -----------------------------------------------------------------------------------

FLOOD_REQUEST = (f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer not-a-token\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n").encode() + BODY
# The limits off, for --compare-unlimited: what a flood cost before them.
UNLIMITED = """[limits]
failed_auth_per_minute = 1000000000
failed_auth_burst = 1000000000
failed_auth_records_per_minute = 1000000000
"""


async def flood_client(port: int, seconds: float, connections: int) -> dict[str, int]:
    """`connections` keep-alive connections sending FLOOD_REQUEST back to back for `seconds`; answers by status.
    Runs in a process of its own (see `flood-client`), so that the agent's latency is not measured on a busy
    event loop."""
    counts: Counter[str] = Counter()
    end = time.monotonic() + seconds

    async def one() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while time.monotonic() < end:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert reader is not None
                writer.write(FLOOD_REQUEST)
                head = await reader.readuntil(b"\r\n\r\n")
                lower = head.lower()
                i = lower.index(b"content-length:") + 15
                await reader.readexactly(int(lower[i: lower.index(b"\r\n", i)]))
                counts[head[9:12].decode()] += 1
                if b"connection: close" in lower:
                    writer.close()
                    reader = writer = None
            except (OSError, asyncio.IncompleteReadError, ValueError):
                counts["connection errors"] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return dict(counts)


async def store_sizes(store_db: str) -> dict[str, float]:
    conn = await asyncpg.connect(f"{PG}/{store_db}")
    try:
        row = await conn.fetchrow(
            "SELECT pg_total_relation_size('audit') AS audit, pg_database_size(current_database()) AS db, "
            "count(*) FILTER (WHERE agent IS NULL AND action <> 'refused_summary') AS own, "
            "coalesce(sum(rows) FILTER (WHERE action = 'refused_summary'), 0) AS folded, "
            "count(*) FILTER (WHERE action = 'refused_summary') AS summaries, "
            "count(*) FILTER (WHERE agent IS NOT NULL) AS agent, "
            "coalesce(sum(pg_column_size(a.*)) FILTER (WHERE agent IS NULL), 0) AS refused_bytes FROM audit AS a")
    finally:
        await conn.close()
    return {k: float(row[k]) for k in ("audit", "db", "own", "folded", "summaries", "agent", "refused_bytes")}


@dataclass
class FloodRun:
    label: str
    before: list[float]  # unloaded: measured before the flood and after it (a slow spell of the machine lands
    # on both sides of the comparison, not on one)
    during: list[float]
    answers: dict[str, int]
    seconds: float
    at_end: dict[str, float]  # store sizes and counts when the flood ended
    after_stop: dict[str, float]  # the same after a clean shutdown (summaries written)
    start: dict[str, float]

    def growth(self, key: str = "audit", when: str = "after_stop") -> float:
        return (getattr(self, when)[key] - self.start[key]) / MB

    @property
    def refused(self) -> int:
        return sum(n for status, n in self.answers.items() if status not in ("200", "connection errors"))


async def flood_once(label: str, args: argparse.Namespace, extra_config: str = "") -> FloodRun:
    async with gateway_on_postgres(extra_config, args.workers) as gw:
        await agent_latencies(gw.server.port, 1.0)  # warm-up: pools, caches
        start = await store_sizes(gw.store_db)
        before = await agent_latencies(gw.server.port, args.baseline_seconds)
        print(f"  {label}: unloaded p50 {percentile(before, 50):.2f} ms; flooding for {args.seconds:g} s with "
              f"{args.connections} connections ...", flush=True)
        flooder = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "flood-client", "--port", str(gw.server.port), "--seconds", str(args.seconds),
            "--connections", str(args.connections), stdout=subprocess.PIPE)
        ramp = min(2.0, args.seconds / 10)
        await asyncio.sleep(ramp)
        during = await agent_latencies(gw.server.port, max(1.0, args.seconds - ramp - 1.0))
        out, _ = await flooder.communicate()
        answers: dict[str, int] = json.loads(out)
        at_end = await store_sizes(gw.store_db)
        after = await agent_latencies(gw.server.port, args.baseline_seconds)
        gw.server.stop()  # a clean shutdown writes the summaries still being counted
        after_stop = await store_sizes(gw.store_db)
    return FloodRun(label, before + after, during, answers, args.seconds, at_end, after_stop, start)


def flood_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=60.0, help="how long the flood lasts (default 60)")
    p.add_argument("--connections", type=int, default=16, help="the flooding client's connections (default 16)")
    p.add_argument("--baseline-seconds", type=float, default=10.0, help="the agent's unloaded measurement")
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers of the gateway (default 1)")
    p.add_argument("--compare-unlimited", action="store_true",
                   help="also run the same flood against a gateway with the [limits] off")


async def flood(args: argparse.Namespace) -> int:
    print(f"(a) unauthenticated flood: {args.seconds:g} s at full speed ({args.connections} keep-alive "
          f"connections, junk bearer token) against `agentgate serve` ({args.workers} worker(s), PostgreSQL "
          f"source and store, default [limits]); an agent reads 10 rows at c=1 before, during and after",
          flush=True)
    runs = [await flood_once("default [limits]", args)]
    if args.compare_unlimited:
        runs.append(await flood_once("[limits] off", args, UNLIMITED))
    print()
    rows = []
    for run in runs:
        b50, b99 = percentile(run.before, 50), percentile(run.before, 99)
        d50, d99 = percentile(run.during, 50), percentile(run.during, 99)
        rows.append([run.label, run.refused, run.refused / run.seconds, b50, d50, f"{d50 / b50:.2f}x", b99, d99,
                     f"{d99 / b99:.2f}x", run.growth("refused_bytes"), run.growth("audit"), run.growth("db")])
    print(table(["gateway", "refused", "refused/s", "agent p50 ms unloaded", "during", "p50 ratio",
                 "p99 unloaded", "p99 during", "p99 ratio", "refused records MB", "audit table MB",
                 "store MB"], rows))
    print("  (unloaded: the agent alone, before the flood and after it, pooled)")
    print("  (MB grown from the flood's start to after a clean shutdown; 'refused records': the rows of the records "
          "of refused requests and summaries (pg_column_size); 'audit table': the table with its indexes and the "
          "agent's own records; 'store': the database)")
    print(f"  load average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} cores, shared by the flooding client, the gateway, PostgreSQL and the agent)")
    status = 0
    for run in runs:
        end, done = run.at_end, run.after_stop
        print(f"\n{run.label}: answers {dict(sorted(run.answers.items()))}")
        print(f"  records of refused requests: {int(done['own']):,} of their own, {int(done['summaries'])} "
              f"summaries counting {int(done['folded']):,} (when the flood ended: {int(end['own']):,} of their own, "
              f"{int(end['summaries'])} summaries); the agent's reads: {int(done['agent']):,} records")
        accounted = int(done["own"] + done["folded"])
        if accounted != run.refused:
            print(f"  PROBLEM: records + summaries' rows = {accounted:,}, the flood got {run.refused:,} answers")
            status = 1
        else:
            print(f"  every refused request accounted for: {int(done['own']):,} + {int(done['folded']):,} = "
                  f"{run.refused:,}")
        if run.label.startswith("default"):
            seconds = run.seconds + 1
            limits = LimitSettings()  # the defaults: failed_auth_burst + failed_auth_per_minute * T / 60
            bound = limits.failed_auth_burst + math.ceil(limits.failed_auth_per_minute / 60 * seconds)
            print(f"  bound (defaults, one client, {seconds:g} s): <= {bound} records of their own, <= "
                  f"{math.ceil(seconds / 60) + 1} summaries: {'PASS' if done['own'] <= bound else 'FAIL'}")
            ratio = percentile(run.during, 50) / percentile(run.before, 50)
            print(f"  the agent's p50 during the flood within 2x of unloaded: {'PASS' if ratio <= 2 else 'FAIL'} "
                  f"({ratio:.2f}x)")
    return status


# --- (b) shapes and (c) healthz: the heaviest allowed reads ----------------------------------------

WIDE_NAMES = [f"reading_{i:04d}_value" for i in range(1, 500)]  # with `id`: the 500 columns a body may name
HEAVY_DATASETS = """
[datasets.big]
source = "crm"
table = "public.big"
owner = "bench@example.com"
max_rows = 100000

[datasets.wide]
source = "crm"
table = "public.wide"
owner = "bench@example.com"
"""


@contextlib.asynccontextmanager
async def heavy_gateway(big_rows: int) -> AsyncIterator[Gateway]:
    """gateway_on_postgres's databases and workspace, plus `big` (`big_rows` rows like customers', max_rows
    100,000, the catalog's cap) and `wide` (500 integer columns, empty), readable by every bench agent."""
    tag = f"{os.getpid()}_{int(time.time() * 1000) % 100000}"
    source_db, store_db = f"agentgate_abuse_{tag}", f"agentgate_abuse_{tag}_store"
    admin = await asyncpg.connect(f"{PG}/postgres")
    root = Path(tempfile.mkdtemp(prefix="agentgate-bench-abuse-"))
    server: Server | None = None
    try:
        await create_databases(admin, source_db, store_db)
        conn = await asyncpg.connect(f"{PG}/{source_db}")
        try:
            await conn.execute(
                "CREATE TABLE big (id integer PRIMARY KEY, name text NOT NULL, email text, country char(2) NOT NULL, "
                "balance numeric(12, 2) NOT NULL, created_at timestamptz NOT NULL, active boolean NOT NULL, note text)")
            await conn.execute(
                "INSERT INTO big SELECT i, 'Customer ' || i, 'c' || i || '@example.com', "
                "(ARRAY['DE', 'FR', 'GB', 'US'])[1 + i % 4], i * 1.25, "
                "timestamptz '2026-01-01 00:00+00' + i * interval '1 minute', i % 3 <> 0, "
                f"CASE WHEN i % 2 = 0 THEN 'note ' || i END FROM generate_series(1, {big_rows}) i")
            await conn.execute("ANALYZE big")
            await conn.execute(f"CREATE TABLE wide (id integer PRIMARY KEY, "
                               f"{', '.join(f'{c} integer' for c in WIDE_NAMES)})")
        finally:
            await conn.close()
        config = workspace(root, source_db, store_db, 4, None)
        pol = config.parent / "policies"
        (pol / "datasets.toml").write_text((pol / "datasets.toml").read_text() + HEAVY_DATASETS)
        (pol / "policy.csv").write_text((pol / "policy.csv").read_text() + "p, reader, big, read, allow\n"
                                        "p, reader, wide, read, allow\n")
        server = Server(config, 1, (source_db, store_db))
        await server.ready()
        yield Gateway(server, source_db, store_db, config)
    finally:
        await tear_down(admin, server, (source_db, store_db), root)


def rss_mb(server: Server) -> float:
    """Resident memory of the gateway's processes, MB."""
    total = 0
    for pid in server.pids():
        with contextlib.suppress(OSError, ValueError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return total / MB


async def post(port: int, path: str, body: dict[str, Any], agent: str = "bench-agent-0") -> tuple[int, bytes]:
    """One POST on a connection of its own; (status, body)."""
    data = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token(agent)}\r\n"
                      f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data)
        head = await reader.readuntil(b"\r\n\r\n")
        lower = head.lower()
        i = lower.index(b"content-length:") + 15
        return int(head[9:12]), await reader.readexactly(int(lower[i: lower.index(b"\r\n", i)]))
    finally:
        writer.close()


def shape_body(i: int, table_name: str) -> dict[str, Any]:
    """A distinct large shape for each i below 12**3: 100 terms (the first three's column and operator picked by
    i's base-12 digits) binding 1,000 values, a `not in` list of another length each time; on `wide` its 500
    columns."""
    ops = ("=", "!=", "<", "<=", ">", ">=")
    second = "balance" if table_name == "customers" else WIDE_NAMES[0]
    where: list[list[Any]] = []
    for k in range(98):
        code = (i // 12**k) % 12 if k < 3 else k % 12
        where.append([("id", second)[code % 2], ops[code // 2], -k])
    n = 1 + i % 900
    where += [["id", "not in", list(range(-n, 0))], ["id", "in", list(range(1, 1001 - 98 - n))]]
    body: dict[str, Any] = {"where": where, "limit": 10}
    if table_name == "wide":
        body["columns"] = ["id", *WIDE_NAMES]
    return body


async def shapes(args: argparse.Namespace) -> int:
    print(f"(b) {args.shapes:,} distinct large query shapes, each 100 terms binding 1,000 values (a list of another "
          f"length each time), through `agentgate serve` (1 worker, PostgreSQL source and store); the gateway's "
          f"RSS as they go", flush=True)
    status = 0
    async with heavy_gateway(1000) as gw:
        port = gw.server.port
        for table_name in args.tables.split(","):
            path = f"/v1/datasets/{table_name}/query"
            for i in range(5):  # warm-up: pools, SQLAlchemy's one-time state (shapes of their own, not counted)
                await post(port, path, {"limit": 1 + i})
            rows, start, t0 = [], rss_mb(gw.server), time.perf_counter()
            rows.append([0, start, 0.0, "-"])
            last = t0
            for i in range(args.shapes):
                code, body = await post(port, path, shape_body(i, table_name))
                if code != 200:
                    print(f"  PROBLEM: shape {i} answered {code}: {body[:200]!r}")
                    return 1
                if (i + 1) % max(1, args.shapes // 10) == 0:
                    now = time.perf_counter()
                    rows.append([i + 1, rss_mb(gw.server), rss_mb(gw.server) - start,
                                 f"{(now - last) * 1000 / max(1, args.shapes // 10):.1f}"])
                    last = now
            print(f"\n{table_name} ({'500' if table_name == 'wide' else '8'} columns):")
            print(table(["shapes", "RSS MB", "growth MB", "ms a request (new shape)"], rows))
            half = rows[len(rows) // 2][1]
            print(f"  growth over the second half: {rows[-1][1] - half:+.1f} MB; in all: {rows[-1][1] - start:+.1f} MB "
                  f"({(time.perf_counter() - t0):.0f} s)")
        print(f"  load average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return status


def shapes_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shapes", type=int, default=1000, help="distinct shapes per table (default 1000)")
    p.add_argument("--tables", default="customers,wide", help="customers (8 columns), wide (500), or both")


# The largest SQL statement SQL mode takes by value count: 1,000 literals, every row of `big`.
HEAVY_SQL = "SELECT * FROM big WHERE id NOT IN (" + ", ".join(str(-i) for i in range(1, 1001)) + ") ORDER BY id"


def heaviest_body() -> dict[str, Any]:
    """The largest body the query API takes, every row of `big` (up to max_rows, 100,000)."""
    where: list[list[Any]] = [["id", "not in", [-i for i in range(1, 902)]]] + [["id", ">=", -i] for i in range(99)]
    return {"where": where, "order_by": ["id"], "limit": 100_000}


async def heavy_reads(port: int, seconds: float) -> dict[str, list[float]]:
    """The heaviest read and the heaviest SQL statement, in turn, back to back for `seconds`; each one's time
    in ms. Runs in a process of its own (see `heavy-reads`): reading 16 MB answers would delay the pings."""
    out: dict[str, list[float]] = {"query": [], "sql": []}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for kind, path, body in (("query", "/v1/datasets/big/query", heaviest_body()),
                                 ("sql", "/v1/sql", {"sql": HEAVY_SQL})):
            t0 = time.perf_counter()
            code, answer = await post(port, path, body)
            if code != 200:
                raise RuntimeError(f"the {kind} read answered {code}: {answer[:200]!r}")
            out[kind].append((time.perf_counter() - t0) * 1000)
    return out


async def pings(port: int, seconds: float) -> list[float]:
    """GET /healthz on one keep-alive connection, every 5 ms, for `seconds`: each latency in ms."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out: list[float] = []
    try:
        end = time.perf_counter() + seconds
        while (t0 := time.perf_counter()) < end:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            lower = head.lower()
            i = lower.index(b"content-length:") + 15
            await reader.readexactly(int(lower[i: lower.index(b"\r\n", i)]))
            out.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(0.005)
    finally:
        writer.close()
    return out


async def healthz(args: argparse.Namespace) -> int:
    print(f"(c) /healthz while the heaviest allowed reads run: a query of 100 terms binding 1,000 values over every "
          f"row of a {args.rows:,}-row table (max_rows 100,000) and a SQL statement of 1,000 literals over the "
          f"same rows, in turn, for {args.seconds:g} s, against `agentgate serve` (1 worker, PostgreSQL source and "
          f"store); /healthz pinged every 5 ms from another process", flush=True)
    async with heavy_gateway(args.rows) as gw:
        port = gw.server.port
        await post(port, "/v1/datasets/big/query", {"limit": 1})  # warm-up: what only a first request does
        await post(port, "/v1/sql", {"sql": "SELECT id FROM big WHERE id IN (1, 2, 3)"})
        idle = await pings(port, args.baseline_seconds)
        reader = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "heavy-reads", "--port", str(port), "--seconds", str(args.seconds),
            stdout=subprocess.PIPE)
        during = await pings(port, args.seconds)
        out, _ = await reader.communicate()
        if reader.returncode != 0:
            print("  PROBLEM: the heavy reads failed")
            return 1
        reads: dict[str, list[float]] = json.loads(out)
    rows = [["idle", len(idle), percentile(idle, 50), percentile(idle, 99), max(idle)],
            ["during the reads", len(during), percentile(during, 50), percentile(during, 99), max(during)]]
    print(table(["/healthz", "pings", "p50 ms", "p99 ms", "max ms"], rows))
    for kind, times in reads.items():
        print(f"  {kind} reads: {len(times)}, p50 {percentile(times, 50):,.0f} ms each")
    p99 = percentile(during, 99)
    print(f"  /healthz p99 under 50 ms while they run: {'PASS' if p99 < 50 else 'FAIL'} ({p99:.1f} ms)")
    print(f"  load average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} cores, shared by the reading client, the gateway, PostgreSQL and the pinger)")
    return 0


def healthz_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=30.0, help="how long the heavy reads run (default 30)")
    p.add_argument("--rows", type=int, default=100_000, help="rows of the table read whole (default 100,000)")
    p.add_argument("--baseline-seconds", type=float, default=5.0, help="/healthz pinged alone first")


# --- the parts -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Part:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Awaitable[int]]


PARTS: dict[str, Part] = {
    "flood": Part("(a) unauthenticated flood: store growth, an agent's p50/p99 before and during",
                  flood_arguments, flood),
    "shapes": Part("(b) 1,000 distinct large query shapes: the gateway's RSS before, as they go, after",
                   shapes_arguments, shapes),
    "healthz": Part("(c) /healthz p50/p99 while the heaviest allowed reads run", healthz_arguments, healthz),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part")
    for name, part in PARTS.items():
        part.add_arguments(sub.add_parser(name, help=part.help))
    hidden = sub.add_parser("flood-client")  # the flooding client's own process (flood_once starts it)
    hidden.add_argument("--port", type=int, required=True)
    hidden.add_argument("--seconds", type=float, required=True)
    hidden.add_argument("--connections", type=int, required=True)
    heavy = sub.add_parser("heavy-reads")  # the heavy reads' own process (healthz starts it)
    heavy.add_argument("--port", type=int, required=True)
    heavy.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    try:
        import uvloop
        run: Callable[[Any], Any] = uvloop.run
    except ImportError:
        run = asyncio.run
    if args.part == "flood-client":
        print(json.dumps(run(flood_client(args.port, args.seconds, args.connections))))
        return 0
    if args.part == "heavy-reads":
        print(json.dumps(run(heavy_reads(args.port, args.seconds))))
        return 0
    if args.part is not None:
        return int(run(PARTS[args.part].run(args)))
    status = 0
    for name, part in PARTS.items():  # every part, with its default options
        part_args = parser.parse_args([name])
        status = max(status, int(run(part.run(part_args))))
        print()
    return status


if __name__ == "__main__":
    sys.exit(main())
