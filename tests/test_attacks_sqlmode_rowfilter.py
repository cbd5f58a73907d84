"""Attack: read past a row filter in SQL mode through the evaluation order.

An agent whose row filter hides rows writes expressions that fail (a cast, an overflow, a division by zero, a
CASE arm that raises) only on a hidden row. If the source evaluated the agent's expression before the filter —
a planner flattening the dataset's subquery and pushing the agent's predicate down — the error (or its absence)
would tell one bit about a hidden row per request. The property: no expression an agent writes is ever evaluated
on a row its filters hide, in any clause, on PostgreSQL, MariaDB and SQLite, through /v1/sql and the MCP `sql`
tool. Each oracle below raises on every hidden row and on no visible one, so the read must answer 200 with
exactly the visible rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import DATASETS, POLICY, bearer, client_for, customer_rows, write_workspace

pytestmark = pytest.mark.integration

ROWS = customer_rows()

FILTERED = DATASETS + """
[datasets.customers.row_filters]
support = "country = {claims.region}"
analyst = "country in {claims.regions} and active = true"
lead = "id <= 4"

[datasets.orders.row_filters]
analyst = "amount >= 10"
"""

FILTER_POLICY = POLICY + """
p, lead, customers, read, allow
g, lead-bot, lead
g, lead-bot, support
"""


@pytest.fixture(scope="module", params=["sqlite_source", "pg_source", "mariadb_source"])
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TestClient]]:
    source = request.getfixturevalue(request.param)
    config = write_workspace(tmp_path_factory.mktemp("attack-rowfilter"), source_url=source, datasets=FILTERED,
                             policy=FILTER_POLICY)
    with client_for(config) as client:
        yield request.param.split("_")[0], client


# Who asks, with which claims, and which customers they may see.
AGENTS: dict[str, tuple[str, dict[str, Any], set[int]]] = {
    "one value": ("support-bot", {"region": "DE"}, {r["id"] for r in ROWS if r["country"] == "DE"}),
    "several values": ("analyst-bot", {"regions": ["DE", "FR", "GB", "NL", "SE", "IT", "ES"]},
                       {r["id"] for r in ROWS if r["country"] in ("DE", "FR", "GB") and r["active"]}),
    "two ORed roles": ("lead-bot", {"region": "FR"},
                       {r["id"] for r in ROWS if r["country"] == "FR" or r["id"] <= 4}),
}


def visible_condition(agent: str, q: str = "") -> str:
    """A condition true on exactly the rows the agent may see, its columns qualified by `q` (e.g. "c.")."""
    return {"support-bot": f"{q}country = 'DE'",
            "analyst-bot": f"CASE WHEN {q}country IN ('DE', 'FR', 'GB') THEN {q}active = TRUE ELSE FALSE END",
            "lead-bot": f"{q}country = 'FR' OR {q}id <= 4"}[agent]


def bomb(dialect: str, row: str = "id") -> str:
    """An integer expression that raises an error whenever it is evaluated, on each dialect."""
    return {
        "pg": f"CAST(CAST({row} AS TEXT) || 'x' AS INTEGER)",  # invalid input syntax for integer
        "mariadb": f"({row} + 9223372036854775807)",  # BIGINT value is out of range
        "sqlite": f"abs(-9223372036854775807 - {row})",  # integer overflow
    }[dialect]


def arm(dialect: str, agent: str, q: str = "") -> str:
    """0 on a visible row; an error on a hidden one."""
    return f"CASE WHEN NOT ({visible_condition(agent, q)}) THEN {bomb(dialect, q + 'id')} ELSE 0 END"


def oracles(dialect: str, agent: str) -> dict[str, str]:
    """Statements that raise iff some hidden row reaches the agent's expression; each reads only `id`."""
    a = arm(dialect, agent)
    hidden = min({r["id"] for r in ROWS} - next(v for n, _, v in AGENTS.values() if n == agent))
    # As cheap as an expression gets, so a planner that orders conditions by cost would run it first.
    cheap = (f"1000 / (id - {hidden}) <> 0" if dialect == "pg"
             else f"CASE id WHEN {hidden} THEN {bomb(dialect)} ELSE 0 END = 0")
    return {
        "cheap where": f"SELECT id FROM customers WHERE {cheap}",
        "where": f"SELECT id FROM customers WHERE {a} = 0",
        "select list": f"SELECT id, {a} AS x FROM customers",
        "order by": f"SELECT id FROM customers ORDER BY {a}, id",
        "group by": f"SELECT id FROM customers GROUP BY id, {a}",
        "having": f"SELECT id FROM customers GROUP BY id, country, active HAVING MAX({a}) = 0",
        "aggregate": f"SELECT COUNT(*) AS n, SUM({a}) AS s FROM customers",
        "join on": f"SELECT c.id FROM customers c JOIN customers d ON d.id = c.id AND {arm(dialect, agent, 'c.')} = 0",
        "subquery in where": f"SELECT id FROM customers WHERE id IN (SELECT id FROM customers WHERE {a} = 0)",
        "exists": "SELECT c.id AS id FROM customers c WHERE EXISTS (SELECT 1 FROM customers d WHERE d.id = c.id "
                  f"AND {arm(dialect, agent, 'd.')} = 0)",
        "scalar subquery": f"SELECT id, (SELECT MAX({arm(dialect, agent, 'd.')}) FROM customers d) AS m FROM customers",
        "derived table": f"SELECT id FROM (SELECT id, country, active FROM customers) s WHERE {a} = 0",
        "cte": f"WITH s AS (SELECT * FROM customers) SELECT id FROM s WHERE {a} = 0",
        "window": f"SELECT id, ROW_NUMBER() OVER (ORDER BY {a}) AS r FROM customers",
        "union": f"SELECT id FROM customers WHERE {a} = 0 UNION SELECT id FROM customers WHERE id < 0",
    }


CASES = [(who, clause) for who in AGENTS for clause in oracles("pg", AGENTS[who][0])]


@pytest.mark.parametrize(("who", "clause"), CASES, ids=[f"{w}-{c}" for w, c in CASES])
def test_no_agent_expression_is_evaluated_on_a_hidden_row(gw: tuple[str, TestClient], who: str, clause: str) -> None:
    dialect, client = gw
    agent, claims, visible = AGENTS[who]
    statement = oracles(dialect, agent)[clause]
    got = client.post("/v1/sql", json={"sql": statement}, headers=bearer(agent, **claims))
    assert got.status_code == 200, (statement, got.text)
    rows = got.json()["rows"]
    if clause == "aggregate":
        assert rows[0]["n"] == len(visible)
    else:
        assert {r["id"] for r in rows} <= visible
        assert len(rows) == min(len(visible), 25)  # max_rows of customers


# --- why the fence holds: the plans ----------------------------------------------------------------------------

def _regenerated(dialect: str, statement: str) -> str:
    """The SQL the gateway sends for `statement` read by an agent filtered to country 'DE' (the marker of the
    filter's value written as a literal, as EXPLAIN takes no parameters)."""
    from connectors.base import Filter
    from gateway import sqlmode
    tree = sqlmode.parse(statement, dialect)
    refs = sqlmode.dataset_references(tree)
    source = sqlmode.Source("customers", "customers", ["id", "name", "country", "active"], frozenset(), 25,
                            scope=[[Filter("country", "=", "DE")]])
    done = sqlmode.rewrite(tree, refs, {"customers": source}, dialect)
    (marker,) = done.binds
    quote = "`" if dialect == "mysql" else '"'
    return done.sql.replace(f"{quote}{marker}{quote}", "'DE'")


AGENT_CONDITION = "SELECT id FROM customers WHERE 1000 / (id - 1) <> 0"


def _pg_plan(pg_source: str, statement: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """PostgreSQL's plan for the SQL the gateway sends for `statement`: (the subquery scan standing for the
    dataset, the scan of its table below it)."""
    import asyncio
    import json

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def plan() -> dict[str, Any]:
        engine = create_async_engine(pg_source)
        try:
            async with engine.connect() as conn:
                sql = _regenerated("postgres", statement)
                got = await conn.execute(text("EXPLAIN (FORMAT JSON) " + sql.replace(":", "\\:")))
                raw = got.scalar_one()
                return (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]  # type: ignore[no-any-return]
        finally:
            await engine.dispose()

    top = asyncio.run(plan())
    # Limit (the answer's) -> Subquery Scan (the dataset) -> the table's scan. PostgreSQL plans no node for
    # OFFSET 0; the subquery stays whole all the same.
    scan = top["Plans"][0] if top["Node Type"] == "Limit" else top
    assert scan["Node Type"] == "Subquery Scan", top
    table = scan["Plans"][0]
    if table["Node Type"] == "Limit":
        table = table["Plans"][0]
    return scan, table


def test_postgresql_plans_the_agents_condition_above_the_filtered_subquery(pg_source: str) -> None:
    scan, table = _pg_plan(pg_source, AGENT_CONDITION)
    assert "1000" in scan["Filter"] and "DE" not in scan["Filter"], scan
    assert "DE" in table["Filter"] and "1000" not in table["Filter"], table


def test_mariadb_keeps_the_filtered_subquery_a_derived_table_with_nothing_pushed_in(mariadb_source: str) -> None:
    import asyncio

    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    async def plan() -> tuple[list[Any], str]:
        engine = create_async_engine(mariadb_source)
        try:
            async with engine.connect() as conn:
                sql = _regenerated("mysql", AGENT_CONDITION)
                rows = (await conn.execute(text("EXPLAIN EXTENDED " + sql.replace(":", "\\:")))).all()
                note = (await conn.execute(text("SHOW WARNINGS"))).all()[-1][2]
                return rows, note
        finally:
            await engine.dispose()

    rows, rewritten = asyncio.run(plan())
    assert [r[1] for r in rows] == ["PRIMARY", "DERIVED"], rows  # not merged
    derived = rewritten[rewritten.index("/* select#2 */"):]
    derived = derived[: derived.index(")")]
    assert "'DE'" in derived and "1000" not in derived, rewritten  # nothing of the agent's pushed in


@pytest.mark.unit
def test_sqlite_keeps_the_filtered_subquery_whole(sqlite_source: str) -> None:
    import sqlite3

    path = sqlite_source.split("///", 1)[1]
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + _regenerated("sqlite", AGENT_CONDITION))]
    finally:
        conn.close()
    # Not flattened: the subquery runs as a co-routine or is materialised, and the outer query scans its rows.
    assert any(step.startswith(("CO-ROUTINE", "MATERIALIZE")) for step in plan), plan


# --- the same through MCP's `sql` tool --------------------------------------------------------------------------

@pytest.mark.system
@pytest.mark.parametrize("source", ["pg_source", "mariadb_source"])
def test_the_mcp_sql_tool_holds_the_same_property(request: pytest.FixtureRequest, tmp_path: Path, source: str) -> None:
    import asyncio

    from tests.serving import serving
    from tests.test_mcp import mcp_session

    dialect = source.split("_")[0]
    config = write_workspace(tmp_path, source_url=request.getfixturevalue(source), datasets=FILTERED,
                             policy=FILTER_POLICY)
    agent, claims, visible = AGENTS["several values"]

    async def run(base: str) -> None:
        async with mcp_session(base, bearer(agent, **claims)) as session:
            for clause, statement in oracles(dialect, agent).items():
                got = await session.call_tool("sql", {"sql": statement})
                assert not got.is_error, (clause, got.content)
                rows = got.structured_content["rows"]
                if clause != "aggregate":
                    assert rows and {r["id"] for r in rows} <= visible, clause
            refused = await session.call_tool("sql", {"sql": REFUSED_BY_SOURCE[dialect]})
            assert refused.is_error
            assert refused.structured_content["error"]["message"] == "the source refused the statement"

    with serving(config, tmp_path / "serve.log") as base:
        asyncio.run(run(base))


REFUSED_BY_SOURCE = {"pg": "SELECT CAST(name AS INTEGER) AS n FROM customers",
                     "mariadb": "SELECT id + 9223372036854775807 AS x FROM customers"}


# --- plainly safe conditions copied inside the fence (gateway/sqlmode/pushdown.py) ------------------------------------

SAFE = {
    "key lookup": ("SELECT id FROM customers WHERE id = 5", lambda r: r["id"] == 5),
    "range": ("SELECT id FROM customers WHERE id BETWEEN 10 AND 30 AND id <> 20",
              lambda r: 10 <= r["id"] <= 30 and r["id"] != 20),
    "list": ("SELECT c.id AS id FROM customers c WHERE c.id IN (1, 2, 3, 6, 7, 8) AND 40 > c.id",
             lambda r: r["id"] in (1, 2, 3, 6, 7, 8)),
    "join": ("SELECT c.id AS id FROM customers c JOIN customers d ON d.id = c.id WHERE c.id < 9 AND d.id > 2",
             lambda r: 2 < r["id"] < 9),
    "outer join (not copied)": ("SELECT c.id AS id FROM customers c LEFT JOIN customers d ON d.id = c.id + 100 "
                                "WHERE c.id >= 50", lambda r: r["id"] >= 50),
}


@pytest.mark.parametrize("who", list(AGENTS))
def test_copied_conditions_answer_exactly_the_visible_rows_and_stay_no_oracle(gw: tuple[str, TestClient],
                                                                              who: str) -> None:
    dialect, client = gw
    agent, claims, visible = AGENTS[who]
    by_id = {r["id"]: r for r in ROWS}
    for label, (statement, keep) in SAFE.items():
        got = client.post("/v1/sql", json={"sql": statement}, headers=bearer(agent, **claims))
        assert got.status_code == 200, (label, got.text)
        expected = sorted(i for i in visible if keep(by_id[i]))[:25]
        assert sorted(r["id"] for r in got.json()["rows"]) == expected, label
    # A copied condition beside an oracle: the oracle still runs on visible rows only.
    oracle = f"SELECT id FROM customers WHERE id <= 40 AND {arm(dialect, agent)} = 0 AND id IN (1, 2, 3, 4, 5, 6)"
    got = client.post("/v1/sql", json={"sql": oracle}, headers=bearer(agent, **claims))
    assert got.status_code == 200, got.text
    assert {r["id"] for r in got.json()["rows"]} == {i for i in visible if i <= 6}


def test_postgresql_serves_a_copied_condition_below_the_fence(pg_source: str) -> None:
    import json

    scan, table = _pg_plan(pg_source, "SELECT id FROM customers WHERE id = 7 AND 1000 / (id - 1) <> 0")
    assert "1000" in scan["Filter"], scan
    below = json.dumps(table)
    assert "= 7" in below and "1000" not in below, table  # the copy beside the filter; the oracle above it
