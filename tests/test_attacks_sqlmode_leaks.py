"""Attack: learn what an agent may not see from SQL mode's refusals.

Two classes, on PostgreSQL, MariaDB and SQLite sources:
- the source's own error text: it quotes values of rows ("invalid input syntax for type integer: \"Customer 01\""),
  names the source's database and tables ("out of range in '`db`.`customers`.`id` + ...'"); an agent gets one
  generic message with its request id, the text goes to the audit record's reason only;
- names: for an agent that may read one dataset, no answer tells the other datasets' and tables' names (and the
  system catalogs') from names that do not exist, wherever the name stands — FROM, a subquery, a CTE's body, a
  CTE's own name, a join, a qualifier.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import DATASETS, POLICY, bearer, client_for, customer_rows, records, write_workspace

pytestmark = pytest.mark.integration

ROWS = customer_rows()

# support-bot reads `customers` only. `accounts` is a dataset over the real table `orders` it may not read.
LEAK_DATASETS = DATASETS + """
[datasets.accounts]
source = "main"
table = "orders"
owner = "finance@example.com"
"""


@pytest.fixture(scope="module", params=["sqlite_source", "pg_source", "mariadb_source"])
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TestClient,
                                                                                                   Path]]:
    source = request.getfixturevalue(request.param)
    config = write_workspace(tmp_path_factory.mktemp("attack-leaks"), source_url=source, datasets=LEAK_DATASETS,
                             policy=POLICY)
    with client_for(config) as client:
        yield request.param.split("_")[0], client, config


def sql(client: TestClient, text: str, agent: str = "support-bot") -> Any:
    return client.post("/v1/sql", json={"sql": text}, headers=bearer(agent))


# --- the source's error text -----------------------------------------------------------------------------------

REFUSED = {
    "pg": ["SELECT CAST(name AS INTEGER) AS n FROM customers",  # quotes a row's value
           "SELECT id FROM customers WHERE CAST(country AS INTEGER) > 0",
           "SELECT 1000 / (id - id) AS x FROM customers",  # division by zero
           "SELECT name + 1 AS x FROM customers",  # operator does not exist: names the types
           "SELECT CAST(balance AS SMALLINT) * CAST(1000 AS SMALLINT) AS x FROM customers"],
    "mariadb": ["SELECT id + 9223372036854775807 AS x FROM customers",  # names the database and the table
                "SELECT CAST(id AS UNSIGNED) - 100 AS x FROM customers",
                "SELECT id FROM customers WHERE id + 9223372036854775807 > 0 ORDER BY name"],
    "sqlite": ["SELECT abs(-9223372036854775807 - id) AS x FROM customers",  # integer overflow
               "SELECT id FROM customers GROUP BY id HAVING SUM(abs(-9223372036854775807 - id)) > 0"],
}


def test_the_sources_error_text_never_reaches_the_agent(gw: tuple[str, TestClient, Path]) -> None:
    dialect, client, config = gw
    secrets = [r["name"] for r in ROWS] + ["customers", "agentgate_", "integer", "range", "overflow", "division",
                                           "operator", "character", "varying"]
    for statement in REFUSED[dialect]:
        got = sql(client, statement)
        assert got.status_code == 400, (statement, got.text)
        error = got.json()["error"]
        assert error == {"code": "bad_request", "message": "the source refused the statement",
                         "request_id": error["request_id"]}, got.text
        assert not any(s in got.text for s in secrets), got.text
        record = records(config)[-1]
        assert record["request_id"] == error["request_id"] and record["decision"] == "error"
        assert "refused the statement:" in record["reason"] and len(record["reason"]) > 40  # the source's text
    # The same, through MCP's `sql` tool: one core, one answer.


# --- names -----------------------------------------------------------------------------------------------------

# Names support-bot may not know about, and names that exist nowhere.
SECRET_NAMES = {"pg": ["orders", "accounts", "ORDERS", '"orders"'],
                "sqlite": ["orders", "accounts", "ORDERS", '"orders"'],
                "mariadb": ["orders", "accounts", "ORDERS", "`orders`"]}
CATALOGS = {"pg": ["pg_class", "pg_catalog.pg_class", "information_schema.tables", "pg_user", "public.orders"],
            "mariadb": ["mysql.user", "information_schema.tables", "performance_schema.threads"],
            "sqlite": ["sqlite_master", "sqlite_schema", "main.orders", "temp.sqlite_master"]}
NOWHERE = ["nothing_here", "orders_", "ordersx", "zz_accounts"]

TEMPLATES = [
    "SELECT * FROM {n}",
    "SELECT id FROM {n}",
    "SELECT c.id FROM customers c JOIN {n} x ON x.id = c.id",
    "SELECT id FROM customers WHERE id IN (SELECT id FROM {n})",
    "SELECT id FROM customers WHERE EXISTS (SELECT 1 FROM {n})",
    "WITH w AS (SELECT * FROM {n}) SELECT id FROM customers",
    "SELECT id FROM customers UNION SELECT id FROM {n}",
    "SELECT {n}.id FROM customers",
    "SELECT id FROM customers WHERE {n}.id = 1",
]
CTE_TEMPLATES = [
    "WITH {n} AS (SELECT id FROM customers) SELECT id FROM {n} ORDER BY id LIMIT 3",
    "WITH {n} AS (SELECT 1 AS id) SELECT id FROM customers ORDER BY id LIMIT 3",
    "WITH {n} AS (SELECT id FROM customers), y AS (SELECT id FROM {n}) SELECT id FROM y ORDER BY id LIMIT 3",
    "SELECT s.id FROM (SELECT id FROM customers) AS {n} JOIN customers s ON s.id = {n}.id ORDER BY s.id LIMIT 3",
]


def _answer(got: Any) -> tuple[int, Any]:
    body = got.json()
    if "error" in body:
        body["error"].pop("request_id")
    return got.status_code, body


def test_no_answer_tells_a_hidden_name_from_a_name_that_does_not_exist(gw: tuple[str, TestClient, Path]) -> None:
    dialect, client, _ = gw
    for template in TEMPLATES:
        expected = _answer(sql(client, template.format(n=NOWHERE[0])))
        assert expected[0] in (400, 403), (template, expected)
        for name in SECRET_NAMES[dialect] + CATALOGS[dialect] + NOWHERE[1:]:
            got = sql(client, template.format(n=name))
            if got.status_code == 400 and "does not parse" in got.text:
                continue  # a name the dialect cannot write in that place: refused before any name is looked at
            assert _answer(got) == expected, (template, name, got.text, expected)


@pytest.mark.parametrize("template", CTE_TEMPLATES)
def test_a_cte_or_alias_named_like_a_hidden_dataset_or_table_is_served_like_any_other(
        gw: tuple[str, TestClient, Path], template: str) -> None:
    _, client, _ = gw
    expected = sql(client, template.format(n=NOWHERE[0]))
    assert expected.status_code == 200, expected.text
    for name in ["orders", "accounts", *NOWHERE[1:]]:
        got = sql(client, template.format(n=name))
        assert got.status_code == 200, (name, got.text)
        assert got.json()["rows"] == expected.json()["rows"], name


def test_a_session_function_spelt_as_a_bare_word_is_a_column_name(gw: tuple[str, TestClient, Path]) -> None:
    # PostgreSQL reads bare `user`, `current_role`, `session_user` as the session's role: the database's own names.
    _, client, _ = gw
    for word in ["user", "current_role", "current_schema", "current_catalog", "session_user", "current_user"]:
        got = sql(client, f"SELECT {word} FROM customers")
        assert got.status_code == 400, (word, got.text)
        assert "postgres" not in got.text and "root" not in got.text, got.text


def test_attribute_notation_cannot_call_a_function_on_a_row(gw: tuple[str, TestClient, Path]) -> None:
    # On PostgreSQL `c.row_to_json` is row_to_json(c): a function outside the allow-list, reached as a column.
    _, client, _ = gw
    for ref in ["c.row_to_json", "c.to_jsonb", "c.text", "c.pg_typeof", "c.num_nulls"]:
        got = sql(client, f"SELECT {ref} FROM customers c")
        assert got.status_code == 400, (ref, got.text)
        assert got.json()["error"]["message"].startswith("unknown column"), got.text
