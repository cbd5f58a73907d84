"""Traces that join the trail (issue 15): every record carries a trace id, the agent's W3C trace id or a new one,
named in the answer's `traceparent` with the gateway's own span; HTTP sources are sent the trace on; every answer
carries X-Request-Id, the record's request id where a record is written."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from tests.conftest import bearer, client_for, loopback_http, records, token, write_workspace
from tests.test_http_sources import DATASETS_HTTP, POLICY_HTTP, Upstream

pytestmark = pytest.mark.integration

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
AGENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{AGENT_SPAN}-01"
W3C = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}


def parent_of(response: httpx.Response) -> tuple[str, str, str]:
    """The answer's traceparent as (trace id, the gateway's span id, flags)."""
    found = W3C.fullmatch(response.headers["traceparent"])
    assert found is not None, response.headers["traceparent"]
    trace, span, flags = found.groups()
    assert span != "0" * 16 and trace != "0" * 32
    return trace, span, flags


def record_of(config: Path, response: httpx.Response) -> dict[str, Any]:
    """The one record whose request id the answer's X-Request-Id names."""
    (found,) = [r for r in records(config) if r["request_id"] == response.headers["x-request-id"]]
    return found


@pytest.fixture
def upstream() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    with loopback_http(type("Handler", (Upstream,), {"seen": seen})) as base:
        yield base, seen


@pytest.fixture
def config(tmp_path: Path, sqlite_source: str, upstream: tuple[str, list[str]]) -> Path:
    extra = f'[sources.tix]\nurl = "{upstream[0]}"\ntimeout_seconds = 5\n'
    return write_workspace(tmp_path, source_url=sqlite_source, datasets=DATASETS_HTTP, policy=POLICY_HTTP,
                           extra=extra)


@pytest.fixture
def client(config: Path) -> Iterator[TestClient]:
    with client_for(config) as c:
        yield c


def test_the_record_keeps_the_agent_s_trace_and_the_answer_names_the_gateway_s_span(
        client: TestClient, config: Path) -> None:
    r = client.post("/v1/datasets/customers/query", json={"limit": 1},
                    headers={**bearer(), "traceparent": TRACEPARENT})
    assert r.status_code == 200
    trace, span, flags = parent_of(r)
    assert (trace, flags) == (TRACE, "01") and span != AGENT_SPAN  # the gateway's own span, child of the agent's
    assert record_of(config, r)["trace_id"] == TRACE
    # The agent's sampling decision is kept; a refusal is traced like any answer.
    r = client.get("/v1/datasets/orders", headers={**bearer(), "traceparent": f"00-{TRACE}-{AGENT_SPAN}-00"})
    assert r.status_code == 403 and parent_of(r)[::2] == (TRACE, "00")
    assert record_of(config, r)["trace_id"] == TRACE
    r = client.get("/v1/datasets", headers={"traceparent": TRACEPARENT})  # no token: still the agent's trace
    assert r.status_code == 401 and parent_of(r)[0] == TRACE and record_of(config, r)["trace_id"] == TRACE


def test_no_traceparent_or_a_bad_one_starts_a_new_trace_named_in_the_answer(client: TestClient,
                                                                             config: Path) -> None:
    seen = set()
    for headers in ({}, {"traceparent": "garbage"}, {"traceparent": f"00-{TRACE}-{'0' * 16}-01"},
                    {"traceparent": TRACEPARENT.upper()}):
        r = client.get("/v1/datasets", headers={**bearer(), **headers})
        assert r.status_code == 200
        trace, _, flags = parent_of(r)
        assert trace != TRACE and flags == "01"  # started here, and recorded: sampled
        assert record_of(config, r)["trace_id"] == trace
        seen.add(trace)
    assert len(seen) == 4  # a new trace each time


def test_an_http_source_is_sent_the_trace_with_the_gateway_s_span_as_parent(
        client: TestClient, config: Path, upstream: tuple[str, list[str]]) -> None:
    r = client.get("/v1/datasets/tickets/proxy/echo", headers={**bearer(), "traceparent": TRACEPARENT})
    assert r.status_code == 200, r.text
    sent = W3C.fullmatch(r.json()["headers"]["traceparent"])
    assert sent is not None
    assert sent.groups() == parent_of(r)  # the same trace, the gateway's span as the source's parent
    assert sent.group(1) == TRACE and record_of(config, r)["trace_id"] == TRACE
    # Without one, the source is sent the gateway's new trace; the source's own traceparent never comes back.
    r = client.get("/v1/datasets/tickets/proxy/echo", headers=bearer())
    assert r.json()["headers"]["traceparent"] == r.headers["traceparent"]
    assert record_of(config, r)["trace_id"] == parent_of(r)[0]


def test_admin_and_streamed_answers_carry_both_headers(client: TestClient, config: Path) -> None:
    r = client.get("/admin/v1/audit?limit=1", headers={**bearer("alice"), "traceparent": TRACEPARENT})
    assert r.status_code == 200 and parent_of(r)[0] == TRACE
    assert record_of(config, r)["trace_id"] == TRACE
    with client.stream("GET", "/admin/v1/audit/export?format=jsonl", headers=bearer("alice")) as streamed:
        assert streamed.status_code == 200
        streamed.read()
    assert record_of(config, streamed)["trace_id"] == parent_of(streamed)[0]


def test_ops_answers_and_unknown_paths_carry_a_request_id(client: TestClient) -> None:
    ids = set()
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/no/such/page"):
        r = client.get(path)
        assert re.fullmatch("[0-9a-f]{32}", r.headers["x-request-id"]), path
        assert "traceparent" not in r.headers  # no core call, no span
        ids.add(r.headers["x-request-id"])
    assert client.get("/healthz").status_code == 200 and len(ids) == 5


def test_the_review_page_answers_with_its_first_record_s_ids(client: TestClient, config: Path) -> None:
    r = client.get("/admin/")  # the sign-in form: no call to the core
    assert r.status_code == 200 and r.headers["x-request-id"] and "traceparent" not in r.headers
    r = client.post("/admin/login", data={"token": token("alice")}, follow_redirects=False,
                    headers={"traceparent": TRACEPARENT})
    assert r.status_code == 303
    rec = record_of(config, r)
    assert (rec["transport"], rec["trace_id"], parent_of(r)[0]) == ("web", TRACE, TRACE)
    r = client.get("/admin/")
    assert r.status_code == 200 and "<table" in r.text
    rec = record_of(config, r)  # the page's first call: the trail it shows
    assert rec["action"] == "read_audit" and rec["trace_id"] == parent_of(r)[0]


def _mcp(client: TestClient, call: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    return client.post("/mcp", headers={**MCP_HEADERS, **headers}, json={"jsonrpc": "2.0", "id": 1, **call})


def test_mcp_answers_carry_the_record_s_request_id_and_trace(client: TestClient, config: Path) -> None:
    call = {"method": "tools/call", "params": {"name": "query_dataset", "arguments": {"name": "customers",
                                                                                      "limit": 1}}}
    r = _mcp(client, call, {**bearer(), "traceparent": TRACEPARENT})
    assert r.status_code == 200 and not r.json()["result"]["isError"], r.text
    rec = record_of(config, r)
    assert (rec["transport"], rec["trace_id"], parent_of(r)[0]) == ("mcp", TRACE, TRACE)
    # A refusal before the SDK (no token) and one by the core (a dataset not readable) alike.
    r = _mcp(client, call, {"traceparent": TRACEPARENT})
    assert r.status_code == 401 and record_of(config, r)["trace_id"] == parent_of(r)[0] == TRACE
    denied = {"method": "tools/call", "params": {"name": "query_dataset", "arguments": {"name": "orders"}}}
    r = _mcp(client, denied, bearer())
    assert r.json()["result"]["isError"] and record_of(config, r)["trace_id"] == parent_of(r)[0]
    # MCP's own place for the trace (the message's _meta) when the HTTP request carries none.
    meta = {"method": "tools/call", "params": {**call["params"], "_meta": {"traceparent": TRACEPARENT}}}
    r = _mcp(client, meta, bearer())
    assert record_of(config, r)["trace_id"] == parent_of(r)[0] == TRACE
    # A message the core is not asked about (ping) still has a request id.
    r = _mcp(client, {"method": "ping"}, bearer())
    assert r.status_code == 200 and r.headers["x-request-id"] and "traceparent" not in r.headers
    assert json.loads(r.text)["result"] == {}
