"""The policy directory -> one validated, immutable Policy snapshot.

A Policy bundles the Casbin model and lines, the catalog and the policy tests,
validated together: a snapshot either loads whole or not at all, so the
gateway can swap snapshots atomically and keep the last good one. Routes never
call Casbin: they ask ``Policy.decide`` and get a ``Decision`` with the line
that decided, for the audit record.
"""

from __future__ import annotations

import csv
import io
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.common.errors import ConfigError
from gateway.config.settings import SourceSettings
from gateway.policy.catalog import Catalog, Dataset, load_catalog
from gateway.policy.decisions import CasbinEngine, Decision, Engine, IndexedEngine, Rule, build_enforcer
from gateway.policy.limits import NO_BUDGETS, Budgets, load_budgets

ADMIN_PREFIX = "admin:"
POLICY_FILES = ("model.conf", "policy.csv", "datasets.toml", "tests.toml", "budgets.toml")

SHIPPED_MODEL = """[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act, eft

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = g(r.sub, p.sub) && keyMatch(r.obj, p.obj) && (r.act == p.act || p.act == "*")
"""


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


def load_policy(policy_dir: Path, sources: Mapping[str, SourceSettings]) -> Policy:
    """Read and validate the whole directory. Blocking: call it off the event loop."""
    model_path = policy_dir / "model.conf"
    if not policy_dir.is_dir():
        raise ConfigError(policy_dir, None, "policy directory not found")
    model_text = _read(model_path)
    _check_model(model_path, model_text)
    rules, groupings = _parse_lines(policy_dir / "policy.csv")
    catalog = load_catalog(policy_dir / "datasets.toml", sources)
    cases = _load_cases(policy_dir / "tests.toml")
    budgets = load_budgets(policy_dir / "budgets.toml")
    indexed = _normalise(model_text) == _normalise(SHIPPED_MODEL)
    engine: Engine
    if indexed:
        # The shipped model needs no Casbin enforcer: building one only to validate costs seconds at
        # 10,000 lines (pycasbin's add_policies is quadratic), and the index answers exactly as Casbin does.
        engine = IndexedEngine(rules, groupings)
    else:
        try:
            engine = CasbinEngine(build_enforcer(model_text, rules, groupings))
        except Exception as exc:  # pycasbin raises bare RuntimeError/KeyError strings
            raise ConfigError(model_path, None, f"Casbin cannot load this model and policy: {exc}") from None
    return Policy(dir=policy_dir, catalog=catalog, rules=tuple(rules), groupings=tuple(groupings),
                  cases=tuple(cases), engine=engine, indexed=indexed, budgets=budgets,
                  roles=role_names(rules, groupings))


def role_names(rules: Sequence[Rule], groupings: Sequence[tuple[str, str]]) -> frozenset[str]:
    """The names that are roles: the role of any `g` line (held by someone: `g, agent, ROLE`) and the subject of
    any `p` line (`p, ROLE, object, action, effect`, as the policy format has it), whether anyone holds it or
    not. Every other name is an agent's. Agents and roles are separate names: a token whose subject is a role is
    refused (otherwise whoever could get a token for that name would hold the role's rights), so an agent gets
    rights only through the roles its `g` lines give it."""
    return frozenset(r for _, r in groupings) | frozenset(rule.sub for rule in rules)


async def failing_cases(policy: Policy) -> list[str]:
    """One line per policy test that the snapshot fails; a snapshot with any is refused."""
    return [f"{policy.dir / 'tests.toml'}: case {i + 1} ({r.case.agent} {r.case.action} {r.case.dataset}) "
            f"expects {r.case.expect}, got {'allow' if r.decision.allowed else 'deny'} ({r.decision.reason})"
            for i, r in enumerate(await policy.run_cases()) if not r.passed]


def lint(policy: Policy) -> tuple[list[str], list[str]]:
    """Faults (grants on no dataset) and warnings (idle roles, unreadable datasets) for `check`."""
    faults: list[str] = []
    warnings: list[str] = []
    names = list(policy.catalog.datasets)
    for rule in policy.rules:
        if rule.obj.startswith(ADMIN_PREFIX):
            continue
        star = rule.obj.find("*")
        hit = any(n == rule.obj for n in names) if star == -1 else any(n.startswith(rule.obj[:star]) for n in names)
        if not hit:
            faults.append(f"policy.csv: '{rule}' matches no dataset in datasets.toml")
    members = {m for m, _ in policy.groupings}
    roles = {r for _, r in policy.groupings}
    # A role is held by an agent when some member of it is not itself a role (agents are never parents).
    held: set[str] = set()
    parents: dict[str, list[str]] = {}
    for m, r in policy.groupings:
        parents.setdefault(m, []).append(r)
    for agent in members - roles:
        stack = list(parents.get(agent, []))
        while stack:
            role = stack.pop()
            if role not in held:
                held.add(role)
                stack.extend(parents.get(role, []))
    for sub in sorted({r.sub for r in policy.rules}):
        if sub in roles and sub not in held:
            warnings.append(f"role {sub!r} is granted rules but no agent holds it")
        elif sub not in roles and sub not in members:
            warnings.append(f"role {sub!r} is granted rules but no agent holds it (no g line names it; a token "
                            "whose subject is this name is refused: agents get rights through g lines only)")
    faults.extend(_agents_named_as_roles(policy, members, roles))
    for name in sorted(members & roles):
        # Both sides of g lines: a role that holds roles (allowed), or an agent someone made a role (refused).
        warnings.append(f"{name!r} holds roles (g, {name}, ...) and is held as a role (g, ..., {name}): a role "
                        "of roles; a token whose subject is this name is refused")
    grantees = {r.sub for r in policy.rules if r.eft == "allow" and r.act in ("read", "*")}
    for ds in policy.catalog:
        readable = False
        for rule in policy.rules:
            if rule.eft != "allow" or rule.act not in ("read", "*") or rule.sub not in grantees:
                continue
            star = rule.obj.find("*")
            if (ds.name == rule.obj) if star == -1 else ds.name.startswith(rule.obj[:star]):
                readable = True
                break
        if not readable:
            warnings.append(f"dataset {ds.name!r} is readable by nobody")
    return faults, warnings


def _agents_named_as_roles(policy: Policy, members: set[str], held_roles: set[str]) -> list[str]:
    """Faults: names the policy files use as an agent's that are roles (see role_names), whose tokens are
    therefore refused: an agent granted rules directly, a policy test or a budget for a role."""
    faults: list[str] = []
    for name in sorted((members - held_roles) & policy.roles):
        faults.append(f"policy.csv: agent {name!r} (g, {name}, ...) is also the subject of p lines, which makes "
                      "it a role, and a token whose subject is a role is refused; grant those rules to a role "
                      "it holds")
    for i, case in enumerate(policy.cases, start=1):
        if case.agent in policy.roles:
            faults.append(f"tests.toml: case {i} names {case.agent!r} as its agent, but that is a role (a token "
                          "whose subject is a role is refused); name an agent that holds it")
    for name in sorted(policy.budgets.agents):
        if name in policy.roles:
            faults.append(f"budgets.toml: [agents.{name}] names a role, not an agent; budgets apply to agents")
    return faults


async def approval_conflicts(policy: Policy) -> list[str]:
    """Warnings for `check`: a subject (an agent, or a role, through g lines) that may both read a dataset with
    approval = "required" and decide approvals (admin:approvals write), so one person's rights could ask and
    approve. The gateway refuses an agent deciding its own approval; two agents of one such role are not."""
    guarded = [ds for ds in policy.catalog if ds.approval == "required"]
    if not guarded:
        return []
    flagged: dict[str, list[str]] = {}
    subjects = sorted(policy.roles | {m for m, _ in policy.groupings})
    for sub in subjects:
        if not (await policy.decide(sub, "admin:approvals", "write")).allowed:
            continue
        readable = [ds.name for ds in guarded if (await policy.may_read(sub, ds)).allowed]
        if readable:
            flagged[sub] = readable
    out = []
    for sub, names in flagged.items():
        # An agent flagged only through a role already named adds nothing.
        if sub not in policy.roles and any(flagged.get(r) == names for r in policy.roles_of(sub)):
            continue
        kind = "role" if sub in policy.roles else "agent"
        out.append(f"{kind} {sub!r} may both read {', '.join(repr(n) for n in names)} (approval = \"required\") "
                   "and decide approvals (admin:approvals write): the person approving should not hold the "
                   "rights of the one asking")
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None


def _normalise(model_text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in model_text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line and not line.startswith("["):
            key, value = line.split("=", 1)
            out[key.strip()] = re.sub(r"\s+", "", value)
    return out


def _check_model(path: Path, text: str) -> None:
    parsed = _normalise(text)
    for key in ("r", "p", "e", "m"):
        if key not in parsed:
            raise ConfigError(path, key, "missing from the model")
    if parsed["r"] != "sub,obj,act":
        raise ConfigError(path, "r", "the request must be 'r = sub, obj, act' (agent, dataset, action)")
    if parsed["p"] != "sub,obj,act,eft":
        raise ConfigError(path, "p", "policy lines must be 'p = sub, obj, act, eft'")


_SAFE_FIELD = re.compile(r"^[^\s,\"']+$")


def _parse_lines(path: Path) -> tuple[list[Rule], list[tuple[str, str]]]:
    rules: list[Rule] = []
    groupings: list[tuple[str, str]] = []
    for lineno, row in enumerate(csv.reader(io.StringIO(_read(path)), skipinitialspace=True), start=1):
        fields = [f.strip() for f in row]
        if not fields or not any(fields) or fields[0].startswith("#"):
            continue
        where = f"line {lineno}"
        kind, values = fields[0], fields[1:]
        for v in values:
            if not _SAFE_FIELD.match(v):
                raise ConfigError(path, where, f"field {v!r} is empty or holds spaces or quotes")
        if kind == "p":
            if len(values) != 4:
                raise ConfigError(path, where, "a p line is 'p, subject, object-pattern, action, allow|deny'")
            sub, obj, act, eft = values
            if eft not in ("allow", "deny"):
                raise ConfigError(path, where, f"effect must be allow or deny, not {eft!r}")
            rules.append(Rule(sub, obj, act, eft))
        elif kind == "g":
            if len(values) != 2:
                raise ConfigError(path, where, "a g line is 'g, agent-or-role, role'")
            groupings.append((values[0], values[1]))
        else:
            raise ConfigError(path, where, f"unknown line type {kind!r} (expected p or g)")
    return rules, groupings


def _load_cases(path: Path) -> list[PolicyCase]:
    if not path.exists():
        return []
    try:
        raw = tomllib.loads(_read(path))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"invalid TOML: {exc}") from None
    for key in raw:
        if key != "case":
            raise ConfigError(path, key, "unknown key (expected [[case]] tables)")
    cases = raw.get("case", [])
    if not isinstance(cases, list):
        raise ConfigError(path, "case", "must be an array of tables ([[case]])")
    out: list[PolicyCase] = []
    for i, case in enumerate(cases, start=1):
        where = f"case {i}"
        if not isinstance(case, dict):
            raise ConfigError(path, where, "must be a table")
        extra = set(case) - {"agent", "dataset", "action", "expect"}
        if extra:
            raise ConfigError(path, f"{where}.{sorted(extra)[0]}",
                              "unknown key (expected agent, dataset, action, expect)")
        for key in ("agent", "dataset", "expect"):
            if not isinstance(case.get(key), str) or not case[key]:
                raise ConfigError(path, f"{where}.{key}", "is required (a string)")
        action = case.get("action", "read")
        if not isinstance(action, str) or not action:
            raise ConfigError(path, f"{where}.action", "must be a string")
        if case["expect"] not in ("allow", "deny"):
            raise ConfigError(path, f"{where}.expect", 'must be "allow" or "deny"')
        out.append(PolicyCase(case["agent"], case["dataset"], action, case["expect"]))
    return out


class PolicyHolder:
    """The policy in force. Empty until a valid policy loads: then every request is refused."""

    def __init__(self, policy: Policy | None = None):
        self.current = policy
        self.refused: dict[str, Any] | None = None
