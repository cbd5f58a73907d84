"""`agentgate serve`: validate everything, then run the gateway, in one process or a group of workers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

from gateway.cli import arguments, groupmetrics, logs
from gateway.cli.arguments import Parser, Subcommands
from gateway.cli.exits import EXIT_FAULT, EXIT_OK, EXIT_USAGE
from gateway.common.errors import ConfigError
from gateway.common.textsafe import terminal
from gateway.config import Settings


def add_parser(sub: Subcommands, common: Parser) -> None:
    s = sub.add_parser("serve", parents=[common], help="run the gateway")
    s.add_argument("--host", help="the address to listen on (default: [server] host in the config)")
    s.add_argument("--port", type=arguments.int_in(0, 65535),
                   help="the port to listen on (default: [server] port in the config)")
    s.add_argument("--workers", type=arguments.int_in(1, 1024), default=1,
                   help="worker processes sharing the port and the store")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="the least severe log lines written, to stderr (default: [log] level in the config, else "
                        "info; this option wins over it)")
    s.add_argument("--wait-for-store", type=arguments.seconds, metavar="SECONDS",
                   help="start even if the store is not reachable yet: answer 503 until it is, for up to SECONDS "
                        "(default: stop at once, exit 3, when the store cannot be reached)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    groupmetrics.forget_inherited()
    from gateway.auth import exposure

    logs.configure(settings.log, _log_level(settings, args))  # from here on every line in [log] format
    host = args.host or settings.server.host
    # The shipped demo secret mints tokens for anyone who reads this repository: this machine only.
    refused = exposure.refusal(settings.auth, host)
    if refused is not None:
        logs.say(refused, logging.ERROR)
        return EXIT_USAGE
    if exposure.uses_demo_secret(settings.auth):
        logs.say(exposure.WARNING)
    # Validate everything before binding the port, so a bad file is one clear line, not a traceback.
    code = asyncio.run(_preflight(settings))
    if code != EXIT_OK:
        return code
    if args.wait_for_store is None:  # a store not there: one clear line (storewait.py), not a traceback
        code = asyncio.run(_store_preflight(settings))
        if code != EXIT_OK:
            return code
    _listen(settings, args, host)
    return EXIT_OK


def _log_level(settings: Settings, args: argparse.Namespace) -> str:
    """--log-level, else [log] level, else info."""
    return str(args.log_level or settings.log.level or "info")


def _listen(settings: Settings, args: argparse.Namespace, host: str) -> None:
    from gateway.app import create_app
    from gateway.runtime import connections

    port = args.port if args.port is not None else settings.server.port
    # Bounded connections (gateway/runtime/connections.py): the open-file limit raised to the hard one (workers inherit
    # it), and the connection cap kept below it.
    connections.raise_open_files()
    room = connections.capacity(settings)
    if room.low:
        logs.say(f"agentgate: warning: the open-file limit ({room.open_files}) leaves room for {room.max_connections} "
                 f"connections, not [server] max_connections = {room.configured} ({room.reserved} are kept for the "
                 "store and the sources); raise the hard limit (ulimit -Hn, LimitNOFILE=)")
    level = _log_level(settings, args)
    # uvicorn's access log off: the gateway's (transports/accesslog.py) is the one line per request.
    options: dict[str, Any] = dict(host=host, port=port, log_level=level, access_log=False,
                                   proxy_headers=False, timeout_graceful_shutdown=10,
                                   log_config=logs.uvicorn_config(level, settings.log),
                                   limits=connections.bounds(settings, room))
    if args.workers > 1:
        _listen_as_group(settings, args, options)
    else:
        connections.serve(connections.ServerConfig(create_app(settings, wait_for_store=args.wait_for_store), **options))


def _listen_as_group(settings: Settings, args: argparse.Namespace, options: dict[str, Any]) -> None:
    """--workers N: each worker builds its app from the environment (gateway.app:app_from_env)."""
    from gateway.runtime import connections

    os.environ["AGENTGATE_CONFIG"] = str(settings.path)
    if args.wait_for_store is not None:
        from gateway.app import WAIT_FOR_STORE_VARIABLE

        os.environ[WAIT_FOR_STORE_VARIABLE] = repr(args.wait_for_store)
    with groupmetrics.group_metrics():
        connections.serve(connections.ServerConfig("gateway.app:app_from_env", factory=True,
                                                   workers=args.workers, **options))


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
        logs.say(f"agentgate: {exc}", logging.ERROR)
        return EXIT_FAULT
    return EXIT_OK


async def _store_preflight(settings: Settings) -> int:
    """The store answers, within [audit] write_timeout_seconds; else its one line and status 3."""
    from gateway.runtime.storewait import STARTUP_FAILURE, probe, unreachable_line
    from gateway.store import busy, make_store_engine

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
        logs.say(terminal(unreachable_line(url, exc)), logging.ERROR)
        return STARTUP_FAILURE
    return EXIT_OK
