"""The Gateway: the one read path every way in goes through.

    request -> outcome (authenticate, admit, permit, run the operation; errors mapped to status and payload)
            -> answer bytes -> audit record (built by record.build_record, written durably) -> answer

Exactly one place decides and exactly one place writes the audit record (``Gateway.handle``). Transports build
a ``ReadRequest`` and send back the ``Answer`` bytes unchanged, so ``response_sha256`` covers what left.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from sqlalchemy.ext.asyncio import AsyncEngine

from connectors.base import HttpAnswer, HttpSource, TableSource
from gateway.audit import AuditTrail, ChainWatch, Streams
from gateway.auth import Agent, Authenticator
from gateway.common import logformat, tracing
from gateway.common.clock import now
from gateway.common.errors import (
    ApprovalPending,
    BadRequest,
    Forbidden,
    GatewayError,
    SourceError,
    SourceTimeout,
    TooLarge,
    Unauthenticated,
    Unavailable,
    error_body,
)
from gateway.common.metrics import SEVERAL, UNKNOWN, Metrics
from gateway.common.textsafe import cap, terminal
from gateway.core import access
from gateway.core.faults import failure_kind, source_of
from gateway.core.operations import OPERATIONS, Operation
from gateway.core.query import CursorCodec
from gateway.core.record import build_record, refusal_sample
from gateway.core.render import render, render_answer, sha256
from gateway.core.services import Services
from gateway.core.types import Answer, Outcome, ReadRequest, Result, Trace
from gateway.policy import Policy, PolicyHolder
from gateway.services.meter import Meter
from gateway.services.ratelimit import RefusalLimiter, too_many
from gateway.services.revocations import Registry

log = logging.getLogger("agentgate.core")

# X-Work-Unit and X-Approval-Id (MCP: work_unit, approval_id): at most this many characters, none a control,
# format or separator character (textsafe.terminal's); else 400, recorded with the value escaped and capped.
HEADER_MAX = 128
# Headers of an HTTP source's answer passed through to the agent (besides its content type).
PASSED_HEADERS = frozenset({"etag", "last-modified", "content-language", "content-disposition", "retry-after"})


class Gateway:
    def __init__(self, *, authenticator: Authenticator, policies: PolicyHolder, audit: AuditTrail,
                 sources: Mapping[str, TableSource], http_sources: Mapping[str, HttpSource] | None = None,
                 cursors: CursorCodec, metrics: Metrics,
                 revocations: Registry, store: AsyncEngine, checkpoint_key: str | None = None,
                 approval_ttl: int = 3600, chain: ChainWatch | None = None,
                 approval_max_pending: int | None = 20, refusals: RefusalLimiter | None = None,
                 streams: Streams | None = None):
        self.auth = authenticator
        # Requests refused before any token verified: limited per client, folded into summaries (ratelimit.py).
        self.refusals = refusals
        self.revocations = revocations
        self.policies = policies
        self.audit = audit
        self.metrics = metrics
        self.sources = sources
        self.meter = Meter(store, refused=metrics.budget_refused)
        # The audit chain's checks and their last verdict (no background schedule unless the app starts one).
        self.chain = chain or ChainWatch(store, checkpoint_key)
        # What the operations' handlers are handed: they never see the Gateway.
        self.services = Services(store=store, revocations=revocations, meter=self.meter, chain=self.chain,
                                 sources=sources, http_sources=http_sources or {}, cursors=cursors,
                                 approval_ttl=approval_ttl, approval_max_pending=approval_max_pending,
                                 policies=policies, streams=streams or Streams())

    async def admit(self, agent: Agent) -> None:
        """After the token verified: refuse a subject that names a role (401; roles are not agents, see
        policy.role_names) and a revoked agent or token (403). Every way in calls this, through handle. A view
        of the revocations not proven current this instant (a busy loop) is first waited for, briefly, not taken
        for a lost store."""
        await self.revocations.wait_current()
        policy = self.policies.current
        if policy is not None and agent.name in policy.roles:
            raise Unauthenticated("the token's subject names a role, not an agent",
                                  reason=f"token subject {agent.name[:100]!r} is a role in the policy")
        self.revocations.check(agent)

    async def handle(self, req: ReadRequest) -> Answer:
        started = time.perf_counter()
        op = OPERATIONS.get(req.operation)
        action = op.action if op is not None else req.operation
        span = tracing.begin(req.operation, req.trace_id, req.parent_span, req.trace_flags)
        trace = Trace(dataset=req.dataset, query=req.recorded_query, span=span)
        logformat.entered(req.request_id, trace)  # the lines logged meanwhile name its request, agent, dataset
        outcome = await self._outcome(req, op, trace)
        raw = trace.raw if outcome.decision == "allow" else None
        if raw is not None:  # the source's own answer, passed through byte for byte
            outcome.status, body = raw.status, raw.body
            outcome.headers.update({k: v for k, v in raw.headers.items() if k.lower() in PASSED_HEADERS})
        else:
            body = await render_answer(outcome.payload) if outcome.payload is not None else b""
        limited = outcome.limited
        if limited is not None and not limited.record and self.refusals is not None:
            # Over the limits: counted into its client's summary record instead of a record of its own.
            self.refusals.fold(limited, outcome.status, req.client, lambda: refusal_sample(req, trace, action))
            self.metrics.answered(req.operation, outcome.decision, _metric_dataset(trace),
                                  time.perf_counter() - started)
            if limited.retry_after:
                await self.refusals.hold()  # a client over its limit is answered at a pace (ratelimit.py)
            _traced(req, trace, outcome)
            return Answer(status=outcome.status, body=body, payload=outcome.payload, headers=outcome.headers)
        streamed = trace.stream is not None and outcome.status == 200  # an export: its bytes leave after the record
        digest = None if streamed else await sha256(body)
        record = build_record(req, trace, outcome, body, digest, action=action, at=now(),
                              elapsed=time.perf_counter() - started)
        recording = time.perf_counter()
        try:
            await tracing.spanned(span, tracing.AUDIT_WRITE, self.audit.record(record))
        except Unavailable as exc:
            self.metrics.audit_failures.inc()
            outcome.status, outcome.decision, outcome.headers = 503, "error", {}
            outcome.payload = error_body(exc.code, exc.message, req.request_id)
            body, streamed, raw = render(outcome.payload), False, None
        done = time.perf_counter()
        self.metrics.answered(req.operation, outcome.decision, _metric_dataset(trace), done - started,
                              done - recording)
        _traced(req, trace, outcome)
        return _answer(outcome, body, trace if streamed else None, raw)

    async def _outcome(self, req: ReadRequest, op: Operation | None, trace: Trace) -> Outcome:
        """Authenticate and admit the caller, then run the operation: its status and payload, or the refusal
        or error it came to (the checks in this order, which decides the record's status, rule and reason)."""
        work_unit, header_fault = _header(req.work_unit, "work unit (X-Work-Unit)")
        if header_fault is None and req.approval_id is not None:
            header_fault = _header(req.approval_id, "approval id (X-Approval-Id)")[1]
        try:
            if req.body_too_large:
                raise TooLarge("the request body is over the size limit")
            trace.agent = agent = await tracing.spanned(trace.span, tracing.AUTHENTICATE,
                                                        self.auth.authenticate(req.authorization))
            await self.admit(agent)
            if req.route_error is not None:
                raise req.route_error
            if header_fault is not None:
                raise header_fault
            policy = self.policies.current
            if policy is None:
                raise Unavailable("no valid policy is loaded; every request is refused")
            status, payload = await self._run(op, req, agent, policy, trace)
            return Outcome(status, "allow", payload, {}, work_unit)
        except GatewayError as exc:
            return self._refused(req, trace, exc, work_unit)
        except Exception:  # a bug: refuse, and still leave a record of it
            log.exception("request %s failed", req.request_id)
            trace.reason = "internal error"
            return Outcome(500, "error", error_body("internal", "internal error", req.request_id), {}, work_unit)

    async def _run(self, op: Operation | None, req: ReadRequest, agent: Agent, policy: Policy,
                   trace: Trace) -> Result:
        """The operation, once its permission (if it declares one) is granted. The rows a read's budget set aside
        (trace.reserved) are settled after it: the rows served count, the rest is given back; all of it when the
        read fails (a source error or timeout, a revocation mid-read, a refusal after the budget's check)."""
        if op is None or op.handler is None:
            raise BadRequest(f"unknown operation {req.operation!r}")
        if op.permission is not None:
            obj, act = op.permission
            decision = await tracing.spanned(trace.span, tracing.DECIDE, policy.decide(agent.name, obj, act),
                                             access.said)
            trace.rule = decision.rule
            if not decision.allowed:
                raise Forbidden(f"not allowed: {act} on {obj}", reason=decision.reason)
        try:
            result = await op.handler(self.services, req, agent, policy, trace)
        except BaseException as exc:
            if trace.reserved is not None:
                await self.meter.refund(trace.reserved)
            if isinstance(exc, (SourceError, SourceTimeout)):
                self.metrics.source_failed(source_of(policy, trace), failure_kind(exc))
            raise
        if trace.reserved is not None:
            try:
                await self.meter.settle(trace.reserved, trace.rows or 0)
            except Unavailable:
                trace.rows = None  # the answer is a 503: no row left
                raise
        return result

    def _refused(self, req: ReadRequest, trace: Trace, exc: GatewayError, work_unit: str | None) -> Outcome:
        """A refusal as the agent is told it; one with no token verified is judged by the per-client limit."""
        limited = None
        if trace.agent is None and self.refusals is not None:  # refused before any token verified
            limited = self.refusals.judge(req.client)
            if limited.retry_after:
                exc = too_many(limited, exc)
        trace.reason = exc.reason
        payload = error_body(exc.code, exc.message, req.request_id)
        if isinstance(exc, ApprovalPending):
            payload["error"]["approval_id"] = payload["approval_id"] = exc.approval_id
        headers = dict(exc.headers)
        if exc.status == 401:
            # Completed on the way out with where to sign in and whether a token was sent (transports/wellknown.py):
            # the URL is the request's (its Host, or [server] public_url), which the core is not told.
            headers["WWW-Authenticate"] = 'Bearer realm="agentgate"'
        return Outcome(exc.status, exc.decision, payload, headers, work_unit, limited)


def _answer(outcome: Outcome, body: bytes, streamed: Trace | None, raw: HttpAnswer | None) -> Answer:
    """The answer as it leaves: a stream (its trace's), a source's answer passed through, or JSON."""
    if streamed is not None:
        return Answer(status=outcome.status, body=b"", payload=None, headers=outcome.headers,
                      stream=streamed.stream, media_type=streamed.media_type)
    if raw is not None:
        return Answer(status=outcome.status, body=body, payload=None, headers=outcome.headers,
                      media_type=raw.content_type or "application/octet-stream")
    return Answer(status=outcome.status, body=body, payload=outcome.payload, headers=outcome.headers)


def _traced(req: ReadRequest, trace: Trace, outcome: Outcome) -> None:
    """The answer names the gateway's span (traceparent); an exported span ends with what the request came to."""
    span = trace.span
    assert span is not None
    outcome.headers["traceparent"] = span.traceparent
    if span.otel is not None:
        tracing.finish(span, {
            "agentgate.request_id": req.request_id, "agentgate.operation": req.operation,
            "agentgate.transport": req.transport, "agentgate.dataset": _metric_dataset(trace) or None,
            "agentgate.agent": trace.agent.name if trace.agent is not None else None,
            "agentgate.decision": outcome.decision, "agentgate.status": outcome.status},
            failed=outcome.status >= 500)


def _metric_dataset(trace: Trace) -> str:
    """The `dataset` label of /metrics: a name only once the policy let the agent read it. A name that does not
    exist and one the agent may not read are one label, as they are one answer: /metrics holds no name a client
    made up and tells no one which names exist."""
    named = trace.dataset
    if not named:
        return ""
    if named in trace.cleared:
        return named
    if trace.cleared and all(n in trace.cleared for n in named.split(",")):
        return SEVERAL  # SQL mode over several datasets, each one readable
    return UNKNOWN


def _header(value: str | None, what: str) -> tuple[str | None, BadRequest | None]:
    """A header-borne value as the record keeps it, and the 400 it earns when it is over HEADER_MAX characters
    or carries a control, format or separator character (kept escaped and capped, so the record shows it on
    one line and stays bounded)."""
    if value is None or (len(value) <= HEADER_MAX and (value.isprintable() or terminal(value) == value)):
        return value, None
    kept = cap(terminal(value), HEADER_MAX)
    return kept, BadRequest(f"the {what} must be at most {HEADER_MAX} characters, with no control characters",
                            reason=f"{what} refused: {len(value)} characters")
