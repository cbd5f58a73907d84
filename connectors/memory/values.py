"""Values leaving a memory source as the SQL connector's leave it: JSON-ready answers, and page positions whose
values carry their type (so that a date is compared as a date on the next page)."""

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

_TAGS: list[tuple[type, str, Callable[[Any], str]]] = [
    (float, "f", repr), (Decimal, "d", str), (dt.datetime, "dt", dt.datetime.isoformat),
    (dt.date, "da", dt.date.isoformat), (dt.time, "t", dt.time.isoformat),
    (bytes, "b", lambda v: base64.b64encode(v).decode()), (uuid.UUID, "u", str)]
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
    if not isinstance(value, dict):
        return value
    try:
        (kind, text), = value.items()
        return _UNTAG[kind](text)
    except (ValueError, KeyError, TypeError, InvalidOperation):
        raise InvalidQuery(CURSOR) from None


def jsonable(value: Any) -> JSONValue:
    """A value as the SQL connector answers it: exact numbers as strings, moments in ISO 8601, bytes in base64."""
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
        return [jsonable(v) for v in value]
    return str(value)
