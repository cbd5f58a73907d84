"""Human approval on datasets with approval = "required": 202 with an approval id, decided through
the admin API or the command line, bound to one agent, dataset and body, expiring after the TTL
(the attacks on that binding and on self-approval: tests/test_attacks_approvals.py)."""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import DATASETS, bearer, client_for, write_workspace

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parent.parent
GUARDED = (DATASETS.replace('max_rows = 25\n', 'max_rows = 25\napproval = "required"\n')
           .replace('owner = "sales-ops@example.com"\n', 'owner = "sales-ops@example.com"\napproval = "required"\n'))


def query(client: TestClient, agent: str, approval: str | None = None, dataset: str = "customers",
          body: dict[str, Any] | None = None) -> Any:
    headers = bearer(agent) | ({"X-Approval-Id": approval} if approval else {})
    return client.post(f"/v1/datasets/{dataset}/query", headers=headers, json={"limit": 2} if body is None else body)


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args, "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_approval_flow_through_the_admin_api(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source, datasets=GUARDED)
    with client_for(config) as client:
        first = query(client, "support-bot")
        assert first.status_code == 202
        body = first.json()
        assert body["error"]["code"] == "approval_pending" and "maria.keller@example.com" in body["error"]["message"]
        aid = body["approval_id"]
        assert len(aid) == 32
        assert query(client, "support-bot", aid).status_code == 202  # still pending
        assert client.get("/v1/datasets/customers", headers=bearer("support-bot")).status_code == 200  # no read

        assert client.get("/admin/v1/approvals", headers=bearer("support-bot")).status_code == 403
        assert client.post(f"/admin/v1/approvals/{aid}/approve", headers=bearer("support-bot")).status_code == 403
        pending = client.get("/admin/v1/approvals", headers=bearer("alice")).json()["approvals"]
        assert [(a["id"], a["agent"], a["dataset"], a["owner"], a["status"]) for a in pending] == [
            (aid, "support-bot", "customers", "maria.keller@example.com", "pending")]

        decided = client.post(f"/admin/v1/approvals/{aid}/approve", headers=bearer("alice"))
        assert decided.status_code == 200 and decided.json()["approval"]["decided_by"] == "alice"
        assert client.post(f"/admin/v1/approvals/{aid}/deny", headers=bearer("alice")).status_code == 404
        assert client.get("/admin/v1/approvals", headers=bearer("alice")).json()["approvals"] == []

        served = query(client, "support-bot", aid)
        assert served.status_code == 200 and len(served.json()["rows"]) == 2
        assert query(client, "support-bot", aid).status_code == 200  # serves until it expires
        assert query(client, "analyst-bot", aid).status_code == 403  # another agent
        assert query(client, "support-bot", "0" * 32).status_code == 403  # unknown id

        # Bound to its dataset: analyst-bot's approval for orders does not open customers.
        other = query(client, "analyst-bot", dataset="orders").json()["approval_id"]
        client.post(f"/admin/v1/approvals/{other}/approve", headers=bearer("alice"))
        assert query(client, "analyst-bot", other, dataset="orders").status_code == 200
        assert query(client, "analyst-bot", other, dataset="customers").status_code == 403

        refused = query(client, "support-bot").json()["approval_id"]
        assert client.post(f"/admin/v1/approvals/{refused}/deny", headers=bearer("alice")).status_code == 200
        denied = query(client, "support-bot", refused)
        assert denied.status_code == 403 and "denied" in denied.json()["error"]["message"]
        everything = client.get("/admin/v1/approvals?status=all", headers=bearer("alice")).json()["approvals"]
        assert sorted(a["status"] for a in everything) == ["approved", "approved", "denied"]

    conn = sqlite3.connect(tmp_path / "store.db")
    conn.row_factory = sqlite3.Row
    reads = [dict(r) for r in conn.execute("SELECT * FROM audit WHERE action = 'read' AND agent = 'support-bot' "
                                           "ORDER BY id")]
    acts = [dict(r) for r in conn.execute("SELECT * FROM audit WHERE action IN ('approve', 'deny') "
                                          "AND status = 200 ORDER BY id")]
    conn.close()
    assert [(r["decision"], r["status"], r["approved_by"]) for r in reads[:4]] == [
        ("pending", 202, None), ("pending", 202, None), ("allow", 200, "alice"), ("allow", 200, "alice")]
    assert aid in reads[0]["reason"]
    assert [(a["action"], a["agent"], json.loads(a["query"])["approval_id"]) for a in acts] == [
        ("approve", "alice", aid), ("approve", "alice", other), ("deny", "alice", refused)]
    assert json.loads(acts[0]["query"])["dataset"] == "customers"


@pytest.mark.system
def test_approvals_from_the_command_line_across_replicas_and_expiry(tmp_path: Path, sqlite_source: str,
                                                                    pg_store: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source, store_url=pg_store, datasets=GUARDED,
                             extra="[approvals]\nttl_seconds = 2\n")
    with client_for(config) as a, client_for(config) as b:
        aid = query(a, "support-bot").json()["approval_id"]
        refused = query(b, "support-bot", body={"limit": 1}).json()["approval_id"]  # another body: its own
        listed = cli(config, "approvals", "list")
        assert listed.returncode == 0, listed.stderr
        assert aid in listed.stdout and refused in listed.stdout and "maria.keller@example.com" in listed.stdout
        no = cli(config, "deny", refused, "--by", "maria.keller@example.com")
        assert no.returncode == 0, no.stderr
        assert cli(config, "approve", refused, "--by", "x").returncode == 1  # no longer pending
        assert cli(config, "approve", aid).returncode == 2  # --by is required
        ok = cli(config, "approve", aid, "--by", "maria.keller@example.com")
        assert ok.returncode == 0, ok.stderr

        served = query(b, "support-bot", aid)  # decided on the command line, served by another replica
        assert served.status_code == 200
        assert query(a, "support-bot", refused, body={"limit": 1}).status_code == 403  # denied
        time.sleep(2.1)
        expired = query(a, "support-bot", aid)
        assert expired.status_code == 403 and "expired" in expired.json()["error"]["message"]

        records = a.get("/admin/v1/audit?agent=support-bot&limit=20", headers=bearer("alice")).json()["records"]
        served_record = next(r for r in records if r["status"] == 200)
        account = pwd.getpwuid(os.getuid()).pw_name  # recorded beside the name given
        assert served_record["approved_by"] == f"maria.keller@example.com (os: {account})"
        acts = [r for r in a.get("/admin/v1/audit?limit=50", headers=bearer("alice")).json()["records"]
                if r["action"] in ("approve", "deny")]
        assert sorted((r["action"], r["agent"].startswith("cli:")) for r in acts) == [
            ("approve", True), ("deny", True)]
        listing = cli(config, "approvals", "list", "--all", "--json")
        states = {x["id"]: x["status"] for x in json.loads(listing.stdout)}
        assert states == {aid: "expired", refused: "denied"}
