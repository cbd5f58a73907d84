"""The `agentgate` command. Each subcommand calls the same services as the gateway.

Exit codes: 0 success, 1 a check found a fault, 2 bad arguments or a missing
or unreadable config file (always with a one-line reason); `serve` exits 3 when
it cannot start (a store it cannot reach, within --wait-for-store if given).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import getpass
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError, SQLAlchemyError

from gateway.common import inputs
from gateway.common.errors import ConfigError
from gateway.common.textsafe import SafeFormatter, terminal
from gateway.config.settings import Settings, find_config, load_settings

EXIT_OK, EXIT_FAULT, EXIT_USAGE = 0, 1, 2
APPROVALS_SHOWN = 50  # `approvals list`: the newest this many, unless --limit or --all says otherwise
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2
        self.exit(EXIT_USAGE, f"agentgate: {message}\n")


def _int_in(low: int, high: int) -> Any:
    """An argparse type: a whole number from low to high (else exit 2 with a one-line reason)."""
    def parse(value: str) -> int:
        number = inputs.whole(value)  # ASCII digits only: int() also reads '١٢' (12) and ' 12 '
        if number is None:
            raise argparse.ArgumentTypeError(f"{value[:40]!r} is not a whole number")
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{number} is not between {low} and {high}")
        return number
    return parse


def _seconds(value: str) -> float:
    """An argparse type: a number of seconds, more than 0 and at most a day (else exit 2, one line)."""
    try:
        number = float(value) if value.isascii() else float("nan")
    except ValueError:
        number = float("nan")
    if not 0 < number <= 86_400:  # nan too
        raise argparse.ArgumentTypeError(f"{value[:40]!r} is not a number of seconds from 0 to 86400")
    return number


def _since(value: str) -> Any:
    """An argparse type: an ISO 8601 time, or 7d / 24h / 30m / 90s before now (else exit 2, one line)."""
    from gateway.services.usage import parse_since  # imported when used: the CLI starts without SQLAlchemy's cost

    try:
        return parse_since(value)
    except ValueError:
        raise argparse.ArgumentTypeError("takes an ISO 8601 time or 7d / 24h / 30m") from None


def _text(value: str) -> str:
    """An argparse type: text a store can hold. No NUL, and no lone surrogate, which is what argument bytes that
    are not UTF-8 become: no token can carry such a name, and no store can keep it."""
    if not inputs.holdable(value):
        raise argparse.ArgumentTypeError("must not hold NUL characters or bytes that are not UTF-8")
    return value


def _name(value: str) -> str:
    _text(value)
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def _decider(value: str) -> str:
    name = _name(value)
    if "(os:" in name.casefold():  # the gateway adds "(os: USER)" itself; a name carrying one would forge it
        raise argparse.ArgumentTypeError("must not contain '(os:'")
    return name


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # SUPPRESS: a --config given after a group name (`token --config X issue`) is not reset by the subcommand.
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="agentgate.toml (default: $AGENTGATE_CONFIG, else ./agentgate.toml)")
    p = _Parser(prog="agentgate", description="A data-access gateway for AI agents.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("serve", parents=[common], help="run the gateway")
    s.add_argument("--host")
    s.add_argument("--port", type=_int_in(0, 65535))
    s.add_argument("--workers", type=_int_in(1, 1024), default=1)
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--wait-for-store", type=_seconds, metavar="SECONDS",
                   help="start even if the store is not reachable yet: answer 503 until it is, for up to SECONDS")

    c = sub.add_parser("check", parents=[common], help="validate config, model, policy, catalog and policy tests")
    c.add_argument("--replay", action="store_true",
                   help="replay the audit trail's reads against the policy in --policy-dir; list changed decisions")
    c.add_argument("--policy-dir", help="with --replay: the proposed policy directory")
    c.add_argument("--since", type=_since, help="with --replay: ISO 8601 time, or 7d / 24h / 30m before now")

    t = sub.add_parser("token", parents=[common], help="tokens for development and demos").add_subparsers(
        dest="token_command", required=True, parser_class=_Parser)
    ti = t.add_parser("issue", parents=[common], help="mint a token with the configured HS* secret")
    ti.add_argument("--agent", required=True, type=_name)
    ti.add_argument("--ttl", type=_int_in(0, 10**9), default=3600)
    ti.add_argument("--on-behalf-of", type=_text)

    rv = sub.add_parser("revoke", parents=[common],
                        help="stop an agent or one token, on every replica, at once").add_subparsers(
        dest="target", required=True, parser_class=_Parser)
    rs = sub.add_parser("restore", parents=[common], help="lift a revocation").add_subparsers(
        dest="target", required=True, parser_class=_Parser)
    for kind, label in (("agent", "NAME"), ("token", "JTI")):
        one = rv.add_parser(kind, parents=[common], help=f"revoke {'an agent' if kind == 'agent' else 'one token'}")
        one.add_argument("subject", metavar=label, type=_text)
        one.add_argument("--reason", type=_text)
        rs.add_parser(kind, parents=[common], help=f"lift the revocation of {label}").add_argument(
            "subject", metavar=label, type=_text)
    sub.add_parser("reload", parents=[common], help="ask every replica to reload the policy directory now")

    apl = sub.add_parser("approvals", parents=[common], help="reads waiting for a person's approval").add_subparsers(
        dest="approvals_command", required=True, parser_class=_Parser)
    apll = apl.add_parser("list", parents=[common], help="pending approvals, newest first, with the dataset owner")
    apll.add_argument("--all", action="store_true",
                      help="every approval: also approved and denied ones, and no limit unless --limit is given")
    apll.add_argument("--limit", type=_int_in(1, 2**31 - 1), default=None,
                      help=f"at most N, the newest (default {APPROVALS_SHOWN}; with --all, every one)")
    apll.add_argument("--json", action="store_true")
    for verb in ("approve", "deny"):
        dv = sub.add_parser(verb, parents=[common], help=f"{verb} a pending approval")
        dv.add_argument("approval_id", metavar="ID", type=_text)
        dv.add_argument("--by", required=True, type=_decider,
                        help="the person deciding (recorded as approved_by, with the operating-system user)")

    a = sub.add_parser("audit", parents=[common], help="read and verify the audit trail").add_subparsers(
        dest="audit_command", required=True, parser_class=_Parser)
    al = a.add_parser("list", parents=[common], help="read the trail, newest first")
    al.add_argument("--agent", type=_text)
    al.add_argument("--dataset", type=_text)
    al.add_argument("--decision", choices=["allow", "deny", "pending", "error"])
    al.add_argument("--since", help="ISO 8601 time")
    al.add_argument("--until", help="ISO 8601 time")
    al.add_argument("--work-unit", type=_text)
    al.add_argument("--on-behalf-of", type=_text)
    al.add_argument("--limit", type=_int_in(0, 10**9), default=100)
    al.add_argument("--json", action="store_true")
    av = a.add_parser("verify", parents=[common], help="check the hash chain, the anchor and the checkpoints")
    av.add_argument("--checkpoint", action="append", default=[], metavar="TOKEN",
                    help="a checkpoint kept elsewhere (from `audit checkpoint` or the log); repeatable")
    a.add_parser("checkpoint", parents=[common], help="sign the trail's current tail and print the checkpoint")
    ap = a.add_parser("prune", parents=[common], help="delete records older than a date, keeping the rest verifiable")
    ap.add_argument("--before", required=True, help="ISO 8601 date or time, at least [audit] min_retention_days ago")
    ap.add_argument("--dry-run", action="store_true", help="say how many records would be deleted; change nothing")
    ap.add_argument("--yes", action="store_true", help="do not ask for confirmation (needed without a terminal)")
    ae = a.add_parser("export", parents=[common], help="the trail as JSON lines or CSV, to stdout")
    ae.add_argument("--format", choices=["jsonl", "csv"], required=True)
    ae.add_argument("--since", help="ISO 8601 time")

    u = sub.add_parser("usage", parents=[common], help="requests, rows, bytes and source time per unit")
    u.add_argument("--by", required=True, choices=["agent", "dataset", "work-unit"])
    u.add_argument("--since", type=_since, help="ISO 8601 time, or 7d / 24h / 30m before now")
    u.add_argument("--json", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "check" and not args.replay and (args.policy_dir or args.since):
        parser.error("--policy-dir and --since need --replay")
    if args.command == "check" and args.replay and not args.policy_dir:
        parser.error("--replay needs --policy-dir NEW_DIR (the proposed policy)")
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter(LOG_FORMAT))  # agent input in a log line cannot break or fake lines
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("casbin").setLevel(logging.WARNING)  # it logs the whole model at INFO on every load
    config = find_config(getattr(args, "config", None))
    if not config.is_file():
        print(f"agentgate: config file {config} not found (use --config or $AGENTGATE_CONFIG)", file=sys.stderr)
        return EXIT_USAGE
    if not os.access(config, os.R_OK):
        print(f"agentgate: config file {config} is not readable", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print(f"agentgate: {exc}", file=sys.stderr)
        return EXIT_FAULT
    try:
        if args.command == "serve":
            return _serve(settings, args)
        if args.command == "check":
            if args.replay:
                return asyncio.run(_replay(settings, args))
            return asyncio.run(_check(settings))
        if args.command == "usage":
            return _read_only(lambda: asyncio.run(_usage(settings, args)))
        if args.command == "token":
            return _token(settings, args)
        if args.command == "audit":
            if args.audit_command in ("list", "export", "verify"):
                return _read_only(lambda: asyncio.run(_audit(settings, args)))
            return asyncio.run(_audit(settings, args))
        if args.command in ("revoke", "restore", "reload"):
            return asyncio.run(_admin(settings, args))
        if args.command in ("approvals", "approve", "deny"):
            return asyncio.run(_approvals(settings, args))
    except ConfigError as exc:
        print(f"agentgate: {exc}", file=sys.stderr)
        return EXIT_FAULT
    except BrokenPipeError:  # `agentgate audit export | head`
        return EXIT_OK
    except (SQLAlchemyError, OSError) as exc:
        print(f"agentgate: the store cannot be reached: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
              file=sys.stderr)
        return EXIT_FAULT
    return EXIT_USAGE


def _read_only(run: Callable[[], int], attempts: int = 5) -> int:
    """Run a command that only reads the store, again when a SQLite store is busy for a moment
    (another process closing it checkpoints the WAL under an exclusive lock). Never for writes."""
    for attempt in range(attempts):
        try:
            return run()
        except OperationalError as exc:
            if "database is locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    # Where metrics are kept is serve's to say (_group_metrics), before prometheus-client is imported: a directory
    # inherited from the environment may hold another run's numbers.
    for name in METRICS_DIR_VARIABLES:
        os.environ.pop(name, None)
    from gateway.app import create_app
    from gateway.auth import exposure
    from gateway.runtime import connections

    host = args.host or settings.server.host
    # The shipped demo secret mints tokens for anyone who reads this repository: this machine only.
    refused = exposure.refusal(settings.auth, host)
    if refused is not None:
        print(refused, file=sys.stderr)
        return EXIT_USAGE
    if exposure.uses_demo_secret(settings.auth):
        print(exposure.WARNING, file=sys.stderr)
    # Validate everything before binding the port, so a bad file is one clear line, not a traceback.
    code = asyncio.run(_preflight(settings))
    if code != EXIT_OK:
        return code
    if args.wait_for_store is None:  # a store not there: one clear line (storewait.py), not a traceback
        code = asyncio.run(_store_preflight(settings))
        if code != EXIT_OK:
            return code
    port = args.port if args.port is not None else settings.server.port
    # Bounded connections (gateway/runtime/connections.py): the open-file limit raised to the hard one (workers inherit
    # it), and the connection cap kept below it.
    connections.raise_open_files()
    room = connections.capacity(settings)
    if room.low:
        print(f"agentgate: warning: the open-file limit ({room.open_files}) leaves room for {room.max_connections} "
              f"connections, not [server] max_connections = {room.configured} ({room.reserved} are kept for the "
              "store and the sources); raise the hard limit (ulimit -Hn, LimitNOFILE=)", file=sys.stderr)
    common: dict[str, Any] = dict(host=host, port=port, log_level=args.log_level, access_log=False,
                                  proxy_headers=False, timeout_graceful_shutdown=10,
                                  log_config=_log_config(args.log_level), limits=connections.bounds(settings, room))
    if args.workers > 1:
        os.environ["AGENTGATE_CONFIG"] = str(settings.path)
        if args.wait_for_store is not None:
            from gateway.app import WAIT_FOR_STORE_VARIABLE

            os.environ[WAIT_FOR_STORE_VARIABLE] = repr(args.wait_for_store)
        with _group_metrics():
            connections.serve(connections.ServerConfig("gateway.app:app_from_env", factory=True,
                                                       workers=args.workers, **common))
    else:
        connections.serve(connections.ServerConfig(create_app(settings, wait_for_store=args.wait_for_store), **common))
    return EXIT_OK


METRICS_DIR_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
METRICS_DIR_PREFIX = "agentgate-metrics-"


@contextlib.contextmanager
def _group_metrics() -> Iterator[None]:
    """--workers N: a private directory where every worker keeps its metrics and from which a scrape adds up the
    whole group's (prometheus-client's multiprocess mode). Made empty before the workers start (they inherit
    $PROMETHEUS_MULTIPROC_DIR), removed once they have stopped, so no earlier run's numbers are ever added in;
    those a killed serve left behind go at the next start."""
    import shutil
    import tempfile

    for stale in Path(tempfile.gettempdir()).glob(f"{METRICS_DIR_PREFIX}*"):
        if not _alive(stale / "serve.pid"):
            shutil.rmtree(stale, ignore_errors=True)
    folder = tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX)  # 0700, ours alone
    (Path(folder) / "serve.pid").write_text(str(os.getpid()))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    try:
        yield
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(folder, ignore_errors=True)


def _alive(pid_file: Path) -> bool:
    """Whether the serve that wrote pid_file may still run: only a directory of ours whose serve is gone is not
    (one without its pid yet is a serve starting)."""
    try:
        if pid_file.parent.stat().st_uid != os.getuid():
            return True
        os.kill(int(pid_file.read_text()), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError):
        return True
    return True


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging plus the gateway's own loggers at --log-level. uvicorn applies it in every
    worker process too, which the parent's basicConfig does not reach (--workers N lost every line)."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["gateway"] = {"()": "gateway.common.textsafe.SafeFormatter", "fmt": LOG_FORMAT}
    config["formatters"]["default"]["()"] = "gateway.common.textsafe.uvicorn_formatter"  # uvicorn's lines too
    config["handlers"]["gateway"] = {"class": "logging.StreamHandler", "formatter": "gateway",
                                     "stream": "ext://sys.stderr"}
    config["root"] = {"handlers": ["gateway"], "level": level.upper()}
    config["loggers"]["casbin"] = {"level": "WARNING"}  # it logs the whole model at INFO on every load
    return config


async def _preflight(settings: Settings) -> int:
    from gateway.app import load_checked_policy
    from gateway.sources.opening import check_tables, open_sources

    try:
        policy = await load_checked_policy(settings)
        sources = await asyncio.to_thread(open_sources, settings.sources)
        try:
            await check_tables(policy.catalog, sources, settings.policy.dir / "datasets.toml",
                               strict_reachability=False)
        finally:
            for source in sources.values():
                await source.close()
    except ConfigError as exc:
        print(f"agentgate: {exc}", file=sys.stderr)
        return EXIT_FAULT
    return EXIT_OK


async def _store_preflight(settings: Settings) -> int:
    """The store answers, within [audit] write_timeout_seconds; else its one line and status 3."""
    from gateway.runtime.storewait import STARTUP_FAILURE, probe, unreachable_line
    from gateway.store.database import busy, make_store_engine

    url, wait = settings.store.url, settings.audit.write_timeout_seconds
    try:
        engine = make_store_engine(url, wait_seconds=wait)
        try:
            await probe(engine, wait + 1.0)
        finally:
            await engine.dispose()
    except Exception as exc:
        if busy(exc):  # SQLite locked by another process (a replica making the tables): the store is there
            return EXIT_OK
        print(terminal(unreachable_line(url, exc)), file=sys.stderr)
        return STARTUP_FAILURE
    return EXIT_OK


async def _check(settings: Settings) -> int:
    from gateway.policy.loader import approval_conflicts, lint, load_policy
    from gateway.sources.opening import check_tables, open_sources

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
    sources = await asyncio.to_thread(open_sources, settings.sources)
    table_faults: list[ConfigError] = []
    try:
        await check_tables(policy.catalog, sources, settings.policy.dir / "datasets.toml", strict_reachability=True,
                           faults=table_faults)
    finally:
        for source in sources.values():
            await source.close()
    faults.extend(str(f) for f in table_faults)
    if not table_faults:
        print("tables: every catalog table exists: ok")
    from gateway.runtime.storewait import report

    store_lines, store_fault = await report(settings.store.url, settings.audit.write_timeout_seconds)
    for line in store_lines:
        print(line)
    if store_fault is not None:
        faults.append(store_fault)
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
    lint_faults, warnings = lint(policy)
    warnings.extend(await approval_conflicts(policy))
    faults.extend(lint_faults)
    for w in warnings:
        print(f"warning: {w}")
    for f in faults:
        print(f"FAIL {f}")
    print("check: ok" if not faults else f"check: {len(faults)} fault(s)")
    return EXIT_FAULT if faults else EXIT_OK


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.audit import replay
    from gateway.audit.trail import format_time
    from gateway.policy.loader import failing_cases, load_policy
    from gateway.store.database import create_tables, make_store_engine

    since = args.since
    proposed_dir = await asyncio.to_thread(Path(args.policy_dir).resolve)
    try:
        proposed = await asyncio.to_thread(load_policy, proposed_dir, settings.sources)
    except ConfigError as exc:
        print(f"FAIL the proposed policy is invalid: {exc}")
        return EXIT_FAULT
    current = await asyncio.to_thread(load_policy, settings.policy.dir, settings.sources)
    window = f"since {format_time(since)}" if since else "the whole trail"
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


async def _usage(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.services import usage
    from gateway.store.database import create_tables, make_store_engine

    since = args.since
    engine = make_store_engine(settings.store.url)
    try:
        await create_tables(engine)
        units = await usage.usage(engine, args.by, since)
    finally:
        await engine.dispose()
    if args.json:
        key = usage.UNITS[args.by][1]
        print(json.dumps([u.to_dict(key, settings.cost) for u in units], indent=2))
    else:
        for line in usage.table(units, args.by, settings.cost):
            print(line)
    return EXIT_OK


def _token(settings: Settings, args: argparse.Namespace) -> int:
    import jwt

    hs = [a for a in settings.auth.algorithms if a.startswith("HS")]
    if not hs or settings.auth.secret is None:
        print("agentgate: token issue needs an HS* algorithm and [auth] secret in the config", file=sys.stderr)
        return EXIT_FAULT
    if args.ttl <= 0:
        print("agentgate: --ttl must be a positive number of seconds", file=sys.stderr)
        return EXIT_USAGE
    now = int(time.time())
    claims: dict[str, Any] = {"sub": args.agent, "iat": now, "exp": now + args.ttl, "jti": uuid.uuid4().hex}
    if settings.auth.audience:
        claims["aud"] = settings.auth.audience
    if settings.auth.issuer:
        claims["iss"] = settings.auth.issuer
    if args.on_behalf_of:
        claims["on_behalf_of"] = args.on_behalf_of
    print(jwt.encode(claims, settings.auth.secret.reveal(), algorithm=hs[0]))
    return EXIT_OK


async def _audit(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.audit import integrity
    from gateway.audit import trail as audit
    from gateway.store.database import create_tables, make_store_engine

    engine = make_store_engine(settings.store.url)
    try:
        await create_tables(engine)
        key = settings.audit.checkpoint_key.reveal() if settings.audit.checkpoint_key else None
        if args.audit_command == "verify":
            try:
                external = [integrity.parse_checkpoint(t) for t in args.checkpoint]
            except ValueError as exc:
                print(f"agentgate: {exc}", file=sys.stderr)
                return EXIT_USAGE
            if external and key is None:
                print("agentgate: checking a checkpoint needs [audit] checkpoint_key in the config", file=sys.stderr)
                return EXIT_USAGE
            report = await integrity.verify_all(engine, key, external)
            pruned = await integrity.last_prune(engine)
            if report.ok:
                extra = f", {report.checkpoints} checkpoints" if report.checkpoints else ""
                print(f"ok {report.count} records{extra}")
            else:
                print(terminal(f"FAIL record {report.bad_id}: {report.problem} ({report.count} records verified "
                               "before it)"))
            if pruned is not None:  # "ok N records" is only what is left: say where it starts and why
                print(terminal(pruned.line()))
            return EXIT_OK if report.ok else EXIT_FAULT
        if args.audit_command == "checkpoint":
            if key is None:
                print("agentgate: signed checkpoints need [audit] checkpoint_key in the config", file=sys.stderr)
                return EXIT_FAULT
            cp = await integrity.take_checkpoint(engine, key)
            print(cp.token() if cp else "the trail is empty: nothing to sign")
            return EXIT_OK
        if args.audit_command == "prune":
            return await _prune(settings, args, engine, key)
        try:
            since = audit.parse_time(args.since) if args.since else None
            until = audit.parse_time(args.until) if getattr(args, "until", None) else None
        except ValueError:
            print("agentgate: --since/--until take an ISO 8601 time such as 2026-01-31T12:00:00Z", file=sys.stderr)
            return EXIT_USAGE
        if args.audit_command == "list":
            f = audit.AuditFilter(agent=args.agent, dataset=args.dataset, decision=args.decision, since=since,
                                  until=until, work_unit=args.work_unit, on_behalf_of=args.on_behalf_of)
            records = await audit.list_records(engine, f, limit=max(1, args.limit))
            if args.json:
                print(json.dumps([r.to_dict() for r in records], indent=2))
            else:
                _print_table(records)
            return EXIT_OK
        out = sys.stdout
        # Read on a terminal, a CSV export is escaped like every listing (each record a line); to a file or a
        # pipe it is written exact. JSON lines escape control characters themselves.
        shown = args.format == "csv" and out.isatty()
        async for line in audit.export_lines(engine, args.format, audit.AuditFilter(since=since)):
            out.write(terminal(line.removesuffix("\r\n")) + "\n" if shown else line)
        out.flush()
        return EXIT_OK
    finally:
        await engine.dispose()


async def _prune(settings: Settings, args: argparse.Namespace, engine: Any, key: str | None) -> int:
    """audit prune: never into the future nor the retention period, never without a yes (asked on a terminal,
    or --yes), and never without its own record, written with the prune."""
    import datetime as dt

    from gateway.audit import integrity
    from gateway.audit import trail as audit
    try:
        before = audit.parse_time(args.before)
    except ValueError:
        print("agentgate: --before takes an ISO 8601 date such as 2026-01-01", file=sys.stderr)
        return EXIT_USAGE
    cutoff, now = audit.format_time(before), audit.now()
    days = settings.audit.min_retention_days
    if before > now:
        print(f"agentgate: --before {cutoff} is in the future: prune deletes only records older than a past date",
              file=sys.stderr)
        return EXIT_USAGE
    if before > now - dt.timedelta(days=days):
        print(f"agentgate: --before {cutoff} is inside [audit] min_retention_days ({days}): the latest cut-off "
              f"allowed now is {audit.format_time(now - dt.timedelta(days=days))}", file=sys.stderr)
        return EXIT_USAGE
    count = await integrity.prunable(engine, before)
    if args.dry_run:
        print(f"dry run: {count} records before {cutoff} would be deleted; nothing was changed")
        return EXIT_OK
    if count and not args.yes:
        if not sys.stdin.isatty():
            print(f"agentgate: prune would delete {count} records and needs a yes: run it on a terminal, or add "
                  "--yes", file=sys.stderr)
            return EXIT_USAGE
        sys.stderr.write(f"delete {count} records before {cutoff} from the audit trail? This cannot be undone "
                         "(an anchor keeps the rest verifiable) [y/N] ")
        sys.stderr.flush()
        answer = await asyncio.to_thread(sys.stdin.readline)
        if answer.strip().lower() not in ("y", "yes"):
            print("agentgate: prune cancelled; nothing was deleted", file=sys.stderr)
            return EXIT_FAULT
    pruned, anchor = await integrity.prune(engine, before, key, audit.AuditRecord(
        time=audit.now(), request_id=uuid.uuid4().hex, action="prune", decision="allow", status=200,
        agent=f"cli:{_user()}", transport="cli", client="cli"))
    if pruned and anchor is not None:
        print(f"pruned {pruned} records before {cutoff}; the trail now starts at record {anchor.first_id} "
              f"(the prune is record {anchor.record_id})")
    else:
        print(f"nothing to prune before {cutoff}")
    return EXIT_OK


async def _admin(settings: Settings, args: argparse.Namespace) -> int:
    """revoke / restore / reload: write to the store (which every replica follows) and to the trail."""
    from gateway.audit import trail as audit
    from gateway.services import revocations
    from gateway.services.reloader import request_reload
    from gateway.store.database import create_tables, make_store_engine

    actor = f"cli:{_user()}"
    engine = make_store_engine(settings.store.url)
    try:
        await create_tables(engine)
        if args.command == "reload":
            await request_reload(engine, actor)
            await audit.record_once(engine, audit.AuditRecord(
                time=audit.now(), request_id=uuid.uuid4().hex, action="reload", decision="allow", status=202,
                agent=actor, query=json.dumps({"requested": True, "dir": str(settings.policy.dir)}),
                reason="reload requested from the command line", transport="cli"))
            print("reload requested: every replica validates the policy directory and swaps it in "
                  "(a refused change shows in /readyz)")
            return EXIT_OK
        kind = "agent" if args.target == "agent" else "token"
        key = "agent" if kind == "agent" else "jti"
        if args.command == "revoke":
            stored, created = await revocations.add(engine, kind, args.subject, args.reason, actor)
            acted: dict[str, Any] = {key: args.subject, "reason": args.reason}
            status, message = (201, f"revoked {kind} {args.subject} (revocation {stored.id})") if created else (
                200, f"{kind} {args.subject} was already revoked (revocation {stored.id}, by {stored.created_by} "
                     f"at {stored.created_at}); nothing stored")
        else:
            lifted = await revocations.lift(engine, actor, kind=kind, subject=args.subject)
            acted = {key: args.subject, "ids": [r.id for r in lifted]}
            status = 204 if lifted else 200
            message = (f"restored {kind} {args.subject} (lifted revocation {', '.join(str(r.id) for r in lifted)})"
                       if lifted else f"{kind} {args.subject} had no active revocation; nothing to lift")
        await audit.record_once(engine, audit.AuditRecord(
            time=audit.now(), request_id=uuid.uuid4().hex, action=args.command, decision="allow", status=status,
            agent=actor, query=json.dumps(acted), reason=message, transport="cli"))
        print(terminal(message))
        if args.command == "revoke" and kind == "agent":  # after the revocation is stored: never delay it
            doubt = await _unknown_agent(settings, engine, args.subject)
            if doubt:
                print(terminal(f"agentgate: warning: {doubt}; the revocation is stored all the same "
                               f"(revocation {stored.id})"), file=sys.stderr)
        return EXIT_OK
    finally:
        await engine.dispose()


async def _unknown_agent(settings: Settings, engine: Any, name: str) -> str | None:
    """Why `revoke agent NAME` may have missed (a typo, a role's name): None when a policy line or an audit
    record names that agent."""
    from sqlalchemy import select

    from gateway.policy.loader import load_policy
    from gateway.store.database import audit as audit_table

    members: set[str] = set()
    roles: set[str] = set()
    try:
        policy = await asyncio.to_thread(load_policy, settings.policy.dir, settings.sources)
        members = {r.sub for r in policy.rules} | {member for member, _ in policy.groupings}
        roles = {role for _, role in policy.groupings}
    except ConfigError:
        pass  # an unreadable policy names nobody: the trail alone decides
    if name in roles:
        return (f"{name!r} is a role: revoking it as an agent stops only tokens whose subject is {name!r}, not "
                "the role's members (revoke each agent)")
    if name in members:
        return None
    async with engine.connect() as conn:
        seen = (await conn.execute(select(audit_table.c.id).where(audit_table.c.agent == name).limit(1))).first()
    return None if seen else f"no policy line and no audit record names the agent {name!r} (a typo?)"


async def _approvals(settings: Settings, args: argparse.Namespace) -> int:
    """approvals list / approve ID --by WHO / deny ID --by WHO: the store every replica reads, and the trail."""
    from gateway.audit import trail as audit
    from gateway.common.errors import Forbidden, Unavailable
    from gateway.services import approvals
    from gateway.store.database import create_tables, make_store_engine

    engine = make_store_engine(settings.store.url)
    try:
        await create_tables(engine)
        if args.command == "approvals":
            # Newest first, so a new request is never hidden behind old ones; one more than shown, to tell.
            shown = args.limit if args.limit is not None else None if args.all else APPROVALS_SHOWN
            items = await approvals.listing(engine, None if args.all else "pending",
                                            shown + 1 if shown is not None else None)
            if shown is not None and len(items) > shown:
                items = items[:shown]
                print(f"agentgate: the newest {shown} shown; more with --limit N or --all", file=sys.stderr)
            if args.json:
                print(json.dumps([a.to_dict() for a in items], indent=2))
            elif not items:
                print("no pending approvals" if not args.all else "no approvals")
            else:
                head = ("id", "requested_at", "agent", "dataset", "owner", "status", "decided_by", "query")
                rows = [tuple(terminal(str(a.to_dict()[k] or "-"))[:80] for k in head) for a in items]
                widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
                print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
                for r in rows:
                    print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
            return EXIT_OK
        user = _os_user()
        actor = f"cli:{_user()}"
        approve = args.command == "approve"
        try:
            decided = await approvals.decide(engine, args.approval_id, approve, args.by,
                                             settings.approvals.ttl_seconds, os_user=user)
        except Forbidden as exc:  # the agent that asked deciding its own approval: refused, and recorded
            await audit.record_once(engine, audit.AuditRecord(
                time=audit.now(), request_id=uuid.uuid4().hex, action=args.command, decision="deny", status=403,
                agent=actor, query=json.dumps({"approval_id": args.approval_id, "by": args.by, "os_user": user}),
                reason=exc.reason, transport="cli"))
            print(terminal(f"agentgate: refused: {exc.message}"), file=sys.stderr)
            return EXIT_FAULT
        if decided is None:
            print(terminal(f"agentgate: no pending approval {args.approval_id}"), file=sys.stderr)
            return EXIT_FAULT
        message = (f"{'approved' if approve else 'denied'} {decided.id}: {decided.agent} reading {decided.dataset}"
                   + (f", until {audit.format_time(decided.expires_at)}" if decided.expires_at else ""))
        await audit.record_once(engine, audit.AuditRecord(
            time=audit.now(), request_id=uuid.uuid4().hex, action=args.command, decision="allow", status=200,
            agent=actor, query=json.dumps({"approval_id": decided.id, "agent": decided.agent,
                                           "dataset": decided.dataset, "by": args.by, "os_user": user}),
            approved_by=decided.decided_by if approve else None, reason=message, transport="cli"))
        print(terminal(message))
        return EXIT_OK
    except Unavailable as exc:
        print(f"agentgate: {exc.message} ({exc.reason})", file=sys.stderr)
        return EXIT_FAULT
    finally:
        await engine.dispose()


def _print_table(records: Sequence[Any]) -> None:
    if not records:
        print("no records")
        return
    # token_id whole: it is what `revoke token` takes.
    head = ("id", "time", "agent", "token_id", "client", "action", "dataset", "decision", "status", "rows", "reason")
    # What agents wrote (names, datasets, reasons quoting them) is escaped: no record can move the cursor,
    # erase a line or start one (gateway/common/textsafe.py).
    rows = [(str(r.id), r.to_dict()["time"][:23] + "Z", terminal(r.agent or "-"), terminal(r.token_id or "-"),
             terminal(r.client or "-"), terminal(r.action), terminal(r.dataset or "-"), r.decision, str(r.status),
             "" if r.rows is None else str(r.rows), terminal(r.reason or "")[:60]) for r in records]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return str(os.getuid())


def _os_user() -> str:
    """The account this process runs as, from its user id: not from $USER or $LOGNAME, which whoever runs the
    command sets. Recorded beside an approver's self-declared name."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


