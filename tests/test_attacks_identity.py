"""Attack: a token whose subject names a role, to get that role's rights without being given them.

Agents and roles are separate names (gateway/policy/loader.py role_names): a role is the second field of a `g` line
or the subject of a `p` line; a token whose `sub` is one is refused (401 `unauthenticated`, recorded), on
every way in — the query API, SQL mode, the admin API, the review page and MCP — and `agentgate check`
fails on a name the policy files use as an agent's that is a role. Against SQLite and PostgreSQL stores.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from tests.conftest import POLICY, bearer, client_for, token, write_workspace
from tests.test_cli import TESTS_OK, agentgate_many, output

pytestmark = pytest.mark.integration

# Beside the shared policy: a role nobody holds (auditor), and a role of roles (support-lead, held by lead-bot).
IDENTITY_POLICY = POLICY + """
p, auditor, orders, read, allow
g, support-lead, support
g, lead-bot, support-lead
"""
# Role names, as a token's subject: held by an agent, held by nobody, a role of roles, the admin role.
ROLE_SUBJECTS = ("security-admin", "support", "analyst", "auditor", "support-lead")
MCP_INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-03-26", "capabilities": {},
                       "clientInfo": {"name": "attacker", "version": "1"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(params=["sqlite", "postgresql"])
def client(request: pytest.FixtureRequest, tmp_path: Path, sqlite_source: str) -> Iterator[TestClient]:
    """The gateway on a SQLite or a PostgreSQL store."""
    store = None if request.param == "sqlite" else str(request.getfixturevalue("pg_store"))
    config = write_workspace(tmp_path, source_url=sqlite_source, store_url=store, policy=IDENTITY_POLICY)
    with client_for(config) as c:
        yield c


def trail(client: TestClient, agent: str) -> list[dict[str, Any]]:
    """The records of one agent, oldest first, as a reviewer reads them (the admin API)."""
    got = client.get("/admin/v1/audit", params={"agent": agent, "limit": "200"}, headers=bearer("alice"))
    assert got.status_code == 200, got.text
    return list(reversed(got.json()["records"]))


def _calls(client: TestClient, headers: dict[str, str]) -> dict[str, httpx.Response]:
    """Every way in, with one token: data, SQL mode, admin API, review page sign-in, MCP."""
    return {
        "list": client.get("/v1/datasets", headers=headers),
        "describe": client.get("/v1/datasets/customers", headers=headers),
        "query": client.post("/v1/datasets/customers/query", headers=headers, json={"limit": 1}),
        "sql": client.post("/v1/sql", headers=headers, json={"sql": "SELECT id FROM customers"}),
        "admin_audit": client.get("/admin/v1/audit?limit=1", headers=headers),
        "admin_approvals": client.get("/admin/v1/approvals", headers=headers),
        "admin_revoke": client.post("/admin/v1/revocations", headers=headers, json={"agent": "support-bot"}),
        "mcp": client.post("/mcp", headers={**headers, **MCP_HEADERS}, json=MCP_INIT),
    }


@pytest.mark.parametrize("subject", ROLE_SUBJECTS)
def test_a_token_naming_a_role_is_refused_everywhere_and_recorded(client: TestClient, subject: str) -> None:
    for way, answer in _calls(client, bearer(subject)).items():
        assert answer.status_code == 401, (way, answer.status_code, answer.text[:300])
        error = answer.json()["error"]
        if way == "mcp" and isinstance(error.get("code"), int):  # a JSON-RPC error carrying the gateway's own
            error = error["data"]["error"]
        assert error["code"] == "unauthenticated" and "role" in error["message"], way
        assert answer.headers["WWW-Authenticate"].startswith("Bearer"), way
    # The review page's sign-in is a read of the trail through the same core: refused the same way.
    page = client.post("/admin/login", data={"token": token(subject)}, follow_redirects=False)
    assert page.status_code == 401 and "agentgate_session" not in page.headers.get("set-cookie", "")
    records = trail(client, subject)
    assert len(records) == 9  # exactly one record per request, the refused ones included
    for r in records:
        assert (r["decision"], r["status"], r["agent"]) == ("deny", 401, subject), r
        assert "is a role" in r["reason"]
    assert {r["transport"] for r in records} >= {"http", "mcp"}
    # The row was not revoked: the admin call was refused before it acted.
    assert client.get("/v1/datasets", headers=bearer("support-bot")).status_code == 200


def test_agents_keep_their_rights_and_near_misses_get_none(client: TestClient) -> None:
    # Agents holding those roles are served, a role of roles included.
    assert client.post("/v1/datasets/customers/query", headers=bearer("lead-bot"), json={"limit": 1}).status_code == 200
    assert client.get("/admin/v1/audit?limit=1", headers=bearer("alice")).status_code == 200
    # Names that differ from a role's (case, spacing, a suffix) are other names: they hold nothing (Casbin
    # compares exactly), so they get the plain "not allowed", never the role's rights.
    for near in ("Security-Admin", "security-admin ", " security-admin", "security-admin\u200b", "SUPPORT",
                 "security-admin/x"):
        headers = bearer(near)
        assert client.get("/admin/v1/audit?limit=1", headers=headers).status_code == 403, repr(near)
        assert client.post("/v1/datasets/customers/query", headers=headers,
                           json={"limit": 1}).status_code == 403, repr(near)
        assert client.post("/admin/v1/revocations", headers=headers,
                           json={"agent": "support-bot"}).status_code == 403, repr(near)
    # A NUL is in no agent's name (no store holds it): such a subject is refused before the policy is asked.
    for way in (client.get("/admin/v1/audit?limit=1", headers=bearer("support\x00")),
                client.post("/v1/datasets/customers/query", headers=bearer("support\x00"), json={"limit": 1})):
        assert way.status_code == 401 and way.json()["error"]["message"] == "invalid sub", way.text
    assert client.get("/v1/datasets", headers=bearer("support-bot")).status_code == 200


def test_a_name_that_becomes_a_role_is_refused_from_the_next_policy(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source, policy=POLICY + "g, newcomer, support\n")
    policy = tmp_path / "policies" / "policy.csv"
    same_token = bearer("newcomer")  # one token throughout: the authenticator's cache must not carry it past
    with client_for(config) as client:
        def status() -> int:
            return client.post("/v1/datasets/customers/query", headers=same_token, json={"limit": 1}).status_code

        assert status() == 200
        policy.write_text(policy.read_text() + "g, intern-bot, newcomer\n")  # now newcomer is a role too
        deadline = time.monotonic() + 3
        while status() != 401:
            assert time.monotonic() < deadline, "the new policy did not refuse the role-named token in time"
            time.sleep(0.02)
        assert client.post("/v1/datasets/customers/query", headers=bearer("intern-bot"),
                           json={"limit": 1}).status_code == 200


# --- agentgate check -------------------------------------------------------------------------------

CHECKS: dict[str, tuple[dict[str, Any], int, tuple[str, ...]]] = {
    # An agent also granted rules directly: the p line makes its name a role, so its tokens are refused.
    "agent_granted_directly": ({"policy": POLICY + "p, support-bot, orders, read, allow\n"}, 1, (
        "FAIL policy.csv: agent 'support-bot'", "role", "check: 1 fault(s)")),
    # An agent made into a role by a g line naming it as the role: a role of roles, warned (roles may hold roles).
    "agent_held_as_a_role": ({"policy": POLICY + "g, intern-bot, alice\n"}, 0, (
        "warning: 'alice' holds roles", "refused", "check: ok")),
    # Policy tests and budgets naming a role as the agent test and limit nobody.
    "policy_test_for_a_role": ({"tests": TESTS_OK + '\n[[case]]\nagent = "security-admin"\ndataset = "admin:audit"\n'
                                                   'action = "read"\nexpect = "allow"\n'}, 1, (
        "tests.toml: case 3 names 'security-admin'", "check: 1 fault(s)")),
    "budget_for_a_role": ({"budgets": "[agents.support]\nrows_per_day = 10\n"}, 1, (
        "budgets.toml: [agents.support] names a role", "check: 1 fault(s)")),
    "clean": ({"tests": TESTS_OK}, 0, ("check: ok",)),
}


@pytest.fixture(scope="module")
def check_runs(tmp_path_factory: pytest.TempPathFactory, sqlite_source: str) -> dict[str, Any]:
    configs = []
    for name, (kw, _, _) in CHECKS.items():
        root = tmp_path_factory.mktemp(name)
        budgets = kw.pop("budgets", None) if "budgets" in kw else None
        configs.append(write_workspace(root, source_url=sqlite_source, **kw))
        if budgets is not None:
            kw["budgets"] = budgets
            (root / "policies" / "budgets.toml").write_text(budgets)
    return dict(zip(CHECKS, agentgate_many([("check", "--config", c) for c in configs]), strict=True))


@pytest.mark.system
@pytest.mark.parametrize("name", list(CHECKS))
def test_check_fails_on_an_agent_name_that_is_a_role(name: str, check_runs: dict[str, Any]) -> None:
    _, code, needles = CHECKS[name]
    proc = check_runs[name]
    out = output(proc)
    assert proc.returncode == code, out
    for needle in needles:
        assert needle in out, f"{needle!r} missing from:\n{out}"
    assert "Traceback" not in out
    if name == "clean":
        assert "warning" not in out and "FAIL" not in out
