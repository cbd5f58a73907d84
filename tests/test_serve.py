"""`agentgate serve` as a user runs it: a real process on a real port, read with plain HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import DATASETS, write_workspace
from tests.serving import env, free_port, serving

pytestmark = pytest.mark.system


def cli(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *map(str, args)], capture_output=True, text=True,
                          env=env(), timeout=timeout, cwd=Path(__file__).parent)



def issue(config: Path, agent: str) -> dict[str, str]:
    proc = cli("token", "issue", "--agent", agent, "--config", config)
    assert proc.returncode == 0, proc.stderr
    return {"Authorization": f"Bearer {proc.stdout.strip()}"}


def test_serve_answers_plain_http(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source)
    with ThreadPoolExecutor(2) as pool:  # mint the tokens while the server starts
        tokens = pool.map(lambda agent: issue(config, agent), ["support-bot", "analyst-bot"])
        with serving(config, tmp_path / "serve.log") as base, httpx.Client(base_url=base, timeout=10) as http:
            support, analyst = tokens
            assert http.get("/healthz").status_code == 200
            ready = http.get("/readyz")
            assert ready.status_code == 200
            assert ready.headers["content-type"].startswith("application/json")
            assert ready.json()["status"] == "ready"

            r = http.post("/v1/datasets/customers/query", headers=support,
                          json={"columns": ["id", "name", "email"], "where": [["country", "=", "DE"]],
                                "order_by": ["id"], "limit": 3})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["dataset"] == "customers"
            assert [row["id"] for row in body["rows"]] == [4, 8, 12]
            assert body["rows"][0] == {"id": 4, "name": "Customer 04", "email": "c4@example.com"}
            assert body["masked"] == []
            assert r.headers["x-request-id"]

            masked = http.post("/v1/datasets/customers/query", headers=analyst, json={"limit": 2}).json()
            assert masked["masked"] == ["email", "note"]
            assert all(row["email"] is None for row in masked["rows"])

            denied = http.post("/v1/datasets/orders/query", headers=support, json={})
            assert denied.status_code == 403
            assert denied.json()["error"]["code"] == "forbidden"
            assert http.get("/v1/datasets").status_code == 401

            metrics = http.get("/metrics")
            assert metrics.status_code == 200
            assert "agentgate_requests" in metrics.text
            assert 'decision="allow"' in metrics.text and 'decision="deny"' in metrics.text
    verified = cli("audit", "verify", "--config", config)
    assert (verified.returncode, verified.stdout.strip()) == (0, "ok 4 records")


def test_serve_refuses_to_start_on_a_missing_table(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source,
                             datasets=DATASETS.replace('table = "orders"', 'table = "invoices_2019"'))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config),
                           "--port", str(free_port())], capture_output=True, text=True, env=env(), timeout=30,
                          cwd=Path(__file__).parent)
    assert time.monotonic() - started < 10
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "datasets.toml" in lines[0] and "invoices_2019" in lines[0]


def test_serve_with_two_workers_shares_one_store(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source)
    reads = 20
    with ThreadPoolExecutor(1) as pool:
        token = pool.submit(issue, config, "support-bot")
        with serving(config, tmp_path / "serve.log", "--workers", "2") as base:
            headers = token.result()

            def read(i: int) -> tuple[int, list[int]]:
                # A fresh connection each time, so the kernel spreads them over both workers.
                r = httpx.post(f"{base}/v1/datasets/customers/query", headers=headers, timeout=15,
                               json={"columns": ["id"], "where": [["id", "=", i]]})
                return r.status_code, [row["id"] for row in r.json().get("rows", [])]

            with ThreadPoolExecutor(8) as readers:
                answers = list(readers.map(read, range(1, reads + 1)))
            assert answers == [(200, [i]) for i in range(1, reads + 1)]
    # Each worker logs through the gateway's own loggers too (uvicorn configures logging per worker).
    assert (tmp_path / "serve.log").read_text().count("agentgate ready") == 2
    verified = cli("audit", "verify", "--config", config)
    assert (verified.returncode, verified.stdout.strip()) == (0, f"ok {reads} records"), verified.stdout
    listed = json.loads(cli("audit", "list", "--json", "--limit", "1000", "--config", config).stdout)
    assert sorted(json.loads(r["query"])["where"][0][2] for r in listed) == list(range(1, reads + 1))
