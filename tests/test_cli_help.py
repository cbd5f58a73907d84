"""A command line that explains itself (issue 16): every command and option of `agentgate` has help, every default
is in it (gateway/cli/arguments.py's Help adds it), and `agentgate --version` names the installed version."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from importlib import metadata

import pytest

from gateway import cli
from gateway.cli.arguments import Help, Parser, shown_default
from gateway.cli.parser import build_parser

pytestmark = pytest.mark.unit


def _parsers(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """The parser and every subcommand's, each with its command line (`agentgate audit list`)."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def faults(parser: argparse.ArgumentParser, name: str = "agentgate") -> list[str]:
    """What the help lacks: a command or an option without help, an option whose default its help hides."""
    out: list[str] = []
    for command, p in _parsers(parser, name):
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {c.dest: c.help for c in action._choices_actions}
                out += [f"{command} {sub}: no help" for sub in action.choices if not helped.get(sub)]
                continue
            label = f"{command} {'/'.join(action.option_strings) or action.metavar or action.dest}"
            if not action.help or action.help == argparse.SUPPRESS:
                out.append(f"{label}: no help")
                continue
            shown = p._get_formatter()._expand_help(action)
            if shown_default(action) and (str(action.default) not in shown or "default" not in shown):
                out.append(f"{label}: the default {action.default!r} is not in its help {shown!r}")
    return out


def test_every_command_and_option_has_help_with_its_default() -> None:
    assert faults(build_parser()) == []


def test_the_walk_finds_what_is_missing() -> None:
    """The walk above can fail: a command, an option and a positional without help, and a default a formatter
    without Help leaves out."""
    p = Parser(prog="x", formatter_class=argparse.HelpFormatter)
    sub = p.add_subparsers(dest="command", parser_class=Parser)
    one = sub.add_parser("one", formatter_class=argparse.HelpFormatter)
    one.add_argument("--bare")
    one.add_argument("NAME")
    one.add_argument("--limit", type=int, default=100, help="at most N")
    sub.add_parser("two", help="the second")
    assert sorted(faults(p, "x")) == [
        "x one --bare: no help",
        "x one --limit: the default 100 is not in its help 'at most N'",
        "x one NAME: no help",
        "x one: no help",
    ]


def test_help_shows_real_defaults_only() -> None:
    """Help appends "(default: X)" once, and never for None, False, SUPPRESS or nothing appended."""
    texts = [p.format_help() for _, p in _parsers(build_parser(), "agentgate")]
    whole = "\n".join(texts)
    for hidden in ("(default: None)", "(default: False)", "(default: ==SUPPRESS==)", "(default: [])"):
        assert hidden not in whole
    token = next(p for name, p in _parsers(build_parser(), "agentgate") if name == "agentgate token issue")
    assert " ".join(token.format_help().split()).count("in seconds (default: 3600)") == 1
    listing = next(p for name, p in _parsers(build_parser(), "agentgate") if name == "agentgate audit list")
    assert "(default: 100)" in " ".join(listing.format_help().split())
    assert Help is build_parser().formatter_class


def test_every_subcommand_shows_the_defaults_formatter() -> None:
    for name, p in _parsers(build_parser(), "agentgate"):
        assert p.formatter_class is Help, name


def test_version_prints_the_installed_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--version"])
    assert stopped.value.code == 0
    out = capsys.readouterr()
    assert out.out == f"agentgate {metadata.version('agentgate')}\n"
    assert out.err == ""
