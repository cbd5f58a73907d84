"""Values at a table source's edge, with one meaning for every source (the SQL connector's, which the in-memory
source must match): a request's JSON value checked and coerced by its column's Python kind, a source's values
made JSON-ready, and page positions (cursor keys) tagged with their type so that a date is read back as a date
on the next page. Nothing here knows a driver: each source says its column's kind and makes its own error."""

from __future__ import annotations

import base64
import datetime as dt
import math
import uuid
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from connectors.base import InvalidQuery, JSONValue

CURSOR = "the cursor does not fit this query"


def coerce(value: Any, kind: type | None, name: str, bad: InvalidQuery, aware: bool = False) -> Any:
    """A JSON value -> the Python value of `kind` (None: taken as it comes) for column `name`, or InvalidQuery:
    `bad` when the value does not fit. `aware`: a datetime column with a time zone."""
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        raise InvalidQuery(f"a value for {name!r} must be a string, number or boolean")
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
            return _moment(kind, aware, value)
        if kind is uuid.UUID:
            return uuid.UUID(str(value))
    except (ValueError, InvalidOperation, TypeError, OverflowError):
        raise bad from None
    if isinstance(value, bool | int | float) or (isinstance(value, str) and sendable(value)):
        return value
    raise bad


def _moment(kind: type, aware: bool, value: str) -> Any:
    """An ISO 8601 text as the column's date, time or datetime: an aware one for a column with a time zone (UTC
    when the text names none), else a naive one in UTC."""
    if kind is dt.date:
        return dt.date.fromisoformat(value)
    if kind is dt.time:
        return dt.time.fromisoformat(value)
    moment = dt.datetime.fromisoformat(value)
    if aware:
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).replace(tzinfo=None) if moment.tzinfo else moment


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


def jsonable(value: Any, other: Callable[[Any], JSONValue] = str) -> JSONValue:
    """A value as answered: exact numbers as strings (to stay exact), moments in ISO 8601, bytes in base64, a
    whole-row reference (PostgreSQL's anonymous record) as the list of its fields; `other` for any other kind."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, (tuple, list)):
        return [jsonable(v, other) for v in value]
    return other(value)


# In order: a datetime is also a date.
_TAGS: list[tuple[type | tuple[type, ...], str, Callable[[Any], str]]] = [
    (float, "f", repr), (Decimal, "d", str), (dt.datetime, "dt", dt.datetime.isoformat),
    (dt.date, "da", dt.date.isoformat), (dt.time, "t", dt.time.isoformat),
    ((bytes, bytearray, memoryview), "b", lambda v: base64.b64encode(bytes(v)).decode()), (uuid.UUID, "u", str)]
_UNTAG: dict[str, Callable[[str], Any]] = {
    "f": float, "d": Decimal, "dt": dt.datetime.fromisoformat, "da": dt.date.fromisoformat,
    "t": dt.time.fromisoformat, "b": base64.b64decode, "u": uuid.UUID, "s": str}


def tag(value: Any) -> Any:
    """A position's value as JSON, tagged with its type when JSON has none."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    for kind, key, text in _TAGS:
        if isinstance(value, kind):
            return {key: text(value)}
    return {"s": str(value)}


def untag(value: Any) -> Any:
    """A tagged position's value back as its type, or InvalidQuery(CURSOR) for one no tag made."""
    if not isinstance(value, dict):
        return value
    try:
        (kind, text), = value.items()
        return _UNTAG[kind](text)
    except (ValueError, KeyError, TypeError, InvalidOperation):
        raise InvalidQuery(CURSOR) from None
