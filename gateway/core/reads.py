"""The data operations on datasets: list, describe, query (a table source's rows, masked and scoped) and proxy
(an HTTP source's answer, passed through). Each is authorised per dataset here; the pipeline settles the rows
its budget set aside once it returns (core.pipeline)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from connectors.base import ColumnInfo, MissingTable, SourceTimedOut, SourceUnavailable, TableQuery
from connectors.slices import in_slices
from gateway.auth import Agent
from gateway.common import tracing
from gateway.common.errors import BadRequest, SourceError
from gateway.core import access
from gateway.core.faults import source_errors
from gateway.core.query import QueryBody, parse_body
from gateway.core.services import Services
from gateway.core.types import ReadRequest, Result, Trace
from gateway.policy import Dataset, Policy


async def list_datasets(services: Services, req: ReadRequest, agent: Agent, policy: Policy, trace: Trace) -> Result:
    await services.meter.charge(agent.name, policy.budgets.for_agent(agent.name))
    out = []
    for ds in policy.catalog:
        decided = await tracing.spanned(trace.span, tracing.DECIDE, policy.may_read(agent.name, ds), access.said)
        if decided.allowed and access.rows_for(policy, agent, ds):
            out.append(await _described(services, ds))
    trace.rows = len(out)
    return 200, {"datasets": out}


async def describe(services: Services, req: ReadRequest, agent: Agent, policy: Policy, trace: Trace) -> Result:
    ds, _ = await _cleared(services, req, agent, policy, trace)
    return 200, await _described(services, ds)


async def query(services: Services, req: ReadRequest, agent: Agent, policy: Policy, trace: Trace) -> Result:
    ds, body = await _cleared(services, req, agent, policy, trace)
    if ds.approval == "required":
        trace.approved_by = await access.approved(services, req, agent, ds)
    return 200, await _rows(services, req, agent, policy, ds, trace, body)


async def proxy(services: Services, req: ReadRequest, agent: Agent, policy: Policy, trace: Trace) -> Result:
    """GET through an HTTP dataset. The source's answer passes through, except that the source refusing the
    gateway's own credentials (401, 407) and any 5xx are the source failing: 502."""
    ds, _ = await _cleared(services, req, agent, policy, trace)
    if ds.approval == "required":
        trace.approved_by = await access.approved(services, req, agent, ds)
    source, prefix = services.http_sources.get(ds.source), ds.path
    if source is None or prefix is None:
        raise BadRequest(f"{ds.name!r} is not an HTTP dataset; read it through its query endpoint")
    with source_errors():  # the source is sent the trace on, the gateway's span as its parent
        got = await tracing.passed_on(trace.span, tracing.SOURCE_READ, lambda parent: services.revocations.guarded(
            agent, source.get(prefix, req.params.get("path", ""), req.params.get("query", ""),
                              accept=req.params.get("accept"), traceparent=parent)))
    trace.source_ms = got.source_ms
    if got.status in (401, 407) or got.status >= 500:
        raise SourceError("the source failed", reason=f"source {ds.source!r} answered {got.status}")
    trace.raw = got
    return 200, {}


async def _cleared(services: Services, req: ReadRequest, agent: Agent, policy: Policy,
                   trace: Trace) -> tuple[Dataset, QueryBody | None]:
    """The dataset a read names, if the policy lets the agent read it, and a query's parsed body. A read sets
    aside the rows it may serve (its limit, capped by max_rows) before it runs."""
    ds = await access.readable(policy, agent, req.dataset, trace, approval_handled=True)
    body = _parsed(req.body) if req.operation == "query" else None
    trace.reserved = await services.meter.charge(agent.name, policy.budgets.for_agent(agent.name),
                                                 min(body.limit, ds.max_rows) if body else 0)
    return ds, body


def _parsed(raw: bytes | None) -> QueryBody | None:
    """A query's body, or None when it is malformed (nothing is set aside: the read answers 400)."""
    try:
        return parse_body(raw)
    except BadRequest:
        return None


async def _columns(services: Services, ds: Dataset) -> list[ColumnInfo]:
    source = services.sources.get(ds.source)
    if source is None or ds.table is None:
        return []
    try:
        return await source.columns(ds.table)
    except (SourceUnavailable, SourceTimedOut, MissingTable):
        # The catalog still tells what it knows: its classed columns.
        return [ColumnInfo(name, "", True, False) for name in ds.column_classes]


async def _described(services: Services, ds: Dataset) -> dict[str, Any]:
    columns = [{"name": c.name, "class": ds.column_classes.get(c.name), "type": c.type or None}
               for c in await _columns(services, ds)]
    return {"name": ds.name, "description": ds.description, "owner": ds.owner, "columns": columns,
            "max_rows": ds.max_rows, "approval": ds.approval}


async def _rows(services: Services, req: ReadRequest, agent: Agent, policy: Policy, ds: Dataset,
                trace: Trace, parsed: QueryBody | None = None) -> dict[str, Any]:
    source = services.sources.get(ds.source)
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
        access.usable(ds, known, hidden, term.column, "filter on")
    for key in body.order_by:
        access.usable(ds, known, hidden, key.column, "order by")
    masked = [c for c in requested if c in hidden]
    fetched = [c for c in requested if c not in hidden]
    scope, trace.row_filter = access.scope(policy, agent, ds)
    fingerprint = body.fingerprint(ds.name)
    after = services.cursors.decode(fingerprint, body.cursor) if body.cursor else None
    asked = TableQuery(table=ds.table, columns=fetched, where=body.where, order_by=body.order_by,
                       limit=min(body.limit, ds.max_rows), after=after,
                       scope=scope)
    with source_errors():
        page = await tracing.spanned(trace.span, tracing.SOURCE_READ,
                                     services.revocations.guarded(agent, source.fetch(asked)))
    trace.source_ms = page.source_ms
    if masked:
        rows = await in_slices(page.rows, len(requested), lambda part: _masked(part, requested, hidden))
    else:
        rows = page.rows
    trace.rows, trace.columns, trace.masked = len(rows), fetched, masked
    cursor = services.cursors.encode(fingerprint, page.after) if page.after is not None else None
    return {"dataset": ds.name, "columns": requested, "rows": rows, "masked": masked, "next_cursor": cursor}


def _masked(rows: Sequence[Mapping[str, Any]], requested: Sequence[str], hidden: set[str]) -> list[dict[str, Any]]:
    return [{c: (None if c in hidden else row[c]) for c in requested} for row in rows]
