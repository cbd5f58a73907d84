"""`agentgate token issue`: mint a token with the configured HS* secret, for development and demos."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from typing import Any

from gateway.cli import arguments
from gateway.cli.arguments import Parser, Subcommands
from gateway.cli.exits import EXIT_FAULT, EXIT_OK, EXIT_USAGE
from gateway.config import Settings


def add_parser(sub: Subcommands, common: Parser) -> None:
    t = sub.add_parser("token", parents=[common], help="tokens for development and demos").add_subparsers(
        dest="token_command", required=True, parser_class=Parser)
    ti = t.add_parser("issue", parents=[common], help="mint a token with the configured HS* secret")
    ti.add_argument("--agent", required=True, type=arguments.name)
    ti.add_argument("--ttl", type=arguments.int_in(0, 10**9), default=3600)
    ti.add_argument("--on-behalf-of", type=arguments.text)


def run(settings: Settings, args: argparse.Namespace) -> int:
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
