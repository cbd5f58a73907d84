"""What travels through the pipeline: the request a transport builds, the trace the audit record is made from,
the outcome of running an operation, and the answer a transport sends back unchanged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from connectors.base import HttpAnswer
from gateway.auth import Agent
from gateway.common.errors import GatewayError
from gateway.common.tracing import RequestSpan
from gateway.services.meter import Reservation
from gateway.services.ratelimit import Verdict


@dataclass(frozen=True)
class ReadRequest:
    request_id: str
    operation: str  # a name in core.operations.OPERATIONS, or "unknown" for a path no route serves
    authorization: str | None
    dataset: str | None = None
    body: bytes | None = None
    body_too_large: bool = False
    work_unit: str | None = None
    approval_id: str | None = None
    transport: str = "http"
    route_error: GatewayError | None = None
    params: Mapping[str, str] = field(default_factory=dict)  # path and query parameters of admin calls
    # Who called (gateway/transports/caller.py): the address (a trusted proxy's X-Forwarded-For), user agent, and
    # of its traceparent the trace id, its span (the gateway's span's parent) and flags; no trace id: a new trace.
    client: str | None = None
    user_agent: str | None = None
    trace_id: str | None = None
    parent_span: str | None = None
    trace_flags: str | None = None
    # What the record's `query` holds when the request is more than its body (an MCP tool call: its arguments
    # as sent, as JSON), until the operation names what it acted on (SQL mode: the statement).
    recorded_query: str | None = None


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    payload: Mapping[str, Any] | None
    headers: Mapping[str, str] = field(default_factory=dict)
    # A streamed answer (an export of the trail): its record is written before the first byte leaves.
    stream: AsyncIterator[bytes] | None = None
    media_type: str = "application/json"


@dataclass
class Trace:
    """What the audit record will say, filled in as the request goes."""

    agent: Agent | None = None
    dataset: str | None = None
    rule: str | None = None
    reason: str | None = None
    rows: int | None = None
    source_ms: float | None = None
    columns: list[str] | None = None
    masked: list[str] | None = None
    query: str | None = None  # what was acted on, when it is not the body as sent
    approved_by: str | None = None  # who approved the read (datasets with approval = "required")
    row_filter: str | None = None  # the row filters applied, claim values filled in
    stream: AsyncIterator[bytes] | None = None
    media_type: str = "application/json"
    raw: HttpAnswer | None = None  # a source's answer passed through as it came (HTTP datasets)
    cleared: tuple[str, ...] = ()  # the datasets the policy let this agent read (the only names /metrics shows)
    reserved: Reservation | None = None  # rows the budget set aside for the read, settled after it
    span: RequestSpan | None = None  # the gateway's span of the request: the record's trace id (common/tracing.py)


# What an operation's handler returns: the status, and the JSON payload (None: no body, or a stream / a source's
# answer set on the trace).
Result = tuple[int, dict[str, Any] | None]


@dataclass(slots=True)
class Outcome:
    """What running the request came to, before its record is written: the status and decision the record
    keeps, the payload and headers of the answer. `work_unit` is the X-Work-Unit header as the record keeps it;
    `limited`, the per-client limit's verdict on a refusal with no token verified (else None)."""

    status: int
    decision: str  # allow, deny or error
    payload: dict[str, Any] | None
    headers: dict[str, str]
    work_unit: str | None
    limited: Verdict | None = None
