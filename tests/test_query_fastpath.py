"""The query route served straight from ASGI (GatewayApp) answers exactly as the Starlette router does."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from gateway.transports import data
from tests.conftest import bearer, client_for

pytestmark = pytest.mark.integration

CASES: list[tuple[str, dict[str, Any]]] = [
    ("/v1/datasets/customers/query", {"json": {"limit": 3}, "headers": bearer("support-bot")}),
    ("/v1/datasets/customers/query", {"json": {"limit": 2}, "headers": bearer("analyst-bot")}),  # email masked
    ("/v1/datasets/customers/query", {"json": {"limit": 2}, "headers": {**bearer("analyst-bot"),
                                                                        "X-Work-Unit": "ticket-7"}}),
    ("/v1/datasets/customers/query", {"json": {"limit": 0}, "headers": bearer("analyst-bot")}),  # 400
    ("/v1/datasets/customers/query", {"content": b"not json", "headers": bearer("analyst-bot")}),
    ("/v1/datasets/customers/query", {"content": b"", "headers": bearer("analyst-bot")}),
    ("/v1/datasets/customers/query", {"json": {"limit": 1}}),  # 401
    ("/v1/datasets/customers/query", {"json": {"limit": 1}, "headers": {"Authorization": "Bearer x.y.z"}}),
    ("/v1/datasets/nope/query", {"json": {"limit": 1}, "headers": bearer("analyst-bot")}),  # 403
    ("/v1/datasets/orders/query", {"json": {"limit": 1}, "headers": bearer("support-bot")}),
    ("/v1/datasets/customers/query", {"content": b"{" + b" " * 300_000 + b"}", "headers": bearer("analyst-bot")}),
    # Streamed in chunks with no Content-Length: bounded as it arrives.
    ("/v1/datasets/customers/query", {"content": [b'{"limit"', b": 1}"], "headers": bearer("analyst-bot")}),
    ("/v1/datasets/customers/query", {"content": [b"{" + b" " * 200_000] * 2, "headers": bearer("analyst-bot")}),
]


def post(client: TestClient, path: str, kwargs: dict[str, Any]) -> httpx.Response:
    if isinstance(kwargs.get("content"), list):  # chunks: sent as a stream, without Content-Length
        kwargs = {**kwargs, "content": iter(kwargs["content"])}
    return client.post(path, **kwargs)


def comparable(response: httpx.Response) -> tuple[Any, ...]:
    # Random per answer: its request id, and the gateway's span (a new trace when none was sent; issue 15).
    assert re.fullmatch("00-[0-9a-f]{32}-[0-9a-f]{16}-01", response.headers["traceparent"])
    headers = [(k, v) for k, v in response.headers.multi_items() if k not in ("x-request-id", "date", "traceparent")]
    body = response.json()
    if body.get("next_cursor"):
        body["next_cursor"] = "(encrypted, random)"
    if "error" in body:
        assert body["error"].pop("request_id") == response.headers["x-request-id"]
    return response.status_code, headers, body


@pytest.fixture
def fast(workspace: Path) -> Iterator[TestClient]:
    with client_for(workspace) as c:
        yield c


def test_the_fast_path_and_the_router_answer_alike(fast: TestClient, workspace: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert data.query_route({"type": "http", "method": "POST", "path": "/v1/datasets/customers/query"}) == "customers"
    got_fast = [comparable(post(fast, path, kwargs)) for path, kwargs in CASES]
    monkeypatch.setattr(data, "query_route", lambda scope: None)  # every request through Starlette's router
    with client_for(workspace) as slow:
        for (path, kwargs), expected in zip(CASES, got_fast, strict=True):
            assert comparable(post(slow, path, kwargs)) == expected, (path, kwargs.get("json"))


@pytest.mark.unit
@pytest.mark.parametrize("scope", [
    {"type": "http", "method": "GET", "path": "/v1/datasets/customers/query"},
    {"type": "http", "method": "POST", "path": "/v1/datasets//query"},
    {"type": "http", "method": "POST", "path": "/v1/datasets/a/b/query"},
    {"type": "http", "method": "POST", "path": "/v1/datasets/customers/query/"},
    {"type": "http", "method": "POST", "path": "/v1/datasets/customers/query", "root_path": "/api"},
    {"type": "websocket", "path": "/v1/datasets/customers/query"},
])
def test_only_the_exact_route_takes_the_fast_path(scope: dict[str, Any]) -> None:
    assert data.query_route(scope) is None


def test_other_methods_on_the_query_route_still_refuse(fast: TestClient) -> None:
    got = fast.get("/v1/datasets/customers/query", headers=bearer("analyst-bot"))
    assert got.status_code == 405 and got.headers["allow"] == "POST"
