"""Row filters (datasets.toml [datasets.NAME.row_filters]): per role, values from token claims, applied in the
query API and SQL mode against real SQLite, PostgreSQL and MariaDB sources, and recorded in the audit trail."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import DATASETS, POLICY, bearer, client_for, customer_rows, write_workspace
from tests.test_cli import agentgate

pytestmark = pytest.mark.integration

ROWS = customer_rows()
MAX_ROWS = 25

FILTERED = DATASETS + """
[datasets.customers.row_filters]
support = "country = {claims.region}"
analyst = "country in {claims.regions} and active = true and email is not null"
auditor = "true"
lone-bot = "country = 'US' and id <= {claims.upto}"

[datasets.orders.row_filters]
analyst = "amount >= 10"
"""

FILTER_POLICY = POLICY + """
p, auditor, customers, read, allow
p, other, customers, read, allow
p, analyst, customers, read:internal, allow
g, audit-bot, auditor
g, other-bot, other
g, lone-bot, other
g, lead-bot, support-lead
g, support-lead, support
"""


@pytest.fixture(scope="module", params=["sqlite_source", "pg_source", "mariadb_source"])
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    source = request.getfixturevalue(request.param)
    config = write_workspace(tmp_path_factory.mktemp("rowfilters"), source_url=source, datasets=FILTERED,
                             policy=FILTER_POLICY)
    with client_for(config) as client:
        yield client


def read(gw: TestClient, agent: str, body: dict[str, Any] | None = None, **claims: Any) -> Any:
    return gw.post("/v1/datasets/customers/query", json=body or {}, headers=bearer(agent, **claims))


def sql(gw: TestClient, agent: str, text: str, **claims: Any) -> Any:
    return gw.post("/v1/sql", json={"sql": text}, headers=bearer(agent, **claims))


def last_record(gw: TestClient, agent: str) -> dict[str, Any]:
    got = gw.get(f"/admin/v1/audit?agent={agent}&limit=1", headers=bearer("alice"))
    assert got.status_code == 200, got.text
    record: dict[str, Any] = got.json()["records"][0]
    return record


def ids(rows: list[dict[str, Any]]) -> list[int]:
    return [r["id"] for r in rows]


def test_a_role_sees_only_the_rows_its_claim_names(gw: TestClient) -> None:
    got = read(gw, "support-bot", {"columns": ["id", "country"], "order_by": ["id"]}, region="DE")
    assert got.status_code == 200, got.text
    assert ids(got.json()["rows"]) == [r["id"] for r in ROWS if r["country"] == "DE"]
    assert {r["country"] for r in got.json()["rows"]} == {"DE"}
    record = last_record(gw, "support-bot")
    assert record["row_filter"] == '[support] country = "DE"'
    assert record["decision"] == "allow" and record["rows"] == len(got.json()["rows"])


def test_the_filter_is_anded_with_the_agents_own_where_and_holds_across_pages(gw: TestClient) -> None:
    body: dict[str, Any] = {"columns": ["id"], "where": [["id", "<", 30]], "limit": 3}
    seen: list[int] = []
    for _ in range(10):
        got = read(gw, "support-bot", body, region="FR")
        assert got.status_code == 200, got.text
        seen += ids(got.json()["rows"])
        if got.json()["next_cursor"] is None:
            break
        body["cursor"] = got.json()["next_cursor"]
    assert seen == [r["id"] for r in ROWS if r["country"] == "FR" and r["id"] < 30]


def test_a_role_held_through_another_role_brings_its_filter(gw: TestClient) -> None:
    got = read(gw, "lead-bot", {"columns": ["id", "country"]}, region="GB")
    assert got.status_code == 200, got.text
    assert {r["country"] for r in got.json()["rows"]} == {"GB"}
    assert last_record(gw, "lead-bot")["row_filter"] == '[support] country = "GB"'


def test_a_list_claim_and_literal_terms_and_a_filter_on_a_column_the_agent_sees_masked(gw: TestClient) -> None:
    got = read(gw, "analyst-bot", {"columns": ["id", "email", "country"]}, regions=["FR", "GB"])
    assert got.status_code == 200, got.text
    expected = [r["id"] for r in ROWS
                if r["country"] in ("FR", "GB") and r["active"] and r["email"] is not None][:MAX_ROWS]
    assert ids(got.json()["rows"]) == expected
    assert got.json()["masked"] == ["email"]  # the filter uses email; its values stay masked
    assert {r["email"] for r in got.json()["rows"]} == {None}
    assert last_record(gw, "analyst-bot")["row_filter"] == (
        '[analyst] country in ["FR", "GB"] AND active = true AND email is not null')


def test_one_value_claim_serves_an_in_filter(gw: TestClient) -> None:
    got = read(gw, "analyst-bot", {"columns": ["id", "country"]}, regions="GB")
    assert got.status_code == 200, got.text
    assert {r["country"] for r in got.json()["rows"]} == {"GB"}


def test_a_missing_claim_is_refused_not_widened(gw: TestClient) -> None:
    for claims in ({}, {"region": None}, {"region": {"nested": "DE"}}, {"region": ["DE", "FR"]}):
        got = read(gw, "support-bot", {}, **claims)
        assert got.status_code == 403, (claims, got.text)
        assert got.json()["error"]["code"] == "forbidden"
        assert "claim 'region'" in got.json()["error"]["message"]
        record = last_record(gw, "support-bot")
        assert record["decision"] == "deny" and "lacks claim 'region'" in record["reason"]


def test_an_agent_no_filter_applies_to_reads_nothing_and_is_not_offered_the_dataset(gw: TestClient) -> None:
    got = read(gw, "other-bot", {}, region="DE")
    assert got.status_code == 403
    # Answered as a dataset that does not exist: it is not listed to this agent either.
    assert got.json()["error"]["message"] == "not allowed: the dataset does not exist or this agent may not read it"
    assert "no row filter" in last_record(gw, "other-bot")["reason"]
    assert gw.get("/v1/datasets/customers", headers=bearer("other-bot")).status_code == 403
    assert gw.get("/v1/datasets", headers=bearer("other-bot")).json()["datasets"] == []
    listed = gw.get("/v1/datasets", headers=bearer("lone-bot")).json()["datasets"]  # keyed by its own name
    assert [d["name"] for d in listed] == ["customers"]


def test_a_filter_keyed_by_the_agents_own_name_and_a_numeric_claim(gw: TestClient) -> None:
    got = read(gw, "lone-bot", {"columns": ["id", "country"]}, upto=30)
    assert got.status_code == 200, got.text
    assert ids(got.json()["rows"]) == [r["id"] for r in ROWS if r["country"] == "US" and r["id"] <= 30]
    wrong = read(gw, "lone-bot", {}, upto="thirty")  # a claim of the wrong type: a clear 400, no rows
    assert wrong.status_code == 400 and "upto" not in wrong.text and "'thirty'" in wrong.json()["error"]["message"]


def test_true_grants_every_row(gw: TestClient) -> None:
    got = read(gw, "audit-bot", {"columns": ["id"], "limit": 100})
    assert got.status_code == 200, got.text
    assert ids(got.json()["rows"]) == [r["id"] for r in ROWS][:MAX_ROWS]
    assert last_record(gw, "audit-bot")["row_filter"] == "[auditor] true"


def test_claim_values_are_bound_never_spliced(gw: TestClient) -> None:
    for evil in ("DE' OR '1'='1", "DE\" OR 1=1 --", "x'); DROP TABLE customers; --", ":region", "%"):
        got = read(gw, "support-bot", {}, region=evil)
        assert got.status_code == 200, got.text
        assert got.json()["rows"] == []
    assert read(gw, "support-bot", {"columns": ["id"]}, region="US").json()["rows"]  # the table is still there


def test_unfiltered_datasets_and_other_agents_are_untouched(gw: TestClient) -> None:
    got = gw.post("/v1/datasets/orders/query", json={"columns": ["id"], "limit": 100},
                  headers=bearer("analyst-bot", regions=["DE"]))
    assert got.status_code == 200
    assert ids(got.json()["rows"]) == list(range(10, 31))  # orders' own filter: amount >= 10


# --- SQL mode ------------------------------------------------------------------------------------

def test_sql_mode_applies_the_filter_in_every_use_of_the_dataset(gw: TestClient) -> None:
    got = sql(gw, "support-bot", "SELECT country, COUNT(*) AS n FROM customers GROUP BY country", region="GB")
    assert got.status_code == 200, got.text
    assert got.json()["rows"] == [{"country": "GB", "n": sum(r["country"] == "GB" for r in ROWS)}]
    assert last_record(gw, "support-bot")["row_filter"] == 'customers: [support] country = "GB"'
    sub = sql(gw, "support-bot", "SELECT COUNT(*) AS n FROM (SELECT id FROM customers WHERE id > 0) AS s "
                                 "WHERE id IN (SELECT id FROM customers)", region="GB")
    assert sub.status_code == 200, sub.text
    assert sub.json()["rows"] == [{"n": sum(r["country"] == "GB" for r in ROWS)}]


def test_sql_mode_filters_each_dataset_of_a_join(gw: TestClient) -> None:
    got = sql(gw, "analyst-bot", "SELECT o.id, c.country FROM orders o JOIN customers c ON c.id = o.customer_id "
                                 "ORDER BY o.id", regions=["DE", "FR"])
    assert got.status_code == 200, got.text
    by_id = {r["id"]: r for r in ROWS}
    expected = [o for o in range(10, 31) if (c := by_id[1 + o % 60])["country"] in ("DE", "FR")
                and c["active"] and c["email"] is not None]
    assert [r["id"] for r in got.json()["rows"]] == expected
    said = last_record(gw, "analyst-bot")["row_filter"]
    assert said.startswith("customers: [analyst] country in") and "orders: [analyst] amount >= 10" in said


def test_sql_mode_refuses_as_the_query_api_does_and_binds_values(gw: TestClient) -> None:
    assert sql(gw, "support-bot", "SELECT id FROM customers").status_code == 403  # no claim
    assert sql(gw, "other-bot", "SELECT id FROM customers", region="DE").status_code == 403  # no filter applies
    evil = sql(gw, "support-bot", "SELECT id, ':x' AS colon, 'a%b' AS pct FROM customers", region="' OR 1=1 --")
    assert evil.status_code == 200, evil.text
    assert evil.json()["rows"] == []
    fine = sql(gw, "support-bot", "SELECT id, ':x' AS colon, 'a%b' AS pct FROM customers ORDER BY id LIMIT 1",
               region="DE")
    assert fine.json()["rows"] == [{"id": 4, "colon": ":x", "pct": "a%b"}]


# --- the catalog ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("filters", "fault"), [
    ('support = "country = {claims.region} or id = 1"', "datasets.customers.row_filters.support: expected 'and'"),
    ('support = "nope = {claims.region}"', "datasets.customers.row_filters.support: table 'customers' has no "
                                           "column 'nope'"),
    ('support = ""', "datasets.customers.row_filters.support: the filter is empty"),
    ('support = "country = {agent}"', "datasets.customers.row_filters.support: cannot read the filter"),
    ("support = 3", "datasets.customers.row_filters.support: must be a filter"),
    ("support = \"id = 'seven'\"", "datasets.customers.row_filters.support: 'seven' is not a valid value for 'id'"),
    ("support = \"country in ('DE', 3)\"", "datasets.customers.row_filters.support: 3 is not a valid value"),
    ("support = \"id like 'x%'\"", "datasets.customers.row_filters.support: 'like' applies to text columns"),
])
def test_a_bad_row_filter_stops_start_up_naming_file_key_and_fault(tmp_path: Path, sqlite_source: str,
                                                                   filters: str, fault: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source,
                             datasets=DATASETS + "\n[datasets.customers.row_filters]\n" + filters + "\n")
    with pytest.raises(Exception) as caught, client_for(config):
        pass
    assert "datasets.toml" in str(caught.value) and fault in str(caught.value)


def test_a_store_from_before_row_filters_is_upgraded_and_its_chain_still_verifies(tmp_path: Path,
                                                                                  sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source)
    with client_for(config) as gw:
        assert gw.post("/v1/datasets/customers/query", json={}, headers=bearer()).status_code == 200
    with sqlite3.connect(tmp_path / "store.db") as db:  # the audit table as the first release made it
        db.execute("ALTER TABLE audit DROP COLUMN row_filter")
    config = write_workspace(tmp_path, source_url=sqlite_source, datasets=FILTERED, policy=FILTER_POLICY)
    with client_for(config) as gw:
        assert read(gw, "support-bot", {}, region="DE").status_code == 200
        assert last_record(gw, "support-bot")["row_filter"] == '[support] country = "DE"'
        verified = gw.get("/admin/v1/audit/verify", headers=bearer("alice"))
        assert verified.status_code == 200 and verified.json()["ok"] is True, verified.text


@pytest.mark.system
def test_check_names_every_bad_row_filter(tmp_path: Path, sqlite_source: str) -> None:
    bad = DATASETS + """
[datasets.customers.row_filters]
support = "nope = 1"
analyst = "id = 'seven'"
auditor = "country = {claims.region}"
"""
    config = write_workspace(tmp_path, source_url=sqlite_source, datasets=bad)
    got = agentgate("check", "--config", config)
    assert got.returncode == 1, got.stdout + got.stderr
    out = got.stdout + got.stderr
    assert "datasets.customers.row_filters.support: table 'customers' has no column 'nope'" in out
    assert "datasets.customers.row_filters.analyst: 'seven' is not a valid value for 'id'" in out
    assert "row_filters.auditor" not in out  # a claim's value is checked on each read
