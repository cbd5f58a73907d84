"""Admin foot-guns: the emergency stop must stop what the admin meant, once, and never its own hand.

- `revoke agent NAME` of a name nothing knows (a typo, another case, a role's name) still stores the revocation
  (an emergency stop is never delayed nor refused) and says on stderr that it may have missed;
- revoking twice (command line, admin API, both at once) keeps one revocation in force and answers its id;
- the admin API refuses an admin revoking itself or the token it is using (403, recorded);
- revocation times carry their zone.
On the SQLite and PostgreSQL stores."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.conftest import POLICY, bearer, client_for, token, write_workspace
from tests.test_cli import agentgate, agentgate_many, one_line_reason, output

pytestmark = pytest.mark.system

ADMINS = POLICY + "g, bob, security-admin\np, direct-bot, customers, read, allow\n"


@pytest.fixture
def config(tmp_path: Path, sqlite_source: str, store_url: str) -> Path:
    return write_workspace(tmp_path, source_url=sqlite_source, store_url=store_url, policy=ADMINS)


def active(client: TestClient, admin: str = "alice") -> list[dict[str, object]]:
    r = client.get("/admin/v1/revocations", headers=bearer(admin))
    assert r.status_code == 200, r.text
    items: list[dict[str, object]] = r.json()["revocations"]
    return items


def zoned(text: str) -> dt.datetime:
    """An ISO 8601 time that carries its zone (Z or +00:00), as UTC."""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)", text), text
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert moment.utcoffset() == dt.timedelta(0)
    return moment


def test_revoking_a_name_nothing_knows_warns_and_stores_it(config: Path) -> None:
    with client_for(config) as client:
        # An agent the policy does not name, known only because it called (and was refused).
        assert client.get("/v1/datasets", headers=bearer("ghost-bot")).status_code in (200, 403)
        names = ["suport-bot", "Support-Bot", "support-bot ", "support", "security-admin",  # unknown, or roles
                 "support-bot", "direct-bot", "alice", "ghost-bot"]  # a g member, a p subject, the trail
        runs = agentgate_many([("revoke", "agent", n, "--config", config) for n in names])
        for name, proc in zip(names, runs, strict=True):
            assert proc.returncode == 0, (name, output(proc))
            assert re.fullmatch(r"revoked agent .+ \(revocation \d+\)\n", proc.stdout), proc.stdout
        for name, proc in zip(names[:5], runs[:5], strict=True):
            warning = one_line_reason(proc)
            assert warning.startswith("agentgate: warning: ") and "stored all the same" in warning, warning
            assert repr(name) in warning
            if name in ("support", "security-admin"):
                assert "is a role" in warning and "not the role's members" in warning
            else:
                assert "no policy line and no audit record names the agent" in warning
        for name, proc in zip(names[5:], runs[5:], strict=True):
            assert proc.stderr == "", (name, proc.stderr)
        # Warned or not, every one is in force.
        assert sorted(str(r["agent"]) for r in active(client, "bob")) == sorted(names)
        assert client.get("/v1/datasets", headers=bearer("support-bot")).status_code == 403


def test_revoking_twice_keeps_one_revocation(config: Path) -> None:
    with client_for(config) as client:
        first = agentgate("revoke", "agent", "support-bot", "--reason", "incident 7", "--config", config)
        again = agentgate("revoke", "agent", "support-bot", "--reason", "incident 8", "--config", config)
        assert first.returncode == again.returncode == 0, output(first) + output(again)
        rid = int(re.fullmatch(r"revoked agent support-bot \(revocation (\d+)\)\n", first.stdout)[1])  # type: ignore[index]
        said = re.fullmatch(r"agent support-bot was already revoked \(revocation (\d+), by cli:\S+ at (\S+)\); "
                            r"nothing stored\n", again.stdout)
        assert said is not None, again.stdout
        assert int(said[1]) == rid
        zoned(said[2])
        api = client.post("/admin/v1/revocations", headers=bearer("alice"), json={"agent": "support-bot"})
        assert api.status_code == 201 and api.json()["id"] == rid and api.json()["already_revoked"] is True
        zoned(api.json()["created_at"])
        # Tokens the same way, through either door.
        made = client.post("/admin/v1/revocations", headers=bearer("alice"), json={"jti": "tok-1"})
        assert made.status_code == 201 and made.json()["already_revoked"] is False
        twice = client.post("/admin/v1/revocations", headers=bearer("bob"), json={"jti": "tok-1", "reason": "x"})
        assert twice.json() == {**made.json(), "already_revoked": True}
        cli = agentgate("revoke", "token", "tok-1", "--config", config)
        assert cli.returncode == 0 and f"already revoked (revocation {made.json()['id']}," in cli.stdout
        listed = active(client)
        assert [(r["id"], r.get("agent"), r.get("jti"), r["reason"]) for r in listed] == [
            (rid, "support-bot", None, "incident 7"), (made.json()["id"], None, "tok-1", None)]
        # Lifted, a new revocation is a new one.
        assert client.delete(f"/admin/v1/revocations/{rid}", headers=bearer("alice")).status_code == 204
        anew = client.post("/admin/v1/revocations", headers=bearer("alice"), json={"agent": "support-bot"})
        assert anew.status_code == 201 and anew.json()["id"] != rid and anew.json()["already_revoked"] is False
        trail = client.get("/admin/v1/audit", params={"limit": "100"}, headers=bearer("alice")).json()["records"]
    acts = [(r["agent"], r["status"], r["reason"]) for r in reversed(trail) if r["action"] == "revoke"]
    assert [status for _, status, _ in acts] == [201, 200, 201, 201, 201, 200, 201]
    assert "already revoked" in str(acts[1][2]) and "already revoked" in str(acts[2][2])


def test_revoking_at_once_from_many_places_makes_one(config: Path) -> None:
    """Two replicas on one store, three admins' requests on each, released together; and command lines."""
    with client_for(config) as one, client_for(config) as two:
        for round_ in range(4):
            subject = f"race-bot-{round_}"
            start = threading.Barrier(6)

            def revoke(client: TestClient, admin: str, subject: str = subject,
                       start: threading.Barrier = start) -> dict[str, object]:
                start.wait()
                r = client.post("/admin/v1/revocations", headers=bearer(admin), json={"agent": subject})
                assert r.status_code == 201, r.text
                answer: dict[str, object] = r.json()
                return answer

            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(revoke, [one, two] * 3, ["alice", "bob", "bob", "alice", "alice", "bob"]))
            assert len({a["id"] for a in answers}) == 1, answers
            assert sorted(a["already_revoked"] for a in answers) == [False] + [True] * 5
        runs = agentgate_many([("revoke", "agent", "analyst-bot", "--config", config)] * 3)
        ids = set()
        for proc in runs:
            assert proc.returncode == 0, output(proc)
            ids.add(re.search(r"\(revocation (\d+)", proc.stdout)[1])  # type: ignore[index]
        assert len(ids) == 1 and sum(p.stdout.startswith("revoked agent") for p in runs) == 1
        assert sorted(str(r["agent"]) for r in active(one)) == ["analyst-bot"] + [f"race-bot-{i}" for i in range(4)]


@pytest.mark.integration
def test_an_admin_cannot_revoke_itself(config: Path) -> None:
    mine = token("alice", jti="alice-session")
    as_alice = {"Authorization": f"Bearer {mine}"}
    with client_for(config) as client:
        for body in ({"agent": "alice"}, {"agent": "alice", "reason": "oops"}, {"jti": "alice-session"}):
            r = client.post("/admin/v1/revocations", headers=as_alice, json=body)
            assert r.status_code == 403, r.text
            assert r.json()["error"]["code"] == "forbidden" and "may not revoke itself" in r.json()["error"]["message"]
        assert active(client) == [] and client.get("/admin/v1/revocations", headers=as_alice).status_code == 200
        # Another of its own tokens (a leaked one, say) it may stop; another admin may stop it.
        other = client.post("/admin/v1/revocations", headers=as_alice, json={"jti": "alice-laptop"})
        assert other.status_code == 201
        stopped = client.post("/admin/v1/revocations", headers=bearer("bob"), json={"agent": "alice"})
        assert stopped.status_code == 201
        assert client.get("/admin/v1/revocations", headers=as_alice).status_code == 403
        trail = client.get("/admin/v1/audit", params={"limit": "100"}, headers=bearer("bob")).json()["records"]
    refused = [r for r in reversed(trail) if r["action"] == "revoke" and r["status"] == 403 and r["agent"] == "alice"]
    assert [(r["decision"], json.loads(r["query"])) for r in refused] == [
        ("deny", {"agent": "alice", "reason": None}), ("deny", {"agent": "alice", "reason": "oops"}),
        ("deny", {"jti": "alice-session", "reason": None})]
    assert all(str(r["reason"]).startswith("self-revocation refused") for r in refused)


def test_revocation_times_carry_their_zone(config: Path) -> None:
    before = dt.datetime.now(dt.UTC)
    with client_for(config) as client:
        made = client.post("/admin/v1/revocations", headers=bearer("alice"), json={"agent": "support-bot"}).json()
        assert agentgate("revoke", "token", "tok-9", "--config", config).returncode == 0
        listed = active(client)
    after = dt.datetime.now(dt.UTC)
    for item in [made, *listed]:
        assert before - dt.timedelta(seconds=1) <= zoned(str(item["created_at"])) <= after
