"""The README's Python client example works as written: against the Quickstart's demo (the shipped
agentgate.toml, policies/ and demo/, served), with a token from `agentgate token issue`, it prints what its
comments say."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tests.serving
from tests.serving import env, serving

pytestmark = pytest.mark.system

REPO = Path(__file__).parent.parent
README = (REPO / "README.md").read_text()
QUICKSTART_URL = "http://127.0.0.1:8080"


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def block(text: str, language: str) -> str:
    found = re.search(rf"```{language}\n(.*?)```", text, re.S)
    assert found, f"no {language} block"
    return found.group(1)


def said(comment: str, printed: str) -> bool:
    """A printed line matches its comment; `...` in the comment stands for any text."""
    return re.fullmatch(".*".join(map(re.escape, comment.split("..."))), printed) is not None


def test_the_readme_example_prints_what_it_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tests.serving, "START_TIMEOUT", 60.0)  # a first start seeds the demo database
    for part in ("policies", "demo"):
        shutil.copytree(REPO / part, tmp_path / part)
    config = tmp_path / "agentgate.toml"
    shutil.copy(REPO / "agentgate.toml", config)
    text = section("Python client")
    command = block(text, "sh").strip()
    agent = re.fullmatch(r"export AGENTGATE_TOKEN=\$\(agentgate token issue --agent (\S+)\)", command)
    assert agent, command
    code = block(text, "python")
    assert len([line for line in code.splitlines() if line.strip()]) == 5, "the README promises five lines"
    with serving(config, tmp_path / "serve.log") as base:
        minted = subprocess.run([sys.executable, "-m", "gateway.cli", "token", "issue", "--agent", agent.group(1),
                                 "--config", str(config)], capture_output=True, text=True, env=env(), timeout=60)
        assert minted.returncode == 0, minted.stderr
        ran = subprocess.run([sys.executable, "-c", code.replace(QUICKSTART_URL, base)], capture_output=True,
                             text=True, env={**env(), "AGENTGATE_TOKEN": minted.stdout.strip()}, timeout=60)
    assert ran.returncode == 0, ran.stderr
    comments = [line.split("  # ", 1)[1] for line in code.splitlines() if "print(" in line and "  # " in line]
    printed = ran.stdout.splitlines()
    assert len(comments) == len(printed) == 1, ran.stdout
    for comment, line in zip(comments, printed, strict=True):
        assert said(comment, line), f"printed {line!r}, the README says {comment!r}"
