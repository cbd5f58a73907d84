"""What every command's arguments share: a parser whose errors are one line (exit 2), and the argument types
that refuse a bad value, with a one-line reason, before any command runs."""

from __future__ import annotations

import argparse
from typing import Any, TypeAlias

from gateway.cli.exits import EXIT_USAGE
from gateway.common import inputs


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2
        self.exit(EXIT_USAGE, f"agentgate: {message}\n")


# What add_subparsers(parser_class=Parser) returns, and each command group adds its own to: argparse names no public
# type for it.
Subcommands: TypeAlias = "argparse._SubParsersAction[Parser]"


def int_in(low: int, high: int) -> Any:
    """An argparse type: a whole number from low to high (else exit 2 with a one-line reason)."""
    def parse(value: str) -> int:
        number = inputs.whole(value)  # ASCII digits only: int() also reads '١٢' (12) and ' 12 '
        if number is None:
            raise argparse.ArgumentTypeError(f"{value[:40]!r} is not a whole number")
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{number} is not between {low} and {high}")
        return number
    return parse


def seconds(value: str) -> float:
    """An argparse type: a number of seconds, more than 0 and at most a day (else exit 2, one line)."""
    try:
        number = float(value) if value.isascii() else float("nan")
    except ValueError:
        number = float("nan")
    if not 0 < number <= 86_400:  # nan too
        raise argparse.ArgumentTypeError(f"{value[:40]!r} is not a number of seconds from 0 to 86400")
    return number


def since(value: str) -> Any:
    """An argparse type: an ISO 8601 time, or 7d / 24h / 30m / 90s before now (else exit 2, one line)."""
    from gateway.services.usage import parse_since  # imported when used: the CLI starts without SQLAlchemy's cost

    try:
        return parse_since(value)
    except ValueError:
        raise argparse.ArgumentTypeError("takes an ISO 8601 time or 7d / 24h / 30m") from None


def text(value: str) -> str:
    """An argparse type: text a store can hold. No NUL, and no lone surrogate, which is what argument bytes that
    are not UTF-8 become: no token can carry such a name, and no store can keep it."""
    if not inputs.holdable(value):
        raise argparse.ArgumentTypeError("must not hold NUL characters or bytes that are not UTF-8")
    return value


def name(value: str) -> str:
    text(value)
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def decider(value: str) -> str:
    named = name(value)
    if "(os:" in named.casefold():  # the gateway adds "(os: USER)" itself; a name carrying one would forge it
        raise argparse.ArgumentTypeError("must not contain '(os:'")
    return named
