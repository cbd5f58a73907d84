"""One validated, immutable policy snapshot, and the holder of the one in force.

A Policy bundles the Casbin model and lines, the catalog, the budgets and the policy tests, validated
together by gateway/policy/loader.py: a snapshot either loads whole or not at all, so the gateway can swap
snapshots atomically and keep the last good one. Routes never call Casbin: they ask ``Policy.decide`` and
get a ``Decision`` with the line that decided, for the audit record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.policy.catalog import Catalog, Dataset
from gateway.policy.decisions import Decision, Engine, Rule
from gateway.policy.limits import NO_BUDGETS, Budgets


@dataclass(frozen=True)
class PolicyCase:
    agent: str
    dataset: str
    action: str
    expect: str  # "allow" or "deny"


@dataclass(frozen=True)
class CaseResult:
    case: PolicyCase
    decision: Decision

    @property
    def passed(self) -> bool:
        return self.decision.allowed == (self.case.expect == "allow")


@dataclass(frozen=True)
class Policy:
    dir: Path
    catalog: Catalog
    rules: tuple[Rule, ...]
    groupings: tuple[tuple[str, str], ...]
    cases: tuple[PolicyCase, ...]
    engine: Engine
    indexed: bool
    budgets: Budgets = NO_BUDGETS
    # Names that are roles (see role_names): a token whose subject is one of them is refused.
    roles: frozenset[str] = frozenset()
    _roles: dict[str, frozenset[str]] = field(default_factory=dict, compare=False, repr=False)
    _parents: dict[str, list[str]] = field(default_factory=dict, compare=False, repr=False)

    def roles_of(self, agent: str) -> frozenset[str]:
        """Every role the agent holds through `g` lines, transitively (for row filters), cached per snapshot."""
        hit = self._roles.get(agent)
        if hit is None:
            parents = self._parents
            if not parents and self.groupings:  # once per snapshot
                for member, role in self.groupings:
                    parents.setdefault(member, []).append(role)
            seen: set[str] = set()
            frontier = [agent]
            while frontier:
                nxt = [r for m in frontier for r in parents.get(m, ()) if r not in seen and r != agent]
                seen.update(nxt)
                frontier = nxt
            hit = self._roles[agent] = frozenset(seen)
        return hit

    async def decide(self, agent: str, obj: str, act: str) -> Decision:
        return await self.engine.decide(agent, obj, act)

    async def may_read(self, agent: str, dataset: Dataset) -> Decision:
        return await self.engine.decide(agent, dataset.name, "read")

    async def visible_classes(self, agent: str, dataset: Dataset) -> frozenset[str]:
        """The column classes this agent holds read:<class> for on this dataset."""
        out = set()
        for cls in dataset.classes:
            if (await self.engine.decide(agent, dataset.name, f"read:{cls}")).allowed:
                out.add(cls)
        return frozenset(out)

    async def run_cases(self) -> list[CaseResult]:
        return [CaseResult(c, await self.decide(c.agent, c.dataset, c.action)) for c in self.cases]


class PolicyHolder:
    """The policy in force. Empty until a valid policy loads: then every request is refused."""

    def __init__(self, policy: Policy | None = None):
        self.current = policy
        self.refused: dict[str, Any] | None = None
