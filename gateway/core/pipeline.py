"""The Gateway: the one read path every way in goes through.

    request -> authenticate -> decide (policy, masking) -> read from the source
            -> render -> audit record (durable) -> answer

Exactly one place decides and exactly one place writes the audit record
(``Gateway.handle``). Transports build a ``ReadRequest`` and send back the
``Answer`` bytes unchanged, so ``response_sha256`` covers what left.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from connectors.base import (
    ColumnInfo,
    Filter,
    HttpAnswer,
    HttpSource,
    InvalidQuery,
    MissingTable,
    SourceRefused,
    SourceTimedOut,
    SourceUnavailable,
    TableQuery,
    TableSource,
)
from connectors.slices import CELLS_ON_LOOP, in_slices
from gateway.audit.chainwatch import ChainWatch
from gateway.audit.trail import AuditRecord, AuditTrail, bounded_query, now
from gateway.auth.tokens import Agent, Authenticator
from gateway.common import inputs
from gateway.common.errors import (
    NOT_ALLOWED,
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
from gateway.core import admin
from gateway.core.query import CursorCodec, QueryBody, parse_body
from gateway.policy import rowfilters
from gateway.policy.catalog import Dataset
from gateway.policy.loader import Policy, PolicyHolder
from gateway.services import approvals
from gateway.services.meter import Meter, Reservation
from gateway.services.ratelimit import RefusalLimiter, Verdict, too_many
from gateway.services.revocations import Registry
from gateway.sqlmode import statement as sqlmode

log = logging.getLogger("agentgate.core")

# One answer for "denied" and "no such dataset", so dataset names do not leak.
FORBIDDEN = NOT_ALLOWED
# A token id (jti) longer than this is recorded capped (real ones are UUIDs or shorter): no record grows with a
# token's size.
TOKEN_ID_MAX = 256
# X-Work-Unit and X-Approval-Id (MCP: work_unit, approval_id): at most this many characters, none a control,
# format or separator character (textsafe.terminal's); else 400, recorded with the value escaped and capped.
HEADER_MAX = 128
# What an agent is told when the source refuses its SQL (the source's own text goes to the record and the log).
SOURCE_REFUSED = "the source refused the statement"
# Headers of an HTTP source's answer passed through to the agent (besides its content type).
PASSED_HEADERS = frozenset({"etag", "last-modified", "content-language", "content-disposition", "retry-after"})
# The audit record's `action` for each operation.
ACTIONS = {"list": "list", "describe": "describe", "query": "read", "proxy": "read", "sql": "read", "revoke": "revoke",
           "restore": "restore",
           "list_revocations": "list_revocations", "read_audit": "read_audit", "audit_record": "read_audit",
           "audit_verify": "verify_audit", "audit_activity": "read_audit", "audit_export": "export_audit",
           "list_approvals": "list_approvals", "approve": "approve", "deny_approval": "deny"}


@dataclass(frozen=True)
class ReadRequest:
    request_id: str
    operation: str  # "list", "describe", "query", "proxy", or "unknown" for a path no route serves
    authorization: str | None
    dataset: str | None = None
    body: bytes | None = None
    body_too_large: bool = False
    work_unit: str | None = None
    approval_id: str | None = None
    transport: str = "http"
    route_error: GatewayError | None = None
    params: Mapping[str, str] = field(default_factory=dict)  # path and query parameters of admin calls
    # Who called (gateway/transports/caller.py): the address (a trusted proxy's X-Forwarded-For), user agent, trace id.
    client: str | None = None
    user_agent: str | None = None
    trace_id: str | None = None
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


class Gateway:
    def __init__(self, *, authenticator: Authenticator, policies: PolicyHolder, audit: AuditTrail,
                 sources: Mapping[str, TableSource], http_sources: Mapping[str, HttpSource] | None = None,
                 cursors: CursorCodec, metrics: Metrics,
                 revocations: Registry, store: AsyncEngine, checkpoint_key: str | None = None,
                 approval_ttl: int = 3600, chain: ChainWatch | None = None,
                 approval_max_pending: int | None = 20, refusals: RefusalLimiter | None = None):
        self.auth = authenticator
        # Requests refused before any token verified: limited per client, folded into summaries (ratelimit.py).
        self.refusals = refusals
        self.approval_ttl = approval_ttl
        self.approval_max_pending = approval_max_pending  # pending approvals an agent may have open at once
        self.meter = Meter(store, refused=metrics.budget_refused)
        self.checkpoint_key = checkpoint_key
        self.revocations = revocations
        self.store = store
        self.policies = policies
        self.audit = audit
        self.sources = sources
        self.http_sources = http_sources or {}
        self.cursors = cursors
        self.metrics = metrics
        # The audit chain's checks and their last verdict (no background schedule unless the app starts one).
        self.chain = chain or ChainWatch(store, checkpoint_key)

    def admit(self, agent: Agent) -> None:
        """After the token verified: refuse a subject that names a role (401; roles are not agents, see
        policy.role_names) and a revoked agent or token (403). Every way in calls this, through handle."""
        policy = self.policies.current
        if policy is not None and agent.name in policy.roles:
            raise Unauthenticated("the token's subject names a role, not an agent",
                                  reason=f"token subject {agent.name[:100]!r} is a role in the policy")
        self.revocations.check(agent)

    async def handle(self, req: ReadRequest) -> Answer:
        started = time.perf_counter()
        trace = Trace(dataset=req.dataset, query=req.recorded_query)
        work_unit, header_fault = _header(req.work_unit, "work unit (X-Work-Unit)")
        if header_fault is None and req.approval_id is not None:
            header_fault = _header(req.approval_id, "approval id (X-Approval-Id)")[1]
        headers: dict[str, str] = {}
        limited: Verdict | None = None  # a refusal with no token verified, as the per-client limit judged it
        try:
            if req.body_too_large:
                raise TooLarge("the request body is over the size limit")
            trace.agent = agent = await self.auth.authenticate(req.authorization)
            await self.revocations.wait_current()  # at once, unless the view's last proof is too old
            self.admit(agent)
            if req.route_error is not None:
                raise req.route_error
            if header_fault is not None:
                raise header_fault
            policy = self.policies.current
            if policy is None:
                raise Unavailable("no valid policy is loaded; every request is refused")
            handler = admin.OPERATIONS.get(req.operation)
            if handler is not None:
                status, payload = await handler(self, req, agent, policy, trace)
            else:
                status, payload = 200, await self._serve(req, agent, policy, trace)
            decision = "allow"
        except GatewayError as exc:
            if trace.agent is None and self.refusals is not None:  # refused before any token verified
                limited = self.refusals.judge(req.client)
                if limited.retry_after:
                    exc = too_many(limited, exc)
            status, decision = exc.status, exc.decision
            trace.reason = exc.reason
            payload = error_body(exc.code, exc.message, req.request_id)
            if isinstance(exc, ApprovalPending):
                payload["error"]["approval_id"] = payload["approval_id"] = exc.approval_id
            headers.update(exc.headers)
            if exc.status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="agentgate"'
        except Exception:  # a bug: refuse, and still leave a record of it
            log.exception("request %s failed", req.request_id)
            status, decision = 500, "error"
            trace.reason = "internal error"
            payload = error_body("internal", "internal error", req.request_id)
        raw = trace.raw if decision == "allow" else None
        if raw is not None:  # the source's own answer, passed through byte for byte
            status, body = raw.status, raw.body
            headers.update({k: v for k, v in raw.headers.items() if k.lower() in PASSED_HEADERS})
        else:
            body = await _render_answer(payload) if payload is not None else b""
        if limited is not None and not limited.record and self.refusals is not None:
            # Over the limits: counted into its client's summary record instead of a record of its own.
            self.refusals.fold(limited, status, req.client, lambda: _sample(req, trace))
            self.metrics.answered(req.operation, decision, _metric_dataset(trace), time.perf_counter() - started)
            if limited.retry_after:
                await self.refusals.hold()  # a client over its limit is answered at a pace (ratelimit.py)
            return Answer(status=status, body=body, payload=payload, headers=headers)
        streamed = trace.stream is not None and status == 200
        who = trace.agent
        query, query_bytes, query_sha256 = _recorded_query(req, trace)
        digest = None if streamed else await _sha256(body)
        record = AuditRecord(
            time=now(), request_id=req.request_id, action=ACTIONS.get(req.operation, req.operation),
            decision=decision, status=status, agent=who.name if who else None,
            on_behalf_of=who.on_behalf_of if who else None, work_unit=work_unit,
            dataset=trace.dataset, query=query, reason=trace.reason, rows=trace.rows,
            bytes=None if streamed else len(body), duration_ms=round((time.perf_counter() - started) * 1000, 3),
            source_ms=round(trace.source_ms, 3) if trace.source_ms is not None else None,
            response_sha256=digest, rule=trace.rule,
            approved_by=trace.approved_by,
            columns=orjson.dumps(trace.columns).decode() if trace.columns is not None else None,
            masked=orjson.dumps(trace.masked).decode() if trace.masked is not None else None, transport=req.transport,
            row_filter=trace.row_filter, token_id=cap(who.jti, TOKEN_ID_MAX) if who else None, client=req.client,
            user_agent=req.user_agent, trace_id=req.trace_id, query_bytes=query_bytes, query_sha256=query_sha256)
        recording = time.perf_counter()
        try:
            await self.audit.record(record)
        except Unavailable as exc:
            self.metrics.audit_failures.inc()
            status, decision = 503, "error"
            payload = error_body(exc.code, exc.message, req.request_id)
            body, headers = _render(payload), {}
            streamed, raw = False, None
        done = time.perf_counter()
        self.metrics.answered(req.operation, decision, _metric_dataset(trace), done - started, done - recording)
        if streamed:
            return Answer(status=status, body=b"", payload=None, headers=headers, stream=trace.stream,
                          media_type=trace.media_type)
        if raw is not None:
            return Answer(status=status, body=body, payload=None, headers=headers,
                          media_type=raw.content_type or "application/octet-stream")
        return Answer(status=status, body=body, payload=payload, headers=headers)

    async def _serve(self, req: ReadRequest, agent: Agent, policy: Policy, trace: Trace) -> dict[str, Any]:
        """A data request. The rows its budget set aside for the read (trace.reserved) are settled after it: the
        rows served count, the rest is given back; all of it when the read fails (a source error or timeout, a
        revocation mid-read, a refusal after the budget's check)."""
        try:
            served = await self._dispatch(req, agent, policy, trace)
        except BaseException as exc:
            if trace.reserved is not None:
                await self.meter.refund(trace.reserved)
            if isinstance(exc, (SourceError, SourceTimeout)):
                self.metrics.source_failed(_source_of(policy, trace), _failure_kind(exc))
            raise
        if trace.reserved is not None:
            try:
                await self.meter.settle(trace.reserved, trace.rows or 0)
            except Unavailable:
                trace.rows = None  # the answer is a 503: no row left
                raise
        return served

    async def _dispatch(self, req: ReadRequest, agent: Agent, policy: Policy, trace: Trace) -> dict[str, Any]:
        limits = policy.budgets.for_agent(agent.name)
        if req.operation == "list":
            await self.meter.charge(agent.name, limits)
            out = []
            for ds in policy.catalog:
                if (await policy.may_read(agent.name, ds)).allowed and self._rows_for(policy, agent, ds):
                    out.append(await self._describe(ds))
            trace.rows = len(out)
            return {"datasets": out}
        if req.operation == "sql":
            return await self._sql(req, agent, policy, trace)
        ds = await self._readable(policy, agent, req.dataset, trace, approval_handled=True)
        body = _parsed(req.body) if req.operation == "query" else None
        # A read sets aside the rows it may serve (its limit, capped by max_rows) before it runs.
        trace.reserved = await self.meter.charge(agent.name, limits, min(body.limit, ds.max_rows) if body else 0)
        if req.operation == "describe":
            return await self._describe(ds)
        if req.operation == "query":
            if ds.approval == "required":
                trace.approved_by = await self._approved(req, agent, ds)
            return await self._query(req, agent, policy, ds, trace, body)
        if req.operation == "proxy":
            if ds.approval == "required":
                trace.approved_by = await self._approved(req, agent, ds)
            await self._proxy(req, agent, ds, trace)
            return {}
        raise BadRequest(f"unknown operation {req.operation!r}")

    async def _readable(self, policy: Policy, agent: Agent, name: str | None, trace: Trace, *,
                        approval_handled: bool = False) -> Dataset:
        """The dataset, if the policy lets this agent read it. A caller that does not handle human approval
        (approval_handled False, e.g. SQL mode) gets datasets that need one refused: fail closed."""
        ds = policy.catalog.get(name) if name else None
        if ds is None:
            raise Forbidden(FORBIDDEN, reason="no such dataset")
        decision = await policy.may_read(agent.name, ds)
        trace.rule = decision.rule
        if not decision.allowed:
            raise Forbidden(FORBIDDEN, reason=decision.reason)
        if not self._rows_for(policy, agent, ds):
            # Answered as an unknown dataset: it is not listed to this agent either.
            raise Forbidden(FORBIDDEN, reason=f"no row filter of {ds.name!r} for the agent's roles")
        if ds.approval == "required" and not approval_handled:
            raise Forbidden(f"{ds.name!r} needs a person's approval; read it through its query endpoint",
                            reason="approval required")
        trace.cleared += (ds.name,)
        return ds

    async def _approved(self, req: ReadRequest, agent: Agent, ds: Dataset) -> str:
        """A read of a dataset that needs a person's approval: who approved it, or 202 / 403. An approval covers
        the request as submitted: its agent (and on_behalf_of), its dataset and its body (approvals.binding)."""
        if req.operation == "query":
            parse_body(req.body)  # a malformed body is a 400 now, not an approval for a request that cannot run
        submitted = _query_text(req)
        if req.approval_id is None:
            aid, reused = await approvals.open_request(self.store, agent.name, ds.name, ds.owner, submitted,
                                                       req.request_id, on_behalf_of=agent.on_behalf_of,
                                                       max_pending=self.approval_max_pending)
            raise ApprovalPending(f"reading {ds.name!r} needs a person's approval (owner: {ds.owner}); ask again "
                                  "with header X-Approval-Id once it is approved", aid,
                                  reason=f"approval {aid} {'already open' if reused else 'opened'}, pending")
        # An id no approval can have (they are 32 hex digits) is not looked up: the store may not take it (NUL).
        found = (await approvals.get(self.store, req.approval_id)
                 if len(req.approval_id) <= 64 and inputs.holdable(req.approval_id) else None)
        if (found is None or found.agent != agent.name or found.dataset != ds.name
                or found.on_behalf_of != agent.on_behalf_of):
            raise Forbidden("this approval id does not serve this request: an approval covers one agent, one "
                            "dataset and one body", reason=f"approval {req.approval_id[:64]!r} unknown or for "
                                                           "another agent, person or dataset")
        if not found.covers(approvals.digest(approvals.binding(submitted))):
            raise Forbidden("this approval id does not serve this request: an approval covers one agent, one "
                            "dataset and one body", reason=f"approval {found.id} was asked for another body")
        if found.status == "pending":
            raise ApprovalPending(f"approval {found.id} is still pending", found.id,
                                  reason=f"approval {found.id} still pending")
        if found.status != "approved":
            raise Forbidden(f"approval {found.id} was denied",
                            reason=f"approval {found.id} denied by {found.decided_by}")
        if found.expired():
            raise Forbidden(f"approval {found.id} has expired; read without X-Approval-Id to ask again",
                            reason=f"approval {found.id} expired")
        return found.decided_by or "unknown"

    async def _columns(self, ds: Dataset) -> list[ColumnInfo]:
        source = self.sources.get(ds.source)
        if source is None or ds.table is None:
            return []
        try:
            return await source.columns(ds.table)
        except (SourceUnavailable, SourceTimedOut, MissingTable):
            # The catalog still tells what it knows: its classed columns.
            return [ColumnInfo(name, "", True, False) for name in ds.column_classes]

    async def _describe(self, ds: Dataset) -> dict[str, Any]:
        columns = [{"name": c.name, "class": ds.column_classes.get(c.name), "type": c.type or None}
                   for c in await self._columns(ds)]
        return {"name": ds.name, "description": ds.description, "owner": ds.owner, "columns": columns,
                "max_rows": ds.max_rows, "approval": ds.approval}

    async def _query(self, req: ReadRequest, agent: Agent, policy: Policy, ds: Dataset,
                     trace: Trace, parsed: QueryBody | None = None) -> dict[str, Any]:
        source = self.sources.get(ds.source)
        if source is None or ds.table is None:
            raise BadRequest(f"{ds.name!r} is not a SQL dataset; read it through its proxy path")
        body = parsed if parsed is not None else parse_body(req.body)
        with source_errors():
            info = await source.columns(ds.table)
        known = [c.name for c in info]
        requested = list(body.columns) if body.columns is not None else known
        for name in requested:
            if name not in known:
                raise BadRequest(f"unknown column {name!r} in {ds.name!r}")
        visible = await policy.visible_classes(agent.name, ds)
        hidden = {c for c, cls in ds.column_classes.items() if cls not in visible}
        for term in body.where:
            self._usable(ds, known, hidden, term.column, "filter on")
        for key in body.order_by:
            self._usable(ds, known, hidden, key.column, "order by")
        masked = [c for c in requested if c in hidden]
        fetched = [c for c in requested if c not in hidden]
        scope, trace.row_filter = self._scope(policy, agent, ds)
        fingerprint = body.fingerprint(ds.name)
        after = self.cursors.decode(fingerprint, body.cursor) if body.cursor else None
        query = TableQuery(table=ds.table, columns=fetched, where=body.where, order_by=body.order_by,
                           limit=min(body.limit, ds.max_rows), after=after,
                           scope=scope)
        with source_errors():
            page = await self.revocations.guarded(agent, source.fetch(query))
        trace.source_ms = page.source_ms
        if masked:
            rows = await in_slices(page.rows, len(requested), lambda part: _masked(part, requested, hidden))
        else:
            rows = page.rows
        trace.rows, trace.columns, trace.masked = len(rows), fetched, masked
        cursor = self.cursors.encode(fingerprint, page.after) if page.after is not None else None
        return {"dataset": ds.name, "columns": requested, "rows": rows, "masked": masked, "next_cursor": cursor}

    async def _sql(self, req: ReadRequest, agent: Agent, policy: Policy, trace: Trace) -> dict[str, Any]:
        """SQL mode: one SELECT over datasets standing as tables (see gateway/sqlmode/statement.py). Every dataset it
        touches is authorised as a read is (datasets needing approval refused), masked columns are NULL in the
        subquery that replaces each dataset, and only the regenerated SQL reaches the source."""
        sql = sqlmode.parse_body(req.body)
        trace.query = sql
        dialects = {sqlmode.DIALECTS.get(s.dialect, s.dialect) for s in self.sources.values()}
        if len(dialects) == 1:
            dialect = next(iter(dialects))
        else:  # sources of several dialects: the datasets named pick the source, then its dialect parses
            first = await sqlmode.off_loop(sql, sqlmode.parse, sql, "")
            names = {sqlmode.reference_name(t) for t in sqlmode.dataset_references(first)}
            picked = {ds.source for n in names if n and (ds := policy.catalog.get(n)) is not None}
            source_name = next(iter(picked)) if len(picked) == 1 else None
            found = self.sources.get(source_name) if source_name else None
            dialect = sqlmode.DIALECTS.get(found.dialect, found.dialect) if found else ""
        tree = await sqlmode.off_loop(sql, sqlmode.parse, sql, dialect)
        refs = sqlmode.dataset_references(tree)
        touched = sorted({sqlmode.reference_name(t) or "" for t in refs})
        trace.dataset = ",".join(n for n in touched if n) or None
        datasets: dict[str, Dataset] = {}
        for ref in refs:
            name = sqlmode.reference_name(ref)
            if name is None:  # schema-qualified: a raw table or a system catalog
                raise Forbidden(FORBIDDEN, reason=f"SQL names {ref.sql()[:100]!r}, which is no dataset")
            if name not in datasets:
                datasets[name] = await self._readable(policy, agent, name, trace)
        if not datasets:
            raise BadRequest("the SQL reads no dataset")
        kinds = {ds.source for ds in datasets.values()}
        source = self.sources.get(next(iter(kinds)))
        if len(kinds) != 1 or source is None or any(ds.table is None for ds in datasets.values()):
            raise BadRequest("SQL mode reads datasets of one SQL source at a time")
        # The rows set aside: at most the smallest max_rows of the datasets read, or the statement's LIMIT.
        trace.reserved = await self.meter.charge(agent.name, policy.budgets.for_agent(agent.name), sqlmode.row_cap(
            tree, min(ds.max_rows for ds in datasets.values())))
        plan: dict[str, sqlmode.Source] = {}
        filtered: list[str] = []
        for ds in datasets.values():
            assert ds.table is not None
            with source_errors():
                info = await source.columns(ds.table)
            visible = await policy.visible_classes(agent.name, ds)
            hidden = frozenset(c for c, cls in ds.column_classes.items() if cls not in visible)
            scope, said = self._scope(policy, agent, ds)
            if said is not None:
                filtered.append(f"{ds.name}: {said}")
            plan[ds.name] = sqlmode.Source(ds.name, ds.table, [c.name for c in info], hidden, ds.max_rows, scope)
        trace.row_filter = "; ".join(sorted(filtered)) or None
        done = await sqlmode.off_loop(sql, sqlmode.rewrite, tree, refs, plan, dialect)
        hidden_names, aliased = done.hidden, done.aliased
        with source_errors():
            page = await self.revocations.guarded(agent, source.run_select(done.sql, done.limit, done.binds))
        trace.source_ms = page.source_ms
        columns = list(page.columns)
        masked = [c for c in columns if c in hidden_names or c in aliased]
        trace.rows, trace.columns, trace.masked = len(page.rows), [c for c in columns if c not in masked], masked
        return {"dataset": trace.dataset, "columns": columns, "rows": page.rows, "masked": masked,
                "next_cursor": None}

    async def _proxy(self, req: ReadRequest, agent: Agent, ds: Dataset, trace: Trace) -> None:
        """GET through an HTTP dataset. The source's answer passes through, except that the source refusing the
        gateway's own credentials (401, 407) and any 5xx are the source failing: 502."""
        source = self.http_sources.get(ds.source)
        if source is None or ds.path is None:
            raise BadRequest(f"{ds.name!r} is not an HTTP dataset; read it through its query endpoint")
        with source_errors():
            got = await self.revocations.guarded(agent, source.get(
                ds.path, req.params.get("path", ""), req.params.get("query", ""), accept=req.params.get("accept")))
        trace.source_ms = got.source_ms
        if got.status in (401, 407) or got.status >= 500:
            raise SourceError("the source failed", reason=f"source {ds.source!r} answered {got.status}")
        trace.raw = got

    @staticmethod
    def _rows_for(policy: Policy, agent: Agent, ds: Dataset) -> bool:
        """Whether some rows of `ds` are the agent's to see: no row filters, or one keyed by it or its roles."""
        return not ds.row_filters or rowfilters.applies(ds.row_filters, agent.name, policy.roles_of(agent.name))

    @staticmethod
    def _scope(policy: Policy, agent: Agent, ds: Dataset) -> tuple[Sequence[Sequence[Filter]] | None, str | None]:
        """The rows of `ds` this agent may see, as the connector takes them (None: every row), and as the audit
        record says it; Forbidden when no row filter applies to the agent or one lacks a claim."""
        scope = rowfilters.scope_for(ds.name, ds.row_filters, agent.name, agent.claims, policy.roles_of(agent.name))
        if scope is None:
            return None, None
        return (None if scope.unrestricted else scope.alternatives), scope.text

    @staticmethod
    def _usable(ds: Dataset, known: list[str], hidden: set[str], column: str, verb: str) -> None:
        if column not in known:
            raise BadRequest(f"unknown column {column!r} in {ds.name!r}")
        if column in hidden:
            # Filtering or ordering on a masked column would let its values be guessed.
            raise Forbidden(f"cannot {verb} {column!r}: this agent sees it masked",
                            reason=f"{verb} masked column {column!r}")


@contextlib.contextmanager
def source_errors() -> Iterator[None]:
    """What connectors raise, mapped once into the answers agents get."""
    try:
        yield
    except InvalidQuery as exc:
        raise BadRequest(str(exc)) from exc
    except SourceRefused as exc:
        # One message whatever the source said: its text may quote a row's value or name its tables.
        log.info("the source refused a statement: %s", exc)
        raise BadRequest(SOURCE_REFUSED, reason=str(exc)) from exc
    except MissingTable as exc:
        raise SourceError("the source no longer has this dataset's table", reason=str(exc)) from exc
    except SourceTimedOut as exc:
        raise SourceTimeout("the source did not answer in time", reason=str(exc)) from exc
    except SourceUnavailable as exc:
        raise SourceError("the source failed", reason=str(exc)) from exc


def _parsed(raw: bytes | None) -> QueryBody | None:
    """A query's body, or None when it is malformed (nothing is set aside: the read answers 400)."""
    try:
        return parse_body(raw)
    except BadRequest:
        return None


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


def _source_of(policy: Policy, trace: Trace) -> str | None:
    """The source a failed read went to: its dataset's (SQL mode reads one source at a time)."""
    ds = policy.catalog.get(trace.dataset.split(",")[0]) if trace.dataset else None
    return ds.source if ds is not None else None


def _failure_kind(exc: GatewayError) -> str:
    if isinstance(exc, SourceTimeout):
        return "timeout"
    return "missing_table" if isinstance(exc.__cause__, MissingTable) else "unavailable"


# Large answers are made a slice of rows at a time, the event loop free to serve other requests between slices
# (connectors/sql.py in_slices): for 100,000 rows of 8 columns, masking takes 0.3 s and one orjson call 75 ms.
# A body over _BYTES_ON_LOOP is hashed in a worker thread (hashlib lets go of the GIL: 26 ms for 16 MB).
_BYTES_ON_LOOP = 1024 * 1024


def _masked(rows: Sequence[Mapping[str, Any]], requested: Sequence[str], hidden: set[str]) -> list[dict[str, Any]]:
    return [{c: (None if c in hidden else row[c]) for c in requested} for row in rows]


async def _render_answer(payload: Mapping[str, Any]) -> bytes:
    """The bytes of _render(payload), a large answer's rows rendered a slice at a time. `"rows":[]` cannot occur
    inside a rendered string (every quote in one is escaped), so its first occurrence is the key's."""
    rows = payload.get("rows")
    columns = len(payload.get("columns") or (0,))
    if not isinstance(rows, list) or len(rows) * columns <= CELLS_ON_LOOP:
        return _render(payload)
    head, key, tail = _render({**payload, "rows": []}).partition(b'"rows":[]')
    if not key:
        return _render(payload)
    parts = await in_slices(rows, columns, lambda part: [b",", _render({"r": part})[len(b'{"r":['):-len(b"]}")]])
    parts[0] = head + b'"rows":['  # in place of the first separator: the body is copied once, by the join
    return b"".join([*parts, b"]", tail])


async def _sha256(body: bytes) -> str:
    if len(body) > _BYTES_ON_LOOP:  # hashlib lets go of the GIL over large inputs: the loop runs meanwhile
        return await asyncio.to_thread(lambda: hashlib.sha256(body).hexdigest())
    return hashlib.sha256(body).hexdigest()


def _render(payload: Mapping[str, Any]) -> bytes:
    try:
        # A tenth of json's cost; the same bytes but for floats in exponent form ("1e-5" for "1e-05").
        # OPT_NON_STR_KEYS: keys that are str subclasses (SQLAlchemy's quoted_name) are written as strings.
        return orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # what orjson refuses (a lone surrogate, an int over 64 bits): json's answer, as before
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _sample(req: ReadRequest, trace: Trace) -> dict[str, Any]:
    """What a summary of refusals shows of the first request it counts (ratelimit.py caps each text)."""
    return {"client": req.client, "action": ACTIONS.get(req.operation, req.operation), "dataset": req.dataset,
            "query": _query_text(req), "reason": trace.reason, "user_agent": req.user_agent,
            "transport": req.transport}


def _query_text(req: ReadRequest) -> str | None:
    if req.operation == "proxy":  # what was asked of an HTTP dataset: its path and query string
        path, query = req.params.get("path", ""), req.params.get("query", "")
        return "/" + path + (f"?{query}" if query else "")
    if req.body is None or req.body_too_large:
        return None
    return req.body.decode("utf-8", errors="replace")


def _recorded_query(req: ReadRequest, trace: Trace) -> tuple[str | None, int | None, str | None]:
    """The record's query, query_bytes and query_sha256 (audit.bounded_query): what was acted on when the
    operation named it, else the request's body (measured as it came) or proxied path."""
    if trace.query:
        return bounded_query(trace.query)
    text = _query_text(req)
    return bounded_query(text, req.body if text is not None and req.operation != "proxy" else None)


def _header(value: str | None, what: str) -> tuple[str | None, BadRequest | None]:
    """A header-borne value as the record keeps it, and the 400 it earns when it is over HEADER_MAX characters
    or carries a control, format or separator character (kept escaped and capped, so the record shows it on
    one line and stays bounded)."""
    if value is None or (len(value) <= HEADER_MAX and (value.isprintable() or terminal(value) == value)):
        return value, None
    kept = cap(terminal(value), HEADER_MAX)
    return kept, BadRequest(f"the {what} must be at most {HEADER_MAX} characters, with no control characters",
                            reason=f"{what} refused: {len(value)} characters")
