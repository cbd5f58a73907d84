"""Decisions: our index answers exactly as Casbin does, fails closed, and explains itself."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gateway.common.errors import ConfigError
from gateway.config import SourceSettings
from gateway.policy import (
    SHIPPED_MODEL,
    CasbinEngine,
    IndexedEngine,
    Rule,
    build_enforcer,
    failing_cases,
    lint,
    load_policy,
)

pytestmark = pytest.mark.unit

SOURCES = {"main": SourceSettings(name="main", kind="sql", url="sqlite+aiosqlite:///unused.db")}
CATALOG = """
[datasets.customers]
source = "main"
table = "customers"
owner = "o@example.com"

[datasets.customers.columns.email]
class = "pii"

[datasets."sales.orders"]
source = "main"
table = "orders"
owner = "o@example.com"
"""


def policy_dir(tmp_path: Path, lines: str, model: str = SHIPPED_MODEL, catalog: str = CATALOG,
               tests: str | None = None) -> Path:
    d = tmp_path / "policies"
    d.mkdir(exist_ok=True)
    (d / "model.conf").write_text(model)
    (d / "policy.csv").write_text(lines)
    (d / "datasets.toml").write_text(catalog)
    if tests is not None:
        (d / "tests.toml").write_text(tests)
    return d


async def test_empty_policy_denies_everything(tmp_path: Path) -> None:
    policy = load_policy(policy_dir(tmp_path, ""), SOURCES)
    for agent in ("support-bot", "", "*", "admin"):
        for obj in ("customers", "sales.orders", "admin:audit", "*"):
            for act in ("read", "read:pii", "write", "*"):
                assert not (await policy.decide(agent, obj, act)).allowed


async def test_deny_overrides_allow_and_names_the_rule(tmp_path: Path) -> None:
    policy = load_policy(policy_dir(tmp_path, """
p, analyst, sales.*, read, allow
p, analyst, *, read:pii, allow
p, auditors, customers, read:pii, deny
g, bot, analyst
g, bot, auditors
"""), SOURCES)
    allowed = await policy.decide("bot", "sales.orders", "read")
    assert allowed.allowed and allowed.rule == "p, analyst, sales.*, read, allow"
    denied = await policy.decide("bot", "customers", "read:pii")
    assert not denied.allowed and denied.rule == "p, auditors, customers, read:pii, deny"
    nothing = await policy.decide("bot", "customers", "read")
    assert not nothing.allowed and nothing.rule is None
    assert nothing.reason == "no policy line grants this"


async def test_roles_are_transitive_and_wildcard_action_covers_all(tmp_path: Path) -> None:
    policy = load_policy(policy_dir(tmp_path, """
p, base, customers, *, allow
g, lead, base
g, bot, lead
"""), SOURCES)
    assert (await policy.decide("bot", "customers", "read:pii")).allowed
    assert not (await policy.decide("bot", "sales.orders", "read")).allowed
    ds = policy.catalog.get("customers")
    assert ds is not None
    assert await policy.visible_classes("bot", ds) == {"pii"}


def _random_policy(rng: random.Random, n_rules: int) -> tuple[list[Rule], list[tuple[str, str]]]:
    roles = [f"role{i}" for i in range(12)]
    agents = [f"agent{i}" for i in range(20)]
    objects = ["sales.orders", "sales.q1", "customers", "hr.pay", "hr.x", "admin:audit"]
    patterns = [*objects, "sales.*", "hr.*", "*", "admin:*", "sal*", "customers*"]
    acts = ["read", "read:pii", "write", "*"]
    rules = [Rule(rng.choice(roles + agents), rng.choice(patterns), rng.choice(acts),
                  "deny" if rng.random() < 0.2 else "allow") for _ in range(n_rules)]
    groupings = [(rng.choice(agents + roles), rng.choice(roles)) for _ in range(30)]
    return rules, groupings


@pytest.mark.parametrize("seed", range(3))
async def test_index_answers_exactly_as_casbin(seed: int) -> None:
    rng = random.Random(seed)
    rules, groupings = _random_policy(rng, 60)
    enforcer = build_enforcer(SHIPPED_MODEL, rules, groupings)
    indexed = IndexedEngine(rules, groupings)
    casbin_engine = CasbinEngine(enforcer)
    subjects = [f"agent{i}" for i in range(0, 20, 2)] + [f"role{i}" for i in range(0, 12, 3)] + ["stranger"]
    objects = ["sales.orders", "sales.q1", "sales", "sales.", "customers", "customers2", "hr.pay", "admin:audit", "x"]
    for sub in subjects:
        for obj in objects:
            for act in ("read", "read:pii", "write", "delete"):
                ours = await indexed.decide(sub, obj, act)
                theirs = casbin_engine.decide_now(sub, obj, act)
                assert ours.allowed == theirs.allowed, (sub, obj, act)
                if ours.allowed:
                    assert ours.rule is not None and ours.rule.endswith("allow")


async def test_custom_model_falls_back_to_casbin(tmp_path: Path) -> None:
    exact_model = SHIPPED_MODEL.replace("keyMatch(r.obj, p.obj)", "r.obj == p.obj")
    policy = load_policy(policy_dir(tmp_path, "p, analyst, sales.*, read, allow\np, analyst, customers, read, allow\n"
                                    "g, bot, analyst\n", model=exact_model), SOURCES)
    assert not policy.indexed
    assert (await policy.decide("bot", "customers", "read")).allowed
    assert not (await policy.decide("bot", "sales.orders", "read")).allowed  # no keyMatch in this model


@pytest.mark.parametrize(("lines", "fault"), [
    ("p, a, customers\n", "a p line is"),
    ("p, a, customers, read, maybe\n", "effect must be allow or deny"),
    ("x, a, b\n", "unknown line type"),
    ("g, a\n", "a g line is"),
    ('p, "a b", customers, read, allow\n', "spaces or quotes"),
])
def test_malformed_lines_are_refused_with_their_line(tmp_path: Path, lines: str, fault: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_policy(policy_dir(tmp_path, "# comment\n" + lines), SOURCES)
    assert "line 2" in str(err.value) and fault in str(err.value)


def test_model_must_take_sub_obj_act(tmp_path: Path) -> None:
    model = SHIPPED_MODEL.replace("r = sub, obj, act", "r = sub, dom, obj, act")
    with pytest.raises(ConfigError, match="r = sub, obj, act"):
        load_policy(policy_dir(tmp_path, "", model=model), SOURCES)


def test_broken_model_is_refused(tmp_path: Path) -> None:
    model = SHIPPED_MODEL.replace("keyMatch(r.obj, p.obj)", "noSuchFunction(r.obj, p.obj)")
    d = policy_dir(tmp_path, "p, a, customers, read, allow\ng, b, a\n", model=model)
    # The model parses; the unknown function is only met when Casbin evaluates. It must not be indexed.
    policy = load_policy(d, SOURCES)
    assert not policy.indexed


async def test_policy_tests_report_failures(tmp_path: Path) -> None:
    tests = """
[[case]]
agent = "bot"
dataset = "customers"
action = "read"
expect = "allow"

[[case]]
agent = "bot"
dataset = "sales.orders"
expect = "allow"
"""
    policy = load_policy(policy_dir(tmp_path, "p, r, customers, read, allow\ng, bot, r\n", tests=tests), SOURCES)
    failures = await failing_cases(policy)
    assert len(failures) == 1 and "case 2" in failures[0] and "expects allow, got deny" in failures[0]


def test_lint_finds_grants_on_no_dataset_and_idle_roles(tmp_path: Path) -> None:
    policy = load_policy(policy_dir(tmp_path, """
p, r, customers, read, allow
p, r, nowhere, read, allow
p, r, sales.*, read, allow
p, r, admin:*, *, allow
p, idle, customers, read, allow
g, bot, r
"""), SOURCES)
    faults, warnings = lint(policy)
    assert faults == ["policy.csv: 'p, r, nowhere, read, allow' matches no dataset in datasets.toml"]
    assert any("'idle'" in w for w in warnings)


def test_lint_warns_on_datasets_nobody_reads(tmp_path: Path) -> None:
    policy = load_policy(policy_dir(tmp_path, "p, r, customers, read, allow\ng, bot, r\n"), SOURCES)
    _, warnings = lint(policy)
    assert warnings == ["dataset 'sales.orders' is readable by nobody"]
