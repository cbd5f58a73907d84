"""`agentgate check --replay --policy-dir NEW_DIR`: the trail's real reads decided by the policy in force
and by a proposed one; every decision that would change is listed, with counts by agent and dataset."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.audit import AuditRecord, record_once
from gateway.common.clock import now
from gateway.config import load_settings
from gateway.store import create_tables, make_store_engine
from tests.conftest import POLICY, bearer, client_for, write_workspace
from tests.test_cli import agentgate_many, one_line_reason, output

pytestmark = pytest.mark.system

# analyst-bot loses orders, support-bot gains it; customers are untouched.
PROPOSED = (POLICY.replace("p, analyst, orders, read, allow\n", "")
            + "p, support, orders, read, allow\n")


@dataclass(frozen=True)
class Trail:
    config: Path
    proposed: Path
    same: Path
    broken: Path
    failing_tests: Path


def _policy_dir(src: Path, dest: Path, policy: str, tests: str | None = None) -> Path:
    shutil.copytree(src, dest)
    (dest / "policy.csv").write_text(policy)
    if tests is not None:
        (dest / "tests.toml").write_text(tests)
    return dest


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory, sqlite_source: str) -> Trail:
    root = tmp_path_factory.mktemp("replay")
    cfg = write_workspace(root, source_url=sqlite_source)
    with client_for(cfg) as c:
        answers = [
            c.post("/v1/datasets/customers/query", json={"limit": 2},
                   headers=bearer("support-bot") | {"X-Work-Unit": "T-1"}),
            c.post("/v1/datasets/customers/query", json={"limit": 2}, headers=bearer("support-bot")),
            c.post("/v1/datasets/orders/query", json={}, headers=bearer("support-bot")),  # refused today
            c.post("/v1/datasets/orders/query", json={"limit": 1}, headers=bearer("analyst-bot")),
            c.get("/v1/datasets/orders", headers=bearer("analyst-bot")),  # describe
            c.post("/v1/datasets/orders/query", json={"bogus": 1}, headers=bearer("analyst-bot")),  # 400
            c.get("/v1/datasets", headers=bearer("analyst-bot")),  # a listing: no dataset, not replayed
            c.get("/admin/v1/audit", headers=bearer("alice")),  # an admin act, not replayed
        ]
    assert [a.status_code for a in answers] == [200, 200, 403, 200, 200, 400, 200, 200]

    async def old_read() -> None:  # ten days ago: outside --since 7d
        engine = make_store_engine(load_settings(cfg).store.url)
        try:
            await create_tables(engine)
            await record_once(engine, AuditRecord(
                time=now() - dt.timedelta(days=10), request_id=uuid.uuid4().hex, action="read",
                decision="allow", status=200, agent="analyst-bot", dataset="orders", rows=1))
        finally:
            await engine.dispose()

    asyncio.run(old_read())
    current = root / "policies"
    return Trail(
        config=cfg,
        proposed=_policy_dir(current, root / "proposed", PROPOSED),
        same=_policy_dir(current, root / "same", POLICY),
        broken=_policy_dir(current, root / "broken", POLICY + "p, analyst, orders, read, maybe\n"),
        failing_tests=_policy_dir(current, root / "failing", PROPOSED,
                                  tests='[[case]]\nagent = "analyst-bot"\ndataset = "orders"\nexpect = "allow"\n'),
    )


def test_replay_lists_every_changed_decision(trail: Trail) -> None:
    week, everything, same, future = agentgate_many([
        ("check", "--replay", "--since", "7d", "--policy-dir", trail.proposed, "--config", trail.config),
        ("check", "--replay", "--policy-dir", trail.proposed, "--config", trail.config),
        ("check", "--replay", "--since", "7d", "--policy-dir", trail.same, "--config", trail.config),
        ("check", "--replay", "--since", "2999-01-01T00:00:00Z", "--policy-dir", trail.proposed,
         "--config", trail.config),
    ])
    out = output(week)
    assert week.returncode == 0, out
    assert "Traceback" not in out
    assert "current policy's, not the records'" in out  # the header says where old decisions come from
    # 2 customers reads + 4 orders (the refused read, the read, the describe, the bad request).
    assert "replayed 6 request(s) (3 agent/dataset pair(s))" in out
    assert "4 request(s) would be decided differently: 3 allow->deny, 1 deny->allow" in out
    lines = out.splitlines()
    assert any("allow->deny" in ln and "agent analyst-bot" in ln and "dataset orders" in ln
               and "3 request(s)" in ln for ln in lines), out
    assert any("deny->allow" in ln and "agent support-bot" in ln and "dataset orders" in ln
               and "1 request(s)" in ln for ln in lines), out
    assert not any("dataset customers" in ln for ln in lines)
    by_agent = lines[lines.index("by agent:") + 1:lines.index("by dataset:")]
    assert [ln.strip() for ln in by_agent] == ["analyst-bot: 3 allow->deny, 0 deny->allow",
                                               "support-bot: 0 allow->deny, 1 deny->allow"]
    assert lines[lines.index("by dataset:") + 1].strip() == "orders: 3 allow->deny, 1 deny->allow"

    assert everything.returncode == 0, output(everything)
    assert "replayed 7 request(s)" in everything.stdout  # the read ten days ago too
    assert "4 allow->deny, 1 deny->allow" in everything.stdout

    assert same.returncode == 0, output(same)
    assert "no decision would change" in same.stdout
    assert future.returncode == 0, output(future)
    assert "replayed 0 request(s)" in future.stdout and "no decision would change" in future.stdout


def test_replay_faults_and_usage_errors(trail: Trail) -> None:
    broken, failing, no_replay, no_dir, since_alone, bad_since = agentgate_many([
        ("check", "--replay", "--policy-dir", trail.broken, "--config", trail.config),
        ("check", "--replay", "--policy-dir", trail.failing_tests, "--config", trail.config),
        ("check", "--policy-dir", trail.proposed, "--config", trail.config),
        ("check", "--replay", "--config", trail.config),
        ("check", "--since", "7d", "--config", trail.config),
        ("check", "--replay", "--since", "a week", "--policy-dir", trail.proposed, "--config", trail.config),
    ])
    assert broken.returncode == 1, output(broken)
    assert "proposed policy is invalid" in broken.stdout and "'maybe'" in broken.stdout
    assert failing.returncode == 1, output(failing)
    assert "FAIL" in failing.stdout and "analyst-bot" in failing.stdout
    assert "4 allow->deny" in failing.stdout  # the changes are still listed
    for proc in (no_replay, no_dir, since_alone, bad_since):
        assert proc.returncode == 2, (proc.args, output(proc))
        one_line_reason(proc)
