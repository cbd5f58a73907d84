"""POST /v1/datasets/{name}/query against real SQLite, PostgreSQL and MariaDB sources.

Every test runs on every dialect, through the public HTTP API only, and checks the
answers against what Python computes from ``customer_rows()``. One gateway per
dialect serves the whole module; the few tests that need another configuration
(a short timeout, a source that is down) build their own workspace.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.testclient import TestClient

from tests.conftest import (
    DIALECTS,
    N_CUSTOMERS,
    PerDialect,
    bearer,
    client_for,
    customer_rows,
    dialect_fixtures,
    write_workspace,
)

pytestmark = pytest.mark.integration

MAX_ROWS = 25  # the customers dataset's max_rows in conftest.DATASETS
ROWS = customer_rows()
ALL_IDS = [r["id"] for r in ROWS]
Row = dict[str, Any]


# --- gateways ------------------------------------------------------------------------------------

class Gateway:
    """One running gateway (TestClient) over one source."""

    def __init__(self, dialect: str, url: str, client: TestClient, config: Path):
        self.dialect, self.url, self.client, self.config = dialect, url, client, config

    def post(self, body: Any, agent: str = "support-bot", dataset: str = "customers") -> Any:
        return self.client.post(f"/v1/datasets/{dataset}/query", headers=bearer(agent), json=body)

    def ok(self, body: Any, agent: str = "support-bot", dataset: str = "customers") -> dict[str, Any]:
        r = self.post(body, agent, dataset)
        assert r.status_code == 200, (self.dialect, body, r.text)
        out: dict[str, Any] = r.json()
        assert set(out) == {"dataset", "columns", "rows", "masked", "next_cursor"}
        return out

    def ids(self, where: list[Any], agent: str = "support-bot", order_by: list[str] | None = None) -> list[int]:
        body = {"columns": ["id"], "where": where, "order_by": order_by or ["id"], "limit": 1000}
        out = self.ok(body, agent)
        ids = [row["id"] for row in out["rows"]]
        assert len(ids) <= MAX_ROWS
        # All answers here fit one page unless a test asks for more; walk if not.
        return ids if out["next_cursor"] is None else self.walk(body, agent)[0]

    def walk(self, body: dict[str, Any], agent: str = "support-bot") -> tuple[list[int], list[Row]]:
        """Every page of a query, following next_cursor; returns the ids and the rows in order."""
        rows: list[Row] = []
        cursor = None
        for _ in range(200):
            page = self.ok({**body, "cursor": cursor} if cursor else body, agent)
            assert len(page["rows"]) <= min(body.get("limit", 100), MAX_ROWS)
            rows.extend(page["rows"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert page["rows"], "a page with a next_cursor must not be empty"
        else:
            pytest.fail("pagination does not end")
        return [r["id"] for r in rows if "id" in r], rows

    def error(self, body: Any, status: int, code: str, agent: str = "support-bot") -> str:
        return assert_error(self.post(body, agent), status, code)


def assert_error(r: Any, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message", "request_id"}, err
    assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["request_id"], str) and err["request_id"]
    if "x-request-id" in r.headers:
        assert err["request_id"] == r.headers["x-request-id"]
    message: str = err["message"]
    return message


@contextlib.contextmanager
def running(config: Path) -> Iterator[TestClient]:
    with client_for(config) as client:
        yield client


Gateways = PerDialect[Gateway]


gateways, gw = dialect_fixtures(
    lambda root, url: write_workspace(root, source_url=url), Gateway)


def expect(pred: Callable[[Row], bool], key: Callable[[Row], Any] = lambda r: r["id"]) -> list[int]:
    return [r["id"] for r in sorted((r for r in ROWS if pred(r)), key=key)]


# --- operators -----------------------------------------------------------------------------------

T0 = dt.datetime(2026, 2, 1)
OPERATOR_CASES: list[tuple[str, list[Any], Callable[[Row], bool]]] = [
    ("id =", [["id", "=", 7]], lambda r: r["id"] == 7),
    ("id !=", [["id", "!=", 7], ["id", "<", 10]], lambda r: r["id"] != 7 and r["id"] < 10),
    ("id <", [["id", "<", 5]], lambda r: r["id"] < 5),
    ("id <=", [["id", "<=", 5]], lambda r: r["id"] <= 5),
    ("id >", [["id", ">", 55]], lambda r: r["id"] > 55),
    ("id >=", [["id", ">=", 55]], lambda r: r["id"] >= 55),
    ("id in", [["id", "in", [3, 1, 59, 999]]], lambda r: r["id"] in (1, 3, 59)),
    ("id not in", [["id", "not in", list(range(1, 56))]], lambda r: r["id"] > 55),
    ("name =", [["name", "=", "Customer 42"]], lambda r: r["name"] == "Customer 42"),
    ("name !=", [["name", "!=", "Customer 01"], ["id", "<=", 3]], lambda r: r["id"] in (2, 3)),
    ("name like prefix", [["name", "like", "Customer 1%"]], lambda r: r["name"].startswith("Customer 1")),
    ("name like _", [["name", "like", "Customer _7"]], lambda r: r["name"].endswith("7")),
    ("name <", [["name", "<", "Customer 05"]], lambda r: r["name"] < "Customer 05"),
    ("country =", [["country", "=", "DE"]], lambda r: r["country"] == "DE"),
    ("country in", [["country", "in", ["FR", "GB"]]], lambda r: r["country"] in ("FR", "GB")),
    ("country not in", [["country", "not in", ["FR", "GB", "US"]]], lambda r: r["country"] == "DE"),
    ("country >=", [["country", ">=", "GB"]], lambda r: r["country"] >= "GB"),
    ("balance > number", [["balance", ">", 500]], lambda r: r["balance"] > 500),
    ("balance >= string", [["balance", ">=", "500.50"]], lambda r: r["balance"] >= Decimal("500.50")),
    ("balance > float", [["balance", ">", 100.1]], lambda r: r["balance"] > Decimal("100.1")),
    ("balance = exact", [["balance", "=", "230.23"]], lambda r: r["balance"] == Decimal("230.23")),
    ("balance = number", [["balance", "=", 100.1]], lambda r: r["balance"] == Decimal("100.10")),
    ("balance <", [["balance", "<", "50"]], lambda r: r["balance"] < 50),
    ("balance <=", [["balance", "<=", 50.05]], lambda r: r["balance"] <= Decimal("50.05")),
    ("balance !=", [["balance", "!=", "10.01"], ["id", "<", 4]], lambda r: r["id"] in (2, 3)),
    ("balance in", [["balance", "in", ["10.01", 20.02, "999"]]], lambda r: r["id"] in (1, 2)),
    ("created_at >=", [["created_at", ">=", T0.isoformat()]], lambda r: r["created_at"] >= T0),
    ("created_at <", [["created_at", "<", "2026-01-05T09:30:00"]],
     lambda r: r["created_at"] < dt.datetime(2026, 1, 5, 9, 30)),
    ("created_at = date only", [["created_at", "<=", "2026-01-04"]],
     lambda r: r["created_at"] <= dt.datetime(2026, 1, 4)),
    ("created_at = with offset", [["created_at", "=", "2026-01-11T10:30:00+01:00"]], lambda r: r["id"] == 10),
    ("created_at >", [["created_at", ">", "2026-02-25T09:30:00"]],
     lambda r: r["created_at"] > dt.datetime(2026, 2, 25, 9, 30)),
    ("active = true", [["active", "=", True]], lambda r: r["active"]),
    ("active = false", [["active", "=", False]], lambda r: not r["active"]),
    ("active != true", [["active", "!=", True]], lambda r: not r["active"]),
    ("active in", [["active", "in", [False]]], lambda r: not r["active"]),
    ("is not null", [["name", "is not null"]], lambda r: True),
    ("is null (none)", [["name", "is null"]], lambda r: False),
    ("anded terms", [["country", "=", "US"], ["balance", ">", 200], ["active", "=", True], ["id", "!=", 44]],
     lambda r: r["country"] == "US" and r["balance"] > 200 and r["active"] and r["id"] != 44),
    ("active > false", [["active", ">", False]], lambda r: r["active"]),
    ("active <= false", [["active", "<=", False]], lambda r: not r["active"]),
    ("active >= true", [["active", ">=", True], ["id", "<", 10]], lambda r: r["active"] and r["id"] < 10),
    ("id past int32", [["id", "=", 2**31]], lambda r: False),
    ("id below int64 max", [["id", "<", 2**63 - 1]], lambda r: True),
    ("id above -int64", [["id", ">", -(2**63)], ["id", "not in", [2**40, 1]]], lambda r: r["id"] != 1),
    ("balance not rounded", [["balance", "=", "10.011"]], lambda r: False),
    ("balance not rounded in", [["balance", "in", ["10.009", "20.02"]]], lambda r: r["id"] == 2),
    ("balance >= 3 decimals", [["balance", ">=", "590.591"]], lambda r: r["balance"] >= Decimal("590.591")),
    ("balance huge", [["balance", "<", "1e400"]], lambda r: True),
    ("balance tiny", [["balance", ">", "-1e400"], ["balance", "<", "1e-400"]], lambda r: False),
    ("like _ wildcard", [["name", "like", "Customer 0_"]], lambda r: r["id"] < 10),
    ("like escaped _", [["name", "like", "Customer 0\\_"]], lambda r: False),
    ("like escaped %", [["name", "like", "%\\%%"]], lambda r: False),
    ("like escaped space", [["name", "like", "Customer\\ 01"]], lambda r: r["id"] == 1),
    ("like escaped backslash", [["name", "like", "%\\\\%"]], lambda r: False),
    ("operator case", [["id", "NOT IN", [1]], ["name", "LIKE", "Customer%"]], lambda r: r["id"] != 1),
]


@pytest.mark.parametrize(("where", "pred"), [c[1:] for c in OPERATOR_CASES], ids=[c[0] for c in OPERATOR_CASES])
def test_operators_return_exactly_the_matching_rows(gw: Gateway, where: list[Any],
                                                    pred: Callable[[Row], bool]) -> None:
    assert gw.ids(where, "analyst-bot") == expect(pred)


def test_null_operators_on_a_nullable_column(gw: Gateway) -> None:
    assert gw.ids([["email", "is null"]]) == expect(lambda r: r["email"] is None) == [10, 20, 30, 40, 50, 60]
    assert gw.ids([["email", "is not null"], ["id", "<", 25]]) == expect(
        lambda r: r["email"] is not None and r["id"] < 25)
    assert gw.ids([["email", "like", "c1%@example.com"]]) == expect(
        lambda r: r["email"] is not None and r["email"].startswith("c1"))
    # != does not match NULLs (SQL semantics, the same on every dialect)
    assert gw.ids([["email", "!=", "c1@example.com"], ["id", "<=", 20]]) == expect(
        lambda r: r["email"] is not None and r["id"] <= 20 and r["id"] != 1)


BAD_BODIES: list[tuple[str, Any]] = [
    ("in empty list", {"where": [["id", "in", []]]}),
    ("not in empty list", {"where": [["id", "not in", []]]}),
    ("in non-list", {"where": [["id", "in", 5]]}),
    ("in string", {"where": [["country", "in", "DE"]]}),
    ("in nested list", {"where": [["id", "in", [[1]]]]}),
    ("= list", {"where": [["id", "=", [1, 2]]]}),
    ("= object", {"where": [["id", "=", {"a": 1}]]}),
    ("= null", {"where": [["id", "=", None]]}),
    ("!= null", {"where": [["email", "!=", None]]}),
    ("in with null", {"where": [["id", "in", [1, None]]]}),
    ("string for integer", {"where": [["id", "=", "5"]]}),
    ("bool for integer", {"where": [["id", "=", True]]}),
    ("float for integer", {"where": [["id", ">", 1.5]]}),
    ("integer for boolean", {"where": [["active", "=", 1]]}),
    ("number for string", {"where": [["country", "=", 1]]}),
    ("not a number", {"where": [["balance", ">", "abc"]]}),
    ("nan", {"where": [["balance", ">", "NaN"]]}),
    ("bad date", {"where": [["created_at", ">", "2026-13-45"]]}),
    ("not a date", {"where": [["created_at", ">", "yesterday"]]}),
    ("number for date", {"where": [["created_at", ">", 20260101]]}),
    ("like non-string", {"where": [["name", "like", 5]]}),
    ("like on integer", {"where": [["id", "like", "1%"]]}),
    ("like on decimal", {"where": [["balance", "like", "1%"]]}),
    ("like on datetime", {"where": [["created_at", "like", "2026-01%"]]}),
    ("like on boolean", {"where": [["active", "like", "1"]]}),
    ("like lone escape", {"where": [["name", "like", "Customer\\"]]}),
    ("NUL in string", {"where": [["name", "=", "a\u0000b"]]}),
    ("NUL in like", {"where": [["name", "like", "a\u0000%"]]}),
    ("integer past int64", {"where": [["id", "=", 2**63]]}),
    ("integer past int64 in list", {"where": [["id", "in", [1, -(2**63) - 1]]]}),
    ("datetime out of range", {"where": [["created_at", ">", "0001-01-01T00:00:00+01:00"]]}),
    ("infinite decimal", {"where": [["balance", ">", "Infinity"]]}),
    ("unknown operator", {"where": [["id", "~", 1]]}),
    ("sql operator", {"where": [["id", "= 1 OR 1=1 --", 1]]}),
    ("between", {"where": [["id", "between", [1, 2]]]}),
    ("is null with value", {"where": [["email", "is null", None]]}),
    ("= without value", {"where": [["id", "="]]}),
    ("term not a list", {"where": ["id = 1"]}),
    ("where not a list", {"where": {"id": 1}}),
    ("unknown column in columns", {"columns": ["id", "nope"]}),
    ("unknown column in where", {"where": [["nope", "=", 1]]}),
    ("unknown column in order_by", {"order_by": ["nope"]}),
    ("unknown column in -order_by", {"order_by": ["-nope"]}),
    ("sql as column", {"columns": ["id; DROP TABLE customers"]}),
    ("sql as order key", {"order_by": ["id desc, (select 1)"]}),
    ("order_by twice", {"order_by": ["id", "-id"]}),
    ("order_by not a list", {"order_by": "id"}),
    ("columns empty", {"columns": []}),
    ("columns twice", {"columns": ["id", "id"]}),
    ("unknown key", {"select": ["id"]}),
    ("body not an object", [1, 2]),
    ("limit 0", {"limit": 0}),
    ("limit -1", {"limit": -1}),
    ("limit string", {"limit": "5"}),
    ("limit float", {"limit": 5.5}),
    ("limit bool", {"limit": True}),
    ("cursor not a string", {"cursor": 5}),
    ("cursor empty", {"cursor": ""}),
    ("cursor garbage", {"cursor": "not-a-cursor"}),
]


@pytest.mark.parametrize("body", [c[1] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES])
def test_bad_queries_are_400(gw: Gateway, body: Any) -> None:
    gw.error(body, 400, "bad_request")


def test_malformed_json_is_400(gw: Gateway) -> None:
    r = gw.client.post("/v1/datasets/customers/query", headers={**bearer(), "content-type": "application/json"},
                       content=b'{"where": [')
    assert_error(r, 400, "bad_request")


# --- ordering ------------------------------------------------------------------------------------

def _email_key(descending: bool) -> Callable[[Row], Any]:
    # NULLs after values ascending, before them descending; ties broken by id ascending.
    if descending:
        return lambda r: (r["email"] is not None, _neg(r["email"]) if r["email"] else "", r["id"])
    return lambda r: (r["email"] is None, r["email"] or "", r["id"])


def _neg(s: str) -> tuple[int, ...]:
    return (*(-ord(ch) for ch in s), 1)


# (name, order_by, agent, the order in Python, the page size to walk with)
ORDERS: list[tuple[str, list[str], str, Callable[[Row], Any], int]] = [
    ("id", ["id"], "analyst-bot", lambda r: r["id"], 7),
    ("-balance", ["-balance"], "analyst-bot", lambda r: -r["balance"], 7),
    ("country,-created_at", ["country", "-created_at"], "analyst-bot",
     lambda r: (r["country"], -r["created_at"].timestamp()), 7),
    ("email", ["email"], "support-bot", _email_key(False), 7),
    ("-email", ["-email"], "support-bot", _email_key(True), 7),
    ("-id", ["-id"], "analyst-bot", lambda r: -r["id"], 25),
    ("-active,country,id", ["-active", "country"], "analyst-bot",
     lambda r: (not r["active"], r["country"], r["id"]), 25),
    ("active,-country", ["active", "-country"], "analyst-bot",
     lambda r: (r["active"], -ord(r["country"][0]), -ord(r["country"][1]), r["id"]), 25),
    ("name", ["name"], "analyst-bot", lambda r: r["name"], 25),
    ("-created_at", ["-created_at"], "analyst-bot", lambda r: -r["created_at"].timestamp(), 25),
    ("country,email", ["country", "email"], "support-bot",
     lambda r: (r["country"], r["email"] is None, r["email"] or "", r["id"]), 25),
    ("-country,-email,-id", ["-country", "-email", "-id"], "support-bot",
     lambda r: (tuple(-ord(c) for c in r["country"]), _email_key(True)(r)[:2], -r["id"]), 25),
]


@pytest.mark.parametrize(("order_by", "agent", "key", "limit"), [o[1:] for o in ORDERS], ids=[o[0] for o in ORDERS])
def test_order_by_and_pagination_walk_every_row_once_in_order(gw: Gateway, order_by: list[str], agent: str,
                                                              key: Callable[[Row], Any], limit: int) -> None:
    want = expect(lambda r: True, key)
    assert len(set(want)) == N_CUSTOMERS
    ids, _ = gw.walk({"columns": ["id", "name"], "order_by": order_by, "limit": limit}, agent)
    assert ids == want


def test_nulls_sort_after_values_ascending_and_before_them_descending(gw: Gateway) -> None:
    body = {"columns": ["id", "email"], "where": [["id", ">", 35]], "order_by": ["email"]}
    asc = [r["id"] for r in gw.ok(body)["rows"]]
    desc = [r["id"] for r in gw.ok({**body, "order_by": ["-email"]})["rows"]]
    assert sorted(asc) == sorted(desc) == list(range(36, 61))
    assert asc[-3:] == [40, 50, 60] and desc[:3] == [40, 50, 60]
    assert asc[:-3] == desc[3:][::-1]


def test_pagination_with_filters_and_a_limit_that_divides_the_total(gw: Gateway) -> None:
    body = {"columns": ["id"], "where": [["country", "in", ["DE", "FR"]], ["balance", ">", "50"]],
            "order_by": ["-balance"], "limit": 4}
    ids, _ = gw.walk(body)
    assert ids == expect(lambda r: r["country"] in ("DE", "FR") and r["balance"] > 50, lambda r: -r["balance"])
    # 60 rows in pages of 6: ten full pages, and the tenth says it is the last (no empty eleventh page)
    pages = []
    cursor = None
    while True:
        page = gw.ok({"columns": ["id"], "order_by": ["id"], "limit": 6, **({"cursor": cursor} if cursor else {})})
        pages.append([r["id"] for r in page["rows"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [ALL_IDS[i:i + 6] for i in range(0, N_CUSTOMERS, 6)]


def test_the_limit_may_change_between_pages(gw: Gateway) -> None:
    body: dict[str, Any] = {"columns": ["id"], "order_by": ["country", "-id"], "limit": 5}
    want = expect(lambda r: True, lambda r: (r["country"], -r["id"]))
    first = gw.ok(body)
    second = gw.ok({**body, "limit": 20, "cursor": first["next_cursor"]})
    assert [r["id"] for r in first["rows"] + second["rows"]] == want[:25]


def test_a_cursor_only_fits_the_query_it_came_from(gw: Gateway) -> None:
    body: dict[str, Any] = {"columns": ["id"], "where": [["balance", ">", 10]], "order_by": ["-balance"], "limit": 3}
    cursor = gw.ok(body)["next_cursor"]
    assert isinstance(cursor, str) and cursor
    gw.ok({**body, "cursor": cursor})
    for other in ({**body, "where": [["balance", ">", 11]]}, {**body, "where": []}, {**body, "order_by": ["balance"]},
                  {**body, "order_by": ["-balance", "id"]}, {**body, "columns": ["id", "name"]}):
        gw.error({**other, "cursor": cursor}, 400, "bad_request")
    # a tampered cursor: change one character in the middle, or cut it short
    mid = len(cursor) // 2
    flipped = cursor[:mid] + ("A" if cursor[mid] != "A" else "B") + cursor[mid + 1:]
    for bad in (flipped, cursor[:-4], "x" + cursor, cursor[::-1], cursor.upper()):
        gw.error({**body, "cursor": bad}, 400, "bad_request")
    # the dataset is part of what the cursor is bound to
    r = gw.post({"columns": ["id"], "where": [["id", ">", 10]], "order_by": ["-id"], "limit": 3,
                 "cursor": cursor}, agent="analyst-bot", dataset="orders")
    assert_error(r, 400, "bad_request")


def test_a_cursor_does_not_work_on_another_gateway(gw: Gateway, gateways: Gateways,
                                                   request: pytest.FixtureRequest) -> None:
    other = gateways.get(DIALECTS[(DIALECTS.index(gw.dialect) + 1) % len(DIALECTS)], request)
    body = {"columns": ["id"], "order_by": ["id"], "limit": 5}
    cursor = gw.ok(body)["next_cursor"]
    assert cursor
    assert other.ok(body)["next_cursor"] != cursor
    other.error({**body, "cursor": cursor}, 400, "bad_request")


# --- limits --------------------------------------------------------------------------------------

def test_limit_is_capped_by_max_rows_and_defaults_to_it(gw: Gateway) -> None:
    for body in ({"limit": 1000, "order_by": ["id"]}, {"order_by": ["id"]}, {}, {"limit": 26}, {"limit": 25}):
        out = gw.ok(body)
        assert len(out["rows"]) == MAX_ROWS and out["next_cursor"]
    assert [r["id"] for r in gw.ok({"limit": 100, "order_by": ["id"]})["rows"]] == ALL_IDS[:MAX_ROWS]
    assert len(gw.ok({"limit": 1})["rows"]) == 1
    small = gw.ok({"limit": 3, "order_by": ["-id"], "columns": ["id"]})
    assert small["rows"] == [{"id": 60}, {"id": 59}, {"id": 58}] and small["next_cursor"]
    exact = gw.ok({"where": [["id", "<=", 25]], "limit": 25, "columns": ["id"]})
    assert len(exact["rows"]) == 25 and exact["next_cursor"] is None
    # a dataset without max_rows: the default limit (100) is over its 30 rows, all come in one page
    orders = gw.ok({"order_by": ["id"]}, "analyst-bot", "orders")
    assert len(orders["rows"]) == 30 and orders["next_cursor"] is None


# --- masking -------------------------------------------------------------------------------------

def test_masked_columns_are_null_and_listed_in_the_requested_order(gw: Gateway) -> None:
    body = {"columns": ["id", "email", "name", "note"], "where": [["id", "<=", 4]], "order_by": ["id"]}
    out = gw.ok(body, "analyst-bot")
    assert out["masked"] == ["email", "note"] and out["columns"] == ["id", "email", "name", "note"]
    assert out["rows"] == [{"id": i, "email": None, "name": f"Customer {i:02d}", "note": None} for i in range(1, 5)]
    out = gw.ok({**body, "columns": ["note", "id", "email"]}, "analyst-bot")
    assert out["masked"] == ["note", "email"]
    support = gw.ok(body, "support-bot")
    assert support["masked"] == ["note"]
    assert [r["email"] for r in support["rows"]] == ["c1@example.com", "c2@example.com", "c3@example.com",
                                                     "c4@example.com"]
    assert all(r["note"] is None for r in support["rows"])
    everything = gw.ok({"where": [["id", "=", 2]]}, "analyst-bot")
    assert everything["columns"] == ["id", "name", "email", "country", "balance", "created_at", "active", "note"]
    assert everything["masked"] == ["email", "note"]
    assert gw.ok({"columns": ["id"]}, "analyst-bot")["masked"] == []


def test_only_masked_columns_still_pages_through_every_row(gw: Gateway) -> None:
    first = gw.ok({"columns": ["email", "note"]}, "analyst-bot")
    assert first["rows"] == [{"email": None, "note": None}] * MAX_ROWS and first["next_cursor"]
    _, rows = gw.walk({"columns": ["email", "note"], "limit": 25}, "analyst-bot")
    assert rows == [{"email": None, "note": None}] * N_CUSTOMERS
    filtered = gw.ok({"columns": ["note"], "where": [["country", "=", "DE"]]}, "support-bot")
    assert filtered["rows"] == [{"note": None}] * 15 and filtered["masked"] == ["note"]


@pytest.mark.parametrize(("agent", "body"), [
    ("analyst-bot", {"where": [["email", "is null"]]}),
    ("analyst-bot", {"where": [["email", "like", "c1%"]]}),
    ("analyst-bot", {"columns": ["id"], "where": [["note", "=", "note 1"]]}),
    ("analyst-bot", {"order_by": ["email"]}),
    ("analyst-bot", {"order_by": ["id", "-note"]}),
    ("support-bot", {"where": [["note", "is not null"]]}),
    ("support-bot", {"order_by": ["-note"]}),
])
def test_filtering_or_ordering_on_a_masked_column_is_forbidden(gw: Gateway, agent: str, body: Any) -> None:
    gw.error(body, 403, "forbidden", agent)


def test_agents_without_a_grant_are_forbidden(gw: Gateway) -> None:
    assert_error(gw.post({}, "support-bot", "orders"), 403, "forbidden")
    assert_error(gw.post({}, "stranger"), 403, "forbidden")
    assert_error(gw.post({}, "support-bot", "nope"), 403, "forbidden")


# --- types ---------------------------------------------------------------------------------------

def _json(row: Row, visible: tuple[str, ...]) -> Row:
    out: Row = {}
    for name in visible:
        v = row[name]
        if isinstance(v, Decimal):
            v = str(v)
        elif isinstance(v, dt.datetime):
            v = v.isoformat()
        out[name] = v
    return out


def test_values_come_back_as_exact_json_types(gw: Gateway) -> None:
    cols = ("id", "name", "email", "country", "balance", "created_at", "active", "note")
    out = gw.ok({"columns": list(cols), "where": [["id", "in", [1, 3, 10, 20, 60]]], "order_by": ["id"]},
                "support-bot")
    want = [{**_json(r, cols), "note": None} for r in ROWS if r["id"] in (1, 3, 10, 20, 60)]
    assert out["rows"] == want
    first = out["rows"][0]
    assert first == {"id": 1, "name": "Customer 01", "email": "c1@example.com", "country": "FR",
                     "balance": "10.01", "created_at": "2026-01-02T09:30:00", "active": True, "note": None}
    assert type(first["id"]) is int and type(first["active"]) is bool
    assert out["rows"][1]["active"] is False and out["rows"][2]["email"] is None
    assert out["rows"][3]["balance"] == "200.20" and out["rows"][4]["balance"] == "600.60"
    for row in out["rows"]:
        dt.datetime.fromisoformat(row["created_at"])
    # the whole table, through the pages, equals the seed
    _, rows = gw.walk({"columns": list(cols[:-1]), "order_by": ["id"], "limit": 25}, "support-bot")
    assert rows == [_json(r, cols[:-1]) for r in ROWS]
    orders = gw.ok({"where": [["id", "<=", 2]], "order_by": ["id"]}, "analyst-bot", "orders")
    assert orders["rows"] == [{"id": 1, "customer_id": 2, "amount": "1.50"}, {"id": 2, "customer_id": 3,
                                                                              "amount": "2.50"}]
    assert gw.ok({"where": [["amount", ">=", "29.5"]]}, "analyst-bot", "orders")["rows"] == [
        {"id": 29, "customer_id": 30, "amount": "29.50"}, {"id": 30, "customer_id": 31, "amount": "30.50"}]


# --- values are bound ----------------------------------------------------------------------------

INJECTIONS = ["x' OR '1'='1", "1; DROP TABLE customers; --", "%' OR 1=1 --", "\\'; DELETE FROM customers; --",
              "Customer 01' --"]


def test_values_are_bound_never_spliced(gw: Gateway) -> None:
    for value in INJECTIONS:
        assert gw.ids([["name", "=", value]], "analyst-bot") == []
        assert gw.ids([["name", "like", value]], "analyst-bot") == []
        below = [r["id"] for r in ROWS if r["name"] < value]
        assert gw.ids([["name", "<", value]], "analyst-bot") == below, value
        assert gw.ids([["country", "in", [value, "DE"]]], "analyst-bot") == expect(lambda r: r["country"] == "DE")
        assert gw.ids([["email", "=", value]]) == []
        gw.error({"where": [["balance", "=", value]]}, 400, "bad_request")
        gw.error({"where": [["created_at", "=", value]]}, 400, "bad_request")
    # the table is still there, whole
    ids, _ = gw.walk({"columns": ["id"], "order_by": ["id"], "limit": 25}, "analyst-bot")
    assert ids == ALL_IDS


# --- source failures -----------------------------------------------------------------------------

def _workspace(root: Path, url: str, timeout_seconds: float) -> Path:
    config = write_workspace(root, source_url=url)
    text_ = config.read_text()
    assert "timeout_seconds = 5\n" in text_
    config.write_text(text_.replace("timeout_seconds = 5\n", f"timeout_seconds = {timeout_seconds:g}\n"))
    return config


@contextlib.contextmanager
def table_locked(url: str) -> Iterator[None]:
    """Hold a lock on customers from another connection, that blocks every read, until the block ends."""
    ready, release = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    async def hold() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                if engine.dialect.name == "postgresql":
                    await conn.execute(text("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE"))  # in a transaction
                else:
                    await conn.execute(text("LOCK TABLES customers WRITE"))
                ready.set()
                await asyncio.to_thread(release.wait, 30)
                if engine.dialect.name == "postgresql":
                    await conn.rollback()
                else:
                    await conn.execute(text("UNLOCK TABLES"))
        finally:
            await engine.dispose()

    def run() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert ready.wait(15), "could not take the lock"
        if failure:
            raise failure[0]
        yield
    finally:
        release.set()
        thread.join(15)
    assert not failure, failure


def test_a_statement_over_the_timeout_is_504(gw: Gateway, tmp_path: Path) -> None:
    if gw.dialect == "sqlite_source":
        pytest.skip("SQLite has no server-side lock or statement timeout to provoke from another connection")
    with running(_workspace(tmp_path, gw.url, 1)) as client:
        body = {"columns": ["id"], "where": [["id", "=", 1]]}
        assert client.post("/v1/datasets/customers/query", headers=bearer(), json=body).json()["rows"] == [{"id": 1}]
        with table_locked(gw.url):
            r = client.post("/v1/datasets/customers/query", headers=bearer(), json=body)
            assert_error(r, 504, "source_timeout")
        # once the lock is gone, the same gateway answers again
        r = client.post("/v1/datasets/customers/query", headers=bearer(), json=body)
        assert r.status_code == 200 and r.json()["rows"] == [{"id": 1}], r.text
    # and the table is intact for the other tests
    assert gw.ids([["id", ">", 0]], "analyst-bot") == ALL_IDS


def test_waiting_for_a_pooled_connection_is_bounded_by_the_timeout(gw: Gateway, tmp_path: Path) -> None:
    """With the source's one pooled connection stuck behind a lock, the reads queued for it are refused in the
    source's timeout (504), not left waiting for the connection for as long as it stays stuck."""
    if gw.dialect == "sqlite_source":
        pytest.skip("SQLite has no server-side lock or statement timeout to provoke from another connection")
    config = _workspace(tmp_path, gw.url, 1)
    config.write_text(config.read_text().replace("timeout_seconds = 1\n", "timeout_seconds = 1\npool_size = 1\n"))
    with running(config) as client:
        body = {"columns": ["id"], "where": [["id", "=", 1]]}
        assert client.post("/v1/datasets/customers/query", headers=bearer(), json=body).status_code == 200
        with table_locked(gw.url), concurrent.futures.ThreadPoolExecutor(3) as pool:
            started = time.monotonic()
            answers = list(pool.map(lambda _: client.post("/v1/datasets/customers/query", headers=bearer(),
                                                          json=body), range(3)))
            waited = time.monotonic() - started
        for r in answers:
            assert_error(r, 504, "source_timeout")
        assert waited < 2.5, f"the queued reads waited {waited:.1f} s"
        assert client.post("/v1/datasets/customers/query", headers=bearer(), json=body).status_code == 200


def _down_urls(dialect: str, url: str, tmp_path: Path) -> list[str]:
    if dialect == "sqlite_source":
        return [f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'nothing.db'}"]
    parsed = make_url(url)
    return [parsed.set(database="agentgate_no_such_database").render_as_string(hide_password=False),
            parsed.set(host="127.0.0.1", port=1).render_as_string(hide_password=False)]


def test_a_source_that_is_down_is_502(gw: Gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i, url in enumerate(_down_urls(gw.dialect, gw.url, tmp_path)):
        with caplog.at_level("WARNING"), running(_workspace(tmp_path / f"down{i}", url, 2)) as client:
            assert any(rec.levelname == "WARNING" for rec in caplog.records), "a warning at start"
            for body in ({}, {"columns": ["id"], "where": [["id", "=", 1]], "order_by": ["-id"]}):
                r = client.post("/v1/datasets/customers/query", headers=bearer(), json=body)
                assert_error(r, 502, "source_error")
            # refusals that need no source still come first
            r = client.post("/v1/datasets/customers/query", headers=bearer("stranger"), json={})
            assert_error(r, 403, "forbidden")
        caplog.clear()


NO_KEY = "CREATE TABLE IF NOT EXISTS no_key (n INTEGER NOT NULL, label VARCHAR(20))"


def test_a_table_without_a_primary_key_pages_by_position(gw: Gateway, tmp_path: Path) -> None:
    """No unique key to page on: the cursor carries a position (bound as a parameter, like every value)."""

    async def make() -> None:
        engine = create_async_engine(gw.url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(NO_KEY))
                await conn.execute(text("DELETE FROM no_key"))
                await conn.execute(text("INSERT INTO no_key (n, label) VALUES (:n, :label)"),
                                   [{"n": i, "label": None if i % 4 == 0 else f"l{i % 3}"} for i in range(23)])
        finally:
            await engine.dispose()

    asyncio.run(make())
    datasets = 'max_rows = 25\n[datasets.no_key]\nsource = "main"\ntable = "no_key"\nowner = "o@example.com"\n'
    config = write_workspace(tmp_path, source_url=gw.url, policy="p, support, no_key, read, allow\n"
                             "g, support-bot, support\n", datasets=datasets.replace("max_rows = 25\n", ""))
    with running(config) as client:
        for body, expected in (({"order_by": ["n"], "limit": 5}, list(range(23))),
                               ({"order_by": ["-n"], "where": [["n", ">", 3]], "limit": 4}, list(range(22, 3, -1))),
                               ({"order_by": ["label", "n"], "limit": 6},
                                sorted(range(23), key=lambda i: (i % 4 == 0, "" if i % 4 == 0 else f"l{i % 3}", i)))):
            seen: list[int] = []
            cursor = None
            for _ in range(20):
                got = client.post("/v1/datasets/no_key/query", headers=bearer(),
                                  json={**body, "cursor": cursor} if cursor else body)
                assert got.status_code == 200, got.text
                seen += [r["n"] for r in got.json()["rows"]]
                cursor = got.json()["next_cursor"]
                if cursor is None:
                    break
            assert seen == expected, body
