"""The `agentgate` command as an operator runs it: a real process, real files, exit codes and output.

Every test runs the CLI in a subprocess with `--config` after the subcommand. Processes are
started concurrently where a test needs many of them (each costs ~0.6 s of imports), so
the module stays fast.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests.conftest import AUDIENCE, DATASETS, MODEL, POLICY, SECRET, bearer, client_for, write_workspace

pytestmark = pytest.mark.system

# The audit fields the contract names; exports carry every one of them.
SPEC_FIELDS = ("id", "time", "request_id", "agent", "on_behalf_of", "work_unit", "action", "dataset", "query",
               "decision", "reason", "status", "rows", "bytes", "duration_ms", "source_ms", "response_sha256",
               "approved_by", "prev_hash", "hash")
UNSET_VAR = "AGENTGATE_TEST_NEVER_SET_HOST"

TESTS_OK = """
[[case]]
agent = "support-bot"
dataset = "customers"
expect = "allow"

[[case]]
agent = "analyst-bot"
dataset = "customers"
action = "read:pii"
expect = "deny"
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AGENTGATE_CONFIG", UNSET_VAR)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def agentgate(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway.cli ARGS` in a folder with no agentgate.toml of its own."""
    return subprocess.run([sys.executable, "-m", "gateway.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or Path(__file__).parent, env=env or _env(), timeout=timeout)


def agentgate_many(calls: Sequence[Sequence[str | Path] | tuple[Sequence[str | Path], dict[str, Any]]]
                   ) -> list[subprocess.CompletedProcess[str]]:
    """Several independent CLI runs at once, results in order. A call is ARGS, or (ARGS, {"cwd": .., "env": ..})."""
    def one(call: Any) -> subprocess.CompletedProcess[str]:
        if len(call) == 2 and isinstance(call[1], dict):
            return agentgate(*call[0], **call[1])
        return agentgate(*call)

    with ThreadPoolExecutor(max_workers=max(2, (os.cpu_count() or 2) + 1)) as pool:
        return list(pool.map(one, calls))


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


def one_line_reason(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line reason on stderr, got:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    return lines[0]


# --- agentgate check ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckCase:
    build: Callable[[Path, str], Path]  # (folder, source url) -> config file
    exit_code: int
    needles: tuple[str, ...]  # all must appear in stdout + stderr


def _ws(**kw: Any) -> Callable[[Path, str], Path]:
    return lambda root, url: write_workspace(root, source_url=url, **kw)


def _rs256_only(root: Path, url: str) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    cfg = write_workspace(root, source_url=url)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (root / "idp.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    text = cfg.read_text()
    text = text.replace('algorithms = ["HS256"]', 'algorithms = ["RS256"]\npublic_key_file = "idp.pem"')
    cfg.write_text("\n".join(line for line in text.splitlines() if not line.startswith("secret =")) + "\n")
    return cfg


ORDERS_OWNER = 'owner = "sales-ops@example.com"\n'
ARCHIVE = """
[datasets.archive]
source = "main"
table = "orders"
owner = "records@example.com"
"""

CHECK_CASES: dict[str, CheckCase] = {
    # valid, and the warnings that do not fail a check
    "valid": CheckCase(_ws(tests=TESTS_OK), 0, (
        "pass case 1", "pass case 2", "policy tests: 2 passed, 0 failed", "check: ok")),
    "idle_role": CheckCase(_ws(policy=POLICY + "p, auditor, orders, read, allow\n"), 0, (
        "warning", "'auditor'", "check: ok")),
    "unreadable_dataset": CheckCase(_ws(datasets=DATASETS + ARCHIVE), 0, (
        "warning", "'archive'", "readable by nobody", "check: ok")),
    # faults in the policy directory
    "no_owner": CheckCase(_ws(datasets=DATASETS.replace(ORDERS_OWNER, "")), 1, (
        "datasets.toml", "datasets.orders.owner", "owner")),
    "unknown_source": CheckCase(_ws(datasets=DATASETS.replace('source = "main"\ntable = "orders"',
                                                              'source = "warehouse"\ntable = "orders"')), 1, (
        "datasets.orders.source", "unknown source 'warehouse'")),
    "missing_table": CheckCase(_ws(datasets=DATASETS.replace('table = "orders"', 'table = "invoices_2019"')), 1, (
        "datasets.toml", "datasets.orders.table", "invoices_2019", "check: 1 fault(s)")),
    "missing_classed_column": CheckCase(_ws(datasets=DATASETS + '\n[datasets.orders.columns.iban]\nclass = "pii"\n'),
                                        1, ("datasets.orders.columns.iban", "'iban'")),
    "failing_policy_test": CheckCase(_ws(tests=TESTS_OK.replace('expect = "deny"', 'expect = "allow"')), 1, (
        "pass case 1", "FAIL case 2", "analyst-bot", "policy tests: 1 passed, 1 failed", "policy test case 2")),
    "grant_on_no_dataset": CheckCase(_ws(policy=POLICY + "p, analyst, invoices, read, allow\n"), 1, (
        "invoices", "matches no dataset")),
    "pattern_on_no_dataset": CheckCase(_ws(policy=POLICY + "p, analyst, sales.*, read, allow\n"), 1, (
        "sales.*", "matches no dataset")),
    "two_faults": CheckCase(_ws(datasets=DATASETS.replace('table = "orders"', 'table = "invoices_2019"'),
                                policy=POLICY + "p, analyst, invoices, read, allow\n"), 1, (
        "invoices_2019", "matches no dataset", "check: 2 fault(s)")),
    "bad_toml_datasets": CheckCase(_ws(datasets=DATASETS + "\n[datasets.broken\n"), 1, (
        "datasets.toml", "invalid TOML")),
    "policy_line_too_few_fields": CheckCase(_ws(policy=POLICY + "p, a, b\n"), 1, ("policy.csv", "line 11")),
    "policy_effect_maybe": CheckCase(_ws(policy=POLICY + "p, analyst, orders, read, maybe\n"), 1, (
        "policy.csv", "line 11", "'maybe'")),
    "model_other_request": CheckCase(_ws(model=MODEL.replace("r = sub, obj, act", "r = sub, dom, obj, act")), 1, (
        "model.conf", "r = sub, obj, act")),
    # faults in agentgate.toml
    "unknown_config_key": CheckCase(_ws(extra="\n[server]\nport = 8080\nthreads = 4\n"), 1, (
        "agentgate.toml", "server.threads", "unknown key")),
    "missing_env_var": CheckCase(_ws(extra=f'\n[server]\nhost = "${{{UNSET_VAR}}}"\n'), 1, (
        "agentgate.toml", UNSET_VAR, "not set")),
}


@pytest.fixture(scope="module")
def check_runs(tmp_path_factory: pytest.TempPathFactory,
               sqlite_source: str) -> dict[str, subprocess.CompletedProcess[str]]:
    """`agentgate check` on every workspace of CHECK_CASES, all at once."""
    configs = [case.build(tmp_path_factory.mktemp(name), sqlite_source) for name, case in CHECK_CASES.items()]
    results = agentgate_many([("check", "--config", cfg) for cfg in configs])
    return dict(zip(CHECK_CASES, results, strict=True))


@pytest.mark.parametrize("name", list(CHECK_CASES))
def test_check(name: str, check_runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    case, proc = CHECK_CASES[name], check_runs[name]
    out = output(proc)
    assert proc.returncode == case.exit_code, out
    for needle in case.needles:
        assert needle in out, f"{needle!r} missing from:\n{out}"
    assert "Traceback" not in out
    if case.exit_code == 0:
        assert "FAIL" not in out
    else:
        assert "FAIL" in out or proc.stderr.startswith("agentgate: ")


def test_valid_check_has_no_warnings_and_admin_grants_are_no_fault(
        check_runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    # The shipped test policy grants `security-admin` on `admin:*`, which names no dataset: that is fine.
    assert "p, security-admin, admin:*, *, allow" in POLICY
    out = output(check_runs["valid"])
    assert "warning" not in out
    assert "matches no dataset" not in out


# --- arguments and config lookup ------------------------------------------------------------------

def test_exit_2_on_bad_arguments_and_missing_config(tmp_path: Path, sqlite_source: str) -> None:
    cfg = write_workspace(tmp_path, source_url=sqlite_source)
    missing, nested_audit, nested_token, group_audit, group_token, *bad = agentgate_many([
        ("check", "--config", tmp_path / "missing.toml"),
        ("audit", "list", "--config", cfg),
        ("token", "issue", "--agent", "a", "--config", cfg),
        ("audit", "--config", cfg, "verify"),  # anywhere after the command name
        ("token", "--config", cfg, "issue", "--agent", "a"),
        ("frobnicate", "--config", cfg),
        ("check", "--frobnicate", "--config", cfg),
        ("token", "issue", "--config", cfg),  # --agent is required
        ("audit", "list", "--decision", "maybe", "--config", cfg),
        ("audit", "list", "--since", "yesterday-ish", "--config", cfg),
        ("token", "issue", "--agent", "a", "--ttl", "0", "--config", cfg),
        ("token", "issue", "--agent", "", "--config", cfg),  # the gateway refuses an empty sub
        ("serve", "--port", "99999", "--config", cfg),  # would otherwise listen on 99999 % 65536
        ("serve", "--workers", "0", "--config", cfg),
    ])
    assert missing.returncode == 2
    assert "missing.toml" in one_line_reason(missing)
    assert missing.stdout == ""
    assert nested_audit.returncode == 0, output(nested_audit)
    assert nested_token.returncode == 0, output(nested_token)
    assert nested_token.stdout.count(".") == 2
    assert (group_audit.returncode, group_audit.stdout.strip()) == (0, "ok 0 records"), output(group_audit)
    assert group_token.returncode == 0 and group_token.stdout.count(".") == 2, output(group_token)
    for proc in bad:
        assert proc.returncode == 2, (proc.args, output(proc))
        one_line_reason(proc)


def test_config_found_via_env_then_working_directory(tmp_path: Path, sqlite_source: str) -> None:
    cfg = write_workspace(tmp_path / "ws", source_url=sqlite_source)
    by_env, by_cwd, nowhere, folder = agentgate_many([
        (["check"], {"env": _env() | {"AGENTGATE_CONFIG": str(cfg)}}),
        (["check"], {"cwd": cfg.parent}),
        (["check"], {"cwd": tmp_path}),
        ["check", "--config", tmp_path],  # a folder is no config file
    ])
    assert by_env.returncode == 0, output(by_env)
    assert str(cfg) in by_env.stdout
    assert by_cwd.returncode == 0, output(by_cwd)
    assert str(cfg) in by_cwd.stdout
    assert nowhere.returncode == 2
    assert "agentgate.toml" in one_line_reason(nowhere)
    assert folder.returncode == 2
    one_line_reason(folder)


# --- agentgate token issue ------------------------------------------------------------------------

def test_token_issue_mints_a_token_the_gateway_accepts(tmp_path: Path, sqlite_source: str) -> None:
    cfg = write_workspace(tmp_path, source_url=sqlite_source)
    proc, plain = agentgate_many([
        ("token", "issue", "--agent", "support-bot", "--ttl", "120", "--on-behalf-of", "maria@example.com",
         "--config", cfg),
        ("token", "issue", "--agent", "support-bot", "--config", cfg),
    ])
    assert proc.returncode == 0, output(proc)
    tok = proc.stdout.strip()
    assert "\n" not in tok
    claims = jwt.decode(tok, SECRET, algorithms=["HS256"], audience=AUDIENCE)
    assert claims["sub"] == "support-bot"
    assert claims["on_behalf_of"] == "maria@example.com"
    assert abs(claims["exp"] - (time.time() + 120)) < 10
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    with client_for(cfg) as c:
        r = c.post("/v1/datasets/customers/query", json={"limit": 2}, headers={"Authorization": f"Bearer {tok}"})
        assert r.status_code == 200, r.text
        assert len(r.json()["rows"]) == 2
    second = jwt.decode(plain.stdout.strip(), SECRET, algorithms=["HS256"], audience=AUDIENCE)
    assert second["jti"] != claims["jti"]
    assert "on_behalf_of" not in second
    assert abs(second["exp"] - (time.time() + 3600)) < 10  # the default --ttl


def test_token_issue_without_an_hs_secret_is_exit_1(tmp_path: Path, sqlite_source: str) -> None:
    cfg = _rs256_only(tmp_path, sqlite_source)
    check, proc = agentgate_many([("check", "--config", cfg),
                                  ("token", "issue", "--agent", "support-bot", "--config", cfg)])
    assert check.returncode == 0, output(check)  # the config itself is valid
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "HS" in one_line_reason(proc)


# --- agentgate audit ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Trail:
    config: Path
    count: int


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory, sqlite_source: str) -> Trail:
    """A workspace whose store holds records of allowed, denied, unauthenticated and bad requests."""
    cfg = write_workspace(tmp_path_factory.mktemp("audited"), source_url=sqlite_source)
    with client_for(cfg) as c:
        answers = [
            c.post("/v1/datasets/customers/query", json={"limit": 5}, headers=bearer("support-bot")),  # 1 allow
            c.post("/v1/datasets/orders/query", json={}, headers=bearer("support-bot")),  # 2 deny
            c.get("/v1/datasets"),  # 3 deny: no token
            c.post("/v1/datasets/customers/query", json={"bogus": 1}, headers=bearer("support-bot")),  # 4 error
            c.post("/v1/datasets/orders/query", json={"limit": 3},  # 5 allow, on behalf of, work unit
                   headers=bearer("analyst-bot", on_behalf_of="maria@example.com") | {"X-Work-Unit": "T-42"}),
            c.get("/v1/datasets", headers=bearer("analyst-bot")),  # 6 allow
        ]
    assert [a.status_code for a in answers] == [200, 403, 401, 400, 200, 200]
    return Trail(cfg, len(answers))


def test_audit_list_text(trail: Trail) -> None:
    everything, future = agentgate_many([
        ("audit", "list", "--config", trail.config),
        ("audit", "list", "--since", "2999-01-01T00:00:00Z", "--config", trail.config),
    ])
    assert everything.returncode == 0, output(everything)
    head, *rows = everything.stdout.strip().splitlines()
    assert head.split()[:2] == ["id", "time"] and "decision" in head
    assert len(rows) == trail.count
    assert [int(r.split()[0]) for r in rows] == list(range(trail.count, 0, -1))  # newest first
    assert future.returncode == 0
    assert future.stdout.strip() == "no records"


def test_audit_list_json_and_filters(trail: Trail) -> None:
    runs = agentgate_many([
        ("audit", "list", "--json", "--config", trail.config),
        ("audit", "list", "--json", "--agent", "support-bot", "--config", trail.config),
        ("audit", "list", "--json", "--dataset", "orders", "--config", trail.config),
        ("audit", "list", "--json", "--decision", "deny", "--config", trail.config),
        ("audit", "list", "--json", "--decision", "error", "--config", trail.config),
        ("audit", "list", "--json", "--since", "2999-01-01T00:00:00Z", "--config", trail.config),
    ])
    for proc in runs:
        assert proc.returncode == 0, output(proc)
    every, by_agent, by_dataset, denied, errors, future = (json.loads(p.stdout) for p in runs)
    assert [r["id"] for r in every] == list(range(trail.count, 0, -1))
    for rec in every:
        assert set(SPEC_FIELDS) <= set(rec)
    assert [r["id"] for r in by_agent] == [4, 2, 1]
    assert {r["agent"] for r in by_agent} == {"support-bot"}
    assert [r["id"] for r in by_dataset] == [5, 2]
    assert [(r["id"], r["status"], r["agent"]) for r in denied] == [(3, 401, None), (2, 403, "support-bot")]
    assert [(r["id"], r["status"]) for r in errors] == [(4, 400)]
    assert future == []


def test_audit_export_jsonl(trail: Trail) -> None:
    proc = agentgate("audit", "export", "--format", "jsonl", "--config", trail.config)
    assert proc.returncode == 0, output(proc)
    lines = proc.stdout.splitlines()
    assert len(lines) == trail.count
    records = [json.loads(line) for line in lines]  # one JSON object per line
    assert all(isinstance(r, dict) for r in records)
    for rec in records:
        assert set(SPEC_FIELDS) <= set(rec), set(SPEC_FIELDS) - set(rec)
        assert dt.datetime.fromisoformat(rec["time"].replace("Z", "+00:00")).utcoffset() == dt.timedelta(0)
    assert [r["id"] for r in records] == list(range(1, trail.count + 1))  # oldest first
    assert {r["decision"] for r in records} == {"allow", "deny", "error"}
    unauthenticated = records[2]
    assert unauthenticated["status"] == 401 and unauthenticated["agent"] is None
    assert unauthenticated["on_behalf_of"] is None
    first = records[0]
    assert (first["agent"], first["dataset"], first["action"], first["rows"]) == ("support-bot", "customers",
                                                                                  "read", 5)
    assert json.loads(first["query"]) == {"limit": 5}
    assert len(first["response_sha256"]) == 64
    assert records[4]["on_behalf_of"] == "maria@example.com" and records[4]["work_unit"] == "T-42"
    assert records[0]["prev_hash"] == "0" * 64
    for before, rec in itertools.pairwise(records):
        assert rec["prev_hash"] == before["hash"]


def test_audit_export_csv(trail: Trail) -> None:
    jsonl, as_csv, future = agentgate_many([
        ("audit", "export", "--format", "jsonl", "--config", trail.config),
        ("audit", "export", "--format", "csv", "--config", trail.config),
        ("audit", "export", "--format", "jsonl", "--since", "2999-01-01T00:00:00Z", "--config", trail.config),
    ])
    assert future.returncode == 0 and future.stdout == ""
    assert as_csv.returncode == 0, output(as_csv)
    rows = list(csv.reader(io.StringIO(as_csv.stdout)))
    header, body = rows[0], rows[1:]
    expected = list(json.loads(jsonl.stdout.splitlines()[0]))
    assert header == expected
    assert set(SPEC_FIELDS) <= set(header)
    assert len(body) == trail.count
    by_name = [dict(zip(header, row, strict=True)) for row in body]
    assert [r["id"] for r in by_name] == [str(i) for i in range(1, trail.count + 1)]
    assert by_name[2]["agent"] == ""  # null: an empty cell
    assert by_name[0]["rows"] == "5"


def test_audit_export_needs_a_format(trail: Trail) -> None:
    missing, wrong = agentgate_many([
        ("audit", "export", "--config", trail.config),
        ("audit", "export", "--format", "xml", "--config", trail.config),
    ])
    for proc in (missing, wrong):
        assert proc.returncode == 2
        one_line_reason(proc)


def test_audit_verify_ok(trail: Trail) -> None:
    proc = agentgate("audit", "verify", "--config", trail.config)
    assert proc.returncode == 0, output(proc)
    assert proc.stdout.strip() == f"ok {trail.count} records"


def test_audit_on_an_unreachable_store_is_one_line(tmp_path: Path, sqlite_source: str) -> None:
    cfg = write_workspace(tmp_path, source_url=sqlite_source, store_url="postgresql://nobody@127.0.0.1:1/nothing")
    proc = agentgate("audit", "verify", "--config", cfg)
    assert proc.returncode == 1
    assert "store" in one_line_reason(proc)


TAMPERING = {
    "edit_rows": (["UPDATE audit SET rows = 500 WHERE id = 1"], 1),
    "delete_middle": (["DELETE FROM audit WHERE id = 3"], 4),
    "swap_ids": (["UPDATE audit SET id = -2 WHERE id = 2", "UPDATE audit SET id = 2 WHERE id = 3",
                  "UPDATE audit SET id = 3 WHERE id = -2"], 2),
}


@pytest.fixture
def tampered(trail: Trail, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[list[str]], Path]]:
    def make(statements: list[str]) -> Path:
        copy = tmp_path_factory.mktemp("tampered") / "ws"
        shutil.copytree(trail.config.parent, copy)
        with sqlite3.connect(copy / "store.db") as db:
            for stmt in statements:
                assert db.execute(stmt).rowcount == 1, stmt
        return copy / trail.config.name

    yield make


def test_audit_verify_names_the_first_tampered_record(tampered: Callable[[list[str]], Path]) -> None:
    configs = {name: tampered(stmts) for name, (stmts, _) in TAMPERING.items()}
    results = agentgate_many([("audit", "verify", "--config", cfg) for cfg in configs.values()])
    for (name, (_, bad_id)), proc in zip(TAMPERING.items(), results, strict=True):
        assert proc.returncode == 1, (name, output(proc))
        assert "ok" not in proc.stdout.split()[:1]
        assert f"record {bad_id}:" in proc.stdout, (name, proc.stdout)
