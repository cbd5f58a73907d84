"""Building a table read's SELECT: every identifier checked against the reflected table, every value checked,
coerced and bound under a name that says where it stands, so that one statement built per query shape takes any
request's values. Pages are positioned on the order keys plus the primary key (keyset), or on an offset for a
table without one."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Column,
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
    true,
)
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import NullType, TypeEngine

from connectors.base import LIST_OPERATORS, MAX_LIST_VALUES, Filter, InvalidQuery, TableQuery
from connectors.sql.values import coerce, python_type, type_name
from connectors.values import CURSOR, sendable, untag

# The columns a page is positioned on, each with its direction (True: descending).
Keys = list[tuple[Column[Any], bool]]


def build(t: Table, q: TableQuery, b: Binds) -> tuple[Any, Keys | None]:
    """The statement for `q` and the keys its pages are positioned on (None: an offset), its values bound through
    `b`; with a dry `b` only the values are taken. Values are bound in one order (where, scope, limit, position):
    the names and kinds taken are part of the shape."""
    cols = [column_of(t, name) for name in q.columns]
    conditions = [condition(column_of(t, f.column), f, b, f"w{i}") for i, f in enumerate(q.where)]
    if q.scope is not None:
        conditions.append(scope(t, q.scope, b))
    order: Keys = [(column_of(t, k.column), k.descending) for k in q.order_by]
    pk = list(t.primary_key.columns)
    keys: Keys | None = None  # no unique key to page on: fall back to an offset position
    if pk:
        named = {c.name for c, _ in order}
        keys = order + [(c, False) for c in pk if c.name not in named]
    # The limit is a parameter too (one row more than asked, to know whether another page follows): any
    # limit is the same shape.
    limit = b.limit(q.limit + 1)
    offset, beyond = _position(q.after, keys, b)
    if beyond is not None:
        conditions.append(beyond)
    if not b.build:
        return None, keys
    stmt = select(*cols, *[c.label(f"__k{i}") for i, (c, _) in enumerate(keys or [])])
    if conditions:
        stmt = stmt.where(and_(*conditions))
    if offset is not None:
        stmt = stmt.offset(offset)
    order_sql = _order_by(keys if keys is not None else order)
    if order_sql:
        stmt = stmt.order_by(*order_sql)
    return stmt.limit(limit), keys


def _position(after: Any, keys: Keys | None, b: Binds) -> tuple[Any, Any]:
    """(the offset, the condition of rows past the keyset position) where a previous page ended, bound through
    `b`; (None, None) on the first page."""
    if after is None:
        b.kinds.append(("after", "none"))
        return None, None
    if keys is None:
        position = after.get("o") if isinstance(after, dict) else None
        if not isinstance(position, int) or isinstance(position, bool) or position < 0:
            raise InvalidQuery(CURSOR)
        return b.offset(position), None
    values = after.get("k") if isinstance(after, dict) else None
    if not isinstance(values, list) or len(values) != len(keys):
        raise InvalidQuery(CURSOR)
    return None, _after(keys, [untag(v) for v in values], b)


def _order_by(keys: Keys) -> list[Any]:
    order_sql: list[Any] = []
    for col, desc in keys:
        # One NULL order on every dialect: NULLs after values ascending, before them descending.
        if col.nullable:
            flag = case((col.is_(None), 1), else_=0)
            order_sql.append(flag.desc() if desc else flag.asc())
        order_sql.append(col.desc() if desc else col.asc())
    return order_sql


def scope(t: Table, groups: Sequence[Sequence[Filter]], b: Binds) -> Any:
    """Row filters: any of the groups, each an AND of conditions (an empty group is every row)."""
    terms = [[condition(column_of(t, f.column), f, b, f"s{g}_{i}") for i, f in enumerate(group)]
             for g, group in enumerate(groups)]
    if not b.build:
        return None
    return or_(*[and_(*group) if group else true() for group in terms]) if terms else false()


class Binds:
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


def column_of(t: Table, name: str) -> Column[Any]:
    col = t.columns.get(name)
    if col is None:
        raise InvalidQuery(f"unknown column {name!r}")
    return col


def _after(keys: Keys, values: list[Any], b: Binds) -> Any:
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


def condition(col: Column[Any], f: Filter, b: Binds, name: str) -> Any:
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
        param = b.bind_list(name, col, [coerce(col, v) for v in f.value])
        if not b.build:
            return None
        if b.dialect == "postgresql":
            return col == any_(param) if op == "in" else col != all_(param)
        return col.in_(param) if op == "in" else col.not_in(param)
    if op == "like":
        if not isinstance(f.value, str) or not sendable(f.value):
            raise InvalidQuery(f"'like' on {col.name!r} takes a string pattern")
        if python_type(col) is not str:
            raise InvalidQuery(f"'like' applies to text columns, not to {col.name!r} ({type_name(col)})")
        if (len(f.value) - len(f.value.rstrip("\\"))) % 2:
            raise InvalidQuery("a 'like' pattern cannot end with a lone escape character '\\'")
        # One escape character on every dialect (SQLite has none unless told).
        pattern = b.bind(name, col, f.value)
        return col.like(pattern, escape="\\") if b.build else None
    if op not in _COMPARISONS:
        raise InvalidQuery(f"unknown operator {op!r}")
    value = coerce(col, f.value)
    if value is None:
        raise InvalidQuery(f"compare {col.name!r} with null using 'is null' or 'is not null'")
    param = b.bind(name, col, value)
    return _COMPARISONS[op](col, param) if b.build else None


_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
