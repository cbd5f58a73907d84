"""What `agentgate check` (and a reload) finds wrong with a loaded policy snapshot: policy tests it fails,
faults that refuse it, and warnings."""

from __future__ import annotations

from gateway.policy.snapshot import Policy

ADMIN_PREFIX = "admin:"


async def failing_cases(policy: Policy) -> list[str]:
    """One line per policy test that the snapshot fails; a snapshot with any is refused."""
    return [f"{policy.dir / 'tests.toml'}: case {i + 1} ({r.case.agent} {r.case.action} {r.case.dataset}) "
            f"expects {r.case.expect}, got {'allow' if r.decision.allowed else 'deny'} ({r.decision.reason})"
            for i, r in enumerate(await policy.run_cases()) if not r.passed]


def lint(policy: Policy) -> tuple[list[str], list[str]]:
    """Faults (grants on no dataset, agents named as roles) and warnings (idle roles, unreadable datasets) for
    `check`."""
    members = {m for m, _ in policy.groupings}
    roles = {r for _, r in policy.groupings}
    faults = _grants_on_nothing(policy) + _agents_named_as_roles(policy, members, roles)
    warnings = _idle_roles(policy, members, roles)
    for name in sorted(members & roles):
        # Both sides of g lines: a role that holds roles (allowed), or an agent someone made a role (refused).
        warnings.append(f"{name!r} holds roles (g, {name}, ...) and is held as a role (g, ..., {name}): a role "
                        "of roles; a token whose subject is this name is refused")
    warnings.extend(f"dataset {name!r} is readable by nobody" for name in _unreadable(policy))
    return faults, warnings


def _grants_on_nothing(policy: Policy) -> list[str]:
    faults: list[str] = []
    names = list(policy.catalog.datasets)
    for rule in policy.rules:
        if rule.obj.startswith(ADMIN_PREFIX):
            continue
        star = rule.obj.find("*")
        hit = any(n == rule.obj for n in names) if star == -1 else any(n.startswith(rule.obj[:star]) for n in names)
        if not hit:
            faults.append(f"policy.csv: '{rule}' matches no dataset in datasets.toml")
    return faults


def _idle_roles(policy: Policy, members: set[str], roles: set[str]) -> list[str]:
    """Subjects of p lines that no agent holds."""
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
    warnings: list[str] = []
    for sub in sorted({r.sub for r in policy.rules}):
        if sub in roles and sub not in held:
            warnings.append(f"role {sub!r} is granted rules but no agent holds it")
        elif sub not in roles and sub not in members:
            warnings.append(f"role {sub!r} is granted rules but no agent holds it (no g line names it; a token "
                            "whose subject is this name is refused: agents get rights through g lines only)")
    return warnings


def _unreadable(policy: Policy) -> list[str]:
    """The datasets no allow rule for read (or *) matches."""
    grantees = {r.sub for r in policy.rules if r.eft == "allow" and r.act in ("read", "*")}
    out: list[str] = []
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
            out.append(ds.name)
    return out


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
