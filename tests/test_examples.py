"""examples/agent_loop.py works as examples/README.md says. On a copy of the shipped demo (agentgate.toml,
policies/, demo/), served, the README's commands are run as written: a token from `agentgate token issue`, then the
example; when it prints the `agentgate approve` line, that line is run as the person would run it. The example
prints the README's expected output, exits 0, and the trail holds its records under its work unit: the masked
read, both refusals by the request ids it printed, the pending approval and the approved read."""

from __future__ import annotations

import json
import queue
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import pytest

import tests.serving
from tests.serving import env, serving

pytestmark = pytest.mark.system

REPO = Path(__file__).parent.parent
GUIDE = (REPO / "examples" / "README.md").read_text()
APPROVE = re.compile(r"\s*(agentgate approve \S+ --by \S+)\s*")
REQUEST = re.compile(r"\[request ([0-9a-f]+)\]")
STEP_TIMEOUT = 20.0  # each wait on the example (the whole test takes a few seconds on an idle machine)


def section(title: str) -> str:
    start = GUIDE.index(f"\n## {title}\n")
    end = GUIDE.find("\n## ", start + 1)
    return GUIDE[start:] if end < 0 else GUIDE[start:end]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def said(expected: str, printed: str) -> bool:
    """A printed line matches the README's; `...` in the README's stands for any text (an id)."""
    return re.fullmatch(".*".join(map(re.escape, expected.split("..."))), printed) is not None


def shipped(root: Path) -> Path:
    """The project directory as the README's reader has it: the shipped demo and the examples."""
    shutil.copy(REPO / "agentgate.toml", root / "agentgate.toml")
    for part in ("policies", "demo", "examples"):
        shutil.copytree(REPO / part, root / part)
    return root / "agentgate.toml"


def agentgate(root: Path, line: str) -> subprocess.CompletedProcess[str]:
    """An `agentgate ...` line of the README, run in the project directory (its ./agentgate.toml)."""
    words = shlex.split(line)
    assert words[0] == "agentgate", line
    return subprocess.run([sys.executable, "-m", "gateway.cli", *words[1:]], capture_output=True, text=True,
                          cwd=root, env=env(), timeout=60)


def lines_of(stream: TextIO) -> queue.Queue[str | None]:
    """The stream's lines as they come (None at its end), so that a test can wait for one with a deadline."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def read(lines: queue.Queue[str | None], printed: list[str], stop: re.Pattern[str] | None = None) -> str | None:
    """Collect the example's lines into `printed` until one matches `stop` (its first group is returned) or,
    with no `stop`, until the output ends. Each wait is bounded: a stuck example fails the test, with its output."""
    deadline = time.monotonic() + STEP_TIMEOUT
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"the example printed nothing for {STEP_TIMEOUT:g} s:\n" + "\n".join(printed))
        if line is None:
            assert stop is None, "the example ended before printing the approval command:\n" + "\n".join(printed)
            return None
        printed.append(line)
        found = stop.fullmatch(line) if stop else None
        if found:
            return found.group(1)


def commands() -> tuple[str, list[str], str]:
    """From the README: the agent whose token it mints, the example's command line, the work unit of the trail."""
    terminal = blocks(section("Running it: two terminals"), "sh")
    assert [block.strip() for block in terminal[:1]] == ["agentgate serve"]
    token, run = terminal[1].strip().splitlines()
    agent = re.fullmatch(r"export AGENTGATE_TOKEN=\$\(agentgate token issue --agent (\S+)\)", token)
    assert agent, token
    unit = re.fullmatch(r"agentgate audit list --work-unit (\S+)", terminal[2].strip())
    assert unit, terminal[2]
    return agent.group(1), shlex.split(run), unit.group(1)


def run_example(root: Path, base: str, agent: str, command: list[str]) -> tuple[int, list[str], str]:
    """The example as terminal 2 runs it; its approval given as the person would give it. Exit code, lines
    printed, stderr."""
    minted = agentgate(root, f"agentgate token issue --agent {agent}")
    assert minted.returncode == 0, minted.stderr
    assert command[0] == "python", command
    proc = subprocess.Popen([sys.executable, *command[1:]], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**env(), "AGENTGATE_URL": base, "AGENTGATE_TOKEN": minted.stdout.strip()})
    assert proc.stdout is not None and proc.stderr is not None
    printed: list[str] = []
    try:
        lines = lines_of(proc.stdout)
        line = read(lines, printed, APPROVE)
        assert line is not None
        approved = agentgate(root, line)
        assert approved.returncode == 0, approved.stdout + approved.stderr
        assert approved.stdout.startswith("approved "), approved.stdout
        read(lines, printed)
        code = proc.wait(STEP_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return code, printed, proc.stderr.read()


def trail(root: Path, unit: str) -> list[dict[str, Any]]:
    listed = agentgate(root, f"agentgate audit list --work-unit {unit} --json")
    assert listed.returncode == 0, listed.stderr
    return list(reversed(json.loads(listed.stdout)))  # oldest first, as the example made them


def test_the_example_runs_as_its_readme_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tests.serving, "START_TIMEOUT", 60.0)  # a first start seeds the demo database
    monkeypatch.delenv("AGENTGATE_JWT_SECRET", raising=False)  # the demo as shipped: its own secret
    agent, command, unit = commands()
    expected = blocks(section("What it prints"), "text")[0].splitlines()
    config = shipped(tmp_path)
    with serving(config, tmp_path / "serve.log") as base:
        code, printed, errors = run_example(tmp_path, base, agent, command)
        records = trail(tmp_path, unit)
    output = "\n".join(printed) + "\n" + errors
    assert code == 0, output
    assert len(printed) == len(expected), output
    for want, line in zip(expected, printed, strict=True):
        assert said(want, line), f"printed {line!r}, examples/README.md says {want!r}"
    check_trail(records, agent, printed)


def check_trail(records: list[dict[str, Any]], agent: str, printed: list[str]) -> None:
    """Every read of the run is on the trail under its work unit, each request id the example printed among
    them, each with the outcome the example reported."""
    assert records and {r["agent"] for r in records} == {agent}
    by_id = {r["request_id"]: r for r in records}
    shown = [REQUEST.search(line) for line in printed]
    ids = [m.group(1) for m in shown if m]
    assert len(ids) == 5 and set(ids) <= set(by_id), (ids, sorted(by_id))
    masked, filtered, refused, pending, approved = (by_id[i] for i in ids)
    assert (masked["dataset"], masked["decision"], masked["status"]) == ("customers", "allow", 200)
    assert json.loads(masked["masked"]) == ["email"] and masked["rows"] == 3  # the record's lists are JSON text
    assert (filtered["dataset"], filtered["decision"], filtered["status"]) == ("customers", "deny", 403)
    assert "masked column 'email'" in filtered["reason"]
    assert (refused["dataset"], refused["decision"], refused["status"]) == ("payroll", "deny", 403)
    assert (pending["dataset"], pending["decision"], pending["status"]) == ("customer_contacts", "pending", 202)
    assert (approved["dataset"], approved["decision"], approved["status"]) == ("customer_contacts", "allow", 200)
    assert approved["approved_by"].startswith("you@example.com (os: ") and approved["rows"] == 3
    assert json.loads(approved["masked"]) == []
    # Between the pending ask and the approved read, only the example's polls: pending again, nothing else.
    between = records[records.index(pending) + 1:records.index(approved)]
    assert all((r["dataset"], r["decision"]) == ("customer_contacts", "pending") for r in between), between
