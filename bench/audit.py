"""Audit trail under load: complete, verifiable, and lossless when the gateway is killed.

Two runs against `agentgate serve` on a PostgreSQL store (a database the bench
creates and drops) and a small SQLite source:

1. 10,000 reads at concurrency 64: the export must hold exactly 10,000
   records and `audit verify` must pass. Prints audited reads/s and the audit
   group-commit latency p50/p99 (from the gateway's own histogram).
2. The same load, the gateway killed with SIGKILL midway: every read the
   client saw answered 200 must have its record (by request id).

    python bench/audit.py [--reads 10000] [--concurrency 64] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
import jwt

ROOT = Path(__file__).resolve().parent.parent
PG = "postgresql://postgres@127.0.0.1:5432"
SECRET = "bench-secret-" + "b" * 40
EXE = shutil.which("agentgate") or str(Path(sys.executable).with_name("agentgate"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def workspace(root: Path, store_db: str) -> Path:
    pol = root / "policies"
    pol.mkdir()
    shutil.copy(ROOT / "policies" / "model.conf", pol / "model.conf")
    (pol / "policy.csv").write_text("p, reader, items, read, allow\ng, bench-bot, reader\n")
    (pol / "datasets.toml").write_text('[datasets.items]\nsource = "local"\ntable = "items"\nowner = "bench"\n')
    rows = ",".join(f"({i}, 'item {i}')" for i in range(1, 101))
    (root / "seed.sql").write_text(f"CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);\n"
                                   f"INSERT INTO items VALUES {rows};\n")
    cfg = root / "agentgate.toml"
    cfg.write_text(f'[auth]\nsecret = "{SECRET}"\n\n[store]\nurl = "{PG}/{store_db}"\n\n'
                   '[sources.local]\nurl = "sqlite:///items.db"\nseed = "seed.sql"\n')
    return cfg


def start(cfg: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([EXE, "serve", "--config", str(cfg), "--port", str(port), "--workers", str(workers),
                             "--log-level", "warning"], cwd=cfg.parent, start_new_session=True)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def wait_ready(client: httpx.AsyncClient, base: str) -> None:
    for _ in range(400):
        try:
            if (await client.get(base + "/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("the gateway did not become ready")


async def load(base: str, reads: int, concurrency: int, seen: dict[str, int] | None = None,
               kill_after: tuple[int, int] | None = None) -> tuple[int, float]:
    """Fire `reads` reads on `concurrency` keep-alive connections (a raw HTTP/1.1 client: httpx
    would burn a core of its own at a few hundred requests/s); returns (answered 200, seconds).
    Records each 200's request id in `seen`; with kill_after=(n, pid), SIGKILLs that process group
    once n reads have answered 200."""
    token = jwt.encode({"sub": "bench-bot", "exp": int(time.time()) + 3600, "jti": secrets.token_hex(6)}, SECRET,
                       algorithm="HS256")
    body = json.dumps({"columns": ["id", "name"], "where": [["id", "<=", 10]]}).encode()
    port = int(base.rsplit(":", 1)[1])
    request = (f"POST /v1/datasets/items/query HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    queue = iter(range(reads))
    ok = 0

    async def worker() -> None:
        nonlocal ok
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in queue:
                writer.write(request)
                try:
                    head = (await reader.readuntil(b"\r\n\r\n")).lower()
                    i = head.index(b"content-length:") + 15
                    await reader.readexactly(int(head[i:head.index(b"\r\n", i)]))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the server was killed: this read never answered
                if head[9:12] == b"200":
                    ok += 1
                    if seen is not None:
                        j = head.index(b"x-request-id:") + 13
                        seen[head[j:head.index(b"\r\n", j)].strip().decode()] = 1
                    if kill_after is not None and ok == kill_after[0]:
                        os.killpg(kill_after[1], signal.SIGKILL)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)), return_exceptions=True)
    return ok, time.perf_counter() - started


def histogram_quantiles(metrics: str, name: str) -> tuple[float, float, int]:
    """p50/p99 (upper bucket bounds, in ms) and the count of a Prometheus histogram."""
    buckets: list[tuple[float, float]] = []
    for line in metrics.splitlines():
        if line.startswith(f"{name}_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] if buckets else 0.0

    def q(p: float) -> float:
        for bound, count in buckets:
            if count >= p * total:
                return bound * 1000
        return float("nan")

    return q(0.5), q(0.99), int(total)


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args, "--config", str(cfg)], capture_output=True, text=True, cwd=cfg.parent,
                          timeout=600)


async def complete_run(root: Path, reads: int, concurrency: int, workers: int) -> None:
    db = f"agentgate_bench_audit_{os.getpid()}_a"
    admin = await asyncpg.connect(f"{PG}/postgres")
    await admin.execute(f'CREATE DATABASE "{db}"')
    proc = None
    try:
        (root / "complete").mkdir()
        cfg = workspace(root / "complete", db)
        port = free_port()
        proc = start(cfg, port, workers)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as client:
            await wait_ready(client, base)
            ok, seconds = await load(base, reads, concurrency)
            metrics = (await client.get(base + "/metrics")).text if workers == 1 else ""
        stop(proc)
        exported = cli(cfg, "audit", "export", "--format", "jsonl").stdout.splitlines()
        verify = cli(cfg, "audit", "verify").stdout.strip()
        reads_in_trail = sum(1 for line in exported if json.loads(line)["action"] == "read")
        print(f"1. {reads:,} reads at concurrency {concurrency}, {workers} worker(s), PostgreSQL store:")
        print(f"   answered 200: {ok:,}; audited reads/s: {ok / seconds:,.0f}")
        print(f"   export holds {len(exported):,} records ({reads_in_trail:,} reads); verify: {verify}")
        if metrics:
            p50, p99, groups = histogram_quantiles(metrics, "agentgate_audit_write_duration_seconds")
            print(f"   audit group commit: {groups:,} groups for {ok:,} records "
                  f"({ok / max(groups, 1):.1f} per group); latency p50 <= {p50:g} ms, p99 <= {p99:g} ms "
                  "(histogram bucket bounds)")
        assert len(exported) == reads == ok and verify.startswith("ok "), "the trail is not complete"
    finally:
        if proc is not None:
            stop(proc)
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


async def killed_run(root: Path, reads: int, concurrency: int, workers: int) -> None:
    db = f"agentgate_bench_audit_{os.getpid()}_k"
    admin = await asyncpg.connect(f"{PG}/postgres")
    await admin.execute(f'CREATE DATABASE "{db}"')
    proc = None
    try:
        (root / "killed").mkdir()
        cfg = workspace(root / "killed", db)
        port = free_port()
        proc = start(cfg, port, workers)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as client:
            await wait_ready(client, base)
        seen: dict[str, int] = {}
        ok, _ = await load(base, reads, concurrency, seen, kill_after=(reads // 3, proc.pid))
        proc.wait()
        conn = await asyncpg.connect(f"{PG}/{db}")
        try:
            stored = {r["request_id"] for r in await conn.fetch("SELECT request_id FROM audit")}
        finally:
            await conn.close()
        missing = [rid for rid in seen if rid not in stored]
        verify = cli(cfg, "audit", "verify").stdout.strip()
        print(f"2. the same load, SIGKILL after {reads // 3:,} answers: the client saw {ok:,} answered 200;")
        print(f"   the store holds {len(stored):,} records; answered reads without a record: {len(missing)}; "
              f"verify: {verify}")
        assert not missing, "an answer left without its audit record"
    finally:
        if proc is not None:
            stop(proc, signal.SIGKILL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="agentgate-bench-audit-"))
    try:
        await complete_run(root, args.reads, args.concurrency, args.workers)
        await killed_run(root, args.reads, args.concurrency, args.workers)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
