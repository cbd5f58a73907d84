"""Revocation propagation across two replicas on one PostgreSQL store.

Starts two `agentgate serve` processes (replicas A and B) on a PostgreSQL store
the bench creates, revokes 100 agents through A's admin API, and for each
measures how long until B refuses that agent (B is polled as fast as one
client can). Prints p50/p99/max, and the same for A (the replica that took
the command, which must refuse on its very next request).

    python bench/revocation.py [--count 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import statistics
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(agent: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": agent, "exp": now + 3600, "iat": now, "jti": secrets.token_hex(8)}, SECRET,
                      algorithm="HS256")


def workspace(root: Path, store_db: str, count: int) -> Path:
    pol = root / "policies"
    pol.mkdir()
    shutil.copy(ROOT / "policies" / "model.conf", pol / "model.conf")
    lines = ["p, reader, items, read, allow", "p, admin, admin:*, *, allow", "g, root-admin, admin"]
    lines += [f"g, agent-{i}, reader" for i in range(count)]
    (pol / "policy.csv").write_text("\n".join(lines) + "\n")
    (pol / "datasets.toml").write_text('[datasets.items]\nsource = "local"\ntable = "items"\nowner = "bench"\n')
    (root / "seed.sql").write_text("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);\n"
                                   "INSERT INTO items VALUES (1, 'one');\n")
    cfg = root / "agentgate.toml"
    cfg.write_text(f"""
[auth]
secret = "{SECRET}"

[store]
url = "{PG}/{store_db}"

[sources.local]
url = "sqlite:///items.db"
seed = "seed.sql"
""")
    return cfg


def start_replica(exe: str, cfg: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([exe, "serve", "--config", str(cfg), "--port", str(port), "--log-level", "warning"],
                            cwd=cfg.parent, start_new_session=True)


async def wait_ready(client: httpx.AsyncClient, base: str) -> None:
    for _ in range(300):
        try:
            if (await client.get(base + "/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{base} did not become ready")


async def run(count: int) -> None:
    store_db = f"agentgate_bench_rev_{os.getpid()}"
    admin = await asyncpg.connect(f"{PG}/postgres")
    await admin.execute(f'CREATE DATABASE "{store_db}"')
    root = Path(tempfile.mkdtemp(prefix="agentgate-bench-rev-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cfg = workspace(root, store_db, count)
        exe = shutil.which("agentgate") or str(Path(sys.executable).with_name("agentgate"))
        ports = [free_port(), free_port()]
        procs.extend(start_replica(exe, cfg, port) for port in ports)
        a, b = (f"http://127.0.0.1:{p}" for p in ports)
        async with httpx.AsyncClient(timeout=10) as client:
            await wait_ready(client, a)
            await wait_ready(client, b)
            boss = {"Authorization": f"Bearer {token('root-admin')}"}
            on_a: list[float] = []
            on_b: list[float] = []
            for i in range(count):
                tok = {"Authorization": f"Bearer {token(f'agent-{i}')}"}
                assert (await client.post(b + "/v1/datasets/items/query", headers=tok, json={})).status_code == 200
                r = await client.post(a + "/admin/v1/revocations", headers=boss, json={"agent": f"agent-{i}"})
                stored = time.perf_counter()  # the admin API has answered: the revocation is stored
                assert r.status_code == 201, r.text
                first = await client.post(a + "/v1/datasets/items/query", headers=tok, json={})
                on_a.append(0.0 if first.status_code == 403 else float("inf"))
                while True:
                    got = await client.post(b + "/v1/datasets/items/query", headers=tok, json={})
                    if got.status_code == 403:
                        on_b.append((time.perf_counter() - stored) * 1000)
                        break
                    if time.perf_counter() - stored > 5:
                        on_b.append(float("inf"))
                        break
        on_b.sort()
        print(f"revocation propagation over {count} revocations, 2 replicas, PostgreSQL store (LISTEN/NOTIFY):")
        print(f"  replica A (took the command) refused its very next request: {on_a.count(0.0)}/{count}")
        print(f"  replica B refused within: p50 {statistics.median(on_b):.2f} ms, "
              f"p99 {on_b[min(len(on_b) - 1, int(len(on_b) * 0.99))]:.2f} ms, max {on_b[-1]:.2f} ms "
              f"(bound: 100 ms; includes one request round trip to B)")
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{store_db}" WITH (FORCE)')
        await admin.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    asyncio.run(run(parser.parse_args().count))
