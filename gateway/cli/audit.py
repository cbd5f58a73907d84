"""`agentgate audit list / verify / checkpoint / prune / export`: read, verify, sign, prune and export the trail."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Sequence
from typing import Any

from gateway.cli import arguments, identity
from gateway.cli.arguments import Parser, Subcommands
from gateway.cli.exits import EXIT_FAULT, EXIT_OK, EXIT_USAGE
from gateway.cli.retry import read_only
from gateway.common import clock, tracing
from gateway.common.textsafe import terminal
from gateway.config import Settings


def add_parser(sub: Subcommands, common: Parser) -> None:
    a = sub.add_parser("audit", parents=[common], help="read and verify the audit trail").add_subparsers(
        dest="audit_command", required=True, parser_class=Parser)
    al = a.add_parser("list", parents=[common], help="read the trail, newest first")
    al.add_argument("--agent", type=arguments.text, help="only this agent's records")
    al.add_argument("--dataset", type=arguments.text, help="only the records naming this dataset")
    al.add_argument("--decision", choices=["allow", "deny", "pending", "error"], help="only records with this decision")
    al.add_argument("--since", help="ISO 8601 time")
    al.add_argument("--until", help="ISO 8601 time")
    al.add_argument("--work-unit", type=arguments.text, help="only this unit of work's records (X-Work-Unit)")
    al.add_argument("--on-behalf-of", type=arguments.text, help="only records of reads for this person")
    al.add_argument("--trace-id", type=_trace_id, help=TRACE_ID_HELP)
    al.add_argument("--limit", type=arguments.int_in(0, 10**9), default=100, help="at most N records, the newest")
    al.add_argument("--json", action="store_true", help="the records as a JSON array, exact (not escaped)")
    av = a.add_parser("verify", parents=[common], help="check the hash chain, the anchor and the checkpoints")
    av.add_argument("--checkpoint", action="append", default=[], metavar="TOKEN",
                    help="a checkpoint kept elsewhere (from `audit checkpoint` or the log); repeatable")
    a.add_parser("checkpoint", parents=[common], help="sign the trail's current tail and print the checkpoint")
    ap = a.add_parser("prune", parents=[common], help="delete records older than a date, keeping the rest verifiable")
    ap.add_argument("--before", required=True, help="ISO 8601 date or time, at least [audit] min_retention_days ago")
    ap.add_argument("--dry-run", action="store_true", help="say how many records would be deleted; change nothing")
    ap.add_argument("--yes", action="store_true", help="do not ask for confirmation (needed without a terminal)")
    ae = a.add_parser("export", parents=[common], help="the trail as JSON lines or CSV, to stdout")
    ae.add_argument("--format", choices=["jsonl", "csv"], required=True, help="JSON lines or CSV (RFC 4180)")
    ae.add_argument("--since", help="ISO 8601 time")
    ae.add_argument("--trace-id", type=_trace_id, help=TRACE_ID_HELP)
    ae.add_argument("--follow", action="store_true",
                    help="keep going: print each new record as it commits (JSON lines only), until SIGINT/SIGTERM")
    ae.add_argument("--after", type=arguments.int_in(0, 2**63 - 1), default=0, metavar="ID",
                    help="only records with ids above ID: resume where the last run's last line left off")


TRACE_ID_HELP = "a trace's records: its W3C trace id (32 lowercase hex digits, as the answer's traceparent names it)"


def _trace_id(value: str) -> str:
    """An argparse type: a W3C trace id as records keep it (else exit 2, one line)."""
    if not tracing.is_trace_id(value):
        raise argparse.ArgumentTypeError("takes a W3C trace id: 32 lowercase hex digits, the second part of a "
                                         "traceparent (00-<trace id>-<span id>-<flags>)")
    return value


def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.audit_command == "export" and args.follow:
        if args.format != "jsonl":  # a CSV header and rows that never end are no file a spreadsheet opens
            print("agentgate: --follow writes JSON lines only: use --format jsonl", file=sys.stderr)
            return EXIT_USAGE
        # read_only may run it again only before its first line: once following, the follower keeps the store's
        # errors to itself (gateway/cli/follow.py) and never starts over.
        try:
            return read_only(lambda: asyncio.run(_audit(settings, args)))
        except KeyboardInterrupt:  # a ^C before the follower took the signal over: nothing half-written
            return EXIT_OK
    if args.audit_command in ("list", "export", "verify"):
        return read_only(lambda: asyncio.run(_audit(settings, args)))
    return asyncio.run(_audit(settings, args))


async def _audit(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.store import create_tables, make_store_engine

    engine = make_store_engine(settings.store.url)
    try:
        await create_tables(engine)
        key = settings.audit.checkpoint_key.reveal() if settings.audit.checkpoint_key else None
        if args.audit_command == "verify":
            return await _verify(engine, key, args.checkpoint)
        if args.audit_command == "checkpoint":
            return await _checkpoint(engine, key)
        if args.audit_command == "prune":
            return await _prune(settings, args, engine, key)
        return await _read(engine, args)
    finally:
        await engine.dispose()


async def _verify(engine: Any, key: str | None, checkpoints: Sequence[str]) -> int:
    from gateway.audit import integrity

    try:
        external = [integrity.parse_checkpoint(t) for t in checkpoints]
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


async def _checkpoint(engine: Any, key: str | None) -> int:
    from gateway.audit import integrity

    if key is None:
        print("agentgate: signed checkpoints need [audit] checkpoint_key in the config", file=sys.stderr)
        return EXIT_FAULT
    cp = await integrity.take_checkpoint(engine, key)
    print(cp.token() if cp else "the trail is empty: nothing to sign")
    return EXIT_OK


async def _read(engine: Any, args: argparse.Namespace) -> int:
    """audit list (newest first, a table or --json) and audit export (oldest first, streamed)."""
    from gateway import audit

    try:
        since = clock.parse_time(args.since) if args.since else None
        until = clock.parse_time(args.until) if getattr(args, "until", None) else None
    except ValueError:
        print("agentgate: --since/--until take an ISO 8601 time such as 2026-01-31T12:00:00Z", file=sys.stderr)
        return EXIT_USAGE
    if args.audit_command == "list":
        f = audit.AuditFilter(agent=args.agent, dataset=args.dataset, decision=args.decision, since=since,
                              until=until, work_unit=args.work_unit, on_behalf_of=args.on_behalf_of,
                              trace_id=args.trace_id)
        records = await audit.list_records(engine, f, limit=max(1, args.limit))
        if args.json:
            print(json.dumps([r.to_dict() for r in records], indent=2))
        else:
            _print_table(records)
        return EXIT_OK
    # No filter at all when none is asked for: an unfiltered follower checks that each record links to the last.
    chosen = audit.AuditFilter(since=since, trace_id=args.trace_id) if since or args.trace_id else None
    if args.follow:
        from gateway.cli import follow

        return await follow.follow(engine, args.after, chosen)
    out = sys.stdout
    # Read on a terminal, a CSV export is escaped like every listing (each record a line); to a file or a
    # pipe it is written exact. JSON lines escape control characters themselves.
    shown = args.format == "csv" and out.isatty()
    async for line in audit.export_lines(engine, args.format, chosen, after=args.after):
        out.write(terminal(line.removesuffix("\r\n")) + "\n" if shown else line)
    out.flush()
    return EXIT_OK


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


async def _prune(settings: Settings, args: argparse.Namespace, engine: Any, key: str | None) -> int:
    """audit prune: never into the future nor the retention period, never without a yes (asked on a terminal,
    or --yes), and never without its own record, written with the prune."""
    import datetime as dt

    from gateway import audit
    from gateway.audit import integrity
    from gateway.core.operations import OPERATIONS
    try:
        before = clock.parse_time(args.before)
    except ValueError:
        print("agentgate: --before takes an ISO 8601 date such as 2026-01-01", file=sys.stderr)
        return EXIT_USAGE
    cutoff, now = clock.format_time(before), clock.now()
    days = settings.audit.min_retention_days
    if before > now:
        print(f"agentgate: --before {cutoff} is in the future: prune deletes only records older than a past date",
              file=sys.stderr)
        return EXIT_USAGE
    if before > now - dt.timedelta(days=days):
        print(f"agentgate: --before {cutoff} is inside [audit] min_retention_days ({days}): the latest cut-off "
              f"allowed now is {clock.format_time(now - dt.timedelta(days=days))}", file=sys.stderr)
        return EXIT_USAGE
    count = await integrity.prunable(engine, before)
    if args.dry_run:
        print(f"dry run: {count} records before {cutoff} would be deleted; nothing was changed")
        return EXIT_OK
    if count and not args.yes:
        refused = await _confirm(count, cutoff)
        if refused is not None:
            return refused
    pruned, anchor = await integrity.prune(engine, before, key, audit.AuditRecord(
        time=clock.now(), request_id=uuid.uuid4().hex, action=OPERATIONS["prune"].action, decision="allow", status=200,
        agent=f"cli:{identity.user()}", transport="cli", client="cli"))
    if pruned and anchor is not None:
        print(f"pruned {pruned} records before {cutoff}; the trail now starts at record {anchor.first_id} "
              f"(the prune is record {anchor.record_id})")
    else:
        print(f"nothing to prune before {cutoff}")
    return EXIT_OK


async def _confirm(count: int, cutoff: str) -> int | None:
    """A person's yes, asked on a terminal: None when given, else the exit code (no terminal to ask on: 2, as a
    missing --yes; anything but yes: 1)."""
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
    return None
