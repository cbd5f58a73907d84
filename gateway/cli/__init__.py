"""The `agentgate` command: `main` is the console script's entry point (`gateway.cli:main`).

Each subcommand calls the same services as the gateway. parser.py builds the arguments, one module per command
group adds its own and runs them (serve, check, explain, tokens, revocations, reload, approvals, audit, usage);
the exit codes are exits.py's.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from sqlalchemy.exc import SQLAlchemyError

from gateway.cli import approvals, audit, check, explain, logs, reload, revocations, serve, tokens, usage
from gateway.cli.exits import EXIT_FAULT, EXIT_OK, EXIT_USAGE
from gateway.cli.parser import build_parser
from gateway.common.errors import ConfigError
from gateway.config import Settings, find_config, load_settings

__all__ = ["main"]

# Each command, as the parser names it, and the runner its group module gives it.
_COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "serve": serve.run, "check": check.run, "token": tokens.run, "revoke": revocations.run,
    "restore": revocations.run, "reload": reload.run, "approvals": approvals.run, "approve": approvals.run,
    "deny": approvals.run, "audit": audit.run, "usage": usage.run, "explain": explain.run,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "check":
        check.validate(parser, args)
    logs.configure()
    settings = _settings(args)
    if not isinstance(settings, Settings):
        return settings
    run = _COMMANDS.get(args.command)
    try:
        if run is not None:
            return run(settings, args)
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


def _settings(args: argparse.Namespace) -> Settings | int:
    """The config file's settings, or the exit code of its one-line reason."""
    config = find_config(getattr(args, "config", None))
    if not config.is_file():
        print(f"agentgate: config file {config} not found (use --config or $AGENTGATE_CONFIG)", file=sys.stderr)
        return EXIT_USAGE
    if not os.access(config, os.R_OK):
        print(f"agentgate: config file {config} is not readable", file=sys.stderr)
        return EXIT_USAGE
    try:
        return load_settings(config)
    except ConfigError as exc:
        print(f"agentgate: {exc}", file=sys.stderr)
        return EXIT_FAULT
