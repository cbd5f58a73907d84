"""The SQL connector: a TableSource over one SQLAlchemy async engine.

Tables are reflected once and every identifier is checked against the
reflection; values are bound, never spliced; sessions are read-only and carry
a server-side statement timeout as well as the client-side one; pages are
keyset-paginated on the order keys plus the primary key, so a position stays
valid on any replica and under concurrent inserts. Statements are built once
per query shape and kept (see shapes); PostgreSQL reads run on asyncpg directly
(see pgreader).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import BigInteger, MetaData, Table, bindparam, text
from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import TextClause

from connectors.base import (
    MAX_BOUND_VALUES,
    ColumnInfo,
    Filter,
    InvalidQuery,
    MissingTable,
    Page,
    SourceTimedOut,
    SourceUnavailable,
    TableQuery,
    bound_values,
)
from connectors.cache import SizedCache
from connectors.slices import in_slices
from connectors.sql.pgreader import BATCH_ROWS, PgReader
from connectors.sql.reading import connected, driver_errors, fetched, short
from connectors.sql.shapes import (
    BOOLS_BYTES,
    BUILD_ON_LOOP,
    COMPILED_BYTES,
    COMPILED_PER_CHAR,
    SHAPES_BYTES,
    SHAPES_LIMIT,
    STATEMENT_PER_CHAR,
    Shape,
    precompile,
)
from connectors.sql.statements import Binds, Keys, build, column_of, condition
from connectors.sql.values import coerce, is_bool, json_rows, type_name
from connectors.values import tag


class SqlConnector:
    """A SQL source: a TableSource over one SQLAlchemy async engine (see make_engine), which it owns."""

    def __init__(self, name: str, engine: AsyncEngine, *, timeout_seconds: float):
        self.name = name
        self._engine = engine
        self._timeout = timeout_seconds
        self._tables: dict[str, Table] = {}
        self._columns: dict[str, list[ColumnInfo]] = {}
        # Statements by query shape, and the columns asked that are MariaDB TINYINT(1) (booleans), bounded by
        # their estimated size as well as their number: no body makes them grow past their budget.
        self._shapes: SizedCache[Any, Shape] = SizedCache(SHAPES_LIMIT, SHAPES_BYTES, lambda _, v: v.size)
        self._bools: SizedCache[tuple[str, tuple[str, ...]], frozenset[int]] = SizedCache(
            SHAPES_LIMIT, BOOLS_BYTES, lambda k, _: 100 + 80 * len(k[1]))
        # SQLAlchemy's own cache of compiled statements (used on every dialect but for PostgreSQL reads; SQL
        # mode's statements too), likewise bounded by size rather than its default of 500 entries of any size.
        self._compiled: SizedCache[Any, Any] = SizedCache(
            SHAPES_LIMIT, COMPILED_BYTES, lambda _, v: COMPILED_PER_CHAR * len(getattr(v, "string", "") or ""))
        engine.sync_engine.update_execution_options(compiled_cache=self._compiled)
        # PostgreSQL reads skip SQLAlchemy's execution layer (a third of the gateway's CPU per read):
        # statements are still built and compiled by SQLAlchemy, then run on the engine's asyncpg connections.
        self._pg = PgReader(engine) if engine.dialect.name == "postgresql" else None
        self._lock = asyncio.Lock()

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    async def prepare(self, tables: Sequence[str]) -> None:
        """Reflect the catalog's tables; MissingTable names the first that does not exist."""
        for table in tables:
            await self._table(table)

    async def columns(self, table: str) -> list[ColumnInfo]:
        hit = self._columns.get(table)
        if hit is None:
            t = await self._table(table)
            hit = self._columns[table] = [ColumnInfo(str(c.name), type_name(c), bool(c.nullable), bool(c.primary_key))
                                          for c in t.columns]
        return hit

    async def fetch(self, query: TableQuery) -> Page:
        t = await self._table(query.table)
        prepared, values = await self._statement(t, query)
        started = time.perf_counter()
        with driver_errors(self.name, self._timeout, agent_sql=False):
            async with asyncio.timeout(self._timeout):
                if self._pg is not None:
                    raw = await self._pg.fetch(prepared.compiled, values, query.limit + 1)
                else:
                    async with connected(self._engine) as conn:
                        result = await conn.execute(prepared.stmt, values)
                        raw = await fetched(result, query.limit + 1, len(query.columns))
        source_ms = (time.perf_counter() - started) * 1000
        more = len(raw) > query.limit
        raw = raw[: query.limit]
        bools = self._bools.get((query.table, tuple(query.columns)))
        if bools is None:
            bools = self._bools[(query.table, tuple(query.columns))] = frozenset(
                i for i, name in enumerate(query.columns) if is_bool(t.columns[name]))
        rows = await in_slices(raw, len(query.columns), lambda part: json_rows(part, query.columns, bools))
        after = _next_position(query, prepared.keys, raw) if more and raw else None
        return Page(columns=list(query.columns), rows=rows, after=after, source_ms=source_ms)

    async def check_filter(self, table: str, f: Filter) -> None:
        """InvalidQuery when `f` cannot apply to `table` (an unknown column, a value of the wrong type):
        lets the catalog's literal filters fail when the policy loads rather than on a read."""
        t = await self._table(table)
        condition(column_of(t, f.column), f, Binds(self.dialect, build=False), "c")

    async def run_select(self, sql: str, limit: int, binds: Mapping[str, tuple[str, str, Any]] | None = None) -> Page:
        """Run an already-built, already-validated SELECT (SQL mode) within the statement timeout, reading at
        most `limit` rows. Without binds it is sent to the driver as it is (no parameters, so nothing in it is
        taken for a placeholder). `binds` maps markers in `sql` (bare identifiers no agent can guess) to the
        (table, column, value) they stand for: each becomes a parameter bound as that column's type."""
        statement = await self._bound(sql, binds) if binds else None
        started = time.perf_counter()
        with driver_errors(self.name, self._timeout, agent_sql=True):
            async with asyncio.timeout(self._timeout):
                if self._pg is not None and limit > BATCH_ROWS:
                    # A large read on PostgreSQL: on the asyncpg pool, in batches (see pgreader), not as
                    # SQLAlchemy's driver adapter reads, every row at once.
                    columns, raw = await self._pg.select(sql if statement is None else statement, limit)
                else:
                    async with connected(self._engine) as conn:
                        if statement is not None:
                            result = await conn.execute(statement)
                        else:
                            await conn.execution_options(no_parameters=True)
                            result = await conn.exec_driver_sql(sql)
                        columns = list(result.keys())
                        raw = await fetched(result, limit, len(columns))
        source_ms = (time.perf_counter() - started) * 1000
        names = _unique(columns)
        rows = await in_slices(raw, len(names), lambda part: json_rows(part, names, frozenset()))
        return Page(columns=names, rows=rows, after=None, source_ms=source_ms)

    async def _bound(self, sql: str, binds: Mapping[str, tuple[str, str, Any]]) -> TextClause:
        """`sql` as a text() statement whose markers are bound parameters. Every other colon is escaped, so
        nothing the agent wrote (a ':x' in a string literal) is taken for a parameter."""
        escaped = sql.replace(":", "\\:")
        # One pass over the markers as quoted identifiers (SQL mode quotes every one): marker _1 must not eat into
        # marker _10.
        pattern = re.compile(r"[\"`](" + "|".join(map(re.escape, binds)) + r")[\"`]")
        escaped = pattern.sub(lambda m: ":" + m.group(1), escaped)
        params = []
        for marker, (table, column, value) in binds.items():
            col = column_of(await self._table(table), column)
            coerced = coerce(col, value)
            kind = BigInteger() if isinstance(coerced, int) and not isinstance(coerced, bool) else col.type
            params.append(bindparam(marker, coerced, type_=kind))
        return text(escaped).bindparams(*params)

    async def close(self) -> None:
        await self._engine.dispose()

    async def _table(self, table: str) -> Table:
        hit = self._tables.get(table)
        if hit is not None:
            return hit
        async with self._lock:
            hit = self._tables.get(table)
            if hit is not None:
                return hit
            schema, _, name = table.rpartition(".")
            try:
                async with asyncio.timeout(self._timeout):
                    async with self._engine.connect() as conn:
                        reflected = await conn.run_sync(
                            lambda sync: Table(name, MetaData(), schema=schema or None, autoload_with=sync))
            except NoSuchTableError:
                raise MissingTable(f"source {self.name!r} has no table {table!r}") from None
            except TimeoutError:
                raise SourceTimedOut(f"source {self.name!r} did not answer within {self._timeout:g}s") from None
            except (SQLAlchemyError, OSError) as exc:
                raise SourceUnavailable(f"source {self.name!r} cannot be reached: {short(exc)}") from exc
            if not reflected.columns:
                raise MissingTable(f"source {self.name!r} has no table {table!r}")
            self._tables[table] = reflected
            return reflected

    async def _statement(self, t: Table, q: TableQuery) -> tuple[Shape, dict[str, Any]]:
        """(the statement for `q`'s shape, its parameter values). Every value is checked and bound on every call;
        the statement itself is built (and compiled) once per query shape — what is asked, without the values,
        whatever the number of values in a list or the limit — and reused: building one costs more than the rest
        of the read's own Python work. A large statement is built in a worker thread, never on the event loop."""
        if bound_values(q.where) > MAX_BOUND_VALUES:
            raise InvalidQuery(f"a query binds at most {MAX_BOUND_VALUES} values in all")
        dry = Binds(self.dialect, build=False)
        build(t, q, dry)
        shape = (q.table, tuple(q.columns), tuple((f.column, f.op) for f in q.where), tuple(q.order_by),
                 None if q.scope is None else tuple(tuple((f.column, f.op) for f in g) for g in q.scope),
                 tuple(dry.kinds))
        hit = self._shapes.get(shape)
        if hit is None:
            terms = len(q.columns) + len(q.where) + len(q.order_by) + sum(len(g) for g in q.scope or ())
            if terms > BUILD_ON_LOOP:
                hit = await asyncio.to_thread(self._make, t, q, shape, sorted(dry.values))
            else:
                hit = self._make(t, q, shape, sorted(dry.values))
        return hit, dry.values

    def _make(self, t: Table, q: TableQuery, shape: Any, names: list[str]) -> Shape:
        """Build and compile the statement of a shape (its parameters named `names`), and keep it."""
        stmt, keys = build(t, q, Binds(self.dialect, build=True))
        if self._pg is not None:
            compiled = self._pg.compile(stmt)
            made = Shape(stmt, keys, compiled, (STATEMENT_PER_CHAR + COMPILED_PER_CHAR) * len(compiled.string))
        else:
            size = precompile(stmt, self._engine.dialect, self._compiled, names)
            made = Shape(stmt, keys, None, STATEMENT_PER_CHAR * size)
        self._shapes[shape] = made
        return made


def _next_position(query: TableQuery, keys: Keys | None, raw: list[Any]) -> dict[str, Any]:
    """Where the next page starts: the last row's keys (each tagged with its type), or an offset for a table with
    no unique key."""
    if keys is None:
        offset = int(query.after["o"]) if isinstance(query.after, dict) and "o" in query.after else 0
        return {"o": offset + len(raw)}
    return {"k": [tag(v) for v in raw[-1][len(query.columns):]]}


def _unique(columns: Sequence[str]) -> list[str]:
    """One key per column, even where a join repeats a name."""
    names: list[str] = []
    for name in columns:
        unique, n = name, 1
        while unique in names:
            n += 1
            unique = f"{name}_{n}"
        names.append(unique)
    return names
