"""The memory source itself: tables of rows, their columns (inferred or declared), reads filtered, ordered and
paged as the SQL connector pages them."""

from __future__ import annotations

import datetime as dt
import functools
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from connectors.base import (
    MAX_BOUND_VALUES,
    ColumnInfo,
    ConnectorError,
    Filter,
    InvalidQuery,
    MissingTable,
    Page,
    TableQuery,
    TableSource,
    bound_values,
)
from connectors.memory.terms import Column, Match, Row, condition
from connectors.values import CURSOR, jsonable, tag, untag

NO_SQL = "SQL mode needs a SQL source"


@dataclass(frozen=True, slots=True)
class _Table:
    rows: list[dict[str, Any]]
    columns: dict[str, Column]
    primary_key: list[str]


class MemorySource:
    """A TableSource over tables held in memory (see the module's docstring)."""

    def __init__(self, name: str, tables: Mapping[str, list[dict[str, Any]]], *,
                 columns: Mapping[str, Sequence[ColumnInfo]] | None = None, failure: ConnectorError | None = None):
        self.name = name
        # Raised by every call that would reach a real source (prepare, fetch): a source down or timing out.
        self.failure = failure
        self._tables: dict[str, _Table] = {}
        for table, rows in tables.items():
            infos = list(columns[table]) if columns and table in columns else _inferred(rows)
            cols = {c.name: _column(c, rows) for c in infos}
            self._tables[table] = _Table(rows, cols, [c.name for c in infos if c.primary_key])

    @property
    def dialect(self) -> str:
        return "memory"

    async def prepare(self, tables: Sequence[str]) -> None:
        if self.failure is not None:
            raise self.failure
        for table in tables:
            self._table(table)

    async def columns(self, table: str) -> list[ColumnInfo]:
        return [c.info for c in self._table(table).columns.values()]

    async def fetch(self, query: TableQuery) -> Page:
        if self.failure is not None:
            raise self.failure
        started = time.perf_counter()
        t = self._table(query.table)
        if bound_values(query.where) > MAX_BOUND_VALUES:
            raise InvalidQuery(f"a query binds at most {MAX_BOUND_VALUES} values in all")
        cols = [_named(t, name) for name in query.columns]
        match = _matcher(t, query)
        order = [(_named(t, k.column).name, k.descending) for k in query.order_by]
        # Pages are positioned on the order keys plus the primary key; a table without one pages by offset.
        keys = order + [(c, False) for c in t.primary_key if c not in dict(order)] if t.primary_key else None
        by = functools.cmp_to_key(functools.partial(_compare, keys=keys or order))
        rows: list[Row] = sorted((row for row in t.rows if match(row)), key=by)
        rows, offset = _from_position(rows, query.after, keys)
        more, rows = len(rows) > query.limit, rows[: query.limit]
        after: Any = None
        if more and rows:
            after = {"o": offset + len(rows)} if keys is None else {"k": [tag(rows[-1].get(c)) for c, _ in keys]}
        page = [{c.name: jsonable(row.get(c.name)) for c in cols} for row in rows]
        return Page(columns=list(query.columns), rows=page, after=after,
                    source_ms=(time.perf_counter() - started) * 1000)

    async def check_filter(self, table: str, f: Filter) -> None:
        condition(_named(self._table(table), f.column), f)

    async def run_select(self, sql: str, limit: int, binds: Mapping[str, tuple[str, str, Any]] | None = None) -> Page:
        if self.failure is not None:
            raise self.failure
        raise InvalidQuery(NO_SQL)

    async def close(self) -> None:
        return None

    def _table(self, table: str) -> _Table:
        """The table named `table`; MissingTable, as the SQL connector words it, for one the source lacks."""
        found = self._tables.get(table)
        if found is None:
            raise MissingTable(f"source {self.name!r} has no table {table!r}")
        return found


if TYPE_CHECKING:  # mypy checks that a MemorySource is a TableSource, as the core takes it
    _: type[TableSource] = MemorySource


# --- columns -------------------------------------------------------------------------------------------------

_TYPE_NAMES: dict[type, str] = {
    bool: "boolean", int: "integer", float: "float", Decimal: "numeric", str: "text", dt.datetime: "datetime",
    dt.date: "date", dt.time: "time", uuid.UUID: "uuid", bytes: "blob"}
# A declared SQL type's first word -> the Python type its values are.
_KINDS: dict[str, type] = {
    **{w: bool for w in ("boolean", "bool")},
    **{w: int for w in ("integer", "int", "bigint", "smallint", "serial", "bigserial")},
    **{w: float for w in ("float", "real", "double")},
    **{w: Decimal for w in ("numeric", "decimal")},
    **{w: str for w in ("text", "varchar", "char", "character", "string", "clob", "nvarchar")},
    **{w: dt.datetime for w in ("datetime", "timestamp", "timestamptz")},
    "date": dt.date, "time": dt.time, "uuid": uuid.UUID}


def _inferred(rows: Sequence[Row]) -> list[ColumnInfo]:
    """Columns as the rows show them: first appearance, first non-null value's type, NULL or absent: nullable."""
    names: dict[str, None] = dict.fromkeys(name for row in rows for name in row)
    infos = []
    for name in names:
        values = [row.get(name) for row in rows]
        first = next((v for v in values if v is not None), None)
        kind = next((k for k in _TYPE_NAMES if isinstance(first, k)), None)  # bool before int, datetime before date
        key = name == "id" and None not in values and len(set(values)) == len(values)
        infos.append(ColumnInfo(name, _TYPE_NAMES[kind] if kind else "null", None in values, key))
    return infos


def _column(info: ColumnInfo, rows: Sequence[Row]) -> Column:
    declared = info.type.lower()
    word = re.match(r"[a-z]*", declared)
    kind = _KINDS.get(word.group() if word else "")
    if kind is not dt.datetime:
        return Column(info, kind)
    if "time zone" in declared or declared.startswith("timestamptz"):
        return Column(info, kind, "without time zone" not in declared)
    first = next((row[info.name] for row in rows if row.get(info.name) is not None), None)  # inferred: as the data
    return Column(info, kind, isinstance(first, dt.datetime) and first.tzinfo is not None)


def _matcher(t: _Table, query: TableQuery) -> Match:
    """Whether a row is one `query` reads: every `where` term, and any of the scope's groups (row filters), each an
    AND of terms (an empty group is every row; no group, no row). Terms are checked in the SQL connector's order."""
    matches = [condition(_named(t, f.column), f) for f in query.where]
    if query.scope is not None:
        groups = [[condition(_named(t, f.column), f) for f in group] for group in query.scope]
        matches.append(lambda row: any(all(match(row) for match in group) for group in groups))
    return lambda row: all(match(row) for match in matches)


def _named(t: _Table, name: str) -> Column:
    col = t.columns.get(name)
    if col is None:
        raise InvalidQuery(f"unknown column {name!r}")
    return col


# --- order and positions -------------------------------------------------------------------------------------


def _compare(a: Row, b: Row, keys: Sequence[tuple[str, bool]]) -> int:
    """-1, 0 or 1 as row `a` comes before, with or after `b` in the order of `keys`: NULLs after values
    ascending, before them descending, as the SQL connector orders them on every dialect."""
    for name, desc in keys:
        x, y = a.get(name), b.get(name)
        if x is None or y is None:
            c = (x is None) - (y is None)
        else:
            c = (x > y) - (x < y)
        if c:
            return -c if desc else c
    return 0


def _from_position(rows: list[Row], after: Any, keys: Sequence[tuple[str, bool]] | None) -> tuple[list[Row], int]:
    """The sorted `rows` past the position a previous page returned, and the offset they start at."""
    if after is None:
        return rows, 0
    if keys is None:
        position = after.get("o") if isinstance(after, dict) else None
        if not isinstance(position, int) or isinstance(position, bool) or position < 0:
            raise InvalidQuery(CURSOR)
        return rows[position:], position
    values = after.get("k") if isinstance(after, dict) else None
    if not isinstance(values, list) or len(values) != len(keys):
        raise InvalidQuery(CURSOR)
    last = {name: untag(v) for (name, _), v in zip(keys, values, strict=True)}
    try:
        return [row for row in rows if _compare(row, last, keys) > 0], 0
    except TypeError:  # a position whose values are not of its columns' types
        raise InvalidQuery(CURSOR) from None
