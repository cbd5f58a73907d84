"""The memory source (connectors/memory) reads as the SQL connector does.

Parity (integration): one set of TableQuery — every operator, NULLs, `like` with `%`, `_` and escapes, `in` lists,
order ascending and descending with ties and NULLs, keyset pages across ties, offset pages on a table without a
primary key, row-filter scopes, limits, and the queries either must refuse — runs against a SqlConnector on real
SQLite and PostgreSQL databases and against MemorySources over the same rows (columns inferred from the rows, and
declared as the SQL source reports them); every page (rows and next position) and every refusal must be the same.
The data keeps to what every dialect orders and matches alike: `like` patterns and text in lower case (SQLite's
LIKE ignores ASCII case), PostgreSQL under the C collation (code point order, as SQLite and the memory source).

Unit: the memory source's own behaviour (inferred columns, missing tables, SQL mode, injected failures, rows
added between pages, positions that are JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Boolean, Column, Date, DateTime, Float, Integer, MetaData, Numeric, String, Table
from sqlalchemy.ext.asyncio import create_async_engine

from connectors.base import (
    MAX_BOUND_VALUES,
    ColumnInfo,
    Filter,
    InvalidQuery,
    MissingTable,
    Page,
    SortKey,
    SourceUnavailable,
    TableQuery,
    TableSource,
)
from connectors.memory import NO_SQL, MemorySource
from connectors.sql import SqlConnector, make_engine
from gateway.common.errors import ConfigError
from gateway.config import SourceSettings
from gateway.policy import Catalog, load_catalog
from gateway.sources.opening import check_tables
from tests.conftest import PG_ADMIN, _database

# --- the rows ------------------------------------------------------------------------------------------------

NAMES = ["alpha", "a_b", "a%b", "bet\\a", "beta", "gamma_1", "delta%", "zeta", "eta", "théta", "ω-omega"]
GROUPS = ["ab", "cd", None, "ef"]

meta = MetaData()
things = Table(
    "things", meta,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(40), nullable=False),
    Column("grp", String(10)),
    Column("score", Integer),
    Column("amount", Numeric(10, 2), nullable=False),
    Column("ratio", Float),
    Column("flag", Boolean),
    Column("born", Date),
    Column("at", DateTime, nullable=False),
)
# No primary key: pages are positioned by offset.
loose = Table(
    "loose", meta,
    Column("n", Integer, nullable=False),
    Column("grp", String(10)),
    Column("score", Integer),
)


def thing_rows() -> list[dict[str, Any]]:
    return [{
        "id": i,
        "name": NAMES[i % len(NAMES)],
        "grp": GROUPS[i % 4],
        "score": None if i % 7 == 0 else (i * 3) % 5,
        "amount": Decimal(f"{(i % 6) * 2.5:.2f}"),
        "ratio": None if i % 5 == 0 else (i % 4) * 0.25,
        "flag": None if i % 6 == 0 else i % 2 == 0,
        "born": None if i % 8 == 0 else dt.date(2020, 1 + i % 12, 1 + i % 28),
        "at": dt.datetime(2026, 1, 1, 9, 30) + dt.timedelta(hours=7 * i),
    } for i in range(1, 34)]


def loose_rows() -> list[dict[str, Any]]:
    return [{"n": (i * 7) % 23, "grp": GROUPS[i % 4], "score": None if i % 5 == 0 else i % 3} for i in range(23)]


async def _seed(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(meta.create_all)
            await conn.execute(things.insert(), thing_rows())
            await conn.execute(loose.insert(), loose_rows())
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def sqlite_things(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('memory-parity') / 'things.db'}"
    asyncio.run(_seed(url))
    return url


@pytest.fixture(scope="module")
def pg_things() -> Iterator[str]:
    with contextlib.contextmanager(_database)(PG_ADMIN, "memory", "PostgreSQL") as url:
        asyncio.run(_seed(url))
        yield url


# --- the queries ---------------------------------------------------------------------------------------------

ALL = ["id", "name", "grp", "score", "amount", "ratio", "flag", "born", "at"]


def q(*where: Filter, order: tuple[SortKey, ...] = (), limit: int = 100, columns: list[str] = ALL,
      scope: list[list[Filter]] | None = None, table: str = "things") -> TableQuery:
    return TableQuery(table=table, columns=columns, where=where, order_by=order, limit=limit, scope=scope)


def asc(column: str) -> SortKey:
    return SortKey(column)


def desc(column: str) -> SortKey:
    return SortKey(column, descending=True)


F = Filter
READS: dict[str, TableQuery] = {
    # comparisons, on every type
    "eq int": q(F("score", "=", 3)),
    "ne int (NULL never matches)": q(F("score", "!=", 3)),
    "lt int": q(F("score", "<", 2)),
    "le int": q(F("score", "<=", 2)),
    "gt int": q(F("score", ">", 2)),
    "ge int": q(F("score", ">=", 2)),
    "eq text": q(F("name", "=", "beta")),
    "ne text": q(F("name", "!=", "beta")),
    "lt text (code point order)": q(F("name", "<", "beta")),
    "ge text non-ascii": q(F("name", ">=", "théta")),
    "eq numeric from a string": q(F("amount", "=", "5.00")),
    "gt numeric from a number": q(F("amount", ">", 7.5)),
    "le numeric": q(F("amount", "<=", 2.5)),
    "lt float": q(F("ratio", "<", 0.5)),
    "eq bool": q(F("flag", "=", True)),
    "ne bool (NULL never matches)": q(F("flag", "!=", True)),
    "gt date": q(F("born", ">", "2020-06-15")),
    "le datetime": q(F("at", "<=", "2026-01-05T12:00:00")),
    "gt datetime with zone": q(F("at", ">", "2026-01-05T12:00:00+02:00")),
    # lists
    "in text": q(F("grp", "in", ["ab", "ef"])),
    "not in text (NULL never matches)": q(F("grp", "not in", ["ab"])),
    "in int": q(F("score", "in", [0, 4])),
    "not in int": q(F("score", "not in", [0, 4, 99])),
    "in numeric": q(F("amount", "in", ["2.50", 10])),
    # null tests
    "is null": q(F("score", "is null")),
    "is not null": q(F("score", "is not null")),
    "is null bool": q(F("flag", "is null")),
    "is not null date": q(F("born", "is not null")),
    # like
    "like prefix": q(F("name", "like", "a%")),
    "like one char": q(F("name", "like", "_eta")),
    "like literal percent": q(F("name", "like", "%\\%%")),
    "like literal underscore": q(F("name", "like", "%\\_%")),
    "like literal backslash": q(F("name", "like", "%\\\\%")),
    "like escaped plain char": q(F("name", "like", "\\b%")),
    "like underscore wildcard": q(F("name", "like", "a_b")),
    "like non-ascii": q(F("name", "like", "th_ta")),
    "like everything": q(F("name", "like", "%")),
    "like nothing": q(F("name", "like", "")),
    # several terms
    "and of terms": q(F("grp", "=", "ab"), F("score", ">=", 1), F("flag", "is not null")),
    # scopes (row filters)
    "scope one group": q(scope=[[F("grp", "=", "cd")]]),
    "scope or of ands": q(scope=[[F("grp", "=", "ab"), F("score", ">", 2)], [F("flag", "is null")]]),
    "scope and where": q(F("score", "is not null"), scope=[[F("grp", "in", ["ab", "cd"])], [F("born", "is null")]]),
    "scope empty group is every row": q(scope=[[]]),
    "scope without groups is no row": q(scope=[]),
    # order, ties and NULLs
    "order int asc": q(order=(asc("score"),)),
    "order int desc": q(order=(desc("score"),)),
    "order text asc": q(order=(asc("name"),)),
    "order two keys": q(order=(asc("grp"), desc("score"))),
    "order date desc": q(order=(desc("born"),)),
    "order bool": q(order=(asc("flag"),)),
    "order numeric desc, float": q(order=(desc("amount"), asc("ratio"))),
    "order by the key itself desc": q(order=(desc("id"),)),
    # pages
    "pages by key": q(limit=4),
    "pages across int ties and NULLs": q(order=(asc("score"),), limit=3),
    "pages across desc ties and NULLs": q(order=(desc("score"),), limit=3),
    "pages across text ties": q(order=(desc("name"),), limit=2),
    "pages two keys with NULLs": q(order=(asc("grp"), desc("flag")), limit=5),
    "pages on dates with NULLs": q(order=(asc("born"),), limit=4),
    "pages on numeric and float": q(order=(asc("amount"), desc("ratio")), limit=3),
    "pages filtered and scoped": q(F("score", "!=", 1), order=(desc("grp"),), limit=2,
                                   scope=[[F("flag", "=", False)], [F("grp", "is null")]]),
    "pages of one row": q(F("grp", "=", "ef"), order=(asc("at"),), limit=1),
    "limit zero": q(limit=0),
    "columns in another order": q(order=(asc("score"),), limit=7, columns=["at", "score", "id"]),
    # a table without a primary key: offset positions
    "offset pages": q(order=(asc("n"),), limit=4, columns=["n", "grp", "score"], table="loose"),
    "offset pages desc": q(F("score", "is not null"), order=(desc("n"),), limit=3, columns=["score", "n"],
                           table="loose"),
}

REFUSED: dict[str, TableQuery] = {
    "unknown column asked": q(columns=["id", "nope"]),
    "unknown column in where": q(F("nope", "=", 1)),
    "unknown column in order": q(order=(asc("nope"),)),
    "unknown column in scope": q(scope=[[F("nope", "=", 1)]]),
    "unknown operator": q(F("score", "~", 1)),
    "text for an int": q(F("score", "=", "three")),
    "bool for an int": q(F("score", "=", True)),
    "int for a bool": q(F("flag", "=", 1)),
    "number for text": q(F("name", "=", 5)),
    "not a date": q(F("born", "<", "yesterday")),
    "not a datetime": q(F("at", ">", 20260101)),
    "not a number": q(F("amount", "=", "lots")),
    "infinite numeric": q(F("amount", "<", "Infinity")),
    "int past 64 bits": q(F("score", "<", 2**63)),
    "a list for =": q(F("score", "=", [1])),
    "null for =": q(F("score", "=", None)),
    "in without a list": q(F("score", "in", 1)),
    "in an empty list": q(F("score", "in", [])),
    "in with a null": q(F("grp", "not in", ["ab", None])),
    "in with a bad value": q(F("score", "in", [1, "x"])),
    "like on a number": q(F("score", "like", "1%")),
    "like without a string": q(F("name", "like", 5)),
    "like ending in an escape": q(F("name", "like", "ab\\")),
    "text with a NUL": q(F("name", "=", "a\x00b")),
    "bad value in scope": q(scope=[[F("score", "=", "x")]]),
    "too many values": q(F("score", "in", list(range(MAX_BOUND_VALUES))), F("grp", "=", "ab")),
    "a keyset cursor on an offset table": TableQuery("loose", ["n"], order_by=[asc("n")], after={"k": [1]}),
    "an offset cursor on a keyed table": TableQuery("things", ["id"], after={"o": 3}),
    "a cursor of the wrong length": TableQuery("things", ["id"], order_by=[asc("score")], after={"k": [1]}),
    "a cursor with a bad tag": TableQuery("things", ["id"], after={"k": [{"zz": "1"}]}),
}


# --- running them --------------------------------------------------------------------------------------------

async def pages(source: TableSource, query: TableQuery) -> list[tuple[list[dict[str, Any]], Any]]:
    """Every page of `query`, following each page's position, as (rows, next position)."""
    out: list[tuple[list[dict[str, Any]], Any]] = []
    after: Any = None
    while len(out) < 60:
        page: Page = await source.fetch(TableQuery(query.table, query.columns, query.where, query.order_by,
                                                   query.limit, after, query.scope))
        assert page.columns == list(query.columns)
        json.dumps(page.after)  # a position is JSON, whatever the source
        out.append((page.rows, page.after))
        after = page.after
        if after is None:
            break
    return out


async def refusal(source: TableSource, query: TableQuery) -> str:
    with pytest.raises(InvalidQuery) as caught:
        await source.fetch(query)
    return str(caught.value)


@contextlib.asynccontextmanager
async def sources(url: str) -> AsyncIterator[tuple[SqlConnector, MemorySource, MemorySource]]:
    """The SQL source on `url`, and memory sources over the same rows: columns inferred, and declared as the SQL
    source reports them."""
    sql = SqlConnector("main", make_engine(url, timeout_seconds=10, pool_size=2), timeout_seconds=10)
    try:
        declared = {t: await sql.columns(t) for t in ("things", "loose")}
        tables = {"things": thing_rows(), "loose": loose_rows()}
        yield sql, MemorySource("main", tables), MemorySource("main", tables, columns=declared)
    finally:
        await sql.close()


@pytest.fixture(params=["sqlite_things", "pg_things"])
def things_url(request: pytest.FixtureRequest) -> str:
    """The database of the rows, the test run once on SQLite and once on PostgreSQL."""
    return str(request.getfixturevalue(request.param))


@pytest.mark.integration
@pytest.mark.parametrize("name", list(READS))
async def test_a_read_pages_alike(name: str, things_url: str) -> None:
    query = READS[name]
    async with sources(things_url) as (sql, inferred, declared):
        want = await pages(sql, query)
        assert await pages(inferred, query) == want
        assert await pages(declared, query) == want
    if name not in ("like nothing", "scope without groups is no row", "limit zero"):
        assert any(rows for rows, _ in want), "a read that finds nothing proves little"
    if "pages" in name:
        assert len(want) > 2, "paging proves little on fewer than three pages"


@pytest.mark.integration
async def test_the_same_queries_are_refused_in_the_same_words(things_url: str) -> None:
    async with sources(things_url) as (sql, inferred, declared):
        for name, query in REFUSED.items():
            said = await refusal(sql, query)
            # Declared as the SQL source reports its columns, the type names in the messages are its own too.
            assert await refusal(declared, query) == said, name
            await refusal(inferred, query)


@pytest.mark.integration
async def test_filters_are_checked_alike(things_url: str) -> None:
    async with sources(things_url) as (sql, _, declared):
        for f in [F("score", "=", 1), F("grp", "in", ["ab"]), F("name", "like", "a%"), F("born", "is null")]:
            await sql.check_filter("things", f)
            await declared.check_filter("things", f)
        for f in [F("nope", "=", 1), F("score", "=", "x"), F("score", "like", "1"), F("grp", "in", [])]:
            with pytest.raises(InvalidQuery) as one:
                await sql.check_filter("things", f)
            with pytest.raises(InvalidQuery) as other:
                await declared.check_filter("things", f)
            assert str(other.value) == str(one.value)
        for source in (sql, declared):
            with pytest.raises(MissingTable) as missing:
                await source.prepare(["things", "absent"])
            assert str(missing.value) == "source 'main' has no table 'absent'"


# --- the memory source on its own ----------------------------------------------------------------------------

CUSTOMERS = [
    {"id": 1, "name": "Ada", "email": "ada@example.com", "country": "GB", "balance": Decimal("10.50")},
    {"id": 2, "name": "Grace", "email": None, "country": "US", "balance": Decimal("0.00")},
    {"id": 3, "name": "Linus", "country": "FI", "balance": Decimal("99.99")},
]


@pytest.mark.unit
async def test_columns_are_inferred_from_the_rows() -> None:
    source = MemorySource("crm", {"customers": CUSTOMERS})
    assert source.dialect == "memory"
    await source.prepare(["customers"])
    assert await source.columns("customers") == [
        ColumnInfo("id", "integer", False, True),
        ColumnInfo("name", "text", False, False),
        ColumnInfo("email", "text", True, False),  # NULL in one row, absent from another
        ColumnInfo("country", "text", False, False),
        ColumnInfo("balance", "numeric", False, False),
    ]
    other = MemorySource("x", {"t": [{"id": 1, "v": None}, {"id": 1, "v": None}]})
    assert await other.columns("t") == [ColumnInfo("id", "integer", False, False),  # not distinct: no key
                                        ColumnInfo("v", "null", True, False)]


@pytest.mark.unit
async def test_declared_columns_coerce_values_by_their_sql_type() -> None:
    rows = [{"k": 1, "at": dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC), "price": Decimal("1.50")},
            {"k": 2, "at": dt.datetime(2026, 1, 2, 12, tzinfo=dt.UTC), "price": Decimal("2.50")}]
    columns = [ColumnInfo("k", "bigint", False, True), ColumnInfo("at", "timestamp with time zone", False, False),
               ColumnInfo("price", "numeric(8, 2)", False, False)]
    source = MemorySource("s", {"t": rows}, columns={"t": columns})
    page = await source.fetch(TableQuery("t", ["k", "price"], where=[Filter("at", ">", "2026-01-02T13:00:00+02:00"),
                                                                     Filter("price", ">=", "2.5")]))
    assert page.rows == [{"k": 2, "price": "2.50"}]
    with pytest.raises(InvalidQuery, match=r"'cheap' is not a valid value for 'price' \(numeric\(8, 2\)\)"):
        await source.fetch(TableQuery("t", ["k"], where=[Filter("price", "=", "cheap")]))


@pytest.mark.unit
async def test_a_missing_table_and_sql_mode_are_refused_as_the_core_expects() -> None:
    source = MemorySource("crm", {"customers": CUSTOMERS})
    for call in (source.prepare(["orders"]), source.columns("orders"), source.fetch(TableQuery("orders", ["id"])),
                 source.check_filter("orders", Filter("id", "=", 1))):
        with pytest.raises(MissingTable, match="source 'crm' has no table 'orders'"):
            await call
    with pytest.raises(InvalidQuery, match=NO_SQL):
        await source.run_select("SELECT 1", 10)
    await source.close()


@pytest.mark.unit
async def test_an_injected_failure_is_raised_where_a_source_would_fail() -> None:
    source = MemorySource("crm", {"customers": CUSTOMERS}, failure=SourceUnavailable("source 'crm' failed: OSError"))
    with pytest.raises(SourceUnavailable):
        await source.prepare(["customers"])
    with pytest.raises(SourceUnavailable):
        await source.fetch(TableQuery("customers", ["id"]))
    assert len(await source.columns("customers")) == 5  # known already, as a reflected table's are
    source.failure = None
    assert len((await source.fetch(TableQuery("customers", ["id"]))).rows) == 3


@pytest.mark.unit
async def test_rows_added_between_pages_are_read_after_the_position_only() -> None:
    rows = [dict(r) for r in CUSTOMERS]
    source = MemorySource("crm", {"customers": rows})
    first = await source.fetch(TableQuery("customers", ["id", "name"], order_by=[SortKey("name")], limit=2))
    assert [r["name"] for r in first.rows] == ["Ada", "Grace"]
    assert json.loads(json.dumps(first.after)) == first.after == {"k": ["Grace", 2]}
    rows.append({"id": 4, "name": "Barbara", "country": "US", "balance": Decimal("1")})  # before the position
    rows.append({"id": 5, "name": "Margaret", "country": "US", "balance": Decimal("1")})  # after it
    second = await source.fetch(TableQuery("customers", ["id", "name"], order_by=[SortKey("name")], limit=2,
                                           after=first.after))
    assert [r["name"] for r in second.rows] == ["Linus", "Margaret"]
    assert second.after is None


@pytest.mark.unit
async def test_values_come_back_json_ready_and_positions_keep_their_types() -> None:
    rows = [{"id": i, "day": dt.date(2026, 1, i), "amount": Decimal(f"{i}.10"), "ratio": i / 4,
             "blob": bytes([i]), "at": dt.datetime(2026, 1, i, 8, 0)} for i in range(1, 4)]
    source = MemorySource("s", {"t": rows})
    query = TableQuery("t", ["id", "day", "amount", "ratio", "blob", "at"], order_by=[SortKey("day", True)], limit=1)
    page = await source.fetch(query)
    assert page.rows == [{"id": 3, "day": "2026-01-03", "amount": "3.10", "ratio": 0.75, "blob": "Aw==",
                          "at": "2026-01-03T08:00:00"}]
    assert page.after == {"k": [{"da": "2026-01-03"}, 3]}
    nxt = await source.fetch(TableQuery("t", ["id"], order_by=[SortKey("day", True)], limit=5,
                                        after=json.loads(json.dumps(page.after))))
    assert nxt.rows == [{"id": 2}, {"id": 1}]


@pytest.mark.unit
async def test_like_escapes_and_null_semantics() -> None:
    rows = [{"id": 1, "s": "100%"}, {"id": 2, "s": "1000"}, {"id": 3, "s": None}, {"id": 4, "s": "a_c"},
            {"id": 5, "s": "abc"}, {"id": 6, "s": "line\nbreak"}]
    source = MemorySource("s", {"t": rows})

    async def ids(*where: Filter) -> list[int]:
        return [r["id"] for r in (await source.fetch(TableQuery("t", ["id"], where=where))).rows]

    assert await ids(Filter("s", "like", "100\\%")) == [1]
    assert await ids(Filter("s", "like", "100%")) == [1, 2]
    assert await ids(Filter("s", "like", "a\\_c")) == [4]
    assert await ids(Filter("s", "like", "a_c")) == [4, 5]
    assert await ids(Filter("s", "like", "line%")) == [6]  # % spans a line break
    assert await ids(Filter("s", "like", "ABC")) == []  # case-sensitive, as on PostgreSQL
    assert await ids(Filter("s", "!=", "abc")) == [1, 2, 4, 6]  # NULL is not "not abc"
    assert await ids(Filter("s", "not in", ["abc"])) == [1, 2, 4, 6]
    assert await ids(Filter("s", "is null")) == [3]


@pytest.mark.unit
async def test_the_catalog_is_checked_against_a_memory_source(tmp_path: Path) -> None:
    source: TableSource = MemorySource("main", {"customers": CUSTOMERS})
    assert await check_tables(_catalog(tmp_path, "country = 'GB'"), {"main": source}, "datasets.toml",
                              strict_reachability=True) == []
    faults: list[ConfigError] = []
    await check_tables(_catalog(tmp_path, "region = 'GB'", table="clients"), {"main": source}, "datasets.toml",
                       strict_reachability=True, faults=faults)
    assert [str(f) for f in faults] == ["datasets.toml: datasets.customers.table: source 'main' has no table 'clients'"]
    with pytest.raises(ConfigError, match=r"row_filters\.support: table 'customers' has no column 'region'"):
        await check_tables(_catalog(tmp_path, "region = 'GB'"), {"main": source}, "datasets.toml",
                           strict_reachability=True)
    with pytest.raises(ConfigError, match=r"row_filters.support: 'GB' is not a valid value for 'id' \(integer\)"):
        await check_tables(_catalog(tmp_path, "id = 'GB'"), {"main": source}, "datasets.toml",
                           strict_reachability=True)


def _catalog(root: Path, row_filter: str, table: str = "customers") -> Catalog:
    (root / "datasets.toml").write_text(f"""
[datasets.customers]
source = "main"
table = "{table}"
owner = "crm@example.com"

[datasets.customers.columns.email]
class = "pii"

[datasets.customers.row_filters]
support = "{row_filter}"
""")
    return load_catalog(root / "datasets.toml", {"main": SourceSettings(name="main", kind="sql", url="sqlite://")})
