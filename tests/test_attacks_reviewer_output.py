"""Attacks on the people who read the trail: an agent writes strings (its name, the dataset in the path, the work
unit, the body, the user agent) that act when a reviewer reads them: a formula in a spreadsheet opened from a CSV
export (OWASP CSV injection), a control sequence in a terminal that erases or fakes lines (ESC [2K, CR, LF,
C1 CSI, bidi overrides, line separators), a line break in a log file that starts a forged entry.

Every CSV export path (CLI, admin API, review page) neutralises would-be formulas; every CLI text listing
escapes control characters; log lines carrying agent input are one line each. JSON stays exact."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import pty
import re
import select
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from gateway.cli.logs import LOG_FORMAT
from gateway.common import textsafe
from tests.conftest import DATASETS, POLICY, bearer, client_for, token, write_workspace
from tests.serving import serving
from tests.test_cli import agentgate, agentgate_many, output

pytestmark = pytest.mark.system

# Would-be formulas: each OWASP lead character, after blanks and invisible characters, and full-width forms.
FORMULAS = ("=cmd|' /C calc'!A0", "+SUM(1,2)", "-2+3", "@SUM(A1:A2)", "\t=1+1", "\r=1+1", " =1+1",
            "\n@SUM(A1)", "\u3000=1", "\u200b=1", "\x1b=1", "\uff1dHYPERLINK(1)")
# Not formulas: left exactly as they are.
PLAIN = ("a=b", "1-2", "x@example.com", "plain")
# What a terminal acts on: erase line, carriage return, new line, C1 CSI, bidi override, line separator,
# bell, DEL, an isolate, a zero-width space.
TERMINAL = ("\x1b[2K\x1b[1Aforged", "ok\rFORGED", "a\n2026-01-01 fake line", "\x9b2Kc1", "\u202eevil",
            "x\u2028y", "\x07bell", "del\x7f", "\u2066iso", "zw\u200bsp")


def inert(text: str) -> bool:
    """Nothing a terminal acts on but the line breaks between lines."""
    return not any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs") and ch != "\n" for ch in text)


def formula(cell: str) -> bool:
    """What a spreadsheet would run: the test's own reading of OWASP, independent of gateway/common/textsafe.py."""
    head = cell.lstrip("".join(chr(c) for c in range(0x21)) + "\x7f\u3000\u200b\ufeff\u202e\u2066")
    return cell[:1] in ("\t", "\r") or head[:1] in ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")


# --- a trail full of hostile strings ------------------------------------------------------------------

@dataclass(frozen=True)
class Hostile:
    config: Path
    client: Any  # TestClient, open for the module


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, sqlite_source: str) -> Iterator[Hostile]:
    root = tmp_path_factory.mktemp("hostile")
    cfg = write_workspace(root, source_url=sqlite_source)
    with client_for(cfg) as c:
        for s in FORMULAS + PLAIN + TERMINAL:
            # As the agent's name (a token's sub the IdP let it choose), as the dataset in the path, as the body.
            c.post("/v1/datasets/customers/query", json={"limit": 1}, headers=bearer(s))
            c.post(f"/v1/datasets/{quote(s, safe='')}/query", json={}, headers=bearer("support-bot"))
            c.post("/v1/datasets/customers/query", content=s.encode(), headers=bearer("support-bot"))
        for s in ("=1+1", "@x", "-1", "\x1b[2Kwu", "+ok\tx"):  # header values: no CR or LF on the wire
            c.post("/v1/datasets/customers/query", json={"limit": 1},
                   headers=bearer("support-bot") | {"X-Work-Unit": s, "User-Agent": s})
        yield Hostile(cfg, c)


def stored(h: Hostile) -> list[dict[str, Any]]:
    return [json.loads(line) for line in agentgate("audit", "export", "--format", "jsonl", "--config",
                                                   h.config).stdout.splitlines()]


def check_csv(text: str, exact: list[dict[str, Any]]) -> None:
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    by_id = {r["id"]: r for r in rows}
    seen = 0
    for rec in exact:
        row = by_id[str(rec["id"])]
        for name, value in rec.items():
            if not isinstance(value, str):
                continue
            cell = row[name]
            assert not formula(cell), (name, cell)
            # Neutralised by one leading quote, nothing else changed; plain cells exactly as stored.
            assert cell == ("'" + value if formula(value) else value), (name, value, cell)
            seen += formula(value)
    assert seen >= len(FORMULAS) * 3  # each formula as an agent, a dataset and a body, and the headers


def test_every_csv_export_neutralises_formulas(hostile: Hostile) -> None:
    exact = stored(hostile)
    values = {v for rec in exact for v in rec.values() if isinstance(v, str)}
    assert set(FORMULAS) <= values and set(PLAIN) <= values  # JSON lines: exact, as the agent sent them
    # Bytes, not text: universal newlines would turn a CR inside a cell into an LF.
    cli = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "export", "--format", "csv", "--config",
                          str(hostile.config)], capture_output=True, timeout=60, cwd=Path(__file__).parent)
    assert cli.returncode == 0, cli.stderr
    api = hostile.client.get("/admin/v1/audit/export", params={"format": "csv"}, headers=bearer("alice"))
    assert api.status_code == 200 and api.headers["content-type"].startswith("text/csv")
    signed = hostile.client.post("/admin/login", data={"token": token("alice")}, follow_redirects=False)
    assert signed.status_code == 303  # the review page's session
    exported = hostile.client.get("/admin/export", params={"format": "csv"})
    assert exported.status_code == 200 and "attachment" in exported.headers["content-disposition"]
    for text in (cli.stdout.decode(), api.text, exported.text):
        check_csv(text, exact)


@pytest.mark.unit
def test_the_neutralising_rule_itself() -> None:
    for s in FORMULAS:
        assert textsafe.spreadsheet_cell(s) == "'" + s
    for s in (*PLAIN, "", " plain", "12", "2026-01-01T00:00:00Z", '{"limit": 1}'):
        assert textsafe.spreadsheet_cell(s) == s


# --- terminals -----------------------------------------------------------------------------------------

def test_audit_list_shows_one_line_per_record_and_no_control_character(hostile: Hostile) -> None:
    exact = stored(hostile)
    text, as_json = agentgate_many([("audit", "list", "--limit", "1000", "--config", hostile.config),
                                    ("audit", "list", "--limit", "1000", "--json", "--config", hostile.config)])
    assert text.returncode == 0, output(text)
    assert inert(text.stdout)
    lines = text.stdout.splitlines()
    assert len(lines) == 1 + len(json.loads(as_json.stdout))  # the header, then one line per record
    assert [int(line.split()[0]) for line in lines[1:]] == sorted((r["id"] for r in exact), reverse=True)
    for shown in ("\\x1b[2K\\x1b[1Aforged", "ok\\x0dFORGED", "a\\x0a2026-01-01 fake line", "\\x9b2Kc1",
                  "\\u202eevil", "x\\u2028y", "\\x07bell", "del\\x7f", "\\u2066iso", "zw\\u200bsp"):
        assert shown in text.stdout
    # The JSON listing is exact: the same strings, as stored.
    assert set(TERMINAL) <= {r["agent"] for r in json.loads(as_json.stdout)}


def test_usage_and_replay_escape_what_agents_wrote(hostile: Hostile) -> None:
    policy_dir = hostile.config.parent / "policies"
    runs = agentgate_many([("usage", "--by", by, "--config", hostile.config) for by in ("agent", "dataset",
                                                                                        "work-unit")]
                          + [("check", "--replay", "--policy-dir", policy_dir, "--config", hostile.config)])
    for proc in runs:
        assert proc.returncode == 0, output(proc)
        assert inert(proc.stdout), proc.stdout
    by_agent, by_dataset, by_unit, _ = (p.stdout for p in runs)
    assert "\\x1b[2K\\x1b[1Aforged" in by_agent and "\\u202eevil" in by_dataset and "\\x1b[2Kwu" in by_unit


def test_cli_messages_escape_the_names_they_repeat(hostile: Hostile) -> None:
    name = "\x1b[2K\rbot\u202e"
    revoked = agentgate("revoke", "agent", name, "--config", hostile.config)
    restored = agentgate("restore", "agent", name, "--config", hostile.config)
    for proc in (revoked, restored):
        assert proc.returncode == 0, output(proc)
        assert inert(proc.stdout + proc.stderr) and "\\x1b[2K\\x0dbot\\u202e" in proc.stdout


def test_approvals_list_escapes_agent_names(tmp_path: Path, sqlite_source: str) -> None:
    names = ["\x1b[2K\x1b[1Aappr", "\x9b2Kc1", "\u202eevil", "\x07bell"]
    guarded = DATASETS.replace('max_rows = 25\n', 'max_rows = 25\napproval = "required"\n')
    policy = POLICY + "".join(f"g, {n}, support\n" for n in names)
    cfg = write_workspace(tmp_path, source_url=sqlite_source, datasets=guarded, policy=policy)
    with client_for(cfg) as c:
        for n in names:
            r = c.post("/v1/datasets/customers/query", json={"limit": 1}, headers=bearer(n))
            assert r.status_code == 202, r.text
    listed, as_json = agentgate_many([("approvals", "list", "--config", cfg),
                                      ("approvals", "list", "--json", "--config", cfg)])
    assert listed.returncode == 0, output(listed)
    assert inert(listed.stdout)
    assert len(listed.stdout.splitlines()) == 1 + len(names)
    assert {a["agent"] for a in json.loads(as_json.stdout)} == set(names)
    for shown in ("\\x1b[2K\\x1b[1Aappr", "\\x9b2Kc1", "\\u202eevil", "\\x07bell"):
        assert shown in listed.stdout


def _on_a_terminal(*args: str | Path) -> str:
    """stdout of the CLI run on a pseudo-terminal, as a person at a terminal would run it."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", *map(str, args)], stdin=follower,
                            stdout=follower, stderr=subprocess.DEVNULL, cwd=Path(__file__).parent)
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the other side closed: the process ended
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif proc.poll() is not None:
            break
    proc.wait(10)
    os.close(leader)
    assert proc.returncode == 0
    return b"".join(chunks).decode().replace("\r\n", "\n")  # the terminal's own line discipline


def test_a_csv_export_read_on_a_terminal_is_escaped_and_exact_in_a_file(hostile: Hostile) -> None:
    shown = _on_a_terminal("audit", "export", "--format", "csv", "--config", hostile.config)
    assert inert(shown)
    assert len(shown.strip("\n").split("\n")) == 1 + len(stored(hostile))  # the header, one line per record
    assert "\\x1b[2K\\x1b[1Aforged" in shown
    to_file = agentgate("audit", "export", "--format", "csv", "--config", hostile.config).stdout
    assert "\x1b[2K\x1b[1Aforged" in to_file  # for a spreadsheet or a script: as stored (formulas aside)


@pytest.mark.unit
def test_the_escape_covers_every_invisible_character_python_knows() -> None:
    """The hand-kept list of format characters (Cf) against this Python's Unicode database: every control,
    format, separator and surrogate code point comes out as an escape."""
    for code in range(0x110000):
        ch = chr(code)
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            out = textsafe.terminal(ch)
            assert out != ch and inert(out), hex(code)
    assert textsafe.terminal("plain é 日本 \\x1b") == "plain é 日本 \\x1b"  # visible text untouched


@pytest.mark.integration
def test_the_review_page_shows_what_agents_wrote_escaped(hostile: Hostile) -> None:
    """HTML escaping stops markup, not a bidi override (an agent named RLO + "tob-troppus" reads "support-bot")
    nor an invisible character: the page prints those as escapes too, on the trail, a filtered view and a record."""
    client = hostile.client
    assert client.post("/admin/login", data={"token": token("alice")}, follow_redirects=False).status_code == 303
    spoof = "\u202etob-troppus"
    client.get("/v1/datasets", headers=bearer(spoof))
    rid = next(r["id"] for r in client.get("/admin/v1/audit", params={"agent": spoof, "limit": "1"},
                                           headers=bearer("alice")).json()["records"])
    pages = [client.get("/admin/").text, client.get("/admin/", params={"agent": TERMINAL[0]}).text,
             client.get(f"/admin/records/{rid}").text]
    for html in pages:
        assert inert(html)
    assert "\\u202etob-troppus" in pages[0] and "\\u202etob-troppus" in pages[2]
    assert "\\x1b[2K\\x1b[1Aforged" in pages[1]


# --- log lines -----------------------------------------------------------------------------------------

@pytest.mark.unit
def test_log_records_are_one_line_whatever_they_carry() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(textsafe.SafeFormatter(LOG_FORMAT))
    log = logging.getLogger("agentgate.test-reviewer-output")
    log.addHandler(handler)
    log.propagate = False
    try:
        for s in TERMINAL:
            log.warning("the source refused a statement: %s", s)
        log.warning("as the message itself: " + TERMINAL[0])
        try:
            raise ValueError("quoted by a source: \x1b[2K\n2026-01-01 00:00:00,000 INFO agentgate.core: forged")
        except ValueError:
            log.exception("request failed")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert inert(text)
    lines = text.splitlines()
    assert len(lines) == len(TERMINAL) + 2  # one line per record, the traceback's included
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (WARNING|ERROR) agentgate\.", line) for line in lines)
    assert "Traceback" in lines[-1] and "\\x0a2026-01-01 00:00:00,000 INFO agentgate.core: forged" in lines[-1]


def test_a_source_error_quoting_the_agent_is_one_escaped_log_line(tmp_path: Path, pg_source: str) -> None:
    """End to end: `agentgate serve`, an agent's SQL whose literal PostgreSQL quotes back in its error, and the
    log the gateway writes with it."""
    cfg = write_workspace(tmp_path, source_url=pg_source)
    log = tmp_path / "serve.log"
    # No line break in it: the connector keeps only an error's first line (a break would only shorten it).
    forged = "\x1b[2K\x1b[1A\x9b2K\u202e\u2066forged"
    with serving(cfg, log) as base:
        r = httpx.post(f"{base}/v1/sql", json={"sql": f"SELECT CAST('{forged}' AS INT) AS n FROM customers"},
                       headers=bearer("support-bot"), timeout=10)
        assert r.status_code == 400 and "\x1b" not in r.text
    text = log.read_text()
    assert inert(text)
    [line] = [ln for ln in text.splitlines() if "refused a statement" in ln]
    assert "\\x1b[2K\\x1b[1A\\x9b2K\\u202e\\u2066forged" in line
