"""Flooding the people who decide approvals: one agent opening approval after approval, or burying a new request
under old ones.

One pending approval per agent, person, dataset and body (a repeat answers with its id); at most `[approvals]
max_pending_per_agent` pending per agent (beyond: 429 budget_exceeded with Retry-After, recorded; the cap holds
with requests released together on two replicas); listings are newest first, paged in the admin API (`limit`,
`before`, `next`) and limited on the command line (`--limit N`, `--all`). On SQLite and PostgreSQL stores.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway import cli
from gateway.cli.approvals import APPROVALS_SHOWN
from tests.conftest import DATASETS, bearer, client_for, write_workspace

pytestmark = pytest.mark.integration

GUARDED = DATASETS.replace('max_rows = 25\n', 'max_rows = 25\napproval = "required"\n')
CAP = 3
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}


@pytest.fixture
def config(tmp_path: Path, sqlite_source: str, store_url: str) -> Path:
    return write_workspace(tmp_path, source_url=sqlite_source, store_url=store_url, datasets=GUARDED,
                           extra=f"\n[approvals]\nmax_pending_per_agent = {CAP}\n")


@pytest.fixture
def client(config: Path) -> Iterator[TestClient]:
    with client_for(config) as c:
        yield c


def ask(client: TestClient, limit: int, agent: str = "support-bot", **claims: Any) -> Any:
    return client.post("/v1/datasets/customers/query", json={"limit": limit}, headers=bearer(agent, **claims))


def listed(client: TestClient, **params: str) -> dict[str, Any]:
    got = client.get("/admin/v1/approvals", params=params, headers=bearer("alice"))
    assert got.status_code == 200, got.text
    return dict(got.json())


def test_an_agent_opens_at_most_its_cap_of_pending_approvals(client: TestClient) -> None:
    opened = [ask(client, n) for n in range(1, CAP + 1)]
    assert [r.status_code for r in opened] == [202] * CAP
    ids = [r.json()["approval_id"] for r in opened]
    assert len(set(ids)) == CAP

    # Beyond the cap, through REST and MCP alike: 429, nothing opened, recorded.
    over = ask(client, 99)
    assert over.status_code == 429 and over.json()["error"]["code"] == "budget_exceeded", over.text
    assert int(over.headers["retry-after"]) > 0 and "approval_id" not in over.json()
    mcp = client.post("/mcp", headers={**bearer(), **MCP_HEADERS}, json={
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "query_dataset", "arguments": {"name": "customers", "limit": 98}}})
    assert mcp.json()["result"]["structuredContent"]["error"]["code"] == "budget_exceeded", mcp.text
    assert len(listed(client)["approvals"]) == CAP
    refused = [r for r in client.get("/admin/v1/audit", params={"agent": "support-bot", "decision": "deny"},
                                     headers=bearer("alice")).json()["records"]]
    assert len(refused) == 2 and all(r["status"] == 429 and "at the cap" in r["reason"] for r in refused)

    # A repeat of a pending request is no new approval: it still answers with its id.
    again = ask(client, 1)
    assert again.status_code == 202 and again.json()["approval_id"] == ids[0]
    # The cap is per agent: another agent still asks.
    assert ask(client, 1, "analyst-bot").status_code == 202
    # Once a person decides one, the agent may open one more.
    assert client.post(f"/admin/v1/approvals/{ids[1]}/deny", headers=bearer("alice")).status_code == 200
    assert ask(client, 99).status_code == 202
    assert ask(client, 100).status_code == 429


def test_the_cap_holds_with_requests_released_together_on_two_replicas(config: Path) -> None:
    with client_for(config) as a, client_for(config) as b:
        statuses: list[int] = []
        start = threading.Barrier(8)

        def one(client: TestClient, limit: int) -> None:
            start.wait(10)
            statuses.append(ask(client, limit).status_code)

        threads = [threading.Thread(target=one, args=(c, n)) for n, c in enumerate((a, b) * 4, start=1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(statuses) == [202] * CAP + [429] * (8 - CAP), statuses
        assert len(listed(a)["approvals"]) == CAP


def test_listings_are_newest_first_and_paged(client: TestClient, config: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    ids = [ask(client, n, agent).json()["approval_id"]
           for n in (1, 2, 3) for agent in ("support-bot", "analyst-bot")]
    newest_first = ids[::-1]
    assert [x["id"] for x in listed(client)["approvals"]] == newest_first
    assert listed(client)["next"] is None

    # Paging: `limit`, then `before` the previous page's `next`, until `next` is null.
    pages: list[list[str]] = []
    params: dict[str, str] = {"limit": "4"}
    while True:
        page = listed(client, **params)
        pages.append([x["id"] for x in page["approvals"]])
        if page["next"] is None:
            break
        assert page["next"] == pages[-1][-1]
        params = {"limit": "4", "before": page["next"]}
    assert pages == [newest_first[:4], newest_first[4:]]
    # A decided approval is still a cursor; status filters the pages.
    assert client.post(f"/admin/v1/approvals/{ids[-1]}/approve", headers=bearer("alice")).status_code == 200
    assert [x["id"] for x in listed(client, status="all", limit="2")["approvals"]] == newest_first[:2]
    assert [x["id"] for x in listed(client, limit="2", before=ids[-1])["approvals"]] == newest_first[1:3]
    assert [x["id"] for x in listed(client, status="approved")["approvals"]] == [ids[-1]]

    for bad in ({"limit": "0"}, {"limit": "1001"}, {"limit": "²"}, {"limit": "-1"}, {"before": "nope"},
                {"before": "x" * 5000}, {"before": "a\x00"}, {"page": "2"}):
        r = client.get("/admin/v1/approvals", params=bad, headers=bearer("alice"))
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", (bad, r.text)

    # The command line: newest first, the newest --limit N (a note on stderr says more exist); --all: every one.
    def run(*args: str) -> tuple[list[str], str]:
        assert cli.main(["approvals", "list", "--json", *args, "--config", str(config)]) == 0
        out = capsys.readouterr()
        return [x["id"] for x in json.loads(out.out)], out.err

    pending = [i for i in newest_first if i != ids[-1]]
    got, note = run()
    assert (got, note) == (pending, "")
    got, note = run("--limit", "2")
    assert got == pending[:2] and "the newest 2 shown" in note
    got, note = run("--all")
    assert got == newest_first and note == ""
    got, note = run("--all", "--limit", "1")
    assert got == newest_first[:1] and "newest 1" in note
    assert cli.main(["approvals", "list", "--config", str(config)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table[1:]] == pending
    for bad in ("0", "x", "²"):
        with pytest.raises(SystemExit) as exited:
            cli.main(["approvals", "list", "--limit", bad, "--config", str(config)])
        assert exited.value.code == 2


def test_the_command_line_shows_the_newest_fifty_by_default(tmp_path: Path, sqlite_source: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source, datasets=GUARDED,
                             extra="\n[approvals]\nmax_pending_per_agent = 60\n")
    with client_for(config) as client:
        ids = [ask(client, n).json()["approval_id"] for n in range(1, 53)]
    assert cli.main(["approvals", "list", "--json", "--config", str(config)]) == 0
    out = capsys.readouterr()
    assert [x["id"] for x in json.loads(out.out)] == ids[::-1][:APPROVALS_SHOWN]
    assert "the newest 50 shown" in out.err
