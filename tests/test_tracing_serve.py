"""`agentgate serve` with agentgate[otel] installed and the README's OTEL_* variables exports its spans over
OTLP/HTTP, caught here by a collector on loopback: the request's span in the agent's trace (the record's trace
id), its parent the agent's span, the stages as its children, the service named as OTEL_SERVICE_NAME says."""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.conftest import bearer, loopback_http, write_workspace
from tests.serving import serving
from tests.test_tracing import AGENT_SPAN, TRACE, TRACEPARENT

pytestmark = pytest.mark.system


class Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP trace receiver: keeps each export's path and body."""

    got: list[tuple[str, bytes]] = []  # replaced per server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        self.got.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def collector() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    got: list[tuple[str, bytes]] = []
    with loopback_http(type("Handler", (Collector,), {"got": got}), prefix="") as base:
        yield base, got


def spans_of(got: list[tuple[str, bytes]], trace_id: str) -> tuple[set[str], dict[str, Any]]:
    """The service names and the spans of `trace_id` (by name) in every export so far."""
    services, spans = set(), {}
    for path, body in list(got):
        assert path == "/v1/traces"
        for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans:
            for kv in resource_spans.resource.attributes:
                if kv.key == "service.name":
                    services.add(kv.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                spans.update({s.name: s for s in scope_spans.spans if s.trace_id.hex() == trace_id})
    return services, spans


def test_serve_exports_spans_to_an_otlp_endpoint(tmp_path: Path, sqlite_source: str,
                                                 collector: tuple[str, list[tuple[str, bytes]]],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint, got = collector
    monkeypatch.setenv("OTEL_SERVICE_NAME", "agentgate-test")  # as in the README (Operations: traces)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # the SDK's batch every 0.1 s, not 5 s
    config = write_workspace(tmp_path, source_url=sqlite_source)
    with serving(config, tmp_path / "serve.log") as base:
        r = httpx.post(f"{base}/v1/datasets/customers/query", json={"limit": 1},
                       headers={**bearer(), "traceparent": TRACEPARENT})
        assert r.status_code == 200 and r.headers["traceparent"].startswith(f"00-{TRACE}-")
        deadline = time.monotonic() + 15
        while len(spans_of(got, TRACE)[1]) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        services, spans = spans_of(got, TRACE)
    assert services == {"agentgate-test"}
    assert set(spans) == {"agentgate query", "authenticate", "decide", "source read", "audit write"}
    request = spans["agentgate query"]
    assert request.parent_span_id.hex() == AGENT_SPAN and r.headers["traceparent"].split("-")[2] == \
        request.span_id.hex()
    assert all(s.parent_span_id == request.span_id for name, s in spans.items() if name != "agentgate query")
