"""Tampering with the trail in the store, and what reviewers are told about it.

The attacker here has write access to the store (a DBA, a stolen store password) and edits, deletes or
reorders records, or edits the newest one, which an incremental check never reads again. The property: the
review page never says "verified" of a record no check read; it says which records were checked and when;
and within `[audit] verify_seconds` the background full check finds the break, which then shows on every
view of the page, in /readyz's detail (the status stays 200) and in /metrics. On SQLite and PostgreSQL
stores. Also: GET /admin/v1/audit/verify takes `incremental` (1/0/true/false, anything else 400) and an
incremental check really reads only what was added since the last one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.testclient import TestClient

from gateway.audit import AuditRecord, AuditTrail, integrity
from gateway.common.clock import now, parse_time
from gateway.common.errors import ConfigError
from gateway.config import load_settings
from gateway.store import audit as audit_table
from tests.conftest import bearer, client_for, records, token, write_workspace

pytestmark = pytest.mark.integration

ALICE = bearer("alice")  # security-admin: admin:audit read


def workspace(tmp_path: Path, source: str, store: str, verify_seconds: float) -> Path:
    return write_workspace(tmp_path, source_url=source, store_url=store,
                           extra=f"\n[audit]\nverify_seconds = {verify_seconds}\n")


@pytest.fixture
def gateway_for(tmp_path: Path, sqlite_source: str, store_url: str) -> Iterator[Callable[[float], TestClient]]:
    """A gateway on this test's store, with a given verify_seconds (its lifespan closed at the end)."""
    opened: list[TestClient] = []

    def start(verify_seconds: float) -> TestClient:
        client = client_for(workspace(tmp_path, sqlite_source, store_url, verify_seconds))
        client.__enter__()
        opened.append(client)
        return client

    yield start
    for client in opened:
        client.__exit__(None, None, None)


def in_store(url: str, act: Callable[[AsyncEngine], Any]) -> Any:
    """Act on the store as its DBA would: with a connection of one's own, behind the gateway's back."""
    async def run() -> Any:
        engine = create_async_engine(url)
        try:
            return await act(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def make_traffic(client: TestClient, n: int = 6) -> None:
    for i in range(n):
        client.post("/v1/datasets/customers/query", json={"columns": ["id"], "limit": 1 + i},
                    headers=bearer("support-bot"))
    client.post("/v1/datasets/orders/query", json={}, headers=bearer("support-bot"))  # a denial
    client.get("/v1/datasets")  # no token


def sign_in(client: TestClient) -> None:
    r = client.post("/admin/login", data={"token": token("alice")}, follow_redirects=False)
    assert r.status_code == 303, r.text


def status_box(html: str) -> str:
    """The chain's status box of a page, as text."""
    box = html.split('id="chain-status"', 1)[1].split(">", 1)[1].split("</div>", 1)[0]
    return " ".join(unescape(re.sub(r"<[^>]+>", "", box)).split())


def verify(client: TestClient, **params: str) -> dict[str, Any]:
    r = client.get("/admin/v1/audit/verify", params=params, headers=ALICE)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def wait_for_break(client: TestClient, timeout: float = 15.0) -> dict[str, Any]:
    """/readyz's chain detail once a background check has found the break (the status stays 200)."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get("/readyz")
        assert r.status_code == 200, r.text
        chain: dict[str, Any] = r.json()["audit_chain"]
        if chain["ok"] is False:
            return chain
        assert time.monotonic() < deadline, f"no background check found the break: {chain}"
        time.sleep(0.05)


def metric(client: TestClient, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", client.get("/metrics").text, re.M)
    assert found, f"{name} is not in /metrics"
    return float(found.group(1))


# --- the attacks -----------------------------------------------------------------------------------


async def edit_old(engine: AsyncEngine, newest_checked: int) -> int:
    async with engine.begin() as conn:
        await conn.execute(update(audit_table).where(audit_table.c.id == 2).values(reason="nothing to see", rows=0))
    return 2


async def delete_one(engine: AsyncEngine, newest_checked: int) -> int:
    async with engine.begin() as conn:
        await conn.execute(delete(audit_table).where(audit_table.c.id == 3))
    return 4  # the chain breaks where record 3 is missing


async def reorder(engine: AsyncEngine, newest_checked: int) -> int:
    """Records 3 and 4 trade places, hashes and all: each is intact, but the links are not."""
    async with engine.begin() as conn:
        rows = {r.id: dict(r._mapping) for r in await conn.execute(select(audit_table).where(
            audit_table.c.id.in_([3, 4])))}
        for here, there in ((3, 4), (4, 3)):
            values = {k: v for k, v in rows[there].items() if k != "id"}
            await conn.execute(update(audit_table).where(audit_table.c.id == here).values(**values))
    return 3


async def edit_newest(engine: AsyncEngine, newest_checked: int) -> int:
    """The newest record a check has passed: later incremental checks compare its hash, not its content, so
    only a full check can find this edit."""
    async with engine.begin() as conn:
        await conn.execute(update(audit_table).where(audit_table.c.id == newest_checked).values(rows=10_000))
    return newest_checked


ATTACKS = {"edit an old record": (edit_old, "edited"), "delete a record": (delete_one, "missing"),
           "reorder records": (reorder, "prev_hash"), "edit the newest record": (edit_newest, "edited")}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_the_background_check_turns_every_view_red(gateway_for: Callable[[float], TestClient], store_url: str,
                                                    attack: str) -> None:
    client = gateway_for(0.3)
    make_traffic(client)
    sign_in(client)
    assert 'class="status ok"' in client.get("/admin/").text
    newest_checked = verify(client, incremental="1")["checked"]["last_id"]
    tamper, problem = ATTACKS[attack]
    bad = in_store(store_url, lambda engine: tamper(engine, newest_checked))

    chain = wait_for_break(client)
    assert chain["bad_id"] == bad and problem in chain["problem"] and chain["kind"] == "full"
    assert metric(client, "agentgate_audit_verify_ok") == 0.0
    assert metric(client, "agentgate_audit_verify_bad_record") == bad
    assert metric(client, "agentgate_audit_verify_last_seconds") > time.time() - 60
    # Every view: the trail's default view, a filtered one, and a record's own page, which runs no check.
    for path in ("/admin/", "/admin/?decision=deny", "/admin/records/1"):
        html = client.get(path).text
        assert 'class="status broken" role="alert"' in html, path
        box = status_box(html)
        assert f"chain broken at record {bad}:" in box and problem in box, box
        assert f'<a href="/admin/records/{bad}">{bad}</a>' in html
        assert "intact" not in box and "verified:" not in box
    # The gateway still serves and records: a broken chain is for people and alerts, not the balancer.
    assert client.post("/v1/datasets/customers/query", json={"limit": 1},
                       headers=bearer("support-bot")).status_code == 200


def test_the_default_view_says_what_it_did_not_check(gateway_for: Callable[[float], TestClient],
                                                     store_url: str) -> None:
    """Before the next full check, the default view stays as it was, but says exactly which records it read
    and when the records before them were last checked: never "verified" of the edited one."""
    client = gateway_for(3600)  # the start's check only, then not for an hour
    make_traffic(client)
    sign_in(client)
    verify(client)  # waits for the check made at start, if it still runs (it may have seen an empty trail)
    client.get("/admin/")  # so this view's check reads every record, and later views resume from it
    make_traffic(client, 2)
    bad = in_store(store_url, lambda engine: edit_old(engine, 0))
    box = status_box(client.get("/admin/").text)
    checked = re.search(r"this view: records (\d+)\u2013(\d+) checked incrementally at [\d-]+ [\d:]+ UTC", box)
    assert checked, box
    assert int(checked.group(1)) > bad  # the edited record was not read, and the page does not claim it
    assert re.search(r"last full check: [\d-]+ [\d:]+ UTC, \d+ records \(1\u2013\d+\), intact", box), box
    assert "verified" not in box and "a full check runs every 3,600 s" in box
    # The full check, on demand, finds it; from then on every view, /readyz and /metrics say so.
    assert 'class="status broken"' in client.get("/admin/?full_check=1").text
    assert f"chain broken at record {bad}:" in status_box(client.get("/admin/").text)
    assert client.get("/readyz").json()["audit_chain"]["bad_id"] == bad
    assert metric(client, "agentgate_audit_verify_ok") == 0.0


def test_verify_takes_incremental_and_nothing_else(gateway_for: Callable[[float], TestClient],
                                                   store_url: str) -> None:
    client = gateway_for(0)  # no background check: only the ones asked for
    assert client.get("/readyz").json()["audit_chain"]["ok"] is None  # nothing checked yet, nothing claimed
    make_traffic(client)
    for bogus in ("bogus", "yes", "2", "-1", "1 ", "on", "tru"):
        r = client.get("/admin/v1/audit/verify", params={"incremental": bogus}, headers=ALICE)
        assert r.status_code == 400 and "'incremental' takes 1/true or 0/false" in r.json()["error"]["message"]
    for params in ({"incremental": "1", "full": "1"}, {"incremental[]": "1"}, {"limit": "5"}):
        r = client.get("/admin/v1/audit/verify", params=params, headers=ALICE)
        assert r.status_code == 400 and "unknown parameter" in r.json()["error"]["message"], params
    first = verify(client, incremental="0")
    assert first["ok"] and first["checked"]["kind"] == "full" and first["checked"]["first_id"] == 1
    # Really incremental: it reads what was added since (each request above left a record) and no more.
    last = first["checked"]["last_id"]
    make_traffic(client, 3)
    more = verify(client, incremental="1")
    assert more["incremental"] and more["checked"]["kind"] == "incremental"
    assert more["checked"]["first_id"] == last + 1 and more["checked"]["records"] == more["checked"]["last_id"] - last
    assert more["count"] == more["checked"]["last_id"]
    # What it did not read, it does not vouch for: an edit before that is found only by a full check.
    bad = in_store(store_url, lambda engine: edit_old(engine, 0))
    for flag in ("1", "true", "TRUE"):
        quick = verify(client, incremental=flag)
        assert quick["ok"] and quick["checked"]["kind"] == "incremental" and quick["checked"]["first_id"] > bad
        assert quick["last"]["ok"]  # the last verdict on the whole chain is still the full check's
    for flag in ("0", "false", ""):
        full = verify(client, incremental=flag) if flag else verify(client)
        assert not full["ok"] and full["bad_id"] == bad and full["checked"]["kind"] == "full"
        assert full["last"]["bad_id"] == bad and full["last_full"]["bad_id"] == bad
    # After a break there is nothing to resume from: an incremental check walks the whole chain again.
    again = verify(client, incremental="1")
    assert not again["ok"] and again["checked"]["kind"] == "full"
    # Each request, refused or not, left its record.
    assert client.get("/admin/v1/audit", params={"limit": "1000"}, headers=ALICE).status_code == 200
    trail = client.get("/admin/v1/audit", params={"limit": "1000"}, headers=ALICE).json()["records"]
    verifies = [r for r in trail if r["action"] == "verify_audit"]
    assert sum(1 for r in verifies if r["decision"] == "error" and r["status"] == 400) == 10


def test_a_prune_during_a_walk_is_no_break(gateway_for: Callable[[float], TestClient], store_url: str) -> None:
    """A full check that reads the chain while `audit prune` cuts its head off must not cry "broken" (which
    would be a false alarm on every view, /readyz and /metrics): it walks again from the new anchor."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    # A walk long enough (most of a second here) that the prune, begun once the walk is seen running, lands
    # while it reads, however loaded the machine: 6,000 records were sometimes walked before the prune landed.
    total = 30_000

    async def fill(engine: AsyncEngine) -> None:
        # Setup, not the thing tested: 30,000 records queued at once on a loaded CI machine outlast the default
        # 2 s write timeout (each record's deadline starts when it is queued), so this trail waits longer.
        trail = AuditTrail(engine, write_timeout=300)
        await trail.start()
        await asyncio.gather(*(trail.record(AuditRecord(
            time=start + dt.timedelta(seconds=i), request_id=f"r{i}", action="read", decision="allow", status=200))
            for i in range(total)))
        await trail.close()

    async def prune(engine: AsyncEngine) -> dt.datetime:
        await integrity.prune(engine, start + dt.timedelta(seconds=total - 100), None)
        return now()

    client = gateway_for(0)
    in_store(store_url, fill)
    answer: dict[str, Any] = {}
    walk = threading.Thread(target=lambda: answer.update(verify(client)))
    walk.start()
    deadline = time.monotonic() + 10
    while not client.get("/readyz").json()["audit_chain"]["running"]:
        assert time.monotonic() < deadline and walk.is_alive(), "the full check never ran"
        time.sleep(0.005)
    pruned_at = in_store(store_url, prune)
    walk.join(30)
    checked = answer["checked"]
    assert parse_time(checked["started_at"]) < pruned_at  # the prune came while it walked
    assert answer["ok"], answer
    assert checked["first_id"] == total - 99 and client.get("/readyz").json()["audit_chain"]["ok"] is True


def test_walks_run_off_the_event_loop(tmp_path: Path, sqlite_source: str, caplog: pytest.LogCaptureFixture) -> None:
    """Every walk of the chain (background, full on demand, incremental) runs in a thread of its own with an
    event loop of its own, so a long walk never stalls the loop that serves requests."""
    config = workspace(tmp_path, sqlite_source, "sqlite:///store.db", 3600)
    with caplog.at_level(logging.DEBUG, logger="agentgate.audit"), client_for(config) as client:
        make_traffic(client)
        verify(client)
        verify(client, incremental="1")
    walks = [r for r in caplog.records if r.getMessage().startswith("audit chain walk:")]
    assert len(walks) >= 3  # the start's, the full and the incremental one
    assert all(r.threadName.startswith("audit-verify") for r in walks), [r.threadName for r in walks]
    assert records(config)  # the trail the walks read


@pytest.mark.unit
@pytest.mark.parametrize("value, fault", [("-1", "0 (no background check) or more"), ('"300"', "not a string"),
                                          ("true", "not true or false"), ("inf", "0 (no background check) or more"),
                                          ("nan", "0 (no background check) or more")])
def test_verify_seconds_is_checked(tmp_path: Path, sqlite_source: str, value: str, fault: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source, extra=f"\n[audit]\nverify_seconds = {value}\n")
    with pytest.raises(ConfigError, match=re.escape(fault)):
        load_settings(config)
    assert load_settings(write_workspace(tmp_path, source_url=sqlite_source)).audit.verify_seconds == 300
