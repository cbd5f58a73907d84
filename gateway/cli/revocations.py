"""`agentgate revoke agent|token` and `agentgate restore agent|token`: stop an agent or one token on every replica
at once, or lift that stop. Written to the store (which every replica follows) and to the trail."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from typing import Any

from gateway.cli import arguments, identity
from gateway.cli.arguments import Parser, Subcommands
from gateway.cli.exits import EXIT_OK
from gateway.common import clock
from gateway.common.errors import ConfigError
from gateway.common.textsafe import terminal
from gateway.config import Settings


def add_parser(sub: Subcommands, common: Parser) -> None:
    rv = sub.add_parser("revoke", parents=[common],
                        help="stop an agent or one token, on every replica, at once").add_subparsers(
        dest="target", required=True, parser_class=Parser)
    rs = sub.add_parser("restore", parents=[common], help="lift a revocation").add_subparsers(
        dest="target", required=True, parser_class=Parser)
    for kind, label in (("agent", "NAME"), ("token", "JTI")):
        one = rv.add_parser(kind, parents=[common], help=f"revoke {'an agent' if kind == 'agent' else 'one token'}")
        one.add_argument("subject", metavar=label, type=arguments.text,
                         help="the agent's name (a token's sub)" if kind == "agent" else "the token's id (its jti)")
        one.add_argument("--reason", type=arguments.text, help="why, kept with the revocation and in the audit record")
        rs.add_parser(kind, parents=[common], help=f"lift the revocation of {label}").add_argument(
            "subject", metavar=label, type=arguments.text, help=f"the {kind} whose revocation is lifted")


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_act(settings, args))


async def _act(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.store import create_tables, make_store_engine

    actor = f"cli:{identity.user()}"
    engine = make_store_engine(settings.store.url)
    try:
        await create_tables(engine)
        if args.command == "revoke":
            return await _revoke(settings, engine, args, actor)
        return await _restore(engine, args, actor)
    finally:
        await engine.dispose()


async def _revoke(settings: Settings, engine: Any, args: argparse.Namespace, actor: str) -> int:
    from gateway.services import revocations

    kind, key = _subject(args)
    stored, created = await revocations.add(engine, kind, args.subject, args.reason, actor)
    acted: dict[str, Any] = {key: args.subject, "reason": args.reason}
    status, message = (201, f"revoked {kind} {args.subject} (revocation {stored.id})") if created else (
        200, f"{kind} {args.subject} was already revoked (revocation {stored.id}, by {stored.created_by} "
             f"at {stored.created_at}); nothing stored")
    await _record(engine, args, actor, status, acted, message)
    if kind == "agent":  # after the revocation is stored: never delay it
        doubt = await _unknown_agent(settings, engine, args.subject)
        if doubt:
            print(terminal(f"agentgate: warning: {doubt}; the revocation is stored all the same "
                           f"(revocation {stored.id})"), file=sys.stderr)
    return EXIT_OK


async def _restore(engine: Any, args: argparse.Namespace, actor: str) -> int:
    from gateway.services import revocations

    kind, key = _subject(args)
    lifted = await revocations.lift(engine, actor, kind=kind, subject=args.subject)
    acted: dict[str, Any] = {key: args.subject, "ids": [r.id for r in lifted]}
    status = 204 if lifted else 200
    message = (f"restored {kind} {args.subject} (lifted revocation {', '.join(str(r.id) for r in lifted)})"
               if lifted else f"{kind} {args.subject} had no active revocation; nothing to lift")
    await _record(engine, args, actor, status, acted, message)
    return EXIT_OK


def _subject(args: argparse.Namespace) -> tuple[str, str]:
    """What is revoked or restored (agent or token), and the key the audit record's query names it by."""
    return ("agent", "agent") if args.target == "agent" else ("token", "jti")


async def _record(engine: Any, args: argparse.Namespace, actor: str, status: int, acted: dict[str, Any],
                  message: str) -> None:
    """The act's audit record, then its line: what an operator typed is escaped on the terminal."""
    from gateway import audit
    from gateway.core.operations import OPERATIONS

    await audit.record_once(engine, audit.AuditRecord(
        time=clock.now(), request_id=uuid.uuid4().hex, action=OPERATIONS[args.command].action, decision="allow",
        status=status,
        agent=actor, query=json.dumps(acted), reason=message, transport="cli"))
    print(terminal(message))


async def _unknown_agent(settings: Settings, engine: Any, name: str) -> str | None:
    """Why `revoke agent NAME` may have missed (a typo, a role's name): None when a policy line or an audit
    record names that agent."""
    from sqlalchemy import select

    from gateway.policy import load_policy
    from gateway.store import audit as audit_table

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
