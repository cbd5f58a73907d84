"""Row filters, driven through the core on a memory source: the rows of a role's filter, claim values bound
from the token, and no way around it — not by `where`, ordering, paging, nor a filter on a masked column; a missing
claim or no filter for the agent's roles refuses the read (tests/test_row_filters.py, the dialect matrix)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import customer_rows
from tests.corekit import FORBIDDEN_MSG, Core, open_core, people
from tests.test_row_filters import FILTER_POLICY, FILTERED

pytestmark = pytest.mark.unit

ROWS = customer_rows()
MAX_ROWS = 25


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    async with open_core(tmp_path, people(), datasets=FILTERED, policy=FILTER_POLICY) as c:
        yield c


def ids(rows: list[dict[str, Any]]) -> list[int]:
    return [r["id"] for r in rows]


async def test_a_role_sees_only_the_rows_its_claim_names_and_the_record_says_which(core: Core) -> None:
    got = await core.query("support-bot", body={"columns": ["id", "country"], "order_by": ["id"]},
                           claims={"region": "DE"})
    assert got.status == 200, got.json
    assert ids(got.json["rows"]) == [r["id"] for r in ROWS if r["country"] == "DE"]
    record = await core.record_of(got)
    assert record.row_filter == '[support] country = "DE"'
    assert (record.decision, record.rows) == ("allow", len(got.json["rows"]))


async def test_where_and_descending_order_never_reach_past_the_filter(core: Core) -> None:
    other = await core.query("support-bot", body={"where": [["country", "=", "FR"]]}, claims={"region": "DE"})
    assert other.status == 200 and other.json["rows"] == []  # ANDed with the filter, never ORed
    either = await core.query("support-bot", body={"columns": ["id", "country"], "limit": 100,
                                                   "where": [["country", "in", ["DE", "FR", "GB", "US"]]],
                                                   "order_by": ["-country", "-id"]}, claims={"region": "GB"})
    assert either.status == 200
    assert ids(either.json["rows"]) == sorted((r["id"] for r in ROWS if r["country"] == "GB"), reverse=True)


async def test_pages_hold_the_filter_to_the_last_one(core: Core) -> None:
    body: dict[str, Any] = {"columns": ["id"], "where": [["id", "<", 30]], "limit": 3}
    seen: list[int] = []
    for _ in range(10):
        got = await core.query("support-bot", body=body, claims={"region": "FR"})
        assert got.status == 200, got.json
        seen += ids(got.json["rows"])
        if got.json["next_cursor"] is None:
            break
        body["cursor"] = got.json["next_cursor"]
    assert seen == [r["id"] for r in ROWS if r["country"] == "FR" and r["id"] < 30]


async def test_a_cursor_taken_under_one_claim_pages_only_the_rows_of_the_next(core: Core) -> None:
    first = await core.query("support-bot", body={"columns": ["id"], "limit": 2}, claims={"region": "FR"})
    cursor, last = first.json["next_cursor"], first.json["rows"][-1]["id"]
    assert cursor is not None
    later = await core.query("support-bot", body={"columns": ["id"], "limit": 25, "cursor": cursor},
                             claims={"region": "DE"})  # the same body, another claim: the position, not the rows
    assert later.status == 200
    assert ids(later.json["rows"]) == [r["id"] for r in ROWS if r["country"] == "DE" and r["id"] > last]


async def test_a_filter_on_a_masked_column_applies_and_the_column_stays_masked(core: Core) -> None:
    got = await core.query("analyst-bot", body={"columns": ["id", "email", "country"]},
                           claims={"regions": ["FR", "GB"]})
    assert got.status == 200, got.json
    expected = [r["id"] for r in ROWS if r["country"] in ("FR", "GB") and r["active"] and r["email"] is not None]
    assert ids(got.json["rows"]) == expected[:MAX_ROWS]
    assert got.json["masked"] == ["email"] and {r["email"] for r in got.json["rows"]} == {None}
    assert (await core.record_of(got)).row_filter == (
        '[analyst] country in ["FR", "GB"] AND active = true AND email is not null')
    probe = await core.query("analyst-bot", body={"where": [["email", "is null"]]}, claims={"regions": ["FR"]})
    assert probe.status == 403  # the agent cannot ask about the masked column the filter uses


async def test_a_role_held_through_another_role_brings_its_filter(core: Core) -> None:
    got = await core.query("lead-bot", body={"columns": ["id", "country"]}, claims={"region": "GB"})
    assert got.status == 200 and {r["country"] for r in got.json["rows"]} == {"GB"}
    assert (await core.record_of(got)).row_filter == '[support] country = "GB"'


@pytest.mark.parametrize("claims", [{}, {"region": None}, {"region": {"nested": "DE"}}, {"region": ["DE", "FR"]}])
async def test_a_missing_or_unusable_claim_is_refused_not_widened(core: Core, claims: dict[str, Any]) -> None:
    got = await core.query("support-bot", claims=claims)
    assert got.status == 403 and got.error["code"] == "forbidden"
    assert "claim 'region'" in got.error["message"] and "rows" not in got.json
    record = await core.record_of(got)
    assert record.decision == "deny" and "lacks claim 'region'" in (record.reason or "")


async def test_no_filter_for_the_agents_roles_answers_as_an_unknown_dataset(core: Core) -> None:
    got = await core.query("other-bot", claims={"region": "DE"})
    assert got.status == 403 and got.error["message"] == FORBIDDEN_MSG
    assert "no row filter" in ((await core.record_of(got)).reason or "")
    assert (await core.ask("describe", "other-bot", dataset="customers")).status == 403
    assert (await core.ask("list", "other-bot")).json["datasets"] == []
    assert [d["name"] for d in (await core.ask("list", "lone-bot")).json["datasets"]] == ["customers"]


async def test_a_numeric_claim_and_one_of_the_wrong_type(core: Core) -> None:
    got = await core.query("lone-bot", body={"columns": ["id", "country"]}, claims={"upto": 30})
    assert got.status == 200
    assert ids(got.json["rows"]) == [r["id"] for r in ROWS if r["country"] == "US" and r["id"] <= 30]
    wrong = await core.query("lone-bot", claims={"upto": "thirty"})
    assert wrong.status == 400 and "'thirty'" in wrong.error["message"] and "upto" not in wrong.error["message"]


async def test_true_grants_every_row_and_claim_values_are_values(core: Core) -> None:
    every = await core.query("audit-bot", body={"columns": ["id"], "limit": 100})
    assert ids(every.json["rows"]) == [r["id"] for r in ROWS][:MAX_ROWS]
    assert (await core.record_of(every)).row_filter == "[auditor] true"
    for evil in ("DE' OR '1'='1", "x'); DROP TABLE customers; --", "%"):
        got = await core.query("support-bot", claims={"region": evil})
        assert got.status == 200 and got.json["rows"] == []


async def test_unfiltered_agents_keep_the_datasets_own_filter(core: Core) -> None:
    got = await core.query("analyst-bot", "orders", {"columns": ["id"], "limit": 100}, claims={"regions": ["DE"]})
    assert got.status == 200 and ids(got.json["rows"]) == list(range(10, 31))  # orders: amount >= 10
