"""What a `where` term means over rows in memory, as the SQL connector means it: the operators, NULL as SQL has
it, LIKE patterns, and a request's values checked and coerced for their column."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from connectors.base import LIST_OPERATORS, MAX_LIST_VALUES, ColumnInfo, Filter, InvalidQuery
from connectors.values import coerce, sendable

Row = Mapping[str, Any]
Match = Callable[[Row], bool]


@dataclass(frozen=True, slots=True)
class Column:
    info: ColumnInfo
    kind: type | None  # the Python type a request's values are coerced to; None: taken as they come
    aware: bool = False  # a datetime column with a time zone

    @property
    def name(self) -> str:
        return self.info.name


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def condition(col: Column, f: Filter) -> Match:
    """One `where` term as a test of a row, its values checked and coerced as the SQL connector does. A row whose
    value is NULL passes no test but `is null` (SQL's three-valued logic: NULL compared is never true)."""
    name, op = col.name, f.op
    if op == "is null":
        return lambda row: row.get(name) is None
    if op == "is not null":
        return lambda row: row.get(name) is not None
    if op in LIST_OPERATORS:
        if not isinstance(f.value, list) or not 1 <= len(f.value) <= MAX_LIST_VALUES:
            raise InvalidQuery(f"{op!r} on {name!r} takes a list of 1 to {MAX_LIST_VALUES} values")
        if any(v is None for v in f.value):
            raise InvalidQuery(f"{op!r} on {name!r} takes no null; use 'is null' or 'is not null'")
        values = [_coerce(col, v) for v in f.value]
        inside = op == "in"
        return lambda row: (v := row.get(name)) is not None and (v in values) is inside
    if op == "like":
        if not isinstance(f.value, str) or not sendable(f.value):
            raise InvalidQuery(f"'like' on {name!r} takes a string pattern")
        if col.kind is not str:
            raise InvalidQuery(f"'like' applies to text columns, not to {name!r} ({col.info.type})")
        if (len(f.value) - len(f.value.rstrip("\\"))) % 2:
            raise InvalidQuery("a 'like' pattern cannot end with a lone escape character '\\'")
        pattern = _like(f.value)
        return lambda row: isinstance(v := row.get(name), str) and pattern.fullmatch(v) is not None
    if op not in _COMPARISONS:
        raise InvalidQuery(f"unknown operator {op!r}")
    value = _coerce(col, f.value)
    if value is None:
        raise InvalidQuery(f"compare {name!r} with null using 'is null' or 'is not null'")
    compare = _COMPARISONS[op]
    return lambda row: (v := row.get(name)) is not None and compare(v, value)


def _like(pattern: str) -> re.Pattern[str]:
    """A LIKE pattern (`%` any text, `_` one character, `\\` escaping the next) as a regular expression."""
    out, chars = [], iter(pattern)
    for c in chars:
        if c == "\\":
            out.append(re.escape(next(chars)))  # never past the end: a lone trailing escape is refused before
        elif c == "%":
            out.append(".*")
        elif c == "_":
            out.append(".")
        else:
            out.append(re.escape(c))
    return re.compile("".join(out), re.DOTALL)


def _coerce(col: Column, value: Any) -> Any:
    """A JSON value -> the Python value compared with the column's, or InvalidQuery (the SQL connector's rules)."""
    bad = InvalidQuery(f"{value!r} is not a valid value for {col.name!r} ({col.info.type})")
    return coerce(value, col.kind, col.name, bad, col.aware)
