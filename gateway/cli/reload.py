"""`agentgate reload`: ask every replica sharing the store to reload the policy directory now, and record it."""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid

from gateway.cli import identity
from gateway.cli.arguments import Parser, Subcommands
from gateway.cli.exits import EXIT_OK
from gateway.common import clock
from gateway.config import Settings


def add_parser(sub: Subcommands, common: Parser) -> None:
    sub.add_parser("reload", parents=[common], help="ask every replica to reload the policy directory now")


def run(settings: Settings, args: argparse.Namespace) -> int:
    return asyncio.run(_reload(settings))


async def _reload(settings: Settings) -> int:
    """Written to the store (which every replica follows) and to the trail."""
    from gateway import audit
    from gateway.core.operations import OPERATIONS
    from gateway.services.reloader import request_reload
    from gateway.store import create_tables, make_store_engine

    actor = f"cli:{identity.user()}"
    engine = make_store_engine(settings.store.url)
    try:
        await create_tables(engine)
        await request_reload(engine, actor)
        await audit.record_once(engine, audit.AuditRecord(
            time=clock.now(), request_id=uuid.uuid4().hex, action=OPERATIONS["reload"].action, decision="allow",
            status=202,
            agent=actor, query=json.dumps({"requested": True, "dir": str(settings.policy.dir)}),
            reason="reload requested from the command line", transport="cli"))
        print("reload requested: every replica validates the policy directory and swaps it in "
              "(a refused change shows in /readyz)")
        return EXIT_OK
    finally:
        await engine.dispose()
