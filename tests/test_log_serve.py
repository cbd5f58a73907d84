"""`[log] format = "json"` through a real `agentgate serve`: uvicorn's own lines (its start, its workers') are JSON
too, under `--workers 2` as in one process; `[log] level` applies, and `--log-level` wins over it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import bearer, write_workspace
from tests.serving import free_port, serving

pytestmark = pytest.mark.system

KEYS = ["time", "level", "logger", "message", "request_id", "agent", "dataset", "status", "duration_ms"]


def objects(log: Path) -> list[dict[str, Any]]:
    """Every line of the log, each one JSON object with the keys every line has."""
    found = []
    for line in log.read_text(encoding="ascii").splitlines():
        obj = json.loads(line)
        assert isinstance(obj, dict) and list(obj)[:len(KEYS)] == KEYS, line
        found.append(obj)
    return found


def test_uvicorn_and_every_worker_write_json(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source, extra='\n[log]\nformat = "json"\n')
    log = tmp_path / "serve.log"
    with serving(config, log, "--workers", "2") as base:
        ids = []
        for _ in range(6):  # a fresh connection each, so the kernel spreads them over the workers
            r = httpx.post(f"{base}/v1/datasets/customers/query", json={"limit": 1}, headers=bearer(), timeout=15)
            assert r.status_code == 200
            ids.append(r.headers["x-request-id"])
    found = objects(log)
    messages = [o["message"] for o in found]
    started = {int(m.group(1)) for m in map(re.compile(r"Started server process \[(\d+)\]").fullmatch, messages) if m}
    assert len(started) == 2  # both workers' uvicorn lines, in JSON
    assert any(re.fullmatch(r"Started parent process \[\d+\]", m) for m in messages)  # the supervisor's
    assert messages.count("Application startup complete.") == 2
    assert sum(m.startswith("agentgate ready") for m in messages) == 2
    assert any(m.startswith("Uvicorn running on http://127.0.0.1:") for m in messages)
    assert {o["logger"] for o in found} >= {"uvicorn.error", "agentgate", "agentgate.access"}
    access = {o["request_id"]: o for o in found if o["logger"] == "agentgate.access"}
    assert all(access[i]["status"] == 200 and access[i]["agent"] == "support-bot" for i in ids)


def test_the_log_level_from_the_table_and_the_option_over_it(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source,
                             extra='\n[log]\nformat = "json"\nlevel = "warning"\n')
    for extra, log in (((), tmp_path / "warning.log"), (("--log-level", "info"), tmp_path / "info.log")):
        with serving(config, log, *extra) as base:
            assert httpx.get(f"{base}/v1/datasets", headers=bearer(), timeout=15).status_code == 200
    assert [o for o in objects(tmp_path / "warning.log") if o["level"] in ("DEBUG", "INFO")] == []
    loud = objects(tmp_path / "info.log")
    assert any(o["logger"] == "agentgate.access" and o["message"] == "GET /v1/datasets 200" for o in loud)
    assert "Application startup complete." in [o["message"] for o in loud]


def test_the_give_up_line_of_wait_for_store_is_json_too(tmp_path: Path, sqlite_source: str) -> None:
    """`serve --wait-for-store` ends, when the store never comes, with its one line: a JSON object where the log
    is JSON (a collector reads every line), not plain text among the objects."""
    from tests.test_attacks_store_unreachable import started  # the served process that may end by itself

    port = free_port()
    config = write_workspace(tmp_path, source_url=sqlite_source, extra='\n[log]\nformat = "json"\n',
                             store_url=f"postgresql://postgres@127.0.0.1:{port}/test")
    log = tmp_path / "serve.log"
    with started(config, log, "--wait-for-store", "2") as (proc, _):
        proc.wait(30)
    assert proc.returncode == 3, log.read_text()
    found = objects(log)  # every line one JSON object
    [gave_up] = [o for o in found if "could not be reached within 2 s" in o["message"]]
    assert gave_up["level"] == "ERROR" and f"127.0.0.1:{port}" in gave_up["message"]
