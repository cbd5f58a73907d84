"""Budgets (policies/budgets.toml): requests per minute and rows per UTC day, held in the store,
so they hold across replicas and restarts; 429 budget_exceeded with Retry-After once spent."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from gateway.common.errors import ConfigError
from gateway.config import load_settings
from gateway.policy import limits, load_policy
from gateway.services import meter as budgets
from tests.conftest import bearer, client_for, write_workspace

pytestmark = pytest.mark.integration

QUERY = "/v1/datasets/customers/query"


class Clock:
    """The budgets' idea of now, moved by the test (the minute and the day are fixed windows)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, start: dt.datetime):
        self.now = start
        monkeypatch.setattr(budgets, "_now", lambda: self.now)

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


def with_budgets(config: Path, text: str) -> Path:
    (config.parent / "policies" / "budgets.toml").write_text(text)
    return config


def read(client: TestClient, agent: str = "support-bot", limit: int = 1) -> tuple[int, dict[str, str], dict]:
    r = client.post(QUERY, headers=bearer(agent), json={"limit": limit})
    return r.status_code, dict(r.headers), r.json()


def test_requests_per_minute_hold_across_replicas_and_restarts(tmp_path: Path, sqlite_source: str, pg_store: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch, dt.datetime(2026, 3, 2, 10, 15, 20, tzinfo=dt.UTC))
    config = with_budgets(write_workspace(tmp_path, source_url=sqlite_source, store_url=pg_store),
                          "[default]\nrequests_per_minute = 3\n\n[agents.analyst-bot]\nrequests_per_minute = 100\n")
    with client_for(config) as a, client_for(config) as b:
        assert read(a)[0] == 200
        assert b.get("/v1/datasets", headers=bearer("support-bot")).status_code == 200  # every request counts
        assert read(b)[0] == 200
        status, headers, body = read(a)
        assert status == 429 and body["error"]["code"] == "budget_exceeded"
        assert headers["retry-after"] == "40"  # until the minute turns
        assert "3 requests per minute" in body["error"]["message"]
        assert read(b)[0] == 429  # the other replica agrees
        assert read(b, "analyst-bot")[0] == 200  # an agent's own budget overrides the default
    with client_for(config) as c:  # a restart: the counter is in the store
        assert read(c)[0] == 429
        clock.advance(seconds=40)
        assert read(c)[0] == 200  # a new minute
        records = c.get("/admin/v1/audit?agent=support-bot&decision=deny", headers=bearer("alice")).json()["records"]
    assert records and all(r["status"] == 429 for r in records)
    assert "requests_per_minute" in records[0]["reason"]


def test_rows_per_day_serve_the_crossing_read_then_refuse_until_the_day_turns(
        tmp_path: Path, sqlite_source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch, dt.datetime(2026, 3, 2, 23, 0, 0, tzinfo=dt.UTC))
    config = with_budgets(write_workspace(tmp_path, source_url=sqlite_source),
                          "[agents.support-bot]\nrows_per_day = 30\n")
    with client_for(config) as client:
        assert len(read(client, limit=25)[2]["rows"]) == 25
        assert len(read(client, limit=25)[2]["rows"]) == 25  # starts under the budget, so it is served whole
        status, headers, body = read(client, limit=1)
        assert status == 429 and body["error"]["code"] == "budget_exceeded"
        assert headers["retry-after"] == "3600"  # until midnight UTC
        assert client.get("/v1/datasets", headers=bearer("support-bot")).status_code == 429
        assert read(client, "analyst-bot", limit=25)[0] == 200  # no default: other agents have no limit
    with client_for(config) as client:
        assert read(client)[0] == 429  # the day's rows survive a restart
        clock.advance(hours=1)
        assert read(client)[0] == 200
    conn = sqlite3.connect(tmp_path / "store.db")
    rows = conn.execute("SELECT window_start, rows FROM usage_counters WHERE agent = 'support-bot' "
                        "AND kind = 'day' ORDER BY window_start").fetchall()
    denied = conn.execute("SELECT reason FROM audit WHERE status = 429").fetchall()
    conn.close()
    assert rows == [("2026-03-02", 50), ("2026-03-03", 1)]
    assert denied and all("rows_per_day = 30" in r[0] for r in denied)


def test_a_budget_change_reloads_with_the_policy(tmp_path: Path, sqlite_source: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    Clock(monkeypatch, dt.datetime(2026, 3, 2, 10, 0, 0, tzinfo=dt.UTC))
    config = write_workspace(tmp_path, source_url=sqlite_source)
    with client_for(config) as client:
        assert all(read(client)[0] == 200 for _ in range(3))  # no budgets.toml: no limits
        with_budgets(config, "[default]\nrequests_per_minute = 0\n")
        holder = client.app.state.policies
        deadline = time.monotonic() + 5
        while holder.current.budgets.default.requests_per_minute != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert read(client)[0] == 429


@pytest.mark.unit
@pytest.mark.parametrize("text, key", [
    ("[default]\nrequests_per_minute = -1\n", "default.requests_per_minute"),
    ("[default]\nrows_per_hour = 5\n", "default.rows_per_hour"),
    ("[agents.x]\nrows_per_day = 1.5\n", "agents.x.rows_per_day"),
    ("[agents.x]\nrows_per_day = true\n", "agents.x.rows_per_day"),
    ("[limits]\nrows_per_day = 5\n", "limits"),
])
def test_invalid_budgets_are_refused_naming_file_and_key(tmp_path: Path, sqlite_source: str, text: str,
                                                         key: str) -> None:
    config = with_budgets(write_workspace(tmp_path, source_url=sqlite_source), text)
    settings = load_settings(config)
    with pytest.raises(ConfigError) as err:
        load_policy(settings.policy.dir, settings.sources)
    assert "budgets.toml" in str(err.value) and key in str(err.value)


@pytest.mark.unit
def test_per_agent_keys_fall_back_to_the_default() -> None:
    b = limits.Budgets(default=limits.Limits(requests_per_minute=5, rows_per_day=10),
                        agents={"x": limits.Limits(rows_per_day=1)})
    assert b.for_agent("x") == limits.Limits(requests_per_minute=5, rows_per_day=1)
    assert b.for_agent("y") == limits.Limits(requests_per_minute=5, rows_per_day=10)
    assert json.dumps(limits.Limits().empty) == "true"


def test_a_store_that_cannot_count_fails_closed(tmp_path: Path, sqlite_source: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    config = with_budgets(write_workspace(tmp_path, source_url=sqlite_source), "[default]\nrows_per_day = 1000\n")

    async def broken(*args: object, **kwargs: object) -> tuple[int, int]:
        raise OperationalError("UPDATE usage_counters", {}, ConnectionError("store gone"))

    with client_for(config) as client:
        assert read(client)[0] == 200
        monkeypatch.setattr(budgets, "_add", broken)
        status, _, body = read(client)
        assert status == 503 and body["error"]["code"] == "unavailable"
        assert "rows" not in body
