"""SQL mode's read: one SELECT over datasets standing as tables (see gateway/sqlmode/).

Every dataset it touches is authorised as a read is (datasets needing approval refused), masked columns are
NULL in the subquery that replaces each dataset, and only the regenerated SQL reaches the source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from connectors.base import TableSource
from gateway import sqlmode
from gateway.audit import FIELD_MAX
from gateway.auth import Agent
from gateway.common import tracing
from gateway.common.errors import BadRequest, Forbidden
from gateway.core import access
from gateway.core.faults import source_errors
from gateway.core.services import Services
from gateway.core.types import ReadRequest, Result, Trace
from gateway.policy import Dataset, Policy

if TYPE_CHECKING:
    from sqlglot import exp


async def sql(services: Services, req: ReadRequest, agent: Agent, policy: Policy, trace: Trace) -> Result:
    text = sqlmode.parse_body(req.body)
    trace.query = text
    dialect = await _dialect(services, policy, text)
    tree = await sqlmode.off_loop(text, sqlmode.parse, text, dialect)
    refs = sqlmode.dataset_references(tree)
    touched = sorted({sqlmode.reference_name(t) or "" for t in refs})
    trace.dataset = ",".join(n for n in touched if n) or None
    datasets = await _cleared(policy, agent, refs, trace)
    kinds = {ds.source for ds in datasets.values()}
    source = services.sources.get(next(iter(kinds)))
    if len(kinds) != 1 or source is None or any(ds.table is None for ds in datasets.values()):
        raise BadRequest("SQL mode reads datasets of one SQL source at a time")
    # The rows set aside: at most the smallest max_rows of the datasets read, or the statement's LIMIT.
    trace.reserved = await services.meter.charge(agent.name, policy.budgets.for_agent(agent.name), sqlmode.row_cap(
        tree, min(ds.max_rows for ds in datasets.values())))
    plan = await _plan(source, policy, agent, datasets, trace)
    done = await sqlmode.off_loop(text, sqlmode.rewrite, tree, refs, plan, dialect)
    hidden_names, aliased = done.hidden, done.aliased
    with source_errors():
        page = await tracing.spanned(trace.span, tracing.SOURCE_READ, services.revocations.guarded(
            agent, source.run_select(done.sql, done.limit, done.binds)))
    trace.source_ms = page.source_ms
    columns = list(page.columns)
    masked = [c for c in columns if c in hidden_names or c in aliased]
    trace.rows, trace.columns, trace.masked = len(page.rows), [c for c in columns if c not in masked], masked
    return 200, {"dataset": trace.dataset, "columns": columns, "rows": page.rows, "masked": masked,
                 "next_cursor": None}


async def _dialect(services: Services, policy: Policy, text: str) -> str:
    """The dialect the statement is parsed in: its source's."""
    dialects = {sqlmode.DIALECTS.get(s.dialect, s.dialect) for s in services.sources.values()}
    if len(dialects) == 1:
        return next(iter(dialects))
    # Sources of several dialects: the datasets named pick the source, then its dialect parses.
    first = await sqlmode.off_loop(text, sqlmode.parse, text, "")
    names = {sqlmode.reference_name(t) for t in sqlmode.dataset_references(first)}
    picked = {ds.source for n in names if n and (ds := policy.catalog.get(n)) is not None}
    source_name = next(iter(picked)) if len(picked) == 1 else None
    found = services.sources.get(source_name) if source_name else None
    return sqlmode.DIALECTS.get(found.dialect, found.dialect) if found else ""


async def _cleared(policy: Policy, agent: Agent, refs: list[exp.Table], trace: Trace) -> dict[str, Dataset]:
    """Every dataset the statement names, each one the agent may read; a schema-qualified name (a raw table, a
    system catalog) is no dataset."""
    datasets: dict[str, Dataset] = {}
    used: list[str] = []  # the rule that decided each dataset, for the record: all of them, not the last one
    try:
        for ref in refs:
            name = sqlmode.reference_name(ref)
            if name is None:  # schema-qualified: a raw table or a system catalog
                raise Forbidden(access.FORBIDDEN, reason=f"SQL names {ref.sql()[:100]!r}, which is no dataset")
            if name not in datasets:
                trace.rule = None
                try:
                    datasets[name] = await access.readable(policy, agent, name, trace)
                finally:  # a denial's rule too: the one that refused
                    if trace.rule is not None:
                        used.append(f"{name}: {trace.rule}")
    finally:
        trace.rule = rules_text(used)
    if not datasets:
        raise BadRequest("the SQL reads no dataset")
    return datasets


def rules_text(used: list[str], limit: int = FIELD_MAX["rule"]) -> str | None:
    """The record's `rule` of a read over several datasets: `name: rule` for each, `; ` between, as many whole
    entries as fit in `limit` characters and how many more were left out."""
    text = "; ".join(used)
    if len(text) <= limit:
        return text or None
    kept: list[str] = []
    for entry in used:
        tail = f"; and {len(used) - len(kept) - 1} more"
        if len("; ".join([*kept, entry])) + len(tail) > limit:
            break
        kept.append(entry)
    left = len(used) - len(kept)
    return "; ".join(kept) + f"; and {left} more" if kept else f"{left} rules, too long to keep"


async def _plan(source: TableSource, policy: Policy, agent: Agent, datasets: dict[str, Dataset],
                trace: Trace) -> dict[str, sqlmode.Source]:
    """What replaces each dataset in the statement: its table's columns, those masked, its row scope."""
    plan: dict[str, sqlmode.Source] = {}
    filtered: list[str] = []
    for ds in datasets.values():
        assert ds.table is not None
        with source_errors():
            info = await source.columns(ds.table)
        visible = await policy.visible_classes(agent.name, ds)
        hidden = frozenset(c for c, cls in ds.column_classes.items() if cls not in visible)
        scope, said = access.scope(policy, agent, ds)
        if said is not None:
            filtered.append(f"{ds.name}: {said}")
        plan[ds.name] = sqlmode.Source(ds.name, ds.table, [c.name for c in info], hidden, ds.max_rows, scope)
    trace.row_filter = "; ".join(sorted(filtered)) or None
    return plan
