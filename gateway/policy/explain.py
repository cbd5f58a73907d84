"""Why an agent may, or may not, read a dataset: `agentgate explain`, from the policy files alone.

Nothing here decides anything itself. Each answer is the one a read gets from the same code: the decision from
``Policy.may_read`` (the engine core/access.readable asks), a token naming a role refused as the pipeline's
``admit`` refuses it (``Policy.roles``), the rows from ``rowfilters.applies`` and ``rowfilters.scope_for`` (as
access.rows_for and access.scope call them), the masked columns from ``Policy.visible_classes``, the budget from
``Budgets.for_agent``. This module only gathers them with where each came from: the policy line and its line
number, and the roles that led the agent to it. No store and no source: it answers offline.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.common.errors import NOT_ALLOWED, Forbidden
from gateway.policy.catalog import Dataset
from gateway.policy.decisions import Decision
from gateway.policy.limits import Limits
from gateway.policy.rowfilters import EVERY_AGENT, Claim, RowFilter, applies, scope_for
from gateway.policy.snapshot import Policy

SUGGESTED = 5  # an unknown dataset: at most this many names offered


@dataclass(frozen=True)
class Line:
    """The policy line that decided, where it is, and the roles that led the agent to its subject."""

    text: str  # "p, analyst, customers, read, allow", as Decision.rule and the audit record's rule say it
    path: Path
    number: int | None  # None: not one of the loaded lines (another model's Casbin answer)
    chain: tuple[str, ...]  # the agent, the roles it holds on the way, the line's subject

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.text, "file": str(self.path), "line": self.number, "via": list(self.chain)}


@dataclass(frozen=True)
class Column:
    name: str
    cls: str
    readable: bool
    line: Line | None  # the read:<class> line that decided; None when no line grants it


@dataclass(frozen=True)
class Filter:
    """One row filter of the dataset, and whether (and through which roles) it is the agent's."""

    key: str
    text: str
    applies: bool
    chain: tuple[str, ...]  # how the agent holds its key (empty when it does not)
    claims: tuple[str, ...]  # the token claims it needs, dotted


@dataclass(frozen=True)
class Rows:
    filters: tuple[Filter, ...]
    scope: str | None  # with the claims given: the filter as the audit record would hold it
    refused: str | None  # with the claims given: why a query is refused


@dataclass(frozen=True)
class Explanation:
    agent: str
    dataset: Dataset
    allowed: bool  # what a read answers: describe 200 (allowed) or 401/403
    reason: str
    decision: Decision  # the policy's answer for (agent, dataset, read)
    line: Line | None
    role: bool  # the name is a role's: every token naming it is refused
    roles: tuple[str, ...]
    columns: tuple[Column, ...]
    rows: Rows | None  # None: the dataset has no row filters (every row)
    limits: Limits
    budget_from: str
    notes: tuple[str, ...]

    @property
    def masked(self) -> list[str]:
        return [c.name for c in self.columns if not c.readable]

    @property
    def sql_mode(self) -> bool:
        """Readable in SQL mode: as a query, but datasets needing approval are refused there (access.readable)."""
        return self.allowed and self.dataset.table is not None and self.dataset.approval != "required"


class UnknownDataset(LookupError):
    def __init__(self, name: str, suggestions: list[str]):
        super().__init__(name)
        self.name, self.suggestions = name, suggestions


async def explain_read(policy: Policy, agent: str, dataset: str,
                       claims: Mapping[str, Any] | None = None) -> Explanation:
    """The whole answer for `agent` reading `dataset`, the row filters evaluated on `claims` (the token's `sub` is
    the agent). UnknownDataset, with close names, when the catalog has no such dataset."""
    ds = policy.catalog.get(dataset)
    if ds is None:
        raise UnknownDataset(dataset, suggestions(policy, dataset))
    decision = await policy.may_read(agent, ds)
    roles = policy.roles_of(agent)
    rows_ok = applies(ds.row_filters, agent, roles)
    role = agent in policy.roles
    allowed, reason = _verdict(ds, decision, role, rows_ok)
    limits, budget_from = _budget(policy, agent)
    return Explanation(
        agent=agent, dataset=ds, allowed=allowed, reason=reason, decision=decision,
        line=locate(policy, agent, decision), role=role, roles=tuple(sorted(roles)),
        columns=await _columns(policy, agent, ds), rows=_rows(policy, agent, ds, {**(claims or {}), "sub": agent}),
        limits=limits, budget_from=budget_from, notes=tuple(_notes(policy, agent, role)))


def _verdict(ds: Dataset, decision: Decision, role: bool, rows_ok: bool) -> tuple[bool, str]:
    """In the order a read meets them: the token's subject (pipeline admit), the policy, the row filters
    (access.readable)."""
    if role:
        return False, "the name is a role's, not an agent's: a token naming it is refused (401 unauthenticated)"
    if not decision.allowed:
        return False, decision.reason + " (403 forbidden)"
    if not rows_ok:
        return False, f"no row filter of {ds.name!r} applies to this agent (403 forbidden; not listed to it)"
    return True, decision.reason


def suggestions(policy: Policy, name: str) -> list[str]:
    """Dataset names close to `name`; failing any, the catalog's first names."""
    names = sorted(policy.catalog.datasets)
    return difflib.get_close_matches(name, names, n=SUGGESTED, cutoff=0.5) or names[:SUGGESTED]


def locate(policy: Policy, agent: str, decision: Decision) -> Line | None:
    """The loaded line a decision names, its line number, and the roles from the agent to its subject."""
    if decision.rule is None:
        return None
    path = policy.dir / "policy.csv"
    for rule in policy.rules:
        if str(rule) == decision.rule:
            return Line(decision.rule, path, rule.line or None, chain(policy, agent, rule.sub))
    return Line(decision.rule, path, None, (agent,))


def chain(policy: Policy, agent: str, target: str) -> tuple[str, ...]:
    """The shortest path of `g` lines from the agent to `target` (the agent alone if it is the target; empty
    if it does not hold it)."""
    parents: dict[str, list[str]] = {}
    for member, role in policy.groupings:
        parents.setdefault(member, []).append(role)
    paths: dict[str, tuple[str, ...]] = {agent: (agent,)}
    frontier = [agent]
    while frontier and target not in paths:
        nxt: list[str] = []
        for name in frontier:
            for role in parents.get(name, ()):
                if role not in paths:
                    paths[role] = (*paths[name], role)
                    nxt.append(role)
        frontier = nxt
    return paths.get(target, ())


async def _columns(policy: Policy, agent: str, ds: Dataset) -> tuple[Column, ...]:
    """Each classed column: readable or masked, as a query masks it (Policy.visible_classes), and the line."""
    visible = await policy.visible_classes(agent, ds)
    out = []
    for name, cls in sorted(ds.column_classes.items()):
        decided = await policy.decide(agent, ds.name, f"read:{cls}")
        out.append(Column(name, cls, cls in visible, locate(policy, agent, decided)))
    return tuple(out)


def _rows(policy: Policy, agent: str, ds: Dataset, claims: Mapping[str, Any]) -> Rows | None:
    if not ds.row_filters:
        return None
    roles = policy.roles_of(agent)
    filters = []
    for key, f in sorted(ds.row_filters.items()):
        held = key in (agent, EVERY_AGENT) or key in roles
        via = (agent, key) if key == EVERY_AGENT else chain(policy, agent, key) if held else ()
        filters.append(Filter(key, f.text, held, via, tuple(dict.fromkeys(_claims(f)))))
    try:
        found = scope_for(ds.name, ds.row_filters, agent, claims, roles)
    except Forbidden as exc:  # the agent's words when they say more than "not allowed", else the record's
        return Rows(tuple(filters), None, exc.reason if exc.message == NOT_ALLOWED else exc.message)
    return Rows(tuple(filters), found.text if found is not None else None, None)


def _claims(f: RowFilter) -> Iterator[str]:
    for term in f.terms:
        values = term.value if isinstance(term.value, tuple) else (term.value,)
        for v in values:
            if isinstance(v, Claim):
                yield ".".join(v.path)


def _budget(policy: Policy, agent: str) -> tuple[Limits, str]:
    """The agent's limits (Budgets.for_agent, as the meter takes them) and which tables of budgets.toml set them."""
    limits = policy.budgets.for_agent(agent)
    if limits.empty:
        return limits, "no budget: budgets.toml sets none for this agent"
    if agent in policy.budgets.agents:
        over = "" if policy.budgets.default.empty else ", over [default]"
        return limits, f"budgets.toml [agents.{agent}]{over}"
    return limits, "budgets.toml [default]"


def _notes(policy: Policy, agent: str, role: bool) -> Iterator[str]:
    members = {m for m, _ in policy.groupings}
    if not role and agent not in members:
        yield f"no g line gives {agent!r} a role: it holds no rights (a typo?)"
