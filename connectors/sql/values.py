"""Values crossing a SQL source's edge as SQLAlchemy columns say: a column's Python kind (MariaDB's TINYINT(1) a
boolean) and its bad-value message, for connectors.values' coercion, and the source's rows made JSON-ready."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy import Column

from connectors import values
from connectors.base import InvalidQuery, JSONValue


def is_bool(col: Column[Any]) -> bool:
    # MariaDB/MySQL have no BOOLEAN: it is TINYINT(1), which reflects as an integer.
    return type(col.type).__name__ == "TINYINT" and getattr(col.type, "display_width", None) == 1


def python_type(col: Column[Any]) -> type | None:
    if is_bool(col):
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
        return f"{self.value!r} is not a valid value for {self.col.name!r} ({type_name(self.col)})"


def coerce(col: Column[Any], value: Any) -> Any:
    """A JSON value -> the Python value the driver binds for this column, or InvalidQuery."""
    aware = bool(getattr(col.type, "timezone", False))
    return values.coerce(value, python_type(col), col.name, _BadValue(col, value), aware)


_PLAIN = frozenset({type(None), bool, int, str})


def json_rows(raw: Sequence[Any], columns: Sequence[str], bools: frozenset[int]) -> list[dict[str, JSONValue]]:
    """The source's rows as JSON-ready dicts; `bools` the positions of MariaDB TINYINT(1) columns."""
    if bools:
        return [{name: (bool(v) if i in bools and v is not None else values.jsonable(v, _other))
                 for i, (name, v) in enumerate(zip(columns, r, strict=False))} for r in raw]
    # Most values are JSON-ready as they come: no call for those.
    return [{name: v if type(v) in _PLAIN else values.jsonable(v, _other)
             for name, v in zip(columns, r, strict=False)} for r in raw]


def _other(value: Any) -> JSONValue:
    """What connectors.values does not know: a driver's own kinds."""
    if isinstance(value, asyncpg.BitString):
        return str(value.as_string())  # B'101' -> "101", not the driver's repr
    return str(value)


def type_name(col: Column[Any]) -> str:
    try:
        return str(col.type.compile()).lower()
    except Exception:  # a dialect-only type without a generic rendering
        return type(col.type).__name__.lower()

