"""Budgets hold under concurrency: an agent firing many reads at once, through one gateway or through two
replicas on one PostgreSQL store, gets no more than its budget.

A read sets aside the rows it may serve (its limit, at most what is left today) in the same transaction that
counts it, holding the counter (a row lock on PostgreSQL, SQLite's write lock); after the read the rows served
count and the rest is given back. So 20 reads released together against rows_per_day = 10 serve at most one
read that crosses the budget, requests_per_minute admits exactly its number, and a read that fails (its source
down, a timeout, a revocation mid-read, a bad body, a pending approval) costs no rows. On SQLite and PostgreSQL
stores; REST and SQL mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.testclient import TestClient

from gateway.services import meter as budgets
from tests.conftest import DATASETS, bearer, client_for, records, write_workspace

pytestmark = pytest.mark.integration

QUERY = "/v1/datasets/customers/query"
BURST = 20
DAY = dt.datetime(2026, 3, 2, 9, 0, 0, tzinfo=dt.UTC)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[dt.datetime], None]:
    """The budgets' idea of now (the minute and the day are fixed windows), set by the test."""
    now = [DAY]
    monkeypatch.setattr(budgets, "_now", lambda: now[0])
    return lambda moment: now.__setitem__(0, moment)


def workspace(root: Path, source_url: str, store_url: str | None, budget_text: str, **kwargs: Any) -> Path:
    config = write_workspace(root, source_url=source_url, store_url=store_url,
                             extra=kwargs.pop("extra", ""), **kwargs)
    (config.parent / "policies" / "budgets.toml").write_text(budget_text)
    return config


def burst(clients: list[TestClient], send: Callable[[TestClient], httpx.Response],
          n: int = BURST) -> list[httpx.Response]:
    """n requests released together (a barrier), spread over the clients (replicas)."""
    gate = threading.Barrier(n)

    def one(i: int) -> httpx.Response:
        gate.wait()
        return send(clients[i % len(clients)])

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def read(limit: int, agent: str = "support-bot") -> Callable[[TestClient], httpx.Response]:
    return lambda c: c.post(QUERY, headers=bearer(agent), json={"limit": limit, "columns": ["id"]})


def day_counter(client: TestClient, agent: str) -> dict[str, Any]:
    """The agent's counter of the latest day."""
    found = client.portal.call(budgets.counters, client.app.state.store, agent)  # type: ignore[union-attr]
    days = [c for c in found if c["kind"] == "day"]  # oldest first
    assert days, found
    return days[-1]


def served_rows(answers: list[httpx.Response]) -> list[int]:
    return [len(r.json()["rows"]) for r in answers if r.status_code == 200]


def assert_refused_as_budget(answers: list[httpx.Response]) -> None:
    for r in answers:
        assert r.status_code in (200, 429), r.text
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "budget_exceeded" and int(r.headers["retry-after"]) >= 1


# --- rows_per_day ---------------------------------------------------------------------------------


def test_a_burst_of_reads_crosses_rows_per_day_at_most_once(tmp_path: Path, sqlite_source: str, store_url: str,
                                                             clock: Callable[[dt.datetime], None]) -> None:
    config = workspace(tmp_path, sqlite_source, store_url, "[agents.support-bot]\nrows_per_day = 10\n",
                       extra="[sql]\nenabled = true\n")
    with client_for(config) as client:
        # Each read may take the whole budget: exactly one is served (before: every read that checked the
        # counter before the first one added its rows was served, up to 20 x 10 rows).
        answers = burst([client], read(10))
        assert_refused_as_budget(answers)
        assert served_rows(answers) == [10]
        refused = [r for r in answers if r.status_code == 429]
        assert any("held by reads in flight" in r.json()["error"]["message"] or "spent" in
                   r.json()["error"]["message"] for r in refused)
        after = day_counter(client, "support-bot")
        assert (after["rows"], after["reserved"] or 0, after["requests"]) == (10, 0, BURST)

        # Smaller reads: the budget's 10 rows, then one read crossing it (3 + 3 + 3, then 3 where 1 was left).
        clock(DAY + dt.timedelta(days=1))
        answers = burst([client], read(3))
        assert_refused_as_budget(answers)
        rows = served_rows(answers)
        assert sum(rows) <= 10 - 1 + 3 and sum(rows) >= 10, rows
        assert day_counter(client, "support-bot")["rows"] == sum(rows)

        # SQL mode sets aside the statement's LIMIT (or the smallest max_rows of what it reads) the same way.
        clock(DAY + dt.timedelta(days=2))
        answers = burst([client], lambda c: c.post("/v1/sql", headers=bearer("support-bot"),
                                                   json={"sql": "SELECT id FROM customers LIMIT 4"}))
        assert_refused_as_budget(answers)
        rows = served_rows(answers)
        assert 10 <= sum(rows) <= 10 - 1 + 4, rows
        assert day_counter(client, "support-bot")["rows"] == sum(rows)
        assert (day_counter(client, "support-bot")["reserved"] or 0) == 0
    if store_url.startswith("sqlite"):
        # Each record's rows are what its answer served: the reservation never shows there.
        served = {r.headers["x-request-id"]: len(r.json()["rows"]) for r in answers if r.status_code == 200}
        trail = {r["request_id"]: r["rows"] for r in records(config)}
        assert all(trail[rid] == n for rid, n in served.items())
        assert all(trail[r.headers["x-request-id"]] is None for r in answers if r.status_code == 429)


def test_two_replicas_on_one_store_share_rows_per_day(tmp_path: Path, sqlite_source: str, pg_store: str,
                                                      clock: Callable[[dt.datetime], None]) -> None:
    config = workspace(tmp_path, sqlite_source, pg_store, "[agents.support-bot]\nrows_per_day = 10\n")
    with client_for(config) as a, client_for(config) as b:
        answers = burst([a, b], read(10))
        assert_refused_as_budget(answers)
        assert served_rows(answers) == [10]
        clock(DAY + dt.timedelta(days=1))
        answers = burst([a, b], read(4))
        rows = served_rows(answers)
        assert 10 <= sum(rows) <= 10 - 1 + 4, rows
        assert day_counter(b, "support-bot")["rows"] == sum(rows)


# --- requests_per_minute --------------------------------------------------------------------------


def test_a_burst_gets_exactly_requests_per_minute(tmp_path: Path, sqlite_source: str, store_url: str,
                                                  clock: Callable[[dt.datetime], None]) -> None:
    config = workspace(tmp_path, sqlite_source, store_url, "[agents.support-bot]\nrequests_per_minute = 5\n")
    with client_for(config) as client:
        answers = burst([client], read(1))
        assert_refused_as_budget(answers)
        assert sum(r.status_code == 200 for r in answers) == 5
        assert all("requests per minute" in r.json()["error"]["message"] for r in answers if r.status_code == 429)


def test_two_replicas_on_one_store_share_requests_per_minute(tmp_path: Path, sqlite_source: str, pg_store: str,
                                                             clock: Callable[[dt.datetime], None]) -> None:
    config = workspace(tmp_path, sqlite_source, pg_store, "[default]\nrequests_per_minute = 5\n")
    with client_for(config) as a, client_for(config) as b:
        answers = burst([a, b], read(1))
        assert sum(r.status_code == 200 for r in answers) == 5
        # Every kind of request counts against the one minute, whichever replica it reaches.
        clock(DAY + dt.timedelta(minutes=1))
        answers = burst([a, b], lambda c: c.get("/v1/datasets", headers=bearer("support-bot")))
        assert sum(r.status_code == 200 for r in answers) == 5


# --- a failed read gives its rows back --------------------------------------------------------------

FAILING = DATASETS + """
[datasets.lost]
source = "down"
table = "customers"
owner = "sales-ops@example.com"

[datasets.guarded]
source = "main"
table = "customers"
owner = "maria.keller@example.com"
approval = "required"
"""
FAILING_POLICY = "p, support, lost, read, allow\np, support, guarded, read, allow\n"


def test_failed_reads_give_their_rows_back(tmp_path: Path, sqlite_source: str, store_url: str,
                                           clock: Callable[[dt.datetime], None]) -> None:
    from tests.conftest import POLICY

    # A source nothing listens on: its reads answer 502 (and are counted against that source in /metrics).
    down = '\n[sources.down]\nurl = "postgresql+asyncpg://postgres@127.0.0.1:1/none"\ntimeout_seconds = 2\n'
    config = workspace(tmp_path, sqlite_source, store_url, "[agents.support-bot]\nrows_per_day = 10\n",
                       datasets=FAILING, policy=POLICY + FAILING_POLICY, extra=down)
    with client_for(config) as client:
        failing = [
            lambda c: c.post("/v1/datasets/lost/query", headers=bearer(), json={"limit": 10}),  # 502
            lambda c: c.post(QUERY, headers=bearer(), json={"limit": 10, "columns": ["nope"]}),  # 400
            lambda c: c.post("/v1/datasets/guarded/query", headers=bearer(), json={"limit": 10}),  # 202
        ]
        for send in failing:  # one after the other: each would hold the whole budget if it kept what it set aside
            statuses = {send(client).status_code for _ in range(3)}
            assert statuses in ({502}, {400}, {202}), statuses
        counter = day_counter(client, "support-bot")
        assert (counter["rows"], counter["reserved"] or 0) == (0, 0)
        r = read(10)(client)
        assert r.status_code == 200 and len(r.json()["rows"]) == 10
        metrics = client.get("/metrics").text
        assert 'agentgate_source_errors_total{kind="unavailable",source="down"} 3.0' in metrics
    if store_url.startswith("sqlite"):
        assert {r["status"]: r["rows"] for r in records(config) if r["status"] != 200} == {
            502: None, 400: None, 202: None}


@contextlib.contextmanager
def table_locked(url: str) -> Iterator[None]:
    """The PostgreSQL source's customers table locked by another session (reads of it wait) while inside."""
    locked, release = threading.Event(), threading.Event()

    async def hold() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE"))
                locked.set()
                await asyncio.to_thread(release.wait, 15)
        finally:
            await engine.dispose()

    holder = threading.Thread(target=lambda: asyncio.run(hold()))
    holder.start()
    try:
        assert locked.wait(5)
        yield
    finally:
        release.set()
        holder.join(10)


def test_a_read_that_times_out_or_is_revoked_mid_read_gives_its_rows_back(
        tmp_path: Path, pg_source: str, store_url: str, clock: Callable[[dt.datetime], None]) -> None:
    config = workspace(tmp_path, pg_source, store_url, "[agents.support-bot]\nrows_per_day = 10\n")
    config.write_text(config.read_text().replace("timeout_seconds = 5", "timeout_seconds = 1.5"))
    with client_for(config) as client:
        assert read(2)(client).status_code == 200  # the table's columns are known from here on
        with table_locked(pg_source):
            started = time.monotonic()
            r = read(8)(client)
        assert r.status_code == 504 and time.monotonic() - started >= 1.4

        with table_locked(pg_source), ThreadPoolExecutor(1) as pool:
            pending = pool.submit(read(8), client)
            deadline = time.monotonic() + 5
            while day_counter(client, "support-bot")["reserved"] != 8:  # set aside, then waiting on the lock
                assert time.monotonic() < deadline, "the read never set its rows aside"
                time.sleep(0.02)
            time.sleep(0.3)  # past the budget's check, into the read
            assert read(1)(client).status_code == 429  # what is left is held by the read in flight
            revoked = client.post("/admin/v1/revocations", headers=bearer("alice"), json={"agent": "support-bot"})
            assert revoked.status_code == 201
            r = pending.result(timeout=5)
        assert r.status_code == 403 and "revoked" in r.json()["error"]["message"]
        assert client.delete(f"/admin/v1/revocations/{revoked.json()['id']}",
                             headers=bearer("alice")).status_code == 204
        counter = day_counter(client, "support-bot")
        assert (counter["rows"], counter["reserved"] or 0) == (2, 0)
        r = read(8)(client)  # the 8 rows the failed reads set aside are back
        assert r.status_code == 200 and len(r.json()["rows"]) == 8


def test_rows_set_aside_by_a_gateway_that_died_are_released(tmp_path: Path, sqlite_source: str,
                                                            clock: Callable[[dt.datetime], None]) -> None:
    config = workspace(tmp_path, sqlite_source, None, "[agents.support-bot]\nrows_per_day = 10\n")
    with client_for(config) as client:
        store = client.app.state.store

        async def lose(rows: int) -> None:  # what a gateway killed mid-read leaves in the store
            async with store.begin() as conn:
                await conn.execute(text(
                    "INSERT INTO usage_counters (agent, kind, window_start, requests, rows, reserved, reserved_at) "
                    "VALUES ('support-bot', 'day', :day, 1, 0, :rows, :at)"),
                    {"day": DAY.strftime("%Y-%m-%d"), "rows": rows, "at": int(DAY.timestamp())})

        client.portal.call(lose, 10)  # type: ignore[union-attr]
        r = read(5)(client)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        clock(DAY + dt.timedelta(seconds=budgets.RESERVATION_TTL_SECONDS + 1))
        r = read(5)(client)
        assert r.status_code == 200 and len(r.json()["rows"]) == 5
        counter = day_counter(client, "support-bot")
        assert (counter["rows"], counter["reserved"]) == (5, 0)


def test_counters_of_an_earlier_release_are_upgraded_in_place(tmp_path: Path, sqlite_source: str,
                                                              clock: Callable[[dt.datetime], None]) -> None:
    config = workspace(tmp_path, sqlite_source, None, "[agents.support-bot]\nrows_per_day = 10\n")
    store = sqlite3.connect(tmp_path / "store.db")  # as an earlier release left it: no reserved columns
    store.execute("CREATE TABLE usage_counters (agent VARCHAR(255) NOT NULL, kind VARCHAR(8) NOT NULL, "
                  "window_start VARCHAR(20) NOT NULL, requests BIGINT NOT NULL, rows BIGINT NOT NULL, "
                  "PRIMARY KEY (agent, kind, window_start))")
    store.execute("INSERT INTO usage_counters VALUES ('support-bot', 'day', '2026-03-02', 4, 7)")
    store.commit()
    store.close()
    with client_for(config) as client:
        r = read(10)(client)  # 3 rows left: it sets them aside, and is served whole
        assert r.status_code == 200 and len(r.json()["rows"]) == 10
        assert read(1)(client).status_code == 429
        counter = day_counter(client, "support-bot")
        assert (counter["rows"], counter["reserved"], counter["requests"]) == (17, 0, 6)
