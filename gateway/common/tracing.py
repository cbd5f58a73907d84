"""The trace each request joins (W3C Trace Context), and the gateway's spans when OpenTelemetry exports them.

Every request the core handles gets a `RequestSpan`: the trace id of the agent's `traceparent` (or a new one),
a span id of its own (the gateway's span) and the flags. Its traceparent goes back in the answer and on to HTTP
sources; its trace id goes into the audit record, so a trace and the trail join on it.

With the optional extra `agentgate[otel]` and the standard OTEL_* variables, `configure()` has the OpenTelemetry
SDK set itself up from them (its own configurator, as `opentelemetry-instrument` does), and each request's
span is exported with children for its stages: authenticate, decide, source read, audit write. Without it no
tracer is set, and a stage pays a None check (`spanned`).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from gateway import __version__
from gateway.common import randomness
from gateway.common.errors import GatewayError

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider
    from opentelemetry.util.types import AttributeValue

log = logging.getLogger("agentgate.tracing")
T = TypeVar("T")

# The stages' spans, children of the request's.
AUTHENTICATE, DECIDE, SOURCE_READ, AUDIT_WRITE = "authenticate", "decide", "source read", "audit write"
# The flags of a trace the gateway starts itself: sampled, since every request it answers is recorded (the
# audit trail), and a source that follows the flag then records its part of the trace too.
SAMPLED = "01"
# The exporter `configure` names when only an OTLP endpoint is set: the one agentgate[otel] installs.
OTLP_HTTP = "otlp_proto_http"
# A trace id as W3C writes it and every audit record keeps it: 16 bytes as 32 lowercase hex digits.
TRACE_ID = re.compile(r"[0-9a-f]{32}")

_tracer: Tracer | None = None  # set by configure() or use(); None: ids only, no spans


@dataclass(slots=True)  # not frozen: a frozen dataclass is built at a quarter of the speed (once per request)
class RequestSpan:
    """The gateway's span of one request. `otel`: the exported span (None unless OpenTelemetry exports)."""

    trace_id: str
    span_id: str
    flags: str
    otel: Span | None = None

    @property
    def traceparent(self) -> str:
        """This span as the parent (version 00): the answer's `traceparent` header, and an HTTP source's."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


def is_trace_id(text: str) -> bool:
    """Whether `text` is a trace id as a record keeps one: what the trail may be searched for by `trace_id`."""
    return TRACE_ID.fullmatch(text) is not None


def begin(operation: str, trace_id: str | None, parent_id: str | None, flags: str | None) -> RequestSpan:
    """The span of a request for `operation`, child of the agent's span when its traceparent named one (trace_id,
    parent_id, flags as parsed), else the first of a new trace."""
    tracer = _tracer
    if tracer is not None:
        return _exported(tracer, operation, trace_id, parent_id, flags)
    if trace_id is None:  # a new trace: its id and the span's from one draw
        ids = _new_id(24)
        return RequestSpan(ids[:32], ids[32:], SAMPLED)
    return RequestSpan(trace_id, _new_id(8), flags or SAMPLED)


def finish(span: RequestSpan, attributes: Mapping[str, AttributeValue | None], *, failed: bool) -> None:
    """End an exported request span (the caller checks `span.otel`) with what the request came to; `failed`:
    the gateway failed it (a 5xx), a refusal is not a failure."""
    if span.otel is None:
        return
    from opentelemetry.trace import StatusCode

    span.otel.set_attributes({k: v for k, v in attributes.items() if v is not None})
    if failed:
        span.otel.set_status(StatusCode.ERROR)
    span.otel.end()


# What a stage's span says of its result (a decision: allowed, by which policy line).
Said = Callable[[T], Mapping[str, "AttributeValue | None"]]


def spanned(span: RequestSpan | None, name: str, work: Awaitable[T], said: Said[T] | None = None) -> Awaitable[T]:
    """`work` itself when no span is exported; else `work` within a child span `name` of the request's, which
    `said` describes once it is done."""
    if span is None or span.otel is None:
        return work
    return _child(span.otel, name, lambda _: work, said)


def passed_on(span: RequestSpan | None, name: str, work: Callable[[str | None], Awaitable[T]]) -> Awaitable[T]:
    """As `spanned`, for work that passes the trace on (a request to an HTTP source): `work` is given the
    traceparent naming its parent, the child span's when exported, else the request's (None: no span)."""
    if span is None:
        return work(None)
    if span.otel is None:
        return work(span.traceparent)
    return _child(span.otel, name, work)


def use(provider: TracerProvider | None) -> None:
    """Export spans through `provider` from now on (None: no spans). `configure` gives the SDK's global one;
    tests give one with an in-memory exporter."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer("agentgate", __version__)


def configure(environ: Mapping[str, str]) -> bool:
    """Spans exported, if the standard variables ask for it and the SDK is installed: OTEL_TRACES_EXPORTER
    (not "none"), or an OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT / _TRACES_ENDPOINT: exported over
    HTTP/protobuf), or a tracer provider the SDK was already given in this process (`opentelemetry-instrument`).
    Everything else (service name, sampler, batching, headers) is the SDK's own reading of OTEL_*. Nothing of
    the SDK is imported unless asked for."""
    if _tracer is not None:
        return True
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" or exporters.lower() == "none":
        return False
    if not (exporters or endpoint):
        return _given()
    try:
        from opentelemetry import trace
        from opentelemetry.sdk._configuration import _OTelSDKConfigurator
    except ImportError:
        log.warning("OTEL_* asks for traces, but the OpenTelemetry SDK is not installed "
                    "(pip install 'agentgate[otel]'): no spans are exported")
        return False
    if _given():
        return True
    named = {"OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"} & set(environ)
    try:
        _OTelSDKConfigurator().configure(  # type: ignore[no-untyped-call]
            trace_exporter_names=[] if exporters else [OTLP_HTTP],
            resource_attributes=None if named else {"service.name": "agentgate"})
    except Exception as exc:  # an exporter named that is not installed, a bad sampler: say so, serve on
        log.warning("OpenTelemetry could not be set up from OTEL_*: %s: %s; no spans are exported",
                    type(exc).__name__, exc)
        return False
    use(trace.get_tracer_provider())
    return True


def _given() -> bool:
    """Spans through the SDK's global tracer provider, if this process already set one up."""
    sdk = sys.modules.get("opentelemetry.sdk.trace")
    if sdk is None:  # never imported: no provider of the SDK's can exist
        return False
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    if not isinstance(provider, sdk.TracerProvider):
        return False
    use(provider)
    return True


def _new_id(size: int) -> str:
    """`size` random bytes as hex. Neither their first nor their last 8 bytes are all zeros: a trace id (16 bytes)
    or span id (8) taken from either end is never all zeros, which W3C reserves for "no id"."""
    raw = randomness.random_bytes(size)
    while not (any(raw[:8]) and any(raw[-8:])):
        raw = randomness.random_bytes(size)
    return raw.hex()


def _exported(tracer: Tracer, operation: str, trace_id: str | None, parent_id: str | None,
              flags: str | None) -> RequestSpan:
    from opentelemetry import trace

    context = None  # no traceparent: the current span's child (an MCP message's span), else a new trace
    if trace_id is not None and parent_id is not None:
        remote = trace.SpanContext(int(trace_id, 16), int(parent_id, 16), is_remote=True,
                                   trace_flags=trace.TraceFlags(int(flags or SAMPLED, 16)))
        context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    span = tracer.start_span(f"agentgate {operation}", context=context, kind=trace.SpanKind.SERVER)
    ids = span.get_span_context()
    return RequestSpan(trace.format_trace_id(ids.trace_id), trace.format_span_id(ids.span_id),
                       f"{ids.trace_flags:02x}", span)


async def _child(parent: Span, name: str, work: Callable[[str | None], Awaitable[T]],
                 said: Said[T] | None = None) -> T:
    from opentelemetry import trace

    tracer = _tracer
    if tracer is None:  # tracing turned off since the request began
        return await work(None)
    kind = trace.SpanKind.CLIENT if name == SOURCE_READ else trace.SpanKind.INTERNAL  # a call to another system
    child = tracer.start_span(name, context=trace.set_span_in_context(parent), kind=kind)
    ids = child.get_span_context()
    try:
        result = await work(f"00-{trace.format_trace_id(ids.trace_id)}-{trace.format_span_id(ids.span_id)}-"
                            f"{ids.trace_flags:02x}")
        if said is not None:
            child.set_attributes({k: v for k, v in said(result).items() if v is not None})
        return result
    except GatewayError as exc:  # a refusal is an answer, not a failure of the stage: named, not an error
        child.set_attribute("agentgate.refused", exc.code)
        raise
    except BaseException as exc:
        child.record_exception(exc)
        child.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        child.end()
