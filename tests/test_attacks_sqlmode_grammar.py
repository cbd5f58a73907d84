"""SQL mode's grammar is an allow-list of sqlglot expression classes (gateway/sqlmode/parsing.py ALLOWED_NODES).

Every allowed class has an example here that answers 200 on each dialect that has the syntax (and the example
is checked to really contain that class), and every class allowed is covered: a class added to the list without
an example fails the suite. Constructs outside the list — writes, locks, session functions, placeholders,
server variables, regular expressions, arrays, table functions, casts to types that look names up — are refused
with 400 on every dialect, before the source sees them. Values of every kind come back as JSON values.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlglot
from starlette.testclient import TestClient

from gateway import sqlmode
from tests.conftest import bearer, client_for, write_workspace

pytestmark = pytest.mark.integration

ALL = frozenset({"sqlite", "pg", "mariadb"})
SQLGLOT = {"sqlite": "sqlite", "pg": "postgres", "mariadb": "mysql"}

# class -> (example, dialects where it runs). analyst-bot reads customers (email and note masked) and orders.
ALLOWED: dict[str, tuple[str, frozenset[str]]] = {
    "Select": ("SELECT id FROM customers", ALL),
    "Union": ("SELECT id FROM customers UNION SELECT id FROM orders", ALL),
    "Intersect": ("SELECT id FROM customers INTERSECT SELECT id FROM orders", ALL),
    "Except": ("SELECT id FROM customers EXCEPT SELECT id FROM orders", ALL),
    "Subquery": ("SELECT s.id FROM (SELECT id FROM customers) s", ALL),
    "From": ("SELECT id FROM orders", ALL),
    "Join": ("SELECT c.id FROM customers c JOIN orders o ON o.customer_id = c.id", ALL),
    "Where": ("SELECT id FROM customers WHERE id > 3", ALL),
    "Group": ("SELECT country FROM customers GROUP BY country", ALL),
    "Having": ("SELECT country FROM customers GROUP BY country HAVING COUNT(*) > 1", ALL),
    "Order": ("SELECT id FROM customers ORDER BY id DESC", ALL),
    "Ordered": ("SELECT id FROM customers ORDER BY country, id DESC", ALL),
    "Limit": ("SELECT id FROM customers LIMIT 3", ALL),
    "Offset": ("SELECT id FROM customers ORDER BY id LIMIT 3 OFFSET 2", ALL),
    "With": ("WITH s AS (SELECT id FROM customers) SELECT id FROM s", ALL),
    "CTE": ("WITH RECURSIVE r (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
            "SELECT c.id FROM customers c JOIN r ON r.n = c.id", ALL),
    "Table": ("SELECT orders.id FROM orders", ALL),
    "TableAlias": ("SELECT o.id FROM orders AS o", ALL),
    "Identifier": ("SELECT id FROM orders", ALL),
    "Column": ("SELECT customer_id FROM orders", ALL),
    "Star": ("SELECT * FROM orders", ALL),
    "Alias": ("SELECT id AS x FROM orders", ALL),
    "Paren": ("SELECT (id + 1) * 2 AS x FROM orders", ALL),
    "Distinct": ("SELECT DISTINCT country FROM customers", ALL),
    "Window": ("SELECT id, SUM(amount) OVER (PARTITION BY customer_id) AS s FROM orders", ALL),
    "WindowSpec": ("SELECT id, SUM(amount) OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS s "
                   "FROM orders", ALL),
    "Tuple": ("SELECT id FROM customers WHERE (id, country) IN (SELECT id, country FROM customers WHERE id < 3)",
              ALL),
    "And": ("SELECT id FROM customers WHERE id > 1 AND id < 5", ALL),
    "Or": ("SELECT id FROM customers WHERE id = 1 OR id = 5", ALL),
    "Not": ("SELECT id FROM customers WHERE NOT id > 3", ALL),
    "Xor": ("SELECT id FROM customers WHERE id > 1 XOR id > 3", frozenset({"mariadb"})),
    "EQ": ("SELECT id FROM customers WHERE country = 'DE'", ALL),
    "NEQ": ("SELECT id FROM customers WHERE country <> 'DE'", ALL),
    "GT": ("SELECT id FROM customers WHERE balance > 100", ALL),
    "GTE": ("SELECT id FROM customers WHERE balance >= 100", ALL),
    "LT": ("SELECT id FROM customers WHERE balance < 100", ALL),
    "LTE": ("SELECT id FROM customers WHERE balance <= 100", ALL),
    "NullSafeEQ": ("SELECT id FROM customers WHERE id <=> 3", frozenset({"mariadb"})),
    "NullSafeNEQ": ("SELECT id FROM customers WHERE id IS DISTINCT FROM 3", frozenset({"pg", "sqlite"})),
    "Is": ("SELECT id FROM customers WHERE created_at IS NOT NULL", ALL),
    "In": ("SELECT id FROM customers WHERE country IN ('DE', 'FR')", ALL),
    "Between": ("SELECT id FROM customers WHERE id BETWEEN 2 AND 4", ALL),
    "Exists": ("SELECT c.id FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id)",
               ALL),
    "Any": ("SELECT id FROM customers WHERE id = ANY (SELECT customer_id FROM orders)", frozenset({"pg", "mariadb"})),
    "All": ("SELECT id FROM customers WHERE id > ALL (SELECT customer_id FROM orders)", frozenset({"pg", "mariadb"})),
    "Like": ("SELECT id FROM customers WHERE name LIKE 'Customer 1%'", ALL),
    "ILike": ("SELECT id FROM customers WHERE name ILIKE 'customer 1%'", frozenset({"pg"})),
    "Escape": ("SELECT id FROM customers WHERE name NOT LIKE '%!%%' ESCAPE '!'", ALL),
    "Add": ("SELECT id + 1 AS x FROM orders", ALL),
    "Sub": ("SELECT id - 1 AS x FROM orders", ALL),
    "Mul": ("SELECT id * 2 AS x FROM orders", ALL),
    "Div": ("SELECT amount / 2 AS x FROM orders", ALL),
    "IntDiv": ("SELECT id DIV 2 AS x FROM orders", frozenset({"mariadb"})),
    "Mod": ("SELECT id % 2 AS x FROM orders", ALL),
    "Neg": ("SELECT -id AS x FROM orders", ALL),
    "DPipe": ("SELECT name || country AS x FROM customers", frozenset({"pg", "sqlite"})),
    "BitwiseAnd": ("SELECT id & 3 AS x FROM orders", ALL),
    "BitwiseOr": ("SELECT id | 3 AS x FROM orders", ALL),
    "BitwiseXor": ("SELECT id ^ 3 AS x FROM orders", frozenset({"mariadb"})),
    "BitwiseNot": ("SELECT ~id AS x FROM orders", ALL),
    "Filter": ("SELECT COUNT(*) FILTER (WHERE id > 3) AS n FROM orders", frozenset({"pg", "sqlite"})),
    "Literal": ("SELECT id, 'x' AS s, 1.5 AS f FROM orders", ALL),
    "Null": ("SELECT id, NULL AS n FROM orders", ALL),
    "Boolean": ("SELECT id FROM customers WHERE active = TRUE", ALL),
    "BitString": ("SELECT id, B'101' AS b FROM orders", frozenset({"pg", "mariadb"})),
    "HexString": ("SELECT id, X'0F' AS h FROM orders", frozenset({"sqlite", "mariadb"})),
    "DataType": ("SELECT CAST(id AS VARCHAR(10)) AS s FROM orders", ALL),
    "DataTypeParam": ("SELECT CAST(amount AS DECIMAL(10, 1)) AS d FROM orders", ALL),
    "Interval": ("SELECT id FROM customers WHERE created_at > CAST('2026-01-01' AS DATE) + INTERVAL '1' DAY",
                 frozenset({"pg", "mariadb"})),
    "Var": ("SELECT EXTRACT(YEAR FROM created_at) AS y FROM customers", frozenset({"pg", "mariadb"})),
    "Count": ("SELECT COUNT(*) AS n FROM orders", ALL),
    "Sum": ("SELECT SUM(amount) AS s FROM orders", ALL),
    "Avg": ("SELECT AVG(amount) AS s FROM orders", ALL),
    "Min": ("SELECT MIN(amount) AS s FROM orders", ALL),
    "Max": ("SELECT MAX(amount) AS s FROM orders", ALL),
    "Lower": ("SELECT LOWER(name) AS s FROM customers", ALL),
    "Upper": ("SELECT UPPER(name) AS s FROM customers", ALL),
    "Length": ("SELECT LENGTH(name) AS s FROM customers", ALL),
    "Coalesce": ("SELECT COALESCE(NULL, name) AS s FROM customers", ALL),
    "Nullif": ("SELECT NULLIF(country, 'DE') AS s FROM customers", ALL),
    "Abs": ("SELECT ABS(0 - id) AS s FROM orders", ALL),
    "Round": ("SELECT ROUND(amount, 0) AS s FROM orders", ALL),
    "Floor": ("SELECT FLOOR(amount) AS s FROM orders", frozenset({"pg", "mariadb"})),
    "Ceil": ("SELECT CEIL(amount) AS s FROM orders", frozenset({"pg", "mariadb"})),
    "Cast": ("SELECT CAST(amount AS INTEGER) AS s FROM orders", ALL),
    "Case": ("SELECT CASE WHEN id > 3 THEN 'big' ELSE 'small' END AS s FROM orders", ALL),
    "If": ("SELECT IF(id > 3, 'big', 'small') AS s FROM orders", frozenset({"mariadb"})),
    "Concat": ("SELECT CONCAT(name, country) AS s FROM customers", frozenset({"pg", "mariadb"})),
    "ConcatWs": ("SELECT CONCAT_WS('-', name, country) AS s FROM customers", frozenset({"pg", "mariadb"})),
    "Substring": ("SELECT SUBSTRING(name, 1, 3) AS s FROM customers", ALL),
    "Trim": ("SELECT TRIM(name) AS s FROM customers", ALL),
    "Greatest": ("SELECT GREATEST(id, 3) AS s FROM orders", frozenset({"pg", "mariadb"})),
    "Least": ("SELECT LEAST(id, 3) AS s FROM orders", frozenset({"pg", "mariadb"})),
    "Extract": ("SELECT EXTRACT(MONTH FROM created_at) AS m FROM customers", frozenset({"pg", "mariadb"})),
    "TimestampTrunc": ("SELECT DATE_TRUNC('month', created_at) AS m FROM customers", frozenset({"pg"})),
    "Date": ("SELECT DATE(created_at) AS d FROM customers", frozenset({"sqlite"})),
    "CurrentDate": ("SELECT id, CURRENT_DATE AS d FROM orders", ALL),
    "CurrentTimestamp": ("SELECT id, CURRENT_TIMESTAMP AS t FROM orders", ALL),
    # sqlglot writes PostgreSQL's CURRENT_TIME as CURRENT_TIME(), which PostgreSQL refuses (a 400, not a leak).
    "CurrentTime": ("SELECT id, CURRENT_TIME AS t FROM orders", frozenset({"sqlite", "mariadb"})),
    "RowNumber": ("SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS r FROM orders", ALL),
    "Rank": ("SELECT id, RANK() OVER (ORDER BY customer_id) AS r FROM orders", ALL),
    "DenseRank": ("SELECT id, DENSE_RANK() OVER (ORDER BY customer_id) AS r FROM orders", ALL),
    "Stddev": ("SELECT STDDEV(amount) AS s FROM orders", frozenset({"pg"})),
    "StddevPop": ("SELECT STDDEV_POP(amount) AS s FROM orders", frozenset({"pg", "mariadb"})),
    "StddevSamp": ("SELECT STDDEV_SAMP(amount) AS s FROM orders", frozenset({"pg", "mariadb"})),
    "Variance": ("SELECT VAR_SAMP(amount) AS s FROM orders", frozenset({"pg", "mariadb"})),
    "VariancePop": ("SELECT VAR_POP(amount) AS s FROM orders", frozenset({"pg", "mariadb"})),
    "Sign": ("SELECT SIGN(id - 3) AS s FROM orders", frozenset({"pg", "mariadb", "sqlite"})),
    "Left": ("SELECT LEFT(name, 3) AS s FROM customers", frozenset({"pg", "mariadb"})),
    "Right": ("SELECT RIGHT(name, 3) AS s FROM customers", frozenset({"pg", "mariadb"})),
    "Replace": ("SELECT REPLACE(name, 'Customer', 'C') AS s FROM customers", ALL),
    "StrPosition": ("SELECT INSTR(name, 'o') AS s FROM customers", frozenset({"sqlite", "mariadb"})),
    "Lag": ("SELECT id, LAG(id) OVER (ORDER BY id) AS p FROM orders", ALL),
    "Lead": ("SELECT id, LEAD(id) OVER (ORDER BY id) AS p FROM orders", ALL),
    "FirstValue": ("SELECT id, FIRST_VALUE(id) OVER (ORDER BY id) AS p FROM orders", ALL),
    "LastValue": ("SELECT id, LAST_VALUE(id) OVER (ORDER BY id) AS p FROM orders", ALL),
    "NthValue": ("SELECT id, NTH_VALUE(id, 2) OVER (ORDER BY id) AS p FROM orders", ALL),
    "Ntile": ("SELECT id, NTILE(3) OVER (ORDER BY id) AS p FROM orders", ALL),
    "PercentRank": ("SELECT id, PERCENT_RANK() OVER (ORDER BY id) AS p FROM orders", ALL),
    "CumeDist": ("SELECT id, CUME_DIST() OVER (ORDER BY id) AS p FROM orders", ALL),
}

# Refused whatever the dialect: (statement, dialects where it parses at all — elsewhere it is a parse error, a
# 400 too).
REFUSED = [
    "SELECT id FROM customers FOR UPDATE",
    "SELECT id INTO stolen FROM customers",
    "SELECT pg_sleep(1) FROM customers",
    "SELECT SLEEP(1) FROM customers",
    "SELECT CURRENT_USER FROM customers",
    "SELECT SESSION_USER FROM customers",
    "SELECT version() FROM customers",
    "SELECT @@version FROM customers",
    "SELECT @x FROM customers",
    "SELECT id FROM customers WHERE id = ?",
    "SELECT id FROM customers WHERE id = $1",
    "SELECT id FROM customers WHERE id = :id",
    "SELECT id FROM customers WHERE name ~ '^C'",
    "SELECT id FROM customers WHERE name REGEXP '^C'",
    "SELECT id FROM customers WHERE name GLOB 'C*'",
    "SELECT id FROM customers WHERE name SIMILAR TO 'C%'",
    "SELECT name COLLATE \"C\" AS n FROM customers",
    "SELECT ARRAY[1, 2] AS a FROM customers",
    "SELECT ARRAY_AGG(id) AS a FROM customers",
    "SELECT GROUP_CONCAT(name) AS a FROM customers",
    "SELECT STRING_AGG(name, ',') AS a FROM customers",
    "SELECT * FROM customers, LATERAL (SELECT 1 AS one) l",
    "SELECT * FROM (VALUES (1)) AS v (x)",
    "SELECT * FROM generate_series(1, 3)",
    "SELECT * FROM UNNEST(ARRAY[1])",
    "SELECT CAST('customers' AS REGCLASS) AS r FROM customers",
    "SELECT CAST(name AS JSON) AS j FROM customers",
    "SELECT CAST(id AS INTERVAL) AS j FROM customers",
    "SELECT '{}'::jsonb AS j FROM customers",
    "SELECT name::bytea AS b FROM customers",
    "SELECT LOAD_FILE('/etc/passwd') AS f FROM customers",
    "SELECT id FROM customers WHERE id = 1; SELECT 1",
    "SELECT id FROM customers FETCH FIRST 1 ROWS ONLY",
    "SELECT id FROM customers TABLESAMPLE SYSTEM (10)",
    "SELECT txid_current() FROM customers",
    "SELECT current_setting('server_version') FROM customers",
    "SELECT id FROM customers WHERE name IN (SELECT usename FROM pg_user)",
    "SELECT DATABASE() FROM customers",
    "SELECT sqlite_version() FROM customers",
    "SELECT randomblob(1000000000) FROM customers",
    "SELECT REPEAT('x', 1000000000) AS r FROM customers",
    "SELECT JSON_EXTRACT('{}', '$') AS j FROM customers",
]


@pytest.fixture(scope="module", params=["sqlite_source", "pg_source", "mariadb_source"])
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TestClient]]:
    source = request.getfixturevalue(request.param)
    config = write_workspace(tmp_path_factory.mktemp("sqlmode-grammar"), source_url=source)
    with client_for(config) as client:
        yield request.param.split("_")[0], client


def sql(client: TestClient, text: str) -> Any:
    return client.post("/v1/sql", json={"sql": text}, headers=bearer("analyst-bot"))


@pytest.mark.unit
def test_every_allowed_class_has_an_example() -> None:
    assert set(ALLOWED) == set(sqlmode.ALLOWED_NODES)


@pytest.mark.parametrize("kind", sorted(ALLOWED))
def test_an_allowed_class_answers(gw: tuple[str, TestClient], kind: str) -> None:
    dialect, client = gw
    example, where = ALLOWED[kind]
    if dialect not in where:
        pytest.skip(f"{dialect} has no spelling of {kind} (or no example of ours parses to it)")
    tree = sqlglot.parse_one(example, read=SQLGLOT[dialect])
    assert any(type(n).__name__ == kind for n in tree.walk()), (kind, "the example does not contain it")
    got = sql(client, example)
    assert got.status_code == 200, (kind, example, got.text)
    assert got.json()["rows"], (kind, example)


@pytest.mark.parametrize("statement", REFUSED)
def test_constructs_outside_the_allow_list_are_refused_before_the_source(gw: tuple[str, TestClient],
                                                                         statement: str) -> None:
    _, client = gw
    got = sql(client, statement)
    assert got.status_code in (400, 403), (statement, got.text)
    error = got.json()["error"]
    assert error["message"] != "the source refused the statement", (statement, "reached the source")


def test_values_of_every_kind_come_back_as_json_values(gw: tuple[str, TestClient]) -> None:
    dialect, client = gw
    got = sql(client, "SELECT id, amount, CAST(amount AS FLOAT) AS f, CURRENT_DATE AS d, TRUE AS t, NULL AS n "
                      "FROM orders WHERE id = 1")
    assert got.status_code == 200, got.text
    row = got.json()["rows"][0]
    assert row["id"] == 1 and row["amount"] in ("1.50", 1.5) and row["f"] == 1.5 and row["n"] is None
    assert isinstance(row["d"], str) and row["t"] in (True, 1)
    if dialect == "pg":
        whole = sql(client, "SELECT o FROM orders o WHERE o.id = 2")  # a whole-row reference: the row's fields
        assert whole.status_code == 200, whole.text
        assert whole.json()["rows"] == [{"o": [2, 3, "2.50"]}]
        bits = sql(client, "SELECT B'101' AS b, CAST(B'0011' AS VARCHAR(4)) AS v FROM orders WHERE id = 1")
        assert bits.json()["rows"] == [{"b": "101", "v": "0011"}], bits.text
        masked = sql(client, "SELECT c FROM customers c WHERE c.id = 1")  # masked fields stay null in the row
        assert masked.status_code == 200, masked.text
        fields = masked.json()["rows"][0]["c"]
        assert "c1@example.com" not in fields and fields[0] == 1
