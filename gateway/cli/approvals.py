"""`agentgate approvals list`, `agentgate approve ID --by WHO`, `agentgate deny ID --by WHO`: reads waiting for a
person's approval, in the store every replica reads; each decision is recorded in the trail."""

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
from gateway.cli.exits import EXIT_FAULT, EXIT_OK
from gateway.common import clock
from gateway.common.errors import Forbidden, Unavailable
from gateway.common.textsafe import terminal
from gateway.config import Settings

APPROVALS_SHOWN = 50  # `approvals list`: the newest this many, unless --limit or --all says otherwise


def add_parser(sub: Subcommands, common: Parser) -> None:
    apl = sub.add_parser("approvals", parents=[common], help="reads waiting for a person's approval").add_subparsers(
        dest="approvals_command", required=True, parser_class=Parser)
    apll = apl.add_parser("list", parents=[common], help="pending approvals, newest first, with the dataset owner")
    apll.add_argument("--all", action="store_true",
                      help="every approval: also approved and denied ones, and no limit unless --limit is given")
    apll.add_argument("--limit", type=arguments.int_in(1, 2**31 - 1), default=None,
                      help=f"at most N, the newest (default {APPROVALS_SHOWN}; with --all, every one)")
    apll.add_argument("--json", action="store_true", help="the approvals as a JSON array")
    for verb in ("approve", "deny"):
        dv = sub.add_parser(verb, parents=[common], help=f"{verb} a pending approval")
        dv.add_argument("approval_id", metavar="ID", type=arguments.text, help="the approval's id (approvals list)")
        dv.add_argument("--by", required=True, type=arguments.decider,
                        help="the person deciding (recorded as approved_by, with the operating-system user)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_approvals(settings, args))


async def _approvals(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.store import create_tables, make_store_engine

    engine = make_store_engine(settings.store.url)
    try:
        await create_tables(engine)
        if args.command == "approvals":
            return await _list(engine, args)
        return await _decide(settings, engine, args)
    except Unavailable as exc:
        print(f"agentgate: {exc.message} ({exc.reason})", file=sys.stderr)
        return EXIT_FAULT
    finally:
        await engine.dispose()


async def _list(engine: Any, args: argparse.Namespace) -> int:
    from gateway.services import approvals

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
        _print_table(items)
    return EXIT_OK


def _print_table(items: Sequence[Any]) -> None:
    head = ("id", "requested_at", "agent", "dataset", "owner", "status", "decided_by", "query")
    rows = [tuple(terminal(str(a.to_dict()[k] or "-"))[:80] for k in head) for a in items]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


async def _decide(settings: Settings, engine: Any, args: argparse.Namespace) -> int:
    """approve / deny: refused (and recorded) when the decider is the agent that asked or whom it asked for."""
    from gateway import audit
    from gateway.core.operations import OPERATIONS
    from gateway.services import approvals

    user = identity.os_user()
    actor = f"cli:{identity.user()}"
    approve = args.command == "approve"
    action = OPERATIONS["approve" if approve else "deny_approval"].action  # "approve" / "deny", as the API's
    try:
        decided = await approvals.decide(engine, args.approval_id, approve, args.by,
                                         settings.approvals.ttl_seconds, os_user=user)
    except Forbidden as exc:  # the agent that asked deciding its own approval: refused, and recorded
        await audit.record_once(engine, audit.AuditRecord(
            time=clock.now(), request_id=uuid.uuid4().hex, action=action, decision="deny", status=403,
            agent=actor, query=json.dumps({"approval_id": args.approval_id, "by": args.by, "os_user": user}),
            reason=exc.reason, transport="cli"))
        print(terminal(f"agentgate: refused: {exc.message}"), file=sys.stderr)
        return EXIT_FAULT
    if decided is None:
        print(terminal(f"agentgate: no pending approval {args.approval_id}"), file=sys.stderr)
        return EXIT_FAULT
    message = (f"{'approved' if approve else 'denied'} {decided.id}: {decided.agent} reading {decided.dataset}"
               + (f", until {clock.format_time(decided.expires_at)}" if decided.expires_at else ""))
    await audit.record_once(engine, audit.AuditRecord(
        time=clock.now(), request_id=uuid.uuid4().hex, action=action, decision="allow", status=200,
        agent=actor, query=json.dumps({"approval_id": decided.id, "agent": decided.agent,
                                       "dataset": decided.dataset, "by": args.by, "os_user": user}),
        approved_by=decided.decided_by if approve else None, reason=message, transport="cli"))
    print(terminal(message))
    return EXIT_OK
