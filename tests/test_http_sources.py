"""HTTP sources through GET /v1/datasets/{name}/proxy/{path}, against a real HTTP server on loopback."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from starlette.testclient import TestClient

from connectors.base import InvalidQuery
from connectors.http import HttpConnector, confine
from tests.conftest import POLICY, bearer, client_for, loopback_http, records, token, write_workspace

pytestmark = pytest.mark.integration

UPSTREAM_SECRET = "Bearer upstream-secret-token"
BIG = 10 * 1024 * 1024 + 1

DATASETS_HTTP = """
[datasets.customers]
source = "main"
table = "customers"
owner = "maria.keller@example.com"

[datasets.tickets]
source = "tix"
path = "/tickets"
owner = "support-leads@example.com"
description = "Support tickets"

[datasets.held]
source = "tix"
path = "/held"
owner = "support-leads@example.com"
approval = "required"
"""

POLICY_HTTP = POLICY + "p, support, tickets, read, allow\np, support, held, read, allow\n"


class Upstream(BaseHTTPRequestHandler):
    """The source: echoes what it got, or answers as the path says."""

    seen: list[str] = []  # replaced per server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json",
              extra: dict[str, str] | None = None, length: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.seen.append(self.path)
        path, _, query = self.path.partition("?")
        if path.startswith("/api/tickets/status/"):
            code = int(path.rsplit("/", 1)[1])
            self._send(code, json.dumps({"upstream": code, "secret": "do-not-leak"}).encode())
        elif path == "/api/tickets/slow":
            time.sleep(2.5)
            self._send(200, b"{}")
        elif path == "/api/tickets/big":
            self._send(200, b"x" * BIG, "application/octet-stream")
        elif path == "/api/tickets/big-unannounced":
            self.close_connection = True
            self._send(200, b"y" * BIG, "application/octet-stream", length=False)
        elif path == "/api/tickets/text":
            self._send(200, "héllo, tickets".encode(), "text/plain; charset=utf-8",
                       {"Set-Cookie": "session=upstream", "ETag": '"v1"', "X-Internal": "secret-host"})
        elif path == "/api/tickets/redirect":
            self._send(302, b"", extra={"Location": "http://evil.example/steal"})
        else:
            body = {"path": path, "query": query, "headers": {k.lower(): v for k, v in self.headers.items()}}
            self._send(200 if path.startswith("/api/tickets") or path.startswith("/api/held") else 404,
                       json.dumps(body).encode())


@pytest.fixture
def upstream() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    with loopback_http(type("Handler", (Upstream,), {"seen": seen})) as base:
        yield base, seen


@pytest.fixture
def http_workspace(tmp_path: Path, sqlite_source: str, upstream: tuple[str, list[str]]) -> Path:
    base, _ = upstream
    extra = f"""
[sources.tix]
url = "{base}"
timeout_seconds = 1
headers = {{ Authorization = "{UPSTREAM_SECRET}", X-Api-Key = "k-123" }}
"""
    return write_workspace(tmp_path, source_url=sqlite_source, datasets=DATASETS_HTTP, policy=POLICY_HTTP,
                           extra=extra)


@pytest.fixture
def client(http_workspace: Path) -> Iterator[TestClient]:
    with client_for(http_workspace) as c:
        yield c


def assert_recorded(workspace: Path, response: httpx.Response, count: int) -> dict[str, Any]:
    recs = records(workspace)
    assert len(recs) == count
    rec = recs[-1]
    assert rec["response_sha256"] == hashlib.sha256(response.content).hexdigest()
    assert rec["bytes"] == len(response.content)
    assert rec["status"] == response.status_code
    assert rec["request_id"] == response.headers["x-request-id"]
    return rec


async def _raw_get(app: Any, raw_path: bytes, authorization: str) -> tuple[int, bytes]:
    """One GET with a path exactly as given (httpx would resolve `..` before sending it)."""
    path, _, query = raw_path.partition(b"?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": unquote(path.decode("latin-1")), "raw_path": path, "query_string": query, "root_path": "",
             "headers": [(b"host", b"testserver"), (b"authorization", authorization.encode())],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80), "state": {}}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_passes_status_body_content_type_and_query_through(client: TestClient, http_workspace: Path,
                                                          upstream: tuple[str, list[str]]) -> None:
    r = client.get("/v1/datasets/tickets/proxy/open/42?state=open&tag=a%20b", headers=bearer())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    got = r.json()
    assert got["path"] == "/api/tickets/open/42"
    assert got["query"] == "state=open&tag=a%20b"
    rec = assert_recorded(http_workspace, r, 1)
    assert rec["decision"] == "allow" and rec["action"] == "read" and rec["dataset"] == "tickets"
    assert rec["query"] == "/open/42?state=open&tag=a%20b"
    assert rec["agent"] == "support-bot" and rec["rows"] is None and rec["source_ms"] is not None

    r = client.get("/v1/datasets/tickets/proxy/text", headers=bearer())
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert r.content == "héllo, tickets".encode()
    assert "set-cookie" not in r.headers and "x-internal" not in r.headers
    assert r.headers["etag"] == '"v1"'
    assert_recorded(http_workspace, r, 2)

    # The source's 404 passes through: the gateway served the source's answer.
    r = client.get("/v1/datasets/tickets/proxy/status/404", headers=bearer())
    assert r.status_code == 404 and r.json()["upstream"] == 404
    rec = assert_recorded(http_workspace, r, 3)
    assert rec["decision"] == "allow"

    # Redirects are not followed, and the source's Location does not leak.
    r = client.get("/v1/datasets/tickets/proxy/redirect", headers=bearer())
    assert r.status_code == 302 and "location" not in r.headers
    assert upstream[1][-1] == "/api/tickets/redirect"
    assert_recorded(http_workspace, r, 4)


def test_source_credentials_injected_and_agent_token_never_forwarded(client: TestClient) -> None:
    agent_token = token("support-bot")
    r = client.get("/v1/datasets/tickets/proxy/echo", headers={
        "Authorization": f"Bearer {agent_token}", "Accept": "application/json", "Cookie": "agent=1",
        "X-Work-Unit": "T-1", "X-Forwarded-For": "10.0.0.1"})
    assert r.status_code == 200
    sent = r.json()["headers"]
    assert sent["authorization"] == UPSTREAM_SECRET
    assert sent["x-api-key"] == "k-123"
    assert sent["accept"] == "application/json"
    assert agent_token not in json.dumps(sent)
    for name in ("cookie", "x-work-unit", "x-forwarded-for"):
        assert name not in sent
    # And the agent never sees the source's credentials.
    assert "upstream-secret" not in r.headers.get("authorization", "")


@pytest.mark.parametrize("path", [
    "/v1/datasets/tickets/proxy/%2e%2e/admin",
    "/v1/datasets/tickets/proxy/a/%2E%2e/%2e%2e/admin",
    "/v1/datasets/tickets/proxy/a%2f..%2fadmin",
    "/v1/datasets/tickets/proxy/a%2F..%2Fadmin",
    "/v1/datasets/tickets/proxy/a%5c..%5cadmin",
    "/v1/datasets/tickets/proxy/%252e%252e/admin",
    "/v1/datasets/tickets/proxy//evil.example/x",
    "/v1/datasets/tickets/proxy/http://x",
    "/v1/datasets/tickets/proxy/HTTPS:%2f%2fevil.example",
    "/v1/datasets/tickets/proxy/a%00b",
    "/v1/datasets/tickets/proxy/a%0d%0aX-Injected:%201",
])
def test_traversal_and_absolute_urls_are_refused(client: TestClient, http_workspace: Path,
                                                 upstream: tuple[str, list[str]], path: str) -> None:
    r = client.get(path, headers=bearer())
    assert r.status_code == 400, (path, r.text)
    assert r.json()["error"]["code"] == "bad_request"
    assert upstream[1] == []
    rec = assert_recorded(http_workspace, r, 1)
    assert rec["decision"] == "error" and rec["dataset"] == "tickets"


@pytest.mark.parametrize("raw", [b"/v1/datasets/tickets/proxy/../held/x", b"/v1/datasets/tickets/proxy/a/../../x",
                                 b"/v1/datasets/tickets/proxy/./x", b"/v1/datasets/tickets/proxy/a\\..\\x",
                                 b"/v1/datasets/tickets/proxy/..", b"/v1/datasets%2ftickets/proxy/x"])
def test_literal_dot_segments_are_refused(client: TestClient, http_workspace: Path,
                                          upstream: tuple[str, list[str]], raw: bytes) -> None:
    assert client.portal is not None
    status, body = client.portal.call(_raw_get, client.app, raw, f"Bearer {token('support-bot')}")
    assert status == 400, (raw, body)
    assert upstream[1] == []
    assert len(records(http_workspace)) == 1


@pytest.mark.unit
def test_confine_keeps_paths_under_the_prefix() -> None:
    assert confine("a/b%20c/") == "a/b%20c/"
    assert confine("") == ""
    assert confine("v1/items:batchGet") == "v1/items:batchGet"
    for bad in ("..", "a/..", ".", "%2e", "/x", "a//b", "a\\b", "a%2fb", "a%5Cb", "javascript:x", "a\x00",
                "%25252e%25252e", "%ff", "http%3a", "items:batchGet"):
        with pytest.raises(InvalidQuery):
            confine(bad)
    conn = HttpConnector("s", "http://127.0.0.1:1/api/")
    assert str(conn.url_for("/tickets", "a/b", "x=1")) == "http://127.0.0.1:1/api/tickets/a/b?x=1"


@pytest.mark.parametrize("code", [401, 407, 500, 502, 503])
def test_source_refusing_or_failing_is_502(client: TestClient, http_workspace: Path, code: int) -> None:
    r = client.get(f"/v1/datasets/tickets/proxy/status/{code}", headers=bearer())
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "source_error"
    assert "do-not-leak" not in r.text
    rec = assert_recorded(http_workspace, r, 1)
    assert rec["decision"] == "error" and str(code) in rec["reason"]


def test_slow_source_is_504(client: TestClient, http_workspace: Path) -> None:
    started = time.monotonic()
    r = client.get("/v1/datasets/tickets/proxy/slow", headers=bearer())
    assert r.status_code == 504 and r.json()["error"]["code"] == "source_timeout"
    assert time.monotonic() - started < 2.4
    assert_recorded(http_workspace, r, 1)


@pytest.mark.parametrize("which", ["big", "big-unannounced"])
def test_over_cap_body_is_502_without_it(client: TestClient, http_workspace: Path, which: str) -> None:
    r = client.get(f"/v1/datasets/tickets/proxy/{which}", headers=bearer())
    assert r.status_code == 502 and r.json()["error"]["code"] == "source_error"
    assert len(r.content) < 1000
    assert_recorded(http_workspace, r, 1)


def test_unreachable_source_is_502(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source, datasets=DATASETS_HTTP, policy=POLICY_HTTP,
                             extra='[sources.tix]\nurl = "http://127.0.0.1:9/api"\ntimeout_seconds = 1\n')
    with client_for(config) as c:
        r = c.get("/v1/datasets/tickets/proxy/x", headers=bearer())
    assert r.status_code == 502 and r.json()["error"]["code"] == "source_error"
    assert_recorded(config, r, 1)


def test_denied_unknown_unauthenticated_and_non_get(client: TestClient, http_workspace: Path,
                                                    upstream: tuple[str, list[str]]) -> None:
    r = client.get("/v1/datasets/tickets/proxy/x", headers=bearer("analyst-bot"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert assert_recorded(http_workspace, r, 1)["decision"] == "deny"
    r2 = client.get("/v1/datasets/nope/proxy/x", headers=bearer())
    assert r2.status_code == 403 and r2.json()["error"]["message"] == r.json()["error"]["message"]
    assert_recorded(http_workspace, r2, 2)
    r = client.get("/v1/datasets/tickets/proxy/x")
    assert r.status_code == 401
    assert assert_recorded(http_workspace, r, 3)["query"] == "/x"
    for method in ("POST", "PUT", "DELETE", "HEAD"):
        r = client.request(method, "/v1/datasets/tickets/proxy/x", headers=bearer(), content=b"{}")
        assert r.status_code == 405, method
        assert r.headers["allow"] == "GET"
    assert len(records(http_workspace)) == 7
    # A SQL dataset has no proxy path.
    r = client.get("/v1/datasets/customers/proxy/x", headers=bearer())
    assert r.status_code == 400
    assert upstream[1] == []
    # The catch-all still answers unknown paths.
    assert client.get("/v1/nothing/here", headers=bearer()).status_code == 404


def test_approval_required_dataset_waits_for_a_person(client: TestClient, http_workspace: Path,
                                                      upstream: tuple[str, list[str]]) -> None:
    r = client.get("/v1/datasets/held/proxy/x", headers=bearer())
    assert r.status_code == 202 and r.json()["approval_id"]
    assert upstream[1] == []
    assert assert_recorded(http_workspace, r, 1)["decision"] == "pending"
