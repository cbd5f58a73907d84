"""Values crossing a SQL source's edge: a request's JSON values checked and coerced for their column, the
source's values made JSON-ready, and page positions (cursor keys) tagged with their type so that a date is bound
as a date on the next page."""

from __future__ import annotations

import base64
import datetime as dt
import math
import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import asyncpg
from sqlalchemy import Column

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
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise InvalidQuery(f"a value for {col.name!r} must be a string, number or boolean")
    kind = python_type(col)
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
            if not isinstance(value, str) or not sendable(value):
                raise bad
            return value
        if kind is dt.datetime or kind is dt.date or kind is dt.time:
            if not isinstance(value, str):
                raise bad
            return _moment(col, kind, value)
        if kind is uuid.UUID:
            return uuid.UUID(str(value))
    except (ValueError, InvalidOperation, TypeError, OverflowError):
        raise bad from None
    if isinstance(value, bool | int | float) or (isinstance(value, str) and sendable(value)):
        return value
    raise bad


def _moment(col: Column[Any], kind: type, value: str) -> Any:
    """An ISO 8601 text as the column's date, time or datetime: an aware one for a column with a time zone (UTC
    when the text names none), else a naive one in UTC."""
    if kind is dt.date:
        return dt.date.fromisoformat(value)
    if kind is dt.time:
        return dt.time.fromisoformat(value)
    moment = dt.datetime.fromisoformat(value)
    if getattr(col.type, "timezone", False):
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).replace(tzinfo=None) if moment.tzinfo else moment


_PLAIN = frozenset({type(None), bool, int, str})


def json_rows(raw: Sequence[Any], columns: Sequence[str], bools: frozenset[int]) -> list[dict[str, JSONValue]]:
    """The source's rows as JSON-ready dicts; `bools` the positions of MariaDB TINYINT(1) columns."""
    if bools:
        return [{name: (bool(v) if i in bools and v is not None else _jsonable(v))
                 for i, (name, v) in enumerate(zip(columns, r, strict=False))} for r in raw]
    # Most values are JSON-ready as they come: no call for those.
    return [{name: v if type(v) in _PLAIN else _jsonable(v) for name, v in zip(columns, r, strict=False)} for r in raw]


def sendable(text: str) -> bool:
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
def tag(value: Any) -> Any:
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


def untag(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    try:
        (kind, text), = value.items()
        return _UNTAG[kind](text)
    except (ValueError, KeyError, TypeError, InvalidOperation):
        raise InvalidQuery("the cursor does not fit this query") from None


def type_name(col: Column[Any]) -> str:
    try:
        return str(col.type.compile()).lower()
    except Exception:  # a dialect-only type without a generic rendering
        return type(col.type).__name__.lower()

