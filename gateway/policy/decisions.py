"""Decisions: Casbin's answer for (agent, object, action), fast.

pycasbin's ``enforce()`` scans every policy line on every call (tens of
milliseconds at 10,000 lines) and runs synchronously, stalling the event loop.
For the shipped model (roles, ``keyMatch`` objects, deny-overrides) the answer
only depends on the rules of the agent's own roles, so ``IndexedEngine``
indexes rules by subject and object once, when the policy loads, and answers
in microseconds. Any other model falls back to ``CasbinEngine``: Casbin itself,
run in a worker thread. Both memoise; a new policy is a new engine, so the
memo is dropped with every swap.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import casbin

MEMO_LIMIT = 200_000
MAX_ROLE_DEPTH = 10  # Casbin's default role manager stops at 10 levels too


@dataclass(frozen=True, slots=True)
class Rule:
    sub: str
    obj: str
    act: str
    eft: str
    line: int = field(default=0, compare=False)  # its line in policy.csv (0: not read from a file); for explain

    def __str__(self) -> str:
        return f"p, {self.sub}, {self.obj}, {self.act}, {self.eft}"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    rule: str | None  # the policy line that decided, None when nothing matched

    @property
    def reason(self) -> str:
        if self.rule is None:
            return "no policy line grants this"
        return ("allowed by " if self.allowed else "denied by ") + self.rule


NO_MATCH = Decision(False, None)


class Engine(Protocol):
    async def decide(self, sub: str, obj: str, act: str) -> Decision: ...


@dataclass(slots=True)
class _SubjectRules:
    # Keyed by action ("*" lines under "*"), each holding the Decision its line gives, made once.
    exact: dict[tuple[str, str], list[Decision]] = field(default_factory=dict)
    prefixes: dict[str, list[tuple[str, Decision]]] = field(default_factory=dict)


class IndexedEngine:
    """The shipped model, answered from an index: g(r.sub, p.sub) && keyMatch(r.obj, p.obj)
    && (r.act == p.act || p.act == "*"), allow unless some matching line denies."""

    def __init__(self, rules: Iterable[Rule], groupings: Iterable[tuple[str, str]]):
        self._by_subject: dict[str, _SubjectRules] = defaultdict(_SubjectRules)
        for rule in rules:
            decision = Decision(rule.eft == "allow", str(rule))
            star = rule.obj.find("*")
            bucket = self._by_subject[rule.sub]
            if star == -1:
                bucket.exact.setdefault((rule.obj, rule.act), []).append(decision)
            else:
                # keyMatch ignores everything after the first '*': it is a prefix match.
                bucket.prefixes.setdefault(rule.act, []).append((rule.obj[:star], decision))
        self._by_subject = dict(self._by_subject)
        parents: dict[str, list[str]] = defaultdict(list)
        for member, role in groupings:
            parents[member].append(role)
        self._parents = dict(parents)
        self._subjects: dict[str, tuple[str, ...]] = {}
        self._memo: dict[tuple[str, str, str], Decision] = {}

    def subjects(self, sub: str) -> tuple[str, ...]:
        """The agent itself and every role it holds, transitively (bounded depth, cycles tolerated)."""
        cached = self._subjects.get(sub)
        if cached is not None:
            return cached
        seen = [sub]
        frontier = [sub]
        for _ in range(MAX_ROLE_DEPTH):
            nxt = [r for s in frontier for r in self._parents.get(s, ()) if r not in seen]
            if not nxt:
                break
            for r in nxt:
                if r not in seen:
                    seen.append(r)
            frontier = nxt
        result = tuple(s for s in seen if s in self._by_subject)
        self._subjects[sub] = result
        return result

    def decide_now(self, sub: str, obj: str, act: str) -> Decision:
        key = (sub, obj, act)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        allow: Decision | None = None
        acts = (act, "*") if act != "*" else ("*",)
        for s in self.subjects(sub):
            bucket = self._by_subject[s]
            for a in acts:
                for d in bucket.exact.get((obj, a), ()):
                    if not d.allowed:
                        return self._remember(key, d)  # deny overrides allow
                    allow = allow or d
                for prefix, d in bucket.prefixes.get(a, ()):
                    if obj.startswith(prefix):
                        if not d.allowed:
                            return self._remember(key, d)
                        allow = allow or d
        return self._remember(key, allow or NO_MATCH)

    def _remember(self, key: tuple[str, str, str], decision: Decision) -> Decision:
        if len(self._memo) >= MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = decision
        return decision

    async def decide(self, sub: str, obj: str, act: str) -> Decision:
        return self.decide_now(sub, obj, act)


class CasbinEngine:
    """Any other model: Casbin's own enforce_ex, off the event loop."""

    def __init__(self, enforcer: casbin.Enforcer):
        self._enforcer = enforcer
        self._lock = threading.Lock()  # pycasbin is not documented as thread-safe
        self._memo: dict[tuple[str, str, str], Decision] = {}

    def decide_now(self, sub: str, obj: str, act: str) -> Decision:
        key = (sub, obj, act)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        with self._lock:
            allowed, explain = self._enforcer.enforce_ex(sub, obj, act)
        rule = None
        if explain:
            rule = "p, " + ", ".join(str(x) for x in explain)
        decision = Decision(bool(allowed), rule)
        if len(self._memo) >= MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = decision
        return decision

    async def decide(self, sub: str, obj: str, act: str) -> Decision:
        hit = self._memo.get((sub, obj, act))
        if hit is not None:
            return hit
        return await asyncio.to_thread(self.decide_now, sub, obj, act)


def build_enforcer(model_text: str, rules: Sequence[Rule], groupings: Sequence[tuple[str, str]]) -> casbin.Enforcer:
    model = casbin.Enforcer.new_model(text=model_text)
    enforcer = casbin.Enforcer(model)
    if rules:
        enforcer.add_policies([[r.sub, r.obj, r.act, r.eft] for r in rules])
    if groupings:
        enforcer.add_grouping_policies([[m, r] for m, r in groupings])
    return enforcer
