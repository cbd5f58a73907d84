"""The gateway's spans through the OpenTelemetry SDK (agentgate[otel]), caught by the SDK's in-memory exporter:
a request's span (trace id = the record's, parent = the agent's span) with authenticate, decide, source read and
audit write as its children; and when configure() turns export on from OTEL_* and when it leaves it off."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id, get_tracer_provider
from starlette.testclient import TestClient

from gateway.common import tracing
from tests.conftest import bearer, client_for
from tests.test_tracing import AGENT_SPAN, TRACE, TRACEPARENT, config, parent_of, record_of, upstream

__all__ = ["config", "upstream"]  # the fixtures, shared with tests/test_tracing.py

STAGES = ("authenticate", "decide", "source read", "audit write")


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield exporter
    finally:
        tracing.use(None)
        provider.shutdown()


@pytest.fixture
def client(config: Path, exported: InMemorySpanExporter) -> Iterator[TestClient]:
    with client_for(config) as c:
        yield c


def by_trace(exporter: InMemorySpanExporter, trace_id: str) -> dict[str, ReadableSpan]:
    spans = [s for s in exporter.get_finished_spans() if format_trace_id(s.context.trace_id) == trace_id]
    named = {s.name: s for s in spans}
    assert len(named) == len(spans), [s.name for s in spans]  # one of each per request
    return named


def span_id(span: ReadableSpan) -> str:
    return format_span_id(span.context.span_id)


def parent_id(span: ReadableSpan) -> str | None:
    return format_span_id(span.parent.span_id) if span.parent is not None else None


@pytest.mark.integration
def test_a_read_exports_its_span_and_its_stages_as_children(client: TestClient, config: Path,
                                                            exported: InMemorySpanExporter) -> None:
    r = client.post("/v1/datasets/customers/query", json={"limit": 2},
                    headers={**bearer(), "traceparent": TRACEPARENT})
    assert r.status_code == 200
    rec = record_of(config, r)
    spans = by_trace(exported, TRACE)
    assert set(spans) == {"agentgate query", *STAGES}
    request = spans["agentgate query"]
    assert rec["trace_id"] == TRACE and parent_id(request) == AGENT_SPAN and request.parent.is_remote
    assert request.kind == SpanKind.SERVER and parent_of(r)[1] == span_id(request)  # the answer names it
    for stage in STAGES:
        assert parent_id(spans[stage]) == span_id(request), stage
        assert spans[stage].status.status_code != StatusCode.ERROR
    assert (spans["decide"].attributes or {}) == {"agentgate.allowed": True,
                                                  "agentgate.rule": "p, support, customers, read, allow"}
    assert spans["source read"].kind == SpanKind.CLIENT
    attributes = request.attributes or {}
    assert attributes["agentgate.request_id"] == rec["request_id"] == r.headers["x-request-id"]
    assert (attributes["agentgate.agent"], attributes["agentgate.dataset"], attributes["agentgate.status"],
            attributes["agentgate.decision"]) == ("support-bot", "customers", 200, "allow")


@pytest.mark.integration
def test_a_request_with_no_trace_is_the_root_of_a_new_one(client: TestClient, config: Path,
                                                         exported: InMemorySpanExporter) -> None:
    r = client.get("/v1/datasets/tickets", headers=bearer("analyst-bot"))  # the policy refuses it
    assert r.status_code == 403
    trace_id = record_of(config, r)["trace_id"]
    assert parent_of(r)[0] == trace_id
    spans = by_trace(exported, trace_id)
    assert set(spans) == {"agentgate describe", "authenticate", "decide", "audit write"}
    request = spans["agentgate describe"]
    assert request.parent is None and span_id(request) == parent_of(r)[1]
    # A refusal is an answer, not a failure of the stage that refused: the decision says what it was.
    assert (spans["decide"].attributes or {})["agentgate.allowed"] is False
    assert spans["decide"].status.status_code != StatusCode.ERROR
    assert (request.attributes or {})["agentgate.decision"] == "deny"
    r = client.get("/v1/datasets", headers={"Authorization": "Bearer not-a-jwt"})
    spans = by_trace(exported, record_of(config, r)["trace_id"])
    assert set(spans) == {"agentgate list", "authenticate", "audit write"}
    assert (spans["authenticate"].attributes or {})["agentgate.refused"] == "unauthenticated"


@pytest.mark.integration
def test_an_http_source_is_sent_the_source_read_span_as_its_parent(client: TestClient, config: Path,
                                                                   exported: InMemorySpanExporter) -> None:
    r = client.get("/v1/datasets/tickets/proxy/echo", headers={**bearer(), "traceparent": TRACEPARENT})
    assert r.status_code == 200, r.text
    spans = by_trace(exported, TRACE)
    sent = json.loads(r.text)["headers"]["traceparent"]
    assert sent == f"00-{TRACE}-{span_id(spans['source read'])}-01"
    assert parent_id(spans["source read"]) == span_id(spans["agentgate proxy"])


@pytest.mark.integration
def test_a_failing_source_read_is_an_error_span(client: TestClient, config: Path,
                                                exported: InMemorySpanExporter) -> None:
    # Its answer announces more bytes than the source may send: refused while the source is read.
    r = client.get("/v1/datasets/tickets/proxy/big", headers={**bearer(), "traceparent": TRACEPARENT})
    assert r.status_code == 502
    spans = by_trace(exported, TRACE)
    assert spans["source read"].status.status_code == StatusCode.ERROR
    assert spans["agentgate proxy"].status.status_code == StatusCode.ERROR


@pytest.mark.unit
@pytest.mark.parametrize("environ", [
    {},  # nothing asked
    {"OTEL_SERVICE_NAME": "agentgate"},  # a name, but nowhere to send spans
    {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
    {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"},
])
def test_spans_are_exported_only_when_otel_variables_ask(environ: dict[str, str]) -> None:
    assert tracing.configure(environ) is False
    span = tracing.begin("list", None, None, None)
    assert span.otel is None and span.traceparent == f"00-{span.trace_id}-{span.span_id}-01"


@pytest.mark.unit
def test_an_exporter_that_is_not_installed_is_a_warning_and_no_spans(monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    # The SDK reads its variables from the environment itself; gRPC's exporter is not part of agentgate[otel].
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp_proto_grpc")
    with caplog.at_level(logging.WARNING, logger="agentgate.tracing"):
        assert tracing.configure(os.environ) is False
    assert "no spans are exported" in caplog.text and "otlp_proto_grpc" in caplog.text
    assert tracing.begin("list", None, None, None).otel is None
    assert not isinstance(get_tracer_provider(), TracerProvider)  # nothing was set up halfway
