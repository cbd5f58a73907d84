"""The policy directory -> one validated Policy snapshot (gateway/policy/snapshot.py).

model.conf, policy.csv, datasets.toml, tests.toml and budgets.toml are read and checked together; any fault
raises ``ConfigError`` naming the file, the line or key, and the fault.
"""

from __future__ import annotations

import csv
import io
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

from gateway.common.errors import ConfigError
from gateway.config import SourceSettings
from gateway.policy.catalog import load_catalog
from gateway.policy.decisions import CasbinEngine, Engine, IndexedEngine, Rule, build_enforcer
from gateway.policy.limits import load_budgets
from gateway.policy.snapshot import Policy, PolicyCase

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
            rules.append(Rule(sub, obj, act, eft, line=lineno))
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
