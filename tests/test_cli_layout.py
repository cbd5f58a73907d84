"""The `agentgate` command's layout (gateway/cli/): every command the parser knows has its runner, and starting
the command costs no more than reading its arguments (the heavy parts are imported by the command that runs)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import cli
from gateway.cli.parser import build_parser

ROOT = Path(__file__).parent.parent
# Imported only by the commands that use them: `agentgate --help` or a bad argument must not pay for them.
HEAVY = ("gateway.app", "gateway.store", "gateway.services", "gateway.audit", "gateway.policy", "uvicorn", "jwt",
         "casbin", "prometheus_client", "starlette", "aiosqlite", "asyncpg")


@pytest.mark.unit
def test_every_command_has_its_runner() -> None:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(cli._COMMANDS)


@pytest.mark.system
def test_the_command_starts_without_the_heavy_modules() -> None:
    probe = ("import sys, gateway.cli; "
             f"print(' '.join(m for m in {HEAVY!r} if any(n == m or n.startswith(m + '.') for n in sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60,
                            check=True).stdout.split()
    assert loaded == []
