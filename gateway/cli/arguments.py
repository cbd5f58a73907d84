"""What every command's arguments share: a parser whose errors are one line (exit 2) and whose help says each
option's default, and the argument types that refuse a bad value, with a one-line reason, before any command runs."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TypeAlias

from gateway.cli.exits import EXIT_OK, EXIT_USAGE
from gateway.common import inputs


def shown_default(action: argparse.Action) -> bool:
    """Whether an option's help must say its default: it has one worth saying (not None, SUPPRESS, False or
    empty: an option left out, a flag not given, nothing appended)."""
    default = action.default
    if default is None or default is argparse.SUPPRESS or default is False:
        return False
    return not (isinstance(default, (list, tuple, dict, set, str)) and not default)


class Help(argparse.HelpFormatter):
    """argparse's own help, with "(default: X)" appended to an option's help that does not say it already, so
    no default is written twice (tests/test_cli_help.py walks every option)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if text and shown_default(action) and "%(default)" not in text and "(default" not in text:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # one line, exit 2
        self.exit(EXIT_USAGE, f"agentgate: {message}\n")


def installed_version() -> str:
    """The installed distribution's version (what pip installed), else the package's own."""
    from importlib import metadata

    try:
        return metadata.version("agentgate")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        import gateway

        return gateway.__version__


class Version(argparse.Action):
    """`agentgate --version`: `agentgate X.Y.Z` on stdout, exit 0. The version is looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        kwargs.setdefault("help", "print agentgate's version and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"agentgate {installed_version()}", file=sys.stdout)
        parser.exit(EXIT_OK)


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


CLAIM_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")  # a name a row filter's {claims.NAME} can reach


def claim(reserved: frozenset[str]) -> Any:
    """An argparse type: KEY=VALUE, a token claim. VALUE is JSON when it is valid JSON (a number, a list, an
    object, true/false, "quoted text"), else the text as given. KEY is a name, not one of `reserved`."""
    def parse(value: str) -> tuple[str, Any]:
        key, sep, raw = value.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{value[:40]!r} is not KEY=VALUE")
        if not CLAIM_KEY.match(key):
            raise argparse.ArgumentTypeError(f"{key[:40]!r} is not a claim name (letters, digits, '_', '-', "
                                             "starting with a letter or '_')")
        if key in reserved:
            raise argparse.ArgumentTypeError(f"the claim {key!r} is not set with --claim (reserved: "
                                             f"{', '.join(sorted(reserved))})")
        return key, _claim_value(key, raw)
    return parse


def _claim_value(key: str, raw: str) -> Any:
    try:
        try:  # NaN and Infinity are no JSON: such a value stays text
            parsed = json.loads(raw, parse_constant=_no_constant)
        except ValueError:
            parsed = raw
        held = all(inputs.holdable(t) for t in _texts(parsed))
    except RecursionError:  # a value nested a thousand deep, in json's decoder or in the walk
        raise argparse.ArgumentTypeError(f"the value of {key!r} is nested too deeply") from None
    if not held:
        raise argparse.ArgumentTypeError(f"the value of {key!r} holds NUL or bytes that are not UTF-8")
    return parsed


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _texts(value: Any) -> Iterator[str]:
    """Every string in a claim's value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _texts(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _texts(v)


class Claims(argparse.Action):
    """A repeatable --claim KEY=VALUE gathered into one dict; the same KEY twice is an argument error."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        key, value = values
        gathered = dict(getattr(namespace, self.dest, None) or {})
        if key in gathered:
            parser.error(f"argument {option_string}: the claim {key!r} is given twice")
        gathered[key] = value
        setattr(namespace, self.dest, gathered)
