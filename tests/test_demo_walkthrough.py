"""The README's "Try it" walkthrough works as written. On a copy of the shipped demo (agentgate.toml, policies/,
demo/), served as the Quickstart serves it, the section's first block (following the trail) runs in the background
as the second shell would, and its second block runs in one bash as the third shell would: every command exits 0
and prints what the `#` lines right under it say. Each control's result is then checked on its own: e-mail masked,
the 403, the pending 202 then the approved read, the 429 once the budget's requests are spent, only the token's
region, the HTTP source's file, the refused path; and the followed trail holds a record of each."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import tests.serving
from tests.serving import env, serving

pytestmark = pytest.mark.system

REPO = Path(__file__).parent.parent
README = (REPO / "README.md").read_text()
QUICKSTART_URL = "http://127.0.0.1:8080"
STEP = "@@walkthrough-step@@"
EXIT = re.compile(r"@@walkthrough-exit (\d+)@@")
CATCH_UP_SECONDS = 20.0


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)
    printed: list[str] = field(default_factory=list)
    code: int | None = None


def section(title: str) -> str:
    start = README.index(f"\n### {title}\n")
    ends = [i for i in (README.find("\n## ", start + 1), README.find("\n### ", start + 1)) if i >= 0]
    return README[start:min(ends)] if ends else README[start:]


def blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def steps(block: str) -> list[Step]:
    """The block's commands (a line ending in `\\` goes on), each with the output its `#` lines show: those right
    under it (no blank line between), `#  ` continuing the line above. Other `#` lines are the story."""
    out: list[Step] = []
    current: Step | None = None  # the command whose output the next `#` lines show
    going_on = False
    for line in block.splitlines():
        if not line.strip():
            current = None
        elif going_on and current is not None:
            current.command += "\n" + line
        elif line.startswith("#"):
            if current is None:
                continue
            if line.startswith("#  "):
                assert current.expected, f"a continuation with no line above it: {line!r}"
                current.expected[-1] += line[3:]
            else:
                assert line.startswith("# "), line
                current.expected.append(line[2:])
        else:
            current = Step(line)
            out.append(current)
        going_on = current is not None and line.endswith("\\") and not line.startswith("#")
    return out


def said(expected: str, printed: str) -> bool:
    """A printed line matches the README's; `...` in the README's stands for any text."""
    return re.fullmatch(".*".join(map(re.escape, expected.split("..."))), printed) is not None


def shims(root: Path) -> Path:
    """`agentgate` and `python` as the README's shell finds them in the activated venv: this checkout, this
    interpreter (whether or not the venv has the entry point installed)."""
    folder = root / "bin"
    folder.mkdir()
    for name, run in (("agentgate", f'"{sys.executable}" -m gateway.cli'), ("python", f'"{sys.executable}"')):
        shim = folder / name
        shim.write_text(f'#!/bin/sh\nexec {run} "$@"\n')
        shim.chmod(0o755)
    return folder


def shell_env(root: Path) -> dict[str, str]:
    environ = env()
    environ["PATH"] = f"{shims(root)}:{environ.get('PATH', '/usr/bin:/bin')}"
    environ["PYTHONPATH"] = str(REPO)
    return environ


def script(walk: list[Step], base: str) -> str:
    """The block as one bash script, each command's output between markers, its exit status after it. Before the
    budget's first request, a wait if the minute is about to turn: the budget counts per minute of the clock."""
    lines: list[str] = []
    budgeted = False
    for step in walk:
        if "$TRIAL" in step.command and not budgeted:
            budgeted = True
            lines.append("python -c 'import time; s = time.time() % 60; time.sleep(61 - s if s > 45 else 0)'")
        lines += [f"printf '\\n%s\\n' '{STEP}'", step.command.replace(QUICKSTART_URL, base),
                  "printf '\\n@@walkthrough-exit %s@@\\n' \"$?\""]
    return "\n".join(lines) + "\n"


def run_walk(root: Path, walk: list[Step], base: str, environ: dict[str, str]) -> None:
    ran = subprocess.run(["bash", "-c", script(walk, base)], cwd=root, env=environ, capture_output=True, text=True,
                         timeout=300)
    chunks = ran.stdout.split(f"\n{STEP}\n")[1:]
    assert len(chunks) == len(walk), ran.stdout + ran.stderr
    for step, chunk in zip(walk, chunks, strict=True):
        found = EXIT.search(chunk)
        assert found, chunk
        step.code = int(found.group(1))
        step.printed = [line.rstrip() for line in chunk[:found.start()].splitlines() if line.strip()]
    for step in walk:
        assert step.code == 0, f"{step.command}\nexited {step.code}:\n" + "\n".join(step.printed) + ran.stderr
        if step.expected:
            shown = "\n".join(step.printed)
            assert len(step.printed) == len(step.expected), f"{step.command}\nprinted:\n{shown}\n" + ran.stderr
            for want, line in zip(step.expected, step.printed, strict=True):
                assert said(want, line), f"{step.command}\nprinted {line!r}\nthe README says {want!r}"


# --- each control's result, on its own --------------------------------------------------------------------------

def answer(step: Step) -> tuple[Any, int]:
    """A `curl -w ' %{http_code}'` step's JSON body and status."""
    body, status = "\n".join(step.printed).rsplit(" ", 1)
    return json.loads(body), int(status)


def masked(step: Step) -> None:
    body, status = answer(step)
    assert status == 200 and body["masked"] == ["email"] and body["rows"], body
    assert all(row["email"] is None for row in body["rows"]), body


def denied(step: Step) -> None:
    body, status = answer(step)
    assert (status, body["error"]["code"]) == (403, "forbidden"), body


def pending(step: Step) -> None:
    body, status = answer(step)
    assert (status, body["error"]["code"]) == (202, "approval_pending") and body["approval_id"], body


def approved(step: Step) -> None:
    body, status = answer(step)
    assert status == 200 and body["masked"] == [] and body["rows"], body
    assert all("@" in row["email"] for row in body["rows"]), body


def regional_rows(step: Step) -> None:
    body, status = answer(step)
    assert status == 200 and body["rows"], body
    assert {row["region"] for row in body["rows"]} == {"EU"}, body


def regional_count(step: Step) -> None:
    body, status = answer(step)
    assert status == 200 and [row["region"] for row in body["rows"]] == ["EU"], body


def every_region(step: Step) -> None:
    body, status = answer(step)
    assert status == 200 and [row["region"] for row in body["rows"]] == ["EU", "UK", "US"], body


def budget_spent(step: Step) -> None:
    assert step.printed == ["200", "200", "200", "429"], step.printed


def still_spent(step: Step) -> None:
    body, status = answer(step)
    assert (status, body["error"]["code"]) == (429, "budget_exceeded"), body


def article(step: Step) -> None:
    body, status = answer(step)
    assert status == 200, body
    assert body == json.loads((REPO / "demo" / "helpdesk" / "articles" / "refunds.json").read_text()), body


def path_refused(step: Step) -> None:
    body, status = answer(step)
    assert (status, body["error"]["code"]) == (400, "bad_request"), body


# Which step shows which control: every word of the key in its command (and none of its `but` words).
CONTROLS: list[tuple[tuple[str, ...], tuple[str, ...], Callable[[Step], None]]] = [
    (("$ANALYST", "/customers/query"), (), masked),
    (("$SUPPORT", "/orders/query"), (), denied),
    (("$ANALYST", "/customer_contacts/query"), ("X-Approval-Id",), pending),
    (("$ANALYST", "/customer_contacts/query", "X-Approval-Id: $ID"), (), approved),
    (("$REGIONAL", "/orders/query"), (), regional_rows),
    (("$REGIONAL", "/v1/sql"), (), regional_count),
    (("$ANALYST", "/v1/sql", "FROM orders"), (), every_region),
    (("$TRIAL", "for i in 1 2 3 4"), (), budget_spent),
    (("$TRIAL", "/customers/query"), ("for i in",), still_spent),
    (("$SUPPORT", "/help_articles/proxy/refunds.json"), (), article),
    (("$SUPPORT", "/help_articles/proxy/..%2f"), (), path_refused),
]


def check_controls(walk: list[Step]) -> None:
    for words, but, check in CONTROLS:
        shown = [s for s in walk if all(w in s.command for w in words) and not any(w in s.command for w in but)]
        assert len(shown) == 1, f"the walkthrough has {len(shown)} steps for {check.__name__} ({words})"
        check(shown[0])


# --- the trail, followed ------------------------------------------------------------------------------------------

def collect(proc: subprocess.Popen[str], into: list[str]) -> threading.Thread:
    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            into.append(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def trail(root: Path, environ: dict[str, str]) -> list[dict[str, Any]]:
    listed = subprocess.run(["agentgate", "audit", "list", "--json", "--limit", "1000"], cwd=root, env=environ,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    return list(reversed(json.loads(listed.stdout)))


def check_followed(followed: list[dict[str, Any]], records: list[dict[str, Any]], walk: list[Step]) -> None:
    """The followed trail is the trail, in order, and holds a record of each control."""
    assert [r["id"] for r in followed] == [r["id"] for r in records]
    verified = [s for s in walk if s.command == "agentgate audit verify"]
    assert len(verified) == 1 and verified[0].printed == [f"ok {len(records)} records"], verified
    seen = [(r["agent"], r["action"], r["dataset"], r["decision"], r["status"]) for r in followed]
    assert ("analyst-bot", "read", "customers", "allow", 200) in seen
    assert ("support-bot", "read", "orders", "deny", 403) in seen
    assert ("analyst-bot", "read", "customer_contacts", "pending", 202) in seen
    decision = next(r for r in followed if r["action"] == "approve")
    assert decision["decision"] == "allow" and '"by": "maria.keller@example.com"' in decision["query"]
    read = next(r for r in followed if (r["dataset"], r["decision"]) == ("customer_contacts", "allow"))
    assert read["approved_by"].startswith("maria.keller@example.com (os: "), read
    regional = [r for r in followed if r["agent"] == "regional-bot"]
    assert regional and all(r["row_filter"].endswith('[regional-analyst] region = "EU"') for r in regional), regional
    trial = [(r["decision"], r["status"]) for r in followed if r["agent"] == "trial-bot"]
    assert trial == [("allow", 200)] * 3 + [("deny", 429)] * 2, trial
    assert ("support-bot", "read", "help_articles", "allow", 200) in seen
    assert ("support-bot", "read", "help_articles", "error", 400) in seen  # refused as a bad request


def follow_until(lines: list[str], want: int, proc: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """The followed records once `want` have come (bounded); then the follow is stopped as Ctrl-C stops it."""
    deadline = time.monotonic() + CATCH_UP_SECONDS
    while len(lines) < want and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    proc.wait(15)
    return [json.loads(line) for line in lines]


def test_the_walkthrough_runs_as_the_readme_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert shutil.which("curl") and shutil.which("bash"), "the README's walkthrough runs in bash, with curl"
    monkeypatch.setattr(tests.serving, "START_TIMEOUT", 60.0)  # a first start seeds the demo database
    monkeypatch.delenv("AGENTGATE_JWT_SECRET", raising=False)  # the demo as shipped: its own secret
    follow, walkthrough = blocks(section("Try it"))
    assert follow.strip() == "agentgate audit export --format jsonl --follow", follow
    walk = steps(walkthrough)
    for part in ("policies", "demo"):
        shutil.copytree(REPO / part, tmp_path / part)
    config = tmp_path / "agentgate.toml"
    shutil.copy(REPO / "agentgate.toml", config)
    environ = shell_env(tmp_path)
    with serving(config, tmp_path / "serve.log") as base:
        follower = subprocess.Popen(["bash", "-c", f"exec {follow.strip()}"], cwd=tmp_path, env=environ,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        try:
            pump = collect(follower, lines)
            run_walk(tmp_path, walk, base, environ)
            records = trail(tmp_path, environ)
            followed = follow_until(lines, len(records), follower)
            pump.join(5)
        finally:
            if follower.poll() is None:
                follower.kill()
                follower.wait(5)
    assert follower.stderr is not None
    errors = follower.stderr.read()
    assert follower.returncode == 0 and "Traceback" not in errors, errors  # Ctrl-C ends it cleanly
    check_controls(walk)
    check_followed(followed, records, walk)
