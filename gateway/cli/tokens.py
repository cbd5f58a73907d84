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

# Claims --claim may not set: those the command sets itself, and those that decide who the token names and when
# and where it is valid (--on-behalf-of has its own option).
RESERVED_CLAIMS = frozenset({"sub", "exp", "iat", "nbf", "aud", "iss", "jti", "on_behalf_of"})


def add_parser(sub: Subcommands, common: Parser) -> None:
    t = sub.add_parser("token", parents=[common], help="tokens for development and demos").add_subparsers(
        dest="token_command", required=True, parser_class=Parser)
    ti = t.add_parser("issue", parents=[common], help="mint a token with the configured HS* secret")
    ti.add_argument("--agent", required=True, type=arguments.name, help="the agent: the token's subject (sub)")
    ti.add_argument("--ttl", type=arguments.int_in(0, 10**9), default=3600, metavar="SECONDS",
                    help="how long the token is valid, in seconds")
    ti.add_argument("--on-behalf-of", type=arguments.text, metavar="WHO",
                    help="the person the agent works for (claim on_behalf_of, recorded in the audit trail)")
    ti.add_argument("--claim", type=arguments.claim(RESERVED_CLAIMS), action=arguments.Claims, metavar="KEY=VALUE",
                    help="a claim for row filters, repeatable; VALUE is read as JSON when it is JSON (42, true, "
                         "[\"eu\",\"us\"], {...}), else as text; not " + ", ".join(sorted(RESERVED_CLAIMS)))


def run(settings: Settings, args: argparse.Namespace) -> int:
    import jwt

    from gateway.auth.tokens import MAX_TOKEN_CHARS

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
    claims.update(args.claim or {})  # never one of RESERVED_CLAIMS: refused as the argument was read
    token = jwt.encode(claims, settings.auth.secret.reveal(), algorithm=hs[0])
    if len(token) > MAX_TOKEN_CHARS:
        print(f"agentgate: the token would be {len(token)} characters, over the {MAX_TOKEN_CHARS} the gateway "
              "accepts: fewer or smaller --claim values", file=sys.stderr)
        return EXIT_USAGE
    print(token)
    return EXIT_OK
