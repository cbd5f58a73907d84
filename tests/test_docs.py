"""The README documents every setting, every catalog key, every command and option, every error code."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from gateway.cli.parser import build_parser as _parser
from gateway.common import errors
from gateway.config import CONFIG_KEYS
from gateway.policy import DATASET_KEYS

pytestmark = pytest.mark.unit

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_config_key_is_documented() -> None:
    for table, keys in CONFIG_KEYS.items():
        if not table:
            continue
        for key in keys:
            assert f"`[{table}] {key}`" in README, f"[{table}] {key} is not documented in README.md"


def test_every_dataset_key_is_documented() -> None:
    for key in DATASET_KEYS:
        assert f"`{key}`" in README, f"datasets.toml key {key} is not documented"


def _commands(parser: argparse.ArgumentParser, prefix: str = "agentgate") -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.extend(_commands(sub, f"{prefix} {name}"))
            return out
    options = [s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
    return [(prefix, options)]


def test_every_command_and_option_is_documented() -> None:
    commands = _commands(_parser())
    assert len(commands) >= 6
    for command, options in commands:
        rows = [line for line in README.splitlines() if f"`{command}" in line]
        assert rows, f"{command} is not documented in README.md"
        for option in options:
            if option == "--config":
                continue  # documented once for all commands
            assert any(option in row for row in rows), f"{command} {option} is not documented"


def test_every_error_code_is_documented() -> None:
    codes = {cls.code for cls in vars(errors).values()
             if isinstance(cls, type) and issubclass(cls, errors.GatewayError) and cls is not errors.GatewayError}
    for code in codes:
        assert re.search(rf"\| `{code}` \|", README), f"error code {code} is not in the README's error table"
