"""The access log (transports/accesslog.py) in process: one line per HTTP request, whichever way in (the agents'
hot path, the router, MCP, health checks), naming the request id its answer carries, the agent and dataset the
core saw, the client as the audit record names it; and the request named on every other line logged meanwhile.
The same through a real `serve`, attacked: tests/test_attacks_log_injection.py."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.common.logformat import JsonFormatter
from gateway.config import load_settings
from gateway.transports import accesslog
from tests.conftest import bearer, client_for, records, write_workspace

pytestmark = pytest.mark.integration

MCP = {"Accept": "application/json, text/event-stream"}


def tool_call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The gateway's lines as `[log] format = "json"` writes them, formatted as they are logged (in the request's
    context), from INFO up."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("agentgate")
    access = logging.getLogger("agentgate.access")
    level, access_level = root.level, access.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    access.setLevel(logging.INFO)  # on, as `serve` turns it on (off by default in any other host)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        access.setLevel(access_level)


def lines(out: io.StringIO, logger: str | None = None) -> list[dict[str, Any]]:
    found = [json.loads(line) for line in out.getvalue().splitlines()]
    return [obj for obj in found if logger is None or obj["logger"] == logger]


def test_one_access_line_per_request_whichever_way_in(workspace: Path, json_log: io.StringIO) -> None:
    with client_for(workspace) as c:
        json_log.truncate(0)
        json_log.seek(0)
        answers = [
            c.post("/v1/datasets/customers/query", json={"limit": 2}, headers=bearer("support-bot")),  # hot path
            c.get("/v1/datasets", headers=bearer("analyst-bot")),
            c.get("/v1/datasets/orders?token=secret-in-query", headers=bearer("support-bot")),  # not its: 403
            c.get("/v1/nowhere", headers=bearer("support-bot")),  # 404, through the core
            c.post("/v1/datasets/customers/query", json={"limit": 2}),  # 401, no token
            c.get("/healthz"),  # no call to the core
            c.post("/mcp", json=tool_call("query_dataset", {"name": "customers", "limit": 1}),
                   headers={**bearer("support-bot"), **MCP}),
        ]
    access = lines(json_log, "agentgate.access")
    assert [a["request_id"] for a in access] == [r.headers["x-request-id"] for r in answers]
    assert [a["status"] for a in access] == [r.status_code for r in answers] == [200, 200, 403, 404, 401, 200, 200]
    assert [a["bytes"] for a in access] == [len(r.content) for r in answers]
    assert [a["agent"] for a in access] == ["support-bot", "analyst-bot", "support-bot", "support-bot", None, None,
                                            "support-bot"]
    assert [a["dataset"] for a in access] == ["customers", None, "orders", None, "customers", None, "customers"]
    assert [(a["method"], a["path"]) for a in access] == [
        ("POST", "/v1/datasets/customers/query"), ("GET", "/v1/datasets"), ("GET", "/v1/datasets/orders"),
        ("GET", "/v1/nowhere"), ("POST", "/v1/datasets/customers/query"), ("GET", "/healthz"), ("POST", "/mcp")]
    assert "secret-in-query" not in json_log.getvalue()  # no query string
    assert all(a["client"] == "testclient" and a["user_agent"] == "testclient" and a["duration_ms"] > 0
               and a["message"] == f"{a['method']} {a['path']} {a['status']}" for a in access)
    # The request id an answer's body names (a refusal's error) is its header's and its line's.
    assert answers[4].json()["error"]["request_id"] == access[4]["request_id"]
    assert {r["request_id"] for r in records(workspace)} >= {a["request_id"] for a in access if a["path"] != "/healthz"}


def test_the_client_is_the_one_the_record_names(tmp_path: Path, sqlite_source: str, json_log: io.StringIO) -> None:
    """A trusted proxy's X-Forwarded-For names the client (caller.py); anyone else's is ignored, as in the record."""
    config = write_workspace(tmp_path, source_url=sqlite_source,
                             extra='\n[server]\nforwarded_allow_ips = ["10.0.0.0/8"]\n')
    spoof = {"X-Forwarded-For": "198.51.100.7, 10.9.9.9", **bearer("support-bot")}
    for peer in (("10.1.2.3", 40000), ("203.0.113.7", 40000)):
        with TestClient(create_app(load_settings(config)), client=peer) as c:
            assert c.get("/v1/datasets", headers=spoof).status_code == 200
            assert c.post("/v1/datasets/customers/query", json={"limit": 1}, headers=spoof).status_code == 200
    access = lines(json_log, "agentgate.access")
    assert [a["client"] for a in access] == ["198.51.100.7"] * 2 + ["203.0.113.7"] * 2
    by_id = {r["request_id"]: r["client"] for r in records(config)}
    assert [by_id[a["request_id"]] for a in access] == [a["client"] for a in access]


def test_a_line_logged_during_a_request_names_it(tmp_path: Path, pg_source: str, json_log: io.StringIO) -> None:
    """The source's refusal, logged by the core while it reads, carries the request's id, agent and dataset."""
    config = write_workspace(tmp_path, source_url=pg_source)
    with client_for(config) as c:
        r = c.post("/v1/sql", json={"sql": "SELECT CAST('not a number' AS INT) AS n FROM customers"},
                   headers=bearer("support-bot"))
    assert r.status_code == 400
    [refused] = [obj for obj in lines(json_log) if "refused a statement" in obj["message"]]
    assert (refused["request_id"], refused["agent"], refused["dataset"]) == (r.headers["x-request-id"], "support-bot",
                                                                            "customers")
    assert refused["status"] is None and refused["duration_ms"] is None  # known on the access line only
    [access] = lines(json_log, "agentgate.access")
    assert access["request_id"] == refused["request_id"] and access["status"] == 400


def test_no_access_line_when_its_logger_is_off(workspace: Path, json_log: io.StringIO) -> None:
    """[log] access = false (or a level above info) sets agentgate.access above INFO: requests are served, no line."""
    access = logging.getLogger("agentgate.access")
    access.setLevel(logging.WARNING)
    try:
        with client_for(workspace) as c:
            assert c.post("/v1/datasets/customers/query", json={"limit": 1},
                          headers=bearer("support-bot")).status_code == 200
            assert c.get("/v1/datasets", headers=bearer("support-bot")).status_code == 200
    finally:
        access.setLevel(logging.INFO)  # back to on, as json_log set it
    assert lines(json_log, "agentgate.access") == []


def test_lines_are_logged_within_the_flush_interval_with_their_requests_time(workspace: Path,
                                                                             json_log: io.StringIO) -> None:
    """Noted by the request, logged by a batch at most FLUSH_SECONDS later while the app runs, each line with the
    time its request ended."""
    with client_for(workspace) as c:
        json_log.truncate(0)
        json_log.seek(0)
        r = c.get("/v1/datasets", headers=bearer("support-bot"))
        answered = time.time()
        deadline = answered + accesslog.FLUSH_SECONDS + 2
        while not lines(json_log, "agentgate.access") and time.time() < deadline:
            time.sleep(0.02)
        [line] = lines(json_log, "agentgate.access")
        assert line["request_id"] == r.headers["x-request-id"]
        logged_at = datetime.fromisoformat(line["time"]).timestamp()
        assert answered - 1 < logged_at <= answered + 0.001


async def test_no_more_than_pending_max_lines_wait(json_log: io.StringIO) -> None:
    """However many requests end before the timer, at most PENDING_MAX lines are kept: the one that reaches it logs
    them all at once."""
    app_calls = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        nonlocal app_calls
        app_calls += 1
        await send({"type": "http.response.start", "status": 204, "headers": [(b"x-request-id", b"r%d" % app_calls)]})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Any) -> None:
        pass

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "GET", "path": "/x", "raw_path": b"/x", "headers": [], "client": ("10.0.0.1", 1)}
    accesslog.flush()
    for _ in range(accesslog.PENDING_MAX - 1):
        await accesslog.logged(app, None, scope, receive, send)
    assert lines(json_log, "agentgate.access") == []  # waiting for the timer
    await accesslog.logged(app, None, scope, receive, send)
    found = lines(json_log, "agentgate.access")
    assert [a["request_id"] for a in found] == [f"r{i}" for i in range(1, accesslog.PENDING_MAX + 1)]
    assert {(a["status"], a["client"], a["path"]) for a in found} == {(204, "10.0.0.1", "/x")}


def test_an_app_hosted_outside_serve_writes_no_access_line(workspace: Path) -> None:
    """The access log is `serve`'s: a process that hosts the app otherwise (a test run, another ASGI server with its
    own access log) and logs at INFO for its own ends gets no access line it did not turn on."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with client_for(workspace) as c:
            assert c.get("/v1/datasets", headers=bearer("support-bot")).status_code == 200
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    found = lines(out)
    assert found and all(obj["logger"] != "agentgate.access" for obj in found), found  # the app's own lines only
