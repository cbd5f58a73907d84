"""SQL sources through SQLAlchemy's async engines (PostgreSQL, MariaDB/MySQL, SQLite).

Tables are reflected once and every identifier is checked against the
reflection; values are bound, never spliced; sessions are read-only and carry
a server-side statement timeout as well as the client-side one; pages are
keyset-paginated on the order keys plus the primary key, so a position stays
valid on any replica and under concurrent inserts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import fcntl
import math
import operator
import re
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Column,
    MetaData,
    Numeric,
    String,
    Table,
    all_,
    and_,
    any_,
    bindparam,
    case,
    cast,
    false,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, NoSuchTableError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql import compiler
from sqlalchemy.sql.elements import ColumnElement, TextClause
from sqlalchemy.types import NullType, TypeEngine

from connectors.base import (
    LIST_OPERATORS,
    MAX_BOUND_VALUES,
    MAX_LIST_VALUES,
    ColumnInfo,
    Filter,
    InvalidQuery,
    JSONValue,
    MissingTable,
    Page,
    SourceRefused,
    SourceTimedOut,
    SourceUnavailable,
    TableQuery,
    bound_values,
)
from connectors.cache import SizedCache
from connectors.slices import CELLS_ON_LOOP, in_slices

# Errors by which a server says "your statement ran out of time".
_TIMEOUT_MARKERS = ("statement timeout", "canceling statement", "max_statement_time", "interrupted")


def make_engine(url: str, *, timeout_seconds: float, pool_size: int = 10, read_only: bool = True) -> AsyncEngine:
    """An async engine whose sessions are read-only and time-limited on the server too."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    connect_args: dict[str, Any] = {}
    kwargs: dict[str, Any] = {}
    if backend == "postgresql":
        settings = {"statement_timeout": str(int(timeout_seconds * 1000))}
        if read_only:
            settings["default_transaction_read_only"] = "on"
        connect_args["server_settings"] = settings
        connect_args["timeout"] = min(timeout_seconds, 10.0)
        connect_args["command_timeout"] = timeout_seconds
        # Autocommit: one statement, one round trip; no BEGIN/ROLLBACK around every read. No overflow:
        # a connection opened for a burst is closed again on return, and opening one costs more than a read.
        # This pool is the source's only one: the reader (_PgReader) borrows its connections as asyncpg's own,
        # so `pool_size` bounds what every interface holds together. JSON comes back as its text, as asyncpg
        # gives it (SQLAlchemy's codec would make it a dict, then written out as Python's repr).
        kwargs.update(pool_size=pool_size, max_overflow=0, pool_timeout=timeout_seconds,
                      isolation_level="AUTOCOMMIT", json_deserializer=_json_text)
    elif backend in ("mysql", "mariadb"):
        init = f"SET SESSION max_statement_time={timeout_seconds:g}"
        if read_only:
            init += ", SESSION tx_read_only=1"
        connect_args["init_command"] = init
        connect_args["connect_timeout"] = max(1, int(min(timeout_seconds, 10.0)))
        kwargs.update(pool_size=pool_size, max_overflow=0, pool_timeout=timeout_seconds, pool_recycle=3600,
                      isolation_level="AUTOCOMMIT")
    elif backend == "sqlite" and read_only:
        # Opened through a URI in read-only mode: the source file is never written by the gateway.
        parsed = parsed.set(database=f"file:{parsed.database}?mode=ro", query={"uri": "true"})
    return create_async_engine(parsed, **kwargs, connect_args=connect_args)


def seed_sqlite(url: str, seed: Path) -> bool:
    """Create a SQLite source from a seed script on first run; True when it did.

    Replicas (and a supervisor and its workers) started at once on a fresh folder all get here: one seeds, under
    an exclusive lock on a file beside the database, and the others wait for it and then find the database made.
    Without the lock two of them wrote the same temporary file (`table ... already exists`) or one renamed it
    from under the other (`attempt to write a readonly database`)."""
    database = make_url(url).database
    assert database
    target = Path(database)
    if target.exists():  # made only by the rename below: whole, never half-seeded
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.with_name(target.name + ".seed-lock")
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        seeded = not target.exists()  # else another process seeded it while this one waited
        if seeded:
            tmp = target.with_name(target.name + ".seeding")
            tmp.unlink(missing_ok=True)  # left by a seed that crashed
            conn = sqlite3.connect(tmp)
            try:
                conn.executescript(seed.read_text(encoding="utf-8"))
                conn.commit()
            finally:
                conn.close()
            tmp.replace(target)  # atomic: a crash mid-seed never leaves a half-made source
        # Safe to remove once the database exists: whoever still waits on this file, or makes a new one, looks
        # for the database first once it holds the lock, and finds it. (A failed seed leaves it: harmless.)
        lock_path.unlink(missing_ok=True)
    return seeded


def _json_text(value: str) -> str:
    return value


class _PgReader:
    """Runs SQLAlchemy-built SELECTs on asyncpg connections, each compiled once per query shape (the connector keeps
    the compiled form with the shape's statement), executed as a prepared statement.

    The connections are the engine's, borrowed from its pool as the asyncpg connections they are: one pool per
    source (its sessions read-only and time-limited, see make_engine), whatever reads from it. A pool of its own
    here, beside the engine's that SQL mode and reflection use, let a source hold twice `pool_size` connections."""

    def __init__(self, engine: AsyncEngine):
        self._engine = engine
        self._dialect = engine.dialect

    @contextlib.asynccontextmanager
    async def _borrowed(self) -> AsyncIterator[Any]:
        """An asyncpg connection of the engine's pool for one read, returned after it. Returning it costs no round
        trip (nothing to reset: the read ran in autocommit, or in a transaction of its own that has ended). A
        read that failed other than by the server's refusal may leave the connection mid-protocol: it is
        terminated, never handed to the next read, and the pool opens another when one is wanted."""
        # No timeout of the pool's own to keep apart: the caller's bounds the wait for a connection and the read
        # together (the pool's, pool_timeout, is the same length).
        borrowed = await self._engine.raw_connection()
        try:
            yield borrowed.driver_connection
        except asyncpg.PostgresError:
            raise  # the server's own refusal: the connection is as it was
        except BaseException:
            # Outside SQLAlchemy's greenlet, invalidating terminates the connection at once (no graceful close
            # to wait on while cancelled).
            with contextlib.suppress(Exception):
                borrowed.invalidate()
            raise
        finally:
            borrowed.close()

    def compile(self, stmt: Any) -> Any:
        return stmt.compile(dialect=self._dialect)

    async def fetch(self, compiled: Any, values: dict[str, Any], rows: int) -> list[Any]:
        """Run `compiled` (one per query shape) with `values` for its named parameters, reading at most `rows`
        rows (its LIMIT)."""
        params = compiled.construct_params(params=values)
        processors = compiled._bind_processors
        args = [processors[n](params[n]) if n in processors else params[n] for n in compiled.positiontup]
        async with self._borrowed() as conn:
            if rows <= _BATCH_ROWS:
                return list(await conn.fetch(compiled.string, *args))
            return (await _batched(conn, compiled.string, args, rows))[1]

    async def select(self, statement: TextClause | str, limit: int) -> tuple[list[str], list[Any]]:
        """A large SQL-mode read (already built and validated, its LIMIT written in it): its column names and at
        most `limit` rows, read in batches as a large page is, on one of the engine's connections."""
        if isinstance(statement, str):
            sql, args = statement, []
        else:  # row-filter values, bound as their columns' types
            compiled: Any = statement.compile(dialect=self._dialect)
            params = compiled.construct_params()
            processors = compiled._bind_processors
            sql = compiled.string
            args = [processors[n](params[n]) if n in processors else params[n] for n in compiled.positiontup]
        async with self._borrowed() as conn:
            return await _batched(conn, sql, args, limit)


# A page that may hold more rows than this is read in batches of this many (PostgreSQL).
_BATCH_ROWS = 2_000


async def _batched(conn: Any, sql: str, args: list[Any], limit: int) -> tuple[list[str], list[Any]]:
    """The column names and (at most `limit`) rows of a large read, fetched a batch at a time through a cursor and
    kept as tuples. asyncpg's records are tracked by the garbage collector, and 100,000 of them alive at once
    make each full collection (a large read causes several) walk them all, 50-300 ms with the GIL held, during
    which no request is served; tuples of plain values drop out of the collector's sight at its next pass."""
    out: list[Any] = []
    async with conn.transaction():  # a cursor lives in a transaction (read-only, as the session is)
        prepared = await conn.prepare(sql)
        columns = [attribute.name for attribute in prepared.get_attributes()]
        cursor = await prepared.cursor(*args)
        while len(out) < limit and (batch := await cursor.fetch(min(_BATCH_ROWS, limit - len(out)))):
            out.extend(tuple(r) for r in batch)
    return columns, out


class SqlConnector:
    def __init__(self, name: str, engine: AsyncEngine, *, timeout_seconds: float):
        self.name = name
        self._engine = engine
        self._timeout = timeout_seconds
        self._tables: dict[str, Table] = {}
        self._columns: dict[str, list[ColumnInfo]] = {}
        # Statements by query shape, and the columns asked that are MariaDB TINYINT(1) (booleans), bounded by
        # their estimated size as well as their number: no body makes them grow past their budget.
        self._shapes: SizedCache[Any, _Shape] = SizedCache(_SHAPES_LIMIT, _SHAPES_BYTES, lambda _, v: v.size)
        self._bools: SizedCache[tuple[str, tuple[str, ...]], frozenset[int]] = SizedCache(
            _SHAPES_LIMIT, _BOOLS_BYTES, lambda k, _: 100 + 80 * len(k[1]))
        # SQLAlchemy's own cache of compiled statements (used on every dialect but for PostgreSQL reads; SQL
        # mode's statements too), likewise bounded by size rather than its default of 500 entries of any size.
        self._compiled: SizedCache[Any, Any] = SizedCache(
            _SHAPES_LIMIT, _COMPILED_BYTES, lambda _, v: _COMPILED_PER_CHAR * len(getattr(v, "string", "") or ""))
        engine.sync_engine.update_execution_options(compiled_cache=self._compiled)
        # PostgreSQL reads skip SQLAlchemy's execution layer (a third of the gateway's CPU per read):
        # statements are still built and compiled by SQLAlchemy, then run on the engine's asyncpg connections.
        self._pg = _PgReader(engine) if engine.dialect.name == "postgresql" else None
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
            hit = self._columns[table] = [ColumnInfo(str(c.name), _type_name(c), bool(c.nullable), bool(c.primary_key))
                                          for c in t.columns]
        return hit

    async def fetch(self, query: TableQuery) -> Page:
        t = await self._table(query.table)
        prepared, values = await self._statement(t, query)
        keys = prepared.keys
        started = time.perf_counter()
        with self._reading(agent_sql=False):
            async with asyncio.timeout(self._timeout):
                if self._pg is not None:
                    raw = await self._pg.fetch(prepared.compiled, values, query.limit + 1)
                else:
                    async with _connected(self._engine) as conn:
                        result = await conn.execute(prepared.stmt, values)
                        raw = await _fetched(result, query.limit + 1, len(query.columns))
        source_ms = (time.perf_counter() - started) * 1000
        more = len(raw) > query.limit
        raw = raw[: query.limit]
        n = len(query.columns)
        bools = self._bools.get((query.table, tuple(query.columns)))
        if bools is None:
            bools = self._bools[(query.table, tuple(query.columns))] = frozenset(
                i for i, name in enumerate(query.columns) if _is_bool(t.columns[name]))
        rows = await in_slices(raw, n, lambda part: _rows(part, query.columns, bools))
        after: Any = None
        if more and raw:
            last = raw[-1]
            if keys is None:
                offset = int(query.after["o"]) if isinstance(query.after, dict) and "o" in query.after else 0
                after = {"o": offset + len(raw)}
            else:
                after = {"k": [_tag(v) for v in last[n:]]}
        return Page(columns=list(query.columns), rows=rows, after=after, source_ms=source_ms)

    async def check_filter(self, table: str, f: Filter) -> None:
        """InvalidQuery when `f` cannot apply to `table` (an unknown column, a value of the wrong type):
        lets the catalog's literal filters fail when the policy loads rather than on a read."""
        t = await self._table(table)
        _condition(_column(t, f.column), f, _Binds(self.dialect, build=False), "c")

    async def run_select(self, sql: str, limit: int, binds: Mapping[str, tuple[str, str, Any]] | None = None) -> Page:
        """Run an already-built, already-validated SELECT (SQL mode) within the statement timeout, reading at
        most `limit` rows. Without binds it is sent to the driver as it is (no parameters, so nothing in it is
        taken for a placeholder). `binds` maps markers in `sql` (bare identifiers no agent can guess) to the
        (table, column, value) they stand for: each becomes a parameter bound as that column's type."""
        statement = await self._bound(sql, binds) if binds else None
        started = time.perf_counter()
        with self._reading(agent_sql=True):
            async with asyncio.timeout(self._timeout):
                if self._pg is not None and limit > _BATCH_ROWS:
                    # A large read on PostgreSQL: on the asyncpg pool, in batches (see _batched), not as
                    # SQLAlchemy's driver adapter reads, every row at once.
                    columns, raw = await self._pg.select(sql if statement is None else statement, limit)
                else:
                    async with _connected(self._engine) as conn:
                        if statement is not None:
                            result = await conn.execute(statement)
                        else:
                            await conn.execution_options(no_parameters=True)
                            result = await conn.exec_driver_sql(sql)
                        columns = list(result.keys())
                        raw = await _fetched(result, limit, len(columns))
        source_ms = (time.perf_counter() - started) * 1000
        names: list[str] = []
        for name in columns:  # one key per column, even where a join repeats a name
            unique, n = name, 1
            while unique in names:
                n += 1
                unique = f"{name}_{n}"
            names.append(unique)
        rows = await in_slices(raw, len(names), lambda part: _rows(part, names, frozenset()))
        return Page(columns=names, rows=rows, after=None, source_ms=source_ms)

    @contextlib.contextmanager
    def _reading(self, *, agent_sql: bool) -> Iterator[None]:
        """What the driver raises while a read runs, as the connector's errors: out of time (ours or the
        server's) SourceTimedOut; a value the driver cannot send InvalidQuery; the server refusing an agent's own
        SQL (SQL mode), or the driver unable to convert a value of its answer, SourceRefused; anything else
        SourceUnavailable. Nothing a driver raises leaves as an unexpected exception (a 500)."""
        late = f"source {self.name!r} did not answer within {self._timeout:g}s"
        try:
            yield
        except TimeoutError:
            raise SourceTimedOut(late) from None
        except asyncpg.QueryCanceledError as exc:
            raise SourceTimedOut(late) from exc
        except asyncpg.PostgresError as exc:
            if agent_sql:  # the server refusing an agent's statement read on the asyncpg pool (a large read)
                said = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
                raise SourceRefused(f"source {self.name!r} refused the statement: {said}") from exc
            if isinstance(exc, asyncpg.DataError):  # the server's class 22 (data exception): the value's fault
                raise InvalidQuery("the request holds a value the source cannot take") from None
            raise SourceUnavailable(f"source {self.name!r} failed: {type(exc).__name__}") from exc
        except (UnicodeEncodeError, asyncpg.DataError):
            # Text or a value the driver cannot send (checked before, in _coerce and SQL mode: a last line).
            raise InvalidQuery("the request holds a value the source cannot take") from None
        except (ValueError, OverflowError) as exc:
            # A value the driver cannot convert, mostly of the answer (a date past year 9999, an interval past
            # timedelta's range): an agent's own SQL asked for it; a table read met it in the data.
            said = f"source {self.name!r}: the driver cannot convert a value: {type(exc).__name__}: {exc}"[:300]
            if agent_sql:
                raise SourceRefused(said) from exc
            raise SourceUnavailable(said) from exc
        except DBAPIError as exc:
            if any(marker in str(exc.orig).lower() for marker in _TIMEOUT_MARKERS):
                raise SourceTimedOut(late) from exc
            if agent_sql and not exc.connection_invalidated:
                raise SourceRefused(f"source {self.name!r} refused the statement: {_short(exc)}") from exc
            raise SourceUnavailable(f"source {self.name!r} failed: {type(exc.orig).__name__}") from exc
        except (SQLAlchemyError, OSError, asyncpg.InterfaceError) as exc:
            raise SourceUnavailable(f"source {self.name!r} failed: {type(exc).__name__}") from exc

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
            col = _column(await self._table(table), column)
            coerced = _coerce(col, value)
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
                raise SourceUnavailable(f"source {self.name!r} cannot be reached: {_short(exc)}") from exc
            if not reflected.columns:
                raise MissingTable(f"source {self.name!r} has no table {table!r}")
            self._tables[table] = reflected
            return reflected

    async def _statement(self, t: Table, q: TableQuery) -> tuple[_Shape, dict[str, Any]]:
        """(the statement for `q`'s shape, its parameter values). Every value is checked and bound on every call;
        the statement itself is built (and compiled) once per query shape — what is asked, without the values,
        whatever the number of values in a list or the limit — and reused: building one costs more than the rest
        of the read's own Python work. A large statement is built in a worker thread, never on the event loop."""
        if bound_values(q.where) > MAX_BOUND_VALUES:
            raise InvalidQuery(f"a query binds at most {MAX_BOUND_VALUES} values in all")
        dry = _Binds(self.dialect, build=False)
        self._build(t, q, dry)
        shape = (q.table, tuple(q.columns), tuple((f.column, f.op) for f in q.where), tuple(q.order_by),
                 None if q.scope is None else tuple(tuple((f.column, f.op) for f in g) for g in q.scope),
                 tuple(dry.kinds))
        hit = self._shapes.get(shape)
        if hit is None:
            terms = len(q.columns) + len(q.where) + len(q.order_by) + sum(len(g) for g in q.scope or ())
            if terms > _BUILD_ON_LOOP:
                hit = await asyncio.to_thread(self._make, t, q, shape, sorted(dry.values))
            else:
                hit = self._make(t, q, shape, sorted(dry.values))
        return hit, dry.values

    def _make(self, t: Table, q: TableQuery, shape: Any, names: list[str]) -> _Shape:
        """Build and compile the statement of a shape (its parameters named `names`), and keep it."""
        stmt, keys = self._build(t, q, _Binds(self.dialect, build=True))
        if self._pg is not None:
            compiled = self._pg.compile(stmt)
            made = _Shape(stmt, keys, compiled, (_STATEMENT_PER_CHAR + _COMPILED_PER_CHAR) * len(compiled.string))
        else:
            made = _Shape(stmt, keys, None, _STATEMENT_PER_CHAR * self._precompile(stmt, names))
        self._shapes[shape] = made
        return made

    def _precompile(self, stmt: Any, names: list[str]) -> int:
        """Compile `stmt` into SQLAlchemy's cache of compiled forms under the key executing it with parameters
        `names` looks up, so that running it does not compile it on the event loop; the length of its SQL. This
        uses SQLAlchemy's own (internal) entry point: should another release change it, the statement is
        compiled when it runs instead, as before, and its size estimated from its parts."""
        dialect = self._engine.dialect
        try:
            compiled = stmt._compile_w_cache(
                dialect=dialect, compiled_cache=self._compiled, column_keys=names, for_executemany=False,
                schema_translate_map=None, linting=dialect.compiler_linting | compiler.WARN_LINTING)[0]
            return len(compiled.string)
        except (AttributeError, TypeError):
            return 40 * (len(stmt.selected_columns) + len(names) + 8)

    def _build(self, t: Table, q: TableQuery, b: _Binds) -> tuple[Any, list[tuple[Column[Any], bool]] | None]:
        """The statement for `q`, its values bound through `b`; with a dry `b` only the values are taken."""
        cols = [_column(t, name) for name in q.columns]
        conditions = [_condition(_column(t, f.column), f, b, f"w{i}") for i, f in enumerate(q.where)]
        if q.scope is not None:
            conditions.append(self._scope(t, q.scope, b))
        order: list[tuple[Column[Any], bool]] = [(_column(t, k.column), k.descending) for k in q.order_by]
        pk = list(t.primary_key.columns)
        keys: list[tuple[Column[Any], bool]] | None = list(order)
        if pk:
            named = {c.name for c, _ in order}
            keys = order + [(c, False) for c in pk if c.name not in named]
        else:
            keys = None  # no unique key to page on: fall back to an offset position
        # The limit is a parameter too (one row more than asked, to know whether another page follows): any
        # limit is the same shape.
        limit = b.limit(q.limit + 1)
        offset: Any = None
        if q.after is not None:
            if keys is None:
                position = q.after.get("o") if isinstance(q.after, dict) else None
                if not isinstance(position, int) or isinstance(position, bool) or position < 0:
                    raise InvalidQuery("the cursor does not fit this query")
                offset = b.offset(position)
            else:
                values = q.after.get("k") if isinstance(q.after, dict) else None
                if not isinstance(values, list) or len(values) != len(keys):
                    raise InvalidQuery("the cursor does not fit this query")
                conditions.append(_after(keys, [_untag(v) for v in values], b))
        else:
            b.kinds.append(("after", "none"))
        if not b.build:
            return None, keys
        order_sql: list[Any] = []
        for col, desc in (keys if keys is not None else order):
            # One NULL order on every dialect: NULLs after values ascending, before them descending.
            if col.nullable:
                flag = case((col.is_(None), 1), else_=0)
                order_sql.append(flag.desc() if desc else flag.asc())
            order_sql.append(col.desc() if desc else col.asc())
        stmt = select(*cols, *[c.label(f"__k{i}") for i, (c, _) in enumerate(keys or [])])
        if conditions:
            stmt = stmt.where(and_(*conditions))
        if offset is not None:
            stmt = stmt.offset(offset)
        if order_sql:
            stmt = stmt.order_by(*order_sql)
        return stmt.limit(limit), keys

    def _scope(self, t: Table, scope: Sequence[Sequence[Filter]], b: _Binds) -> Any:
        """Row filters: any of the groups, each an AND of conditions (an empty group is every row)."""
        groups = [[_condition(_column(t, f.column), f, b, f"s{g}_{i}") for i, f in enumerate(group)]
                  for g, group in enumerate(scope)]
        if not b.build:
            return None
        return or_(*[and_(*terms) if terms else true() for terms in groups]) if groups else false()


# The caches of statements (by count, and by estimated bytes). Estimates, measured with tracemalloc: a statement
# object holds about 15-40 bytes per character of its SQL, SQLAlchemy's compiled form about 40-95 (bench/abuse.py
# shapes measures the gateway's memory over 1,000 large shapes).
_SHAPES_LIMIT = 500
_SHAPES_BYTES = 16 * 1024 * 1024
_COMPILED_BYTES = 32 * 1024 * 1024
_BOOLS_BYTES = 1024 * 1024
_STATEMENT_PER_CHAR = 40
_COMPILED_PER_CHAR = 100
# A shape with more parts than this (columns, terms, order keys, row-filter terms) is built in a worker thread:
# building and compiling one of 500 columns and 100 terms takes about 40 ms, which would hold the event loop.
_BUILD_ON_LOOP = 48


@dataclass(frozen=True, slots=True)
class _Shape:
    """A query shape's statement: built once, compiled once (on PostgreSQL: kept here; elsewhere SQLAlchemy keeps
    it), with the keys its pages are positioned on and its estimated size."""

    stmt: Any
    keys: list[tuple[Column[Any], bool]] | None
    compiled: Any
    size: int


class _Binds:
    """A statement's bound parameters: each value under a name that says where it stands (w0 the first
    `where` term, its whole list for `in`; s0_1 a row filter's, a1 a cursor key's, o the offset, l the limit),
    so a statement built once per shape takes any request's values. With build False, only the values (and
    the kinds of binding they need, part of the shape) are taken."""

    def __init__(self, dialect: str, *, build: bool):
        self.dialect = dialect
        self.build = build
        self.values: dict[str, Any] = {}
        self.kinds: list[tuple[str, str]] = []

    def bind(self, name: str, col: Column[Any], value: Any) -> Any:
        """`value` as a bound parameter to compare `col` with (never a SQL constant such as TRUE)."""
        self.values[name] = value
        if isinstance(value, int) and not isinstance(value, bool):
            # As BIGINT: PostgreSQL would bind it as the column's type and fail on an int4 column past 2**31.
            self.kinds.append((name, "int"))
            return bindparam(name, type_=BigInteger()) if self.build else None
        if isinstance(value, Decimal) and self.dialect == "postgresql":
            # PostgreSQL would take the parameter as the column's numeric(p, s): 10.011 rounded to 10.01, or
            # overflowing.
            self.kinds.append((name, "dec"))
            return cast(bindparam(name, type_=Numeric()), Numeric()) if self.build else None
        self.kinds.append((name, "col"))
        return bindparam(name, type_=col.type) if self.build else None

    def bind_list(self, name: str, col: Column[Any], values: list[Any]) -> Any:
        """`values` (already coerced for `col`) as one parameter, whatever their number: on PostgreSQL an array,
        compared with `= ANY` / `<> ALL`; elsewhere an expanding parameter (SQLAlchemy writes one placeholder per
        value when the statement runs, from the one compiled form). Either way 1 or 1,000 values are one shape."""
        self.values[name] = values
        item: TypeEngine[Any]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            kind, item = "ints", BigInteger()  # as BIGINT, as single values are
        elif self.dialect == "postgresql" and all(isinstance(v, Decimal) for v in values):
            kind, item = "decs", Numeric()  # unconstrained: numeric(p, s) would round them
        else:
            kind, item = "cols", col.type
        self.kinds.append((name, kind))
        if not self.build:
            return None
        if self.dialect != "postgresql":
            return bindparam(name, type_=item, expanding=True)
        return bindparam(name, type_=_array_of(item))

    def limit(self, rows: int) -> Any:
        self.values["l"] = rows
        return bindparam("l", type_=BigInteger()) if self.build else None

    def offset(self, position: int) -> Any:
        self.values["o"] = position
        self.kinds.append(("o", "offset"))
        return bindparam("o", type_=BigInteger()) if self.build else None


def _array_of(item: TypeEngine[Any]) -> TypeEngine[Any]:
    """The PostgreSQL array type to bind a list of `item` values as. A text type loses its length, as single
    values do (a cast to varchar(2)[] would cut 'DEX' to 'DE' and match it); a type that makes no array (an
    array's, an unknown one) binds untyped, and PostgreSQL infers it from the column."""
    if isinstance(item, NullType):
        return NullType()
    if item._type_affinity is String and getattr(item, "length", None):  # SQLAlchemy's own rule for single values
        item = String()
    try:
        return ARRAY(item)
    except (ValueError, TypeError, NotImplementedError):
        return NullType()


def _column(t: Table, name: str) -> Column[Any]:
    col = t.columns.get(name)
    if col is None:
        raise InvalidQuery(f"unknown column {name!r}")
    return col


def _after(keys: list[tuple[Column[Any], bool]], values: list[Any], b: _Binds) -> Any:
    """Rows strictly after the position `values` in the order of `keys` (NULLs as ordered above)."""
    disjuncts: list[ColumnElement[bool]] = []
    equal: list[ColumnElement[bool]] = []
    for i, ((col, desc), value) in enumerate(zip(keys, values, strict=True)):
        if value is None:
            b.kinds.append((f"a{i}", "null"))
            if not b.build:
                continue
            beyond: ColumnElement[bool] | None = col.is_not(None) if desc else None
            same: ColumnElement[bool] = col.is_(None)
        else:
            param = b.bind(f"a{i}", col, value)
            if not b.build:
                continue
            if desc:
                beyond = col < param
            else:
                after = col > param
                beyond = or_(after, col.is_(None)) if col.nullable else after
            same = col == param
        if beyond is not None:
            disjuncts.append(and_(*equal, beyond) if equal else beyond)
        equal.append(same)
    if not b.build:
        return None
    return or_(*disjuncts) if disjuncts else false()


def _condition(col: Column[Any], f: Filter, b: _Binds, name: str) -> Any:
    """One `where` term as a condition on `col`, its values checked, coerced and bound under `name`."""
    op = f.op
    if op == "is null":
        return col.is_(None) if b.build else None
    if op == "is not null":
        return col.is_not(None) if b.build else None
    if op in LIST_OPERATORS:
        if not isinstance(f.value, list) or not 1 <= len(f.value) <= MAX_LIST_VALUES:
            raise InvalidQuery(f"{op!r} on {col.name!r} takes a list of 1 to {MAX_LIST_VALUES} values")
        if any(v is None for v in f.value):
            # `x NOT IN (.., NULL)` matches no row at all: ask with 'is null' / 'is not null' instead.
            raise InvalidQuery(f"{op!r} on {col.name!r} takes no null; use 'is null' or 'is not null'")
        param = b.bind_list(name, col, [_coerce(col, v) for v in f.value])
        if not b.build:
            return None
        if b.dialect == "postgresql":
            return col == any_(param) if op == "in" else col != all_(param)
        return col.in_(param) if op == "in" else col.not_in(param)
    if op == "like":
        if not isinstance(f.value, str) or not _sendable(f.value):
            raise InvalidQuery(f"'like' on {col.name!r} takes a string pattern")
        if _python_type(col) is not str:
            raise InvalidQuery(f"'like' applies to text columns, not to {col.name!r} ({_type_name(col)})")
        if (len(f.value) - len(f.value.rstrip("\\"))) % 2:
            raise InvalidQuery("a 'like' pattern cannot end with a lone escape character '\\'")
        # One escape character on every dialect (SQLite has none unless told).
        pattern = b.bind(name, col, f.value)
        return col.like(pattern, escape="\\") if b.build else None
    if op not in _COMPARISONS:
        raise InvalidQuery(f"unknown operator {op!r}")
    value = _coerce(col, f.value)
    if value is None:
        raise InvalidQuery(f"compare {col.name!r} with null using 'is null' or 'is not null'")
    param = b.bind(name, col, value)
    return _COMPARISONS[op](col, param) if b.build else None


_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def _is_bool(col: Column[Any]) -> bool:
    # MariaDB/MySQL have no BOOLEAN: it is TINYINT(1), which reflects as an integer.
    return type(col.type).__name__ == "TINYINT" and getattr(col.type, "display_width", None) == 1


def _python_type(col: Column[Any]) -> type | None:
    if _is_bool(col):
        return bool
    try:
        return col.type.python_type
    except NotImplementedError:
        return None


class _BadValue(InvalidQuery):
    """A value that does not fit its column. The message is made when it is read: making it compiles the column's
    type (~0.4 ms), which would otherwise be paid for every good value of a list, 1,000 times over."""

    def __init__(self, col: Column[Any], value: Any):
        super().__init__()
        self.col, self.value = col, value

    def __str__(self) -> str:
        return f"{self.value!r} is not a valid value for {self.col.name!r} ({_type_name(self.col)})"


def _coerce(col: Column[Any], value: Any) -> Any:
    """A JSON value -> the Python value the driver binds for this column, or InvalidQuery."""
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise InvalidQuery(f"a value for {col.name!r} must be a string, number or boolean")
    kind = _python_type(col)
    bad = _BadValue(col, value)
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise bad
            return value
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
                raise bad
            return value
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad
            return float(value)
        if kind is Decimal:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise bad
            number = Decimal(str(value))
            if not number.is_finite():
                raise bad
            return number
        if kind is str:
            if not isinstance(value, str) or not _sendable(value):
                raise bad
            return value
        if kind is dt.datetime:
            if not isinstance(value, str):
                raise bad
            moment = dt.datetime.fromisoformat(value)
            if getattr(col.type, "timezone", False):
                return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
            return moment.astimezone(dt.UTC).replace(tzinfo=None) if moment.tzinfo else moment
        if kind is dt.date:
            if not isinstance(value, str):
                raise bad
            return dt.date.fromisoformat(value)
        if kind is dt.time:
            if not isinstance(value, str):
                raise bad
            return dt.time.fromisoformat(value)
        if kind is uuid.UUID:
            return uuid.UUID(str(value))
    except (ValueError, InvalidOperation, TypeError, OverflowError):
        raise bad from None
    if isinstance(value, bool | int | float) or (isinstance(value, str) and _sendable(value)):
        return value
    raise bad


_PLAIN = frozenset({type(None), bool, int, str})


async def _fetched(result: Any, limit: int, columns: int) -> list[Any]:
    """At most `limit` rows of a SQLAlchemy result whose rows are in memory already (no server-side cursor), a
    slice at a time (see in_slices): SQLAlchemy's work on each row is Python."""
    size = max(1, CELLS_ON_LOOP // max(1, columns))
    raw: list[Any] = []
    while len(raw) < limit:
        if raw:
            await asyncio.sleep(0)
        part = result.fetchmany(min(size, limit - len(raw)))
        if not part:
            break
        raw.extend(part)
    return raw


def _rows(raw: Sequence[Any], columns: Sequence[str], bools: frozenset[int]) -> list[dict[str, JSONValue]]:
    """The source's rows as JSON-ready dicts; `bools` the positions of MariaDB TINYINT(1) columns."""
    if bools:
        return [{name: (bool(v) if i in bools and v is not None else _jsonable(v))
                 for i, (name, v) in enumerate(zip(columns, r, strict=False))} for r in raw]
    # Most values are JSON-ready as they come: no call for those.
    return [{name: v if type(v) in _PLAIN else _jsonable(v) for name, v in zip(columns, r, strict=False)} for r in raw]


def _sendable(text: str) -> bool:
    """Text every dialect's driver can send and column hold: no NUL (no SQL text type holds it everywhere) and no
    lone surrogate (not UTF-8: asyncpg failed mid-protocol on one, leaving its connection unusable)."""
    if text.isascii():
        return "\x00" not in text
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextlib.asynccontextmanager
async def _connected(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A pooled connection for one read, discarded rather than pooled again when the read fails other than by the
    server's own refusal of the statement (a driver error mid-protocol, a value it could not encode, a read
    cancelled by its timeout): its state is unknown, and one agent's bad input must not break the next agent's
    read (asyncpg, handed a lone surrogate, answered every later statement on that connection with "another
    operation is in progress")."""
    async with engine.connect() as conn:
        try:
            yield conn
        except BaseException as exc:
            if not _server_refused(exc):
                with contextlib.suppress(Exception):
                    await conn.invalidate()
            raise


def _server_refused(exc: BaseException) -> bool:
    """Whether `exc` is the server's answer to a statement, after which its connection is as it was."""
    return isinstance(exc, DBAPIError) and not exc.connection_invalidated and not isinstance(exc, InterfaceError)


def _jsonable(value: Any) -> JSONValue:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return str(value)  # a string, to stay exact
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, (tuple, list)):  # a whole-row reference (PostgreSQL's anonymous record): its fields
        return [_jsonable(v) for v in value]
    if isinstance(value, asyncpg.BitString):
        return str(value.as_string())  # B'101' -> "101", not the driver's repr
    return str(value)


# Cursor positions carry typed values, so that a date is bound as a date on the next page.
def _tag(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return {"f": repr(value)}
    if isinstance(value, Decimal):
        return {"d": str(value)}
    if isinstance(value, dt.datetime):
        return {"dt": value.isoformat()}
    if isinstance(value, dt.date):
        return {"da": value.isoformat()}
    if isinstance(value, dt.time):
        return {"t": value.isoformat()}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"b": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, uuid.UUID):
        return {"u": str(value)}
    return {"s": str(value)}


_UNTAG: dict[str, Callable[[str], Any]] = {
    "f": float, "d": Decimal, "dt": dt.datetime.fromisoformat, "da": dt.date.fromisoformat,
    "t": dt.time.fromisoformat, "b": base64.b64decode, "u": uuid.UUID, "s": str,
}


def _untag(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    try:
        (kind, text), = value.items()
        return _UNTAG[kind](text)
    except (ValueError, KeyError, TypeError, InvalidOperation):
        raise InvalidQuery("the cursor does not fit this query") from None


def _type_name(col: Column[Any]) -> str:
    try:
        return str(col.type.compile()).lower()
    except Exception:  # a dialect-only type without a generic rendering
        return type(col.type).__name__.lower()


def _short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return f"{type(orig or exc).__name__}: {str(orig or exc).splitlines()[0][:200]}"
