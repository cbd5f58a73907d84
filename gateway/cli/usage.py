"""`agentgate usage`: requests, rows, bytes and source time per agent, dataset or unit of work, from the trail."""

from __future__ import annotations

import argparse
import asyncio
import json

from gateway.cli import arguments
from gateway.cli.arguments import Parser, Subcommands
from gateway.cli.exits import EXIT_OK
from gateway.cli.retry import read_only
from gateway.config import Settings


def add_parser(sub: Subcommands, common: Parser) -> None:
    u = sub.add_parser("usage", parents=[common], help="requests, rows, bytes and source time per unit")
    u.add_argument("--by", required=True, choices=["agent", "dataset", "work-unit"],
                   help="one line per agent, dataset or unit of work (X-Work-Unit)")
    u.add_argument("--since", type=arguments.since,
                   help="ISO 8601 time, or 7d / 24h / 30m before now (default: the whole trail)")
    u.add_argument("--json", action="store_true", help="a JSON array instead of a table")


def run(settings: Settings, args: argparse.Namespace) -> int:
    return read_only(lambda: asyncio.run(_usage(settings, args)))


async def _usage(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.services import usage
    from gateway.store import create_tables, make_store_engine

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
