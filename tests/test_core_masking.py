"""Masking, driven through the core (Gateway.handle) on a memory source: a column of class C is returned only to
an agent holding read:C on the dataset, else it is null and listed in `masked`; filtering or ordering on it is a
403; the record's `columns` are what was fetched and `masked` what was not (tests/test_api.py, SPEC: Answer)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import POLICY
from tests.corekit import Core, open_core, people

pytestmark = pytest.mark.unit

ASKED = {"columns": ["id", "name", "email", "note"], "where": [["id", "<=", 4]], "order_by": ["id"]}


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    async with open_core(tmp_path, people()) as c:
        yield c


async def test_each_role_sees_the_classes_it_holds_and_null_for_the_rest(core: Core) -> None:
    support = await core.query("support-bot", body=ASKED)
    assert support.status == 200, support.json
    out = support.json
    assert set(out) == {"dataset", "columns", "rows", "masked", "next_cursor"}
    assert (out["dataset"], out["columns"], out["masked"]) == ("customers", ["id", "name", "email", "note"], ["note"])
    assert out["rows"][0] == {"id": 1, "name": "Customer 01", "email": "c1@example.com", "note": None}
    assert [r["id"] for r in out["rows"]] == [1, 2, 3, 4] and out["next_cursor"] is None
    record = await core.record_of(support)
    assert (json.loads(record.columns or ""), json.loads(record.masked or "")) == (["id", "name", "email"], ["note"])

    analyst = await core.query("analyst-bot", body=ASKED)  # read:pii denied outright
    assert analyst.status == 200 and analyst.json["masked"] == ["email", "note"]
    assert {(r["email"], r["note"]) for r in analyst.json["rows"]} == {(None, None)}
    assert b"@example.com" not in analyst.answer.body  # the values never left, not even blanked late
    record = await core.record_of(analyst)
    assert (json.loads(record.columns or ""), json.loads(record.masked or "")) == (["id", "name"], ["email", "note"])


async def test_all_columns_by_default_with_the_hidden_ones_masked_in_column_order(core: Core) -> None:
    got = await core.query("analyst-bot", body={"limit": 3})
    assert got.status == 200
    assert got.json["columns"] == ["id", "name", "email", "country", "balance", "created_at", "active", "note"]
    assert got.json["masked"] == ["email", "note"]
    assert all(r["email"] is None and r["note"] is None for r in got.json["rows"])
    assert json.loads((await core.record_of(got)).columns or "") == [
        "id", "name", "country", "balance", "created_at", "active"]


async def test_unclassed_columns_only_mask_nothing(core: Core) -> None:
    got = await core.query("analyst-bot", body={"columns": ["id", "country"], "limit": 2})
    assert got.status == 200 and got.json["masked"] == []
    assert (await core.record_of(got)).masked == "[]"


@pytest.mark.parametrize(("agent", "body", "words", "reason"), [
    ("support-bot", {"where": [["note", "=", "note 1"]]}, "cannot filter on 'note'", "filter on masked column 'note'"),
    ("analyst-bot", {"where": [["email", "is not null"]]}, "cannot filter on 'email'",
     "filter on masked column 'email'"),
    ("analyst-bot", {"order_by": ["-email"]}, "cannot order by 'email'", "order by masked column 'email'"),
])
async def test_filtering_or_ordering_on_a_masked_column_is_forbidden(core: Core, agent: str, body: dict[str, object],
                                                                     words: str, reason: str) -> None:
    got = await core.query(agent, body=body)
    assert got.status == 403 and got.error["code"] == "forbidden"
    assert words in got.error["message"] and "masked" in got.error["message"]
    record = await core.record_of(got)
    assert (record.decision, record.status, record.reason, record.rows) == ("deny", 403, reason, None)


async def test_a_grant_of_a_class_unmasks_that_class_only(tmp_path: Path) -> None:
    policy = POLICY + "p, analyst, customers, read:internal, allow\n"
    async with open_core(tmp_path, people(), policy=policy) as core:
        got = await core.query("analyst-bot", body=ASKED)
        assert got.status == 200 and got.json["masked"] == ["email"]
        assert got.json["rows"][1]["note"] == "note 2" and got.json["rows"][1]["email"] is None


async def test_listing_and_describing_show_the_classes_and_only_readable_datasets(core: Core) -> None:
    listed = await core.ask("list", "support-bot")
    assert listed.status == 200
    (ds,) = listed.json["datasets"]
    assert (ds["name"], ds["owner"], ds["description"]) == (
        "customers", "maria.keller@example.com", "Customer master data")
    classes = {c["name"]: c["class"] for c in ds["columns"]}
    assert (classes["email"], classes["note"], classes["id"]) == ("pii", "internal", None)
    assert [d["name"] for d in (await core.ask("list", "analyst-bot")).json["datasets"]] == ["customers", "orders"]
    assert (await core.ask("list", "stranger")).json == {"datasets": []}
    described = await core.ask("describe", "analyst-bot", dataset="orders")
    assert described.status == 200 and described.json["owner"] == "sales-ops@example.com"
    assert (await core.record_of(listed)).rows == 1
