"""Attacks on human approval: reusing an approval for what was not approved, and approving one's own request.

An approval is bound to the request as submitted: its agent (and on_behalf_of), its dataset and its body
(gateway/services/approvals.py binding: JSON with keys sorted and no spacing, so key order and whitespace are the same
request; every other difference, a next page's cursor included, is another request). A repeated request while
one is pending answers with that one's id. Whoever decides is never the agent that asked nor the person it
asked for: refused on the admin API (403) and the command line (exit 1), and recorded either way; the command
line records the operating-system user beside the name given. Against SQLite and PostgreSQL stores.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, DateTime, MetaData, String, Table, Text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.testclient import TestClient

from gateway.common.clock import now
from tests.conftest import DATASETS, POLICY, bearer, client_for, write_workspace
from tests.test_cli import _env, agentgate_many, one_line_reason, output
from tests.test_http_sources import DATASETS_HTTP, POLICY_HTTP, UPSTREAM_SECRET
from tests.test_interfaces import upstream  # noqa: F401 - a fixture: the loopback HTTP source

pytestmark = pytest.mark.integration

GUARDED = (DATASETS.replace('max_rows = 25\n', 'max_rows = 25\napproval = "required"\n')
           .replace('owner = "sales-ops@example.com"\n', 'owner = "sales-ops@example.com"\napproval = "required"\n'))
# bob is a second approver; carol may both read customers (support) and decide approvals (security-admin).
APPROVERS = POLICY + "g, bob, security-admin\ng, carol, support\ng, carol, security-admin\n"
ASKED = {"columns": ["id", "name"], "where": [["country", "=", "DE"]], "limit": 2}


@pytest.fixture(params=["sqlite", "postgresql"])
def config(request: pytest.FixtureRequest, tmp_path: Path, sqlite_source: str) -> Path:
    store = None if request.param == "sqlite" else str(request.getfixturevalue("pg_store"))
    return write_workspace(tmp_path, source_url=sqlite_source, store_url=store, datasets=GUARDED, policy=APPROVERS)


@pytest.fixture
def client(config: Path) -> Iterator[TestClient]:
    with client_for(config) as c:
        yield c


def ask(client: TestClient, agent: str = "support-bot", body: Any = ASKED, approval: str | None = None,
        dataset: str = "customers", raw: bytes | None = None, **claims: Any) -> Any:
    headers = bearer(agent, **claims) | ({"X-Approval-Id": approval} if approval else {})
    if raw is not None:
        return client.post(f"/v1/datasets/{dataset}/query", headers={**headers, "Content-Type": "application/json"},
                           content=raw)
    return client.post(f"/v1/datasets/{dataset}/query", headers=headers, json=body)


def pending_id(answer: Any) -> str:
    assert answer.status_code == 202, answer.text
    return str(answer.json()["approval_id"])


def approve(client: TestClient, aid: str, by: str = "alice", verb: str = "approve") -> Any:
    return client.post(f"/admin/v1/approvals/{aid}/{verb}", headers=bearer(by))


def trail(client: TestClient, **params: str) -> list[dict[str, Any]]:
    got = client.get("/admin/v1/audit", params={"limit": "200", **params}, headers=bearer("alice"))
    assert got.status_code == 200, got.text
    return list(reversed(got.json()["records"]))


def refused(answer: Any) -> None:
    assert answer.status_code in (400, 403), answer.text
    assert "rows" not in answer.json()


# --- the approval covers the body it was asked for -------------------------------------------------

def test_an_approval_serves_only_the_body_it_was_asked_for(client: TestClient) -> None:
    aid = pending_id(ask(client))
    # While pending, another body with its id is not "still pending": it is not this approval's request.
    assert ask(client, body={**ASKED, "limit": 25}, approval=aid).status_code == 403
    assert approve(client, aid).status_code == 200
    served = ask(client, approval=aid)
    assert served.status_code == 200 and len(served.json()["rows"]) == 2

    # The same request written differently: key order, spacing, escapes. Served.
    same = [
        json.dumps(dict(reversed(list(ASKED.items())))).encode(),
        b'{ "limit" : 2 ,\n\t"where":[["country","=","DE"]], "columns":["id","name"]}',
        b'{"\\u006cimit": 2, "columns": ["id", "name"], "where": [["country", "=", "\\u0044E"]]}',
    ]
    for raw in same:
        got = ask(client, approval=aid, raw=raw)
        assert got.status_code == 200, (raw, got.text)
        assert got.json()["rows"] == served.json()["rows"]

    # Every other request: more rows, other columns (a pii one), other filters, a next page. Refused.
    others: list[dict[str, Any]] = [
        {**ASKED, "limit": 25},
        {**ASKED, "limit": 3},
        {**ASKED, "columns": ["id", "name", "email"]},
        {"columns": ASKED["columns"], "limit": 2},  # the filter dropped
        {**ASKED, "where": [["country", "=", "US"]]},
        {**ASKED, "where": [["country", "!=", "DE"]]},
        {**ASKED, "where": [["country", "=", "DE"], ["id", ">", 0]]},
        {**ASKED, "order_by": ["-id"]},
        {**ASKED, "cursor": served.json()["next_cursor"]},
        {},
    ]
    for body in others:
        refused(ask(client, body=body, approval=aid))
    # Raw tricks: a duplicate key (json keeps the last: 25 rows), an empty body, a bare value.
    for raw in (b'{"columns":["id","name"],"where":[["country","=","DE"]],"limit":2,"limit":25}', b"", b"null"):
        refused(ask(client, approval=aid, raw=raw))
    reasons = [r["reason"] for r in trail(client, agent="support-bot") if r["status"] == 403]
    assert reasons and all("another body" in r for r in reasons), reasons
    # And it still serves what it was asked for.
    assert ask(client, approval=aid).status_code == 200


def test_an_approval_is_not_for_another_agent_person_or_dataset(client: TestClient) -> None:
    aid = pending_id(ask(client, on_behalf_of="jane@example.com"))
    assert approve(client, aid).status_code == 200
    assert ask(client, approval=aid, on_behalf_of="jane@example.com").status_code == 200
    refused(ask(client, approval=aid))  # the same agent for nobody in particular
    refused(ask(client, approval=aid, on_behalf_of="mallory@example.com"))
    refused(ask(client, "analyst-bot", approval=aid, on_behalf_of="jane@example.com"))  # it may read customers too
    refused(ask(client, "carol", approval=aid, on_behalf_of="jane@example.com"))
    # analyst-bot's approval for orders does not open customers, whose body it could send as well.
    other = pending_id(ask(client, "analyst-bot", body={"limit": 2}, dataset="orders"))
    assert approve(client, other).status_code == 200
    assert ask(client, "analyst-bot", body={"limit": 2}, dataset="orders", approval=other).status_code == 200
    refused(ask(client, "analyst-bot", body={"limit": 2}, dataset="customers", approval=other))
    # Ids that are no approval at all.
    for forged in ("0" * 32, aid.upper(), aid + " ", "' OR '1'='1", "%", "x" * 5000):
        refused(ask(client, approval=forged, on_behalf_of="jane@example.com"))


def test_an_http_datasets_approval_covers_its_path_and_query(tmp_path: Path, sqlite_source: str,
                                                              upstream: str) -> None:  # noqa: F811
    extra = f'[sources.tix]\nurl = "{upstream}"\nheaders = {{ Authorization = "{UPSTREAM_SECRET}" }}\n'
    config = write_workspace(tmp_path, source_url=sqlite_source, datasets=DATASETS_HTTP, policy=POLICY_HTTP,
                             extra=extra)
    with client_for(config) as client:
        first = client.get("/v1/datasets/held/proxy/7?fields=all", headers=bearer("support-bot"))
        aid = pending_id(first)
        assert approve(client, aid).status_code == 200
        headers = bearer("support-bot") | {"X-Approval-Id": aid}
        assert client.get("/v1/datasets/held/proxy/7?fields=all", headers=headers).status_code == 200
        for other in ("/8?fields=all", "/7", "/7?fields=all&x=1", "/7/../8?fields=all", "/7?fields=ALL"):
            got = client.get(f"/v1/datasets/held/proxy{other}", headers=headers)
            assert got.status_code in (400, 403, 404), (other, got.status_code)
            assert "upstream" not in got.text


# --- one pending approval per request ----------------------------------------------------------------

def test_a_repeated_request_answers_with_the_pending_id(config: Path) -> None:
    with client_for(config) as a, client_for(config) as b:  # two replicas on one store
        aid = pending_id(ask(a))
        assert pending_id(ask(b)) == aid
        assert pending_id(ask(a, raw=b'{"limit":2,"where":[["country","=","DE"]],"columns":["id","name"]}')) == aid
        assert pending_id(ask(a, approval=aid)) == aid  # asking with the id: still pending, the same one

        others = {pending_id(ask(a, body={**ASKED, "limit": 3})), pending_id(ask(a, "analyst-bot")),
                  pending_id(ask(a, on_behalf_of="jane@example.com")),
                  pending_id(ask(a, "analyst-bot", body=ASKED, dataset="orders", raw=b'{"limit": 2}'))}
        assert aid not in others and len(others) == 4

        # Many at once, on both replicas: one approval.
        body = {**ASKED, "limit": 4}
        got: list[str] = []

        def one(client: TestClient) -> None:
            got.append(pending_id(ask(client, body=body)))

        threads = [threading.Thread(target=one, args=(c,)) for c in (a, b) * 4]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(got) == 8 and len(set(got)) == 1

        listed = a.get("/admin/v1/approvals", headers=bearer("alice")).json()["approvals"]
        assert len(listed) == 6 and len({x["id"] for x in listed}) == 6
        # The person deciding reads the body as bound: canonical, so spacing cannot hide a part of it.
        mine = next(x for x in listed if x["id"] == aid)
        assert mine["query"] == '{"columns":["id","name"],"limit":2,"where":[["country","=","DE"]]}'
        assert len(mine["body_sha256"]) == 64

        # Once decided, the same request opens a new one.
        assert approve(a, aid, verb="deny").status_code == 200
        again = pending_id(ask(a))
        assert again != aid
        reasons = [r["reason"] for r in trail(a, agent="support-bot", decision="pending")]
        assert any("already open" in r for r in reasons) and any("opened" in r for r in reasons)


def test_a_malformed_body_opens_no_approval(client: TestClient) -> None:
    for raw in (b"{", b'{"limit": 0}', b'{"wher": []}', b"[1]", b'{"limit": "2"}', b"\xff\xfe"):
        got = ask(client, raw=raw)
        assert got.status_code == 400, (raw, got.text)
    assert client.get("/admin/v1/approvals", headers=bearer("alice")).json()["approvals"] == []


# --- a second person decides -------------------------------------------------------------------------

def test_no_one_approves_their_own_request_through_the_admin_api(client: TestClient) -> None:
    # carol may read customers and decide approvals: she may not decide her own.
    aid = pending_id(ask(client, "carol"))
    for verb in ("approve", "deny"):
        got = approve(client, aid, by="carol", verb=verb)
        assert got.status_code == 403 and got.json()["error"]["code"] == "forbidden", got.text
        assert "another person" in got.json()["error"]["message"]
    assert pending_id(ask(client, "carol", approval=aid)) == aid  # still pending: nothing was decided
    acts = [r for r in trail(client, agent="carol") if r["action"] in ("approve", "deny")]
    assert [(r["action"], r["decision"], r["status"]) for r in acts] == [
        ("approve", "deny", 403), ("deny", "deny", 403)]
    assert all("self-approval refused" in r["reason"] and aid in r["query"] for r in acts)
    # Nor the person the agent asked for.
    for_bob = pending_id(ask(client, on_behalf_of="bob"))
    assert approve(client, for_bob, by="bob").status_code == 403
    # A second person may.
    assert approve(client, aid, by="bob").status_code == 200
    served = ask(client, "carol", approval=aid)
    assert served.status_code == 200
    assert trail(client, agent="carol")[-1]["approved_by"] == "bob"
    assert approve(client, for_bob, by="alice").status_code == 200


@pytest.mark.system
def test_no_one_approves_their_own_request_on_the_command_line(config: Path) -> None:
    user = pwd.getpwuid(os.getuid()).pw_name  # the account the command runs as, whatever $USER says
    # An agent named like the operating-system account that will run the command line.
    policy = config.parent / "policies" / "policy.csv"
    policy.write_text(policy.read_text() + f"g, {user}, support\n")
    with client_for(config) as client:
        aid = pending_id(ask(client))
        for_jane = pending_id(ask(client, on_behalf_of="jane@example.com"))
        by_account = pending_id(ask(client, user))
        spoofed = {**_env(), **dict.fromkeys(("USER", "LOGNAME", "LNAME", "USERNAME"), "mallory")}
        runs = agentgate_many([
            ("approve", aid, "--by", "support-bot", "--config", config),
            ("approve", aid, "--by", "  Support-Bot ", "--config", config),
            ("deny", aid, "--by", "support-bot", "--config", config),
            ("approve", for_jane, "--by", "jane@example.com", "--config", config),
            # The account running the command asked: refused, whatever name is given or $USER claims.
            (("approve", by_account, "--by", "maria", "--config", config), {"env": spoofed}),
            ("approve", aid, "--by", "maria (os: root)", "--config", config),  # a forged OS user
        ])
        for proc in runs[:5]:
            assert proc.returncode == 1, output(proc)
            assert "another person" in one_line_reason(proc)
        assert runs[5].returncode == 2 and "(os:" in one_line_reason(runs[5])
        for pending in (aid, for_jane, by_account):  # nothing was decided
            assert pending_id(ask(client, user if pending == by_account else "support-bot", approval=pending,
                                  **({"on_behalf_of": "jane@example.com"} if pending == for_jane else {}))) == pending

        ok = agentgate_many([("approve", aid, "--by", "maria", "--config", config),
                             (("approve", for_jane, "--by", "maria", "--config", config), {"env": spoofed})])
        assert [p.returncode for p in ok] == [0, 0], [output(p) for p in ok]
        decided = client.get("/admin/v1/approvals?status=all", headers=bearer("alice")).json()["approvals"]
        for one in (aid, for_jane):  # the account, not what $USER said
            mine = next(x for x in decided if x["id"] == one)
            assert (mine["decided_by"], mine["decided_os_user"]) == (f"maria (os: {user})", user)
        assert ask(client, approval=aid).status_code == 200
        assert trail(client, agent="support-bot")[-1]["approved_by"] == f"maria (os: {user})"

        # Each refusal is on the trail (the runs were concurrent: in any order), then the decisions.
        acts = [r for r in trail(client) if r["action"] in ("approve", "deny") and r["transport"] == "cli"]
        assert sorted((r["action"], r["decision"], r["status"]) for r in acts[:-2]) == (
            [("approve", "deny", 403)] * 4 + [("deny", "deny", 403)])
        assert [(r["action"], r["decision"], r["status"]) for r in acts[-2:]] == [("approve", "allow", 200)] * 2
        assert all(r["agent"].startswith("cli:") for r in acts)
        assert all("self-approval refused" in r["reason"] for r in acts if r["status"] == 403)
        assert all(json.loads(r["query"])["os_user"] == user for r in acts)


# --- a store made before approvals were bound keeps working ------------------------------------------

OLD = MetaData()
Table("approvals", OLD, Column("id", String(32), primary_key=True), Column("agent", Text, nullable=False),
      Column("dataset", Text, nullable=False), Column("owner", Text),
      Column("requested_at", DateTime(timezone=True), nullable=False), Column("status", String(16), nullable=False),
      Column("decided_by", Text), Column("decided_at", DateTime(timezone=True)),
      Column("expires_at", DateTime(timezone=True)), Column("query", Text), Column("request_id", String(64)))


def test_an_older_store_keeps_its_approvals_bound_to_their_bodies(tmp_path: Path, sqlite_source: str,
                                                                   request: pytest.FixtureRequest) -> None:
    import datetime as dt

    for kind in ("sqlite", "postgresql"):
        root = tmp_path / kind
        root.mkdir()
        store = (f"sqlite+aiosqlite:///{root / 'store.db'}" if kind == "sqlite"
                 else str(request.getfixturevalue("pg_store")))

        async def made_by_an_earlier_release(store: str) -> None:
            engine = create_async_engine(store)
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(OLD.create_all)
                    t = OLD.tables["approvals"]
                    moment = now()
                    # As the earlier release stored them: the body as sent, no digest.
                    await conn.execute(t.insert(), [
                        {"id": "a" * 32, "agent": "support-bot", "dataset": "customers", "requested_at": moment,
                         "status": "approved", "decided_by": "alice", "decided_at": moment,
                         "expires_at": moment + dt.timedelta(hours=1), "query": '{"limit": 2, "columns": ["id"]}'},
                        {"id": "b" * 32, "agent": "support-bot", "dataset": "customers", "requested_at": moment,
                         "status": "pending", "decided_by": None, "decided_at": None, "expires_at": None,
                         "query": '{"limit": 1}'}])
            finally:
                await engine.dispose()

        asyncio.run(made_by_an_earlier_release(store))
        config = write_workspace(root, source_url=sqlite_source, store_url=store, datasets=GUARDED,
                                 policy=APPROVERS)
        with client_for(config) as client:
            old = "a" * 32
            assert ask(client, body={"columns": ["id"], "limit": 2}, approval=old).status_code == 200, kind
            refused(ask(client, body={"columns": ["id"], "limit": 25}, approval=old))
            refused(ask(client, body={"columns": ["id", "email"], "limit": 2}, approval=old))
            assert approve(client, "b" * 32, by="support-bot").status_code == 403
            assert approve(client, "b" * 32).status_code == 200
            assert ask(client, body={"limit": 1}, approval="b" * 32).status_code == 200
            refused(ask(client, body={"limit": 2}, approval="b" * 32))


# --- agentgate check -----------------------------------------------------------------------------------

CONFLICTS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    # (policy, what the warnings must say, what they must not)
    "role_reads_and_approves": (POLICY + "p, support, admin:approvals, write, allow\n",
                                ("warning: role 'support' may both read 'customers'",), ("agent 'support-bot'",)),
    "agent_through_two_roles": (APPROVERS, ("warning: agent 'carol' may both read 'customers'",),
                                ("agent 'bob'", "agent 'alice'")),
    "wildcards": (POLICY + "p, ops, *, *, allow\ng, ops-bot, ops\n",
                  ("role 'ops' may both read 'customers', 'orders'",), ()),
    "denied_write_is_no_conflict": (
        POLICY + "p, support, admin:*, *, allow\np, support, admin:approvals, write, deny\n", (), ("may both read",)),
    "separated": (POLICY + "g, bob, security-admin\n", (), ("may both read",)),
}


@pytest.mark.system
def test_check_warns_when_one_subject_may_ask_and_approve(tmp_path: Path, sqlite_source: str) -> None:
    configs = [write_workspace(tmp_path / name, source_url=sqlite_source, datasets=GUARDED, policy=policy)
               for name, (policy, _, _) in CONFLICTS.items()]
    runs = agentgate_many([("check", "--config", c) for c in configs])
    for (name, (_, must, must_not)), proc in zip(CONFLICTS.items(), runs, strict=True):
        out = output(proc)
        assert proc.returncode == 0, (name, out)  # a warning, not a fault
        assert "check: ok" in out and "Traceback" not in out, (name, out)
        for needle in must:
            assert needle in out, (name, needle, out)
        for needle in must_not:
            assert needle not in out, (name, needle, out)
