"""`agentgate check`: validate config, model, policy, catalog, the store and the policy tests; and
`check --replay`: the decisions a proposed policy directory would change, replayed from the audit trail."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.cli import arguments
from gateway.cli.arguments import Parser, Subcommands
from gateway.cli.exits import EXIT_FAULT, EXIT_OK
from gateway.common import clock
from gateway.common.errors import ConfigError
from gateway.common.textsafe import terminal
from gateway.config import Settings

if TYPE_CHECKING:
    from gateway.policy import Policy


def add_parser(sub: Subcommands, common: Parser) -> None:
    c = sub.add_parser("check", parents=[common], help="validate config, model, policy, catalog and policy tests")
    c.add_argument("--replay", action="store_true",
                   help="replay the audit trail's reads against the policy in --policy-dir; list changed decisions")
    c.add_argument("--policy-dir", help="with --replay: the proposed policy directory")
    c.add_argument("--since", type=arguments.since, help="with --replay: ISO 8601 time, or 7d / 24h / 30m before now")


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options that belong together: exit 2 with one line, as any argument error, before the config is read."""
    if not args.replay and (args.policy_dir or args.since):
        parser.error("--policy-dir and --since need --replay")
    if args.replay and not args.policy_dir:
        parser.error("--replay needs --policy-dir NEW_DIR (the proposed policy)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.replay:
        return asyncio.run(_replay(settings, args))
    return asyncio.run(_check(settings))


async def _check(settings: Settings) -> int:
    from gateway.policy import approval_conflicts, lint, load_policy

    faults: list[str] = []
    print(f"config: {settings.path}: ok")
    try:
        policy = await asyncio.to_thread(load_policy, settings.policy.dir, settings.sources)
    except ConfigError as exc:
        print(f"FAIL {exc}")
        return EXIT_FAULT
    print(f"policy: {len(policy.rules)} rules, {len(policy.groupings)} role assignments, "
          f"{len(policy.catalog.datasets)} datasets: ok")
    if not policy.budgets.default.empty or policy.budgets.agents:
        d = policy.budgets.default
        print(f"budgets: default requests_per_minute={d.requests_per_minute}, rows_per_day={d.rows_per_day}; "
              f"{len(policy.budgets.agents)} agent budget(s): ok")
    faults.extend(await _tables(settings, policy))
    faults.extend(await _store(settings))
    faults.extend(await _cases(policy))
    lint_faults, warnings = lint(policy)
    warnings.extend(await approval_conflicts(policy))
    faults.extend(lint_faults)
    for w in warnings:
        print(f"warning: {w}")
    for f in faults:
        print(f"FAIL {f}")
    print("check: ok" if not faults else f"check: {len(faults)} fault(s)")
    return EXIT_FAULT if faults else EXIT_OK


async def _tables(settings: Settings, policy: Policy) -> list[str]:
    """Every catalog table exists, in a source that answers: the faults, or its ok line."""
    from gateway.sources.opening import check_tables, open_sources

    sources = await asyncio.to_thread(open_sources, settings.sources)
    table_faults: list[ConfigError] = []
    try:
        await check_tables(policy.catalog, sources, settings.policy.dir / "datasets.toml", strict_reachability=True,
                           faults=table_faults)
    finally:
        for source in sources.values():
            await source.close()
    if not table_faults:
        print("tables: every catalog table exists: ok")
    return [str(f) for f in table_faults]


async def _store(settings: Settings) -> list[str]:
    """The store answers and has its tables (only read: a SQLite file not there is not made)."""
    from gateway.runtime.storewait import report

    store_lines, store_fault = await report(settings.store.url, settings.audit.write_timeout_seconds)
    for line in store_lines:
        print(line)
    return [store_fault] if store_fault is not None else []


async def _cases(policy: Policy) -> list[str]:
    """The policy tests (tests.toml), one line each, then their count."""
    faults: list[str] = []
    results = await policy.run_cases()
    for i, r in enumerate(results, start=1):
        got = "allow" if r.decision.allowed else "deny"
        mark = "pass" if r.passed else "FAIL"
        print(f"{mark} case {i}: {r.case.agent} {r.case.action} {r.case.dataset} -> {got} "
              f"(expected {r.case.expect}; {r.decision.reason})")
        if not r.passed:
            faults.append(f"policy test case {i} fails")
    if results:
        print(f"policy tests: {sum(r.passed for r in results)} passed, {sum(not r.passed for r in results)} failed")
    return faults


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.audit import replay
    from gateway.policy import failing_cases, load_policy
    from gateway.store import create_tables, make_store_engine

    since = args.since
    proposed_dir = await asyncio.to_thread(Path(args.policy_dir).resolve)
    try:
        proposed = await asyncio.to_thread(load_policy, proposed_dir, settings.sources)
    except ConfigError as exc:
        print(f"FAIL the proposed policy is invalid: {exc}")
        return EXIT_FAULT
    current = await asyncio.to_thread(load_policy, settings.policy.dir, settings.sources)
    window = f"since {clock.format_time(since)}" if since else "the whole trail"
    print(f"replay: reads (read, describe) in the audit trail, {window}, decided for (agent, dataset, read)")
    print(f"  current policy:  {settings.policy.dir}")
    print(f"  proposed policy: {proposed_dir}")
    print("  old decisions are the current policy's, not the records' (a record may have been refused for "
          "other reasons: a revocation, a bad request)")
    engine = make_store_engine(settings.store.url)
    try:
        await create_tables(engine)
        result = await replay.replay(engine, current, proposed, since)
    finally:
        await engine.dispose()
    for line in replay.report(result):
        print(terminal(line))  # agent names and datasets from the trail
    failing = await failing_cases(proposed)
    for f in failing:
        print(f"FAIL {f}")
    if failing:
        print(f"check: the proposed policy fails {len(failing)} of its policy tests (a reload would refuse it)")
        return EXIT_FAULT
    return EXIT_OK
