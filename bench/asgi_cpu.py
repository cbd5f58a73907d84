"""In-process CPU cost of one audited read, without HTTP: the app called as ASGI, PostgreSQL source and store.

A steadier A/B measure than bench/read_path.py for small changes on a shared machine: it counts this process's
CPU time per answer (time.process_time), which other load on the machine barely moves, rather than wall-clock
latency. It covers everything the gateway does per read but the HTTP server (uvicorn: parsing, socket I/O).

    python bench/asgi_cpu.py                   # 3 rounds of 3,000 reads at concurrency 1 and 32
    python bench/asgi_cpu.py --reads 5000 --rounds 5
    python bench/asgi_cpu.py --log-format json 2>/dev/null   # with serve's logging: the access log on
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import read_path as rp  # the same databases, workspace and tokens as the read-path bench

from gateway.app import create_app
from gateway.config import LogSettings, load_settings
from gateway.transports import accesslog


async def one_read(app: Any, token: str) -> int:
    sent: list[dict[str, Any]] = []
    body = [{"type": "http.request", "body": rp.BODY, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return body.pop() if body else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": rp.PATH, "raw_path": rp.PATH.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode()),
                         (b"content-type", b"application/json"), (b"content-length", str(len(rp.BODY)).encode())],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    await app(scope, receive, send)
    return int(sent[0]["status"])


async def measure(app: Any, tokens: list[str], reads: int, concurrency: int) -> float:
    """CPU microseconds per read."""
    per_caller = reads // concurrency

    async def caller(token: str) -> None:
        for _ in range(per_caller):
            assert await one_read(app, token) == 200

    cpu = time.process_time()
    await asyncio.gather(*(caller(tokens[i % len(tokens)]) for i in range(concurrency)))
    accesslog.flush()  # the access lines still pending (--log-format) counted in the round
    return (time.process_time() - cpu) / (per_caller * concurrency) * 1e6


async def run(args: argparse.Namespace) -> None:
    tag = os.getpid()
    source_db, store_db = f"agentgate_bench_{tag}", f"agentgate_bench_{tag}_store"
    admin = await asyncpg.connect(f"{rp.PG}/postgres")
    root = Path(tempfile.mkdtemp(prefix="agentgate-bench-asgi-"))
    try:
        await rp.create_databases(admin, source_db, store_db)
        cfg = rp.workspace(root, source_db, store_db, 32, None)
        os.chdir(root)
        app = create_app(load_settings(cfg), watch_policy=False)
        tokens = [rp.token(f"bench-agent-{i}") for i in range(32)]
        async with app.router.lifespan_context(app):
            await measure(app, tokens, 500, 8)  # warm-up: pools, reflection, caches
            for concurrency in (1, 32):
                got = [await measure(app, tokens, args.reads, concurrency) for _ in range(args.rounds)]
                print(f"c={concurrency:<3} CPU per read: median {statistics.median(got):6.0f} us  "
                      f"(rounds: {', '.join(f'{g:.0f}' for g in got)})", flush=True)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{source_db}" WITH (FORCE)')
        await admin.execute(f'DROP DATABASE IF EXISTS "{store_db}" WITH (FORCE)')
        await admin.close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--log-format", choices=["text", "json"],
                        help="log as `serve` does, in this [log] format, to stderr: one access line per read")
    args = parser.parse_args()
    if args.log_format:
        import logging.config

        from gateway.cli import logs

        logging.config.dictConfig(logs.uvicorn_config("info", LogSettings(format=args.log_format)))
    import uvloop

    uvloop.run(run(args))


if __name__ == "__main__":
    main()
