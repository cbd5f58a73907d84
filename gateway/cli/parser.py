"""The whole `agentgate` argument parser: the --config every command takes, then each command group's own
subcommands, added in the order `agentgate --help` lists them."""

from __future__ import annotations

import argparse

from gateway.cli import approvals, audit, check, explain, reload, revocations, serve, tokens, usage
from gateway.cli.arguments import Parser, Version


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    # SUPPRESS: a --config given after a group name (`token --config X issue`) is not reset by the subcommand.
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="agentgate.toml (default: $AGENTGATE_CONFIG, else ./agentgate.toml)")
    p = Parser(prog="agentgate", description="A data-access gateway for AI agents.")
    p.add_argument("--version", action=Version)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    serve.add_parser(sub, common)
    check.add_parser(sub, common)
    explain.add_parser(sub, common)
    tokens.add_parser(sub, common)
    revocations.add_parser(sub, common)
    reload.add_parser(sub, common)
    approvals.add_parser(sub, common)
    audit.add_parser(sub, common)
    usage.add_parser(sub, common)
    return p
