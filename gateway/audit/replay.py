"""`agentgate check --replay`: the real requests of the audit trail against a proposed policy.

Every data read in the trail that names an agent and a dataset (actions `read`
and `describe`) is decided twice for (agent, dataset, "read"): by the policy in
force and by the proposed one. Decisions depend on nothing else, so the trail
is read as one GROUP BY (agent, dataset) with counts, and each pair is decided
once. The old decision is the current policy's, not the record's: a record may
have been refused for other reasons (a revocation, a bad request).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.policy import Policy
from gateway.store import audit as audit_table
from gateway.store import reading

REPLAYED_ACTIONS = ("read", "describe")


@dataclass(frozen=True)
class Change:
    agent: str
    dataset: str
    requests: int
    old: bool  # allowed under the current policy
    new: bool  # allowed under the proposed policy
    old_reason: str
    new_reason: str

    @property
    def kind(self) -> str:
        return "allow->deny" if self.old else "deny->allow"


@dataclass(frozen=True)
class Replay:
    requests: int  # (agent, dataset) decisions replayed (a SQL-mode record counts once per dataset)
    pairs: int
    changes: list[Change]

    @property
    def changed_requests(self) -> int:
        return sum(c.requests for c in self.changes)

    def by(self, field: str) -> list[tuple[str, int, int]]:
        """(agent or dataset, allow->deny requests, deny->allow requests), most changed first."""
        lost: Counter[str] = Counter()
        gained: Counter[str] = Counter()
        for c in self.changes:
            (lost if c.old else gained)[getattr(c, field)] += c.requests
        keys = sorted(set(lost) | set(gained), key=lambda k: (-(lost[k] + gained[k]), k))
        return [(k, lost[k], gained[k]) for k in keys]


async def _decide(policy: Policy, agent: str, dataset: str) -> tuple[bool, str]:
    ds = policy.catalog.get(dataset)
    if ds is None:
        return False, "no such dataset in the catalog"
    d = await policy.may_read(agent, ds)
    return d.allowed, d.reason


async def replay(engine: AsyncEngine, current: Policy, proposed: Policy,
                 since: dt.datetime | None = None) -> Replay:
    c = audit_table.c
    stmt = (select(c.agent, c.dataset, func.count())
            .where(c.action.in_(REPLAYED_ACTIONS), c.agent.is_not(None), c.dataset.is_not(None))
            .group_by(c.agent, c.dataset))
    if since is not None:
        stmt = stmt.where(c.time >= since)
    async with reading(engine).connect() as conn:
        rows = (await conn.execute(stmt)).fetchall()
    counts: Counter[tuple[str, str]] = Counter()
    for agent, datasets, n in rows:
        for name in dict.fromkeys(d.strip() for d in datasets.split(",") if d.strip()):
            counts[(agent, name)] += int(n)
    changes: list[Change] = []
    for (agent, dataset), n in counts.items():
        old, old_reason = await _decide(current, agent, dataset)
        new, new_reason = await _decide(proposed, agent, dataset)
        if old != new:
            changes.append(Change(agent, dataset, n, old, new, old_reason, new_reason))
    changes.sort(key=lambda ch: (not ch.old, -ch.requests, ch.agent, ch.dataset))
    return Replay(requests=sum(counts.values()), pairs=len(counts), changes=changes)


def report(result: Replay) -> list[str]:
    """The lines `check --replay` prints after its header."""
    lines = [f"replayed {result.requests} request(s) ({result.pairs} agent/dataset pair(s))"]
    if not result.changes:
        lines.append("no decision would change")
        return lines
    lost = sum(c.requests for c in result.changes if c.old)
    gained = result.changed_requests - lost
    lines.append(f"{result.changed_requests} request(s) would be decided differently: "
                 f"{lost} allow->deny, {gained} deny->allow")
    for ch in result.changes:
        lines.append(f"  {ch.kind}  agent {ch.agent}  dataset {ch.dataset}  {ch.requests} request(s)  "
                     f"(now: {ch.old_reason}; proposed: {ch.new_reason})")
    for field in ("agent", "dataset"):
        lines.append(f"by {field}:")
        for key, minus, plus in result.by(field):
            lines.append(f"  {key}: {minus} allow->deny, {plus} deny->allow")
    return lines
