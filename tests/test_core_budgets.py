"""Budgets (budgets.toml), driven through the core on a SQLite store: requests per minute and rows per UTC day,
429 budget_exceeded with Retry-After once spent, the read that crosses the budget served whole, and the rows a
read set aside given back when it fails (tests/test_budgets.py, tests/test_attacks_budget_race.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from connectors.base import ConnectorError, SourceTimedOut, SourceUnavailable
from gateway.services import meter
from tests.corekit import Core, Reply, open_core, people

pytestmark = pytest.mark.unit


class Clock:
    """The budgets' idea of now, moved by the test (the minute and the day are fixed windows)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, start: dt.datetime):
        self.now = start
        monkeypatch.setattr(meter, "_now", lambda: self.now)

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch, dt.datetime(2026, 3, 2, 23, 0, 20, tzinfo=dt.UTC))


@pytest.fixture
async def per_minute(tmp_path: Path, clock: Clock) -> AsyncIterator[Core]:
    budgets = "[default]\nrequests_per_minute = 3\n\n[agents.analyst-bot]\nrequests_per_minute = 100\n"
    async with open_core(tmp_path, people(), budgets=budgets) as c:
        yield c


@pytest.fixture
async def per_day(tmp_path: Path, clock: Clock) -> AsyncIterator[Core]:
    async with open_core(tmp_path, people(), budgets="[agents.support-bot]\nrows_per_day = 30\n") as c:
        yield c


async def read(core: Core, limit: int, agent: str = "support-bot") -> Reply:
    return await core.query(agent, body={"columns": ["id"], "limit": limit})


def spent(reply: Reply, retry_after: str, words: str) -> None:
    assert reply.status == 429 and reply.error["code"] == "budget_exceeded", reply.json
    assert reply.answer.headers["Retry-After"] == retry_after and words in reply.error["message"]
    assert "rows" not in reply.json


async def test_requests_per_minute_count_every_request_then_refuse_until_the_minute_turns(
        per_minute: Core, clock: Clock) -> None:
    assert (await read(per_minute, 1)).status == 200
    assert (await per_minute.ask("list", "support-bot")).status == 200  # every request counts
    assert (await read(per_minute, 1)).status == 200
    refused = await read(per_minute, 1)
    spent(refused, "40", "3 requests per minute")
    record = await per_minute.record_of(refused)
    assert (record.decision, record.status, record.reason) == ("deny", 429, "budget requests_per_minute = 3 spent")
    assert (await read(per_minute, 1, "analyst-bot")).status == 200  # its own budget overrides the default
    clock.advance(seconds=40)
    assert (await read(per_minute, 1)).status == 200


async def test_rows_per_day_serve_the_crossing_read_whole_then_refuse_until_the_day_turns(
        per_day: Core, clock: Clock) -> None:
    assert len((await read(per_day, 25)).json["rows"]) == 25
    assert len((await read(per_day, 25)).json["rows"]) == 25  # begun under the budget: served whole
    refused = await read(per_day, 1)
    spent(refused, "3580", "30 rows per day")
    assert (await per_day.record_of(refused)).reason == "budget rows_per_day = 30 spent (50 rows today)"
    spent(await per_day.ask("list", "support-bot"), "3580", "30 rows per day")
    assert (await read(per_day, 25, "analyst-bot")).status == 200  # no default: no limit for others
    clock.advance(hours=1)
    assert (await read(per_day, 1)).status == 200
    assert [(k, w, rows, held) for k, w, _, rows, held in await per_day.usage("support-bot")] == [
        ("day", "2026-03-02", 50, 0), ("day", "2026-03-03", 1, 0)]


async def test_a_read_counts_the_rows_it_served_not_those_it_set_aside(per_day: Core) -> None:
    got = await per_day.query("support-bot", body={"where": [["id", "<=", 3]], "limit": 25})
    assert got.status == 200 and len(got.json["rows"]) == 3
    assert [(rows, held) for _, _, _, rows, held in await per_day.usage("support-bot")] == [(3, 0)]


@pytest.mark.parametrize(("failure", "status"), [(SourceUnavailable("connection refused"), 502),
                                                  (SourceTimedOut("statement timeout"), 504)])
async def test_a_failed_read_gives_back_what_it_set_aside(per_day: Core, failure: ConnectorError,
                                                          status: int) -> None:
    per_day.source.failure = failure
    # Each would set aside 25 of the day's 30 rows: without the refund the second would find them held (429).
    for _ in range(3):
        assert (await read(per_day, 25)).status == status
    assert [(rows, held) for _, _, _, rows, held in await per_day.usage("support-bot")] == [(0, 0)]
    per_day.source.failure = None
    assert len((await read(per_day, 25)).json["rows"]) == 25


async def test_a_refusal_after_the_budgets_check_gives_back_what_it_set_aside(per_day: Core) -> None:
    unknown_column = await per_day.query("support-bot", body={"columns": ["nope"], "limit": 25})
    masked_filter = await per_day.query("support-bot", body={"where": [["note", "=", "x"]], "limit": 25})
    assert (unknown_column.status, masked_filter.status) == (400, 403)
    assert [(rows, held) for _, _, _, rows, held in await per_day.usage("support-bot")] == [(0, 0)]
