"""An audit record: its typed fields, their order, and the canonical bytes its hash covers.

The canonical form is a contract with every trail ever written: a record stored by any release must still hash
to its stored `hash` (tests/test_trail_compat.py holds a trail written before this module existed).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, fields
from typing import Any

import orjson

from gateway.common.clock import format_time, parse_time

DECISIONS = ("allow", "deny", "pending", "error")


@dataclass(frozen=True, slots=True)
class AuditRecord:
    time: dt.datetime
    request_id: str
    action: str
    decision: str
    status: int
    agent: str | None = None
    on_behalf_of: str | None = None
    work_unit: str | None = None
    dataset: str | None = None
    query: str | None = None
    reason: str | None = None
    rows: int | None = None
    bytes: int | None = None
    duration_ms: float | None = None
    source_ms: float | None = None
    response_sha256: str | None = None
    approved_by: str | None = None
    rule: str | None = None
    columns: str | None = None
    masked: str | None = None
    transport: str | None = None
    row_filter: str | None = None  # the row filter applied to the read, its claim values filled in
    token_id: str | None = None  # the verified token's jti: what `revoke token` takes
    client: str | None = None  # the caller's address (a trusted proxy's X-Forwarded-For), or "cli"
    user_agent: str | None = None  # capped (textsafe.cap)
    trace_id: str | None = None  # the request's W3C trace id: its traceparent's, else a new one (common/tracing.py)
    # When `query` was capped (bounded_query): the length in bytes and the SHA-256 of the whole text or body.
    query_bytes: int | None = None
    query_sha256: str | None = None
    id: int = 0
    prev_hash: str = ""
    hash: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready; the order is the contract's."""
        out = {name: getattr(self, name) for name in FIELD_ORDER}  # not asdict(): it deep-copies every value
        out["time"] = format_time(self.time)
        return out


FIELD_ORDER = ("id", "time", "request_id", "agent", "on_behalf_of", "work_unit", "action", "dataset", "query",
               "decision", "reason", "status", "rows", "bytes", "duration_ms", "source_ms", "response_sha256",
               "approved_by", "rule", "columns", "masked", "transport", "row_filter", "token_id", "client",
               "user_agent", "trace_id", "query_bytes", "query_sha256", "prev_hash", "hash")
# Fields added after the first release: left out of the hashed content while null, so records written
# before they existed keep their hashes.
LATER_FIELDS = ("row_filter", "token_id", "client", "user_agent", "trace_id", "query_bytes", "query_sha256")
assert set(FIELD_ORDER) == {f.name for f in fields(AuditRecord)}

# The hashed fields, already in sorted order: the dict is built sorted, so the encoder need not sort it
# (same bytes as json.dumps(..., sort_keys=True), for less work per record).
_HASHED = tuple(sorted(name for name in FIELD_ORDER if name != "hash"))
_CANONICAL_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# AuditRecord's fields but the chain link, for building a linked copy without dataclasses.replace (slow).
CONTENT_FIELDS = tuple(f.name for f in fields(AuditRecord) if f.name not in ("id", "prev_hash", "hash"))
FLOAT_FIELDS = tuple(f.name for f in fields(AuditRecord) if str(f.type).startswith("float"))
TEXT_FIELDS = tuple(f.name for f in fields(AuditRecord) if str(f.type).startswith("str"))


def canonical(record: AuditRecord) -> bytes:
    """The bytes the chain hashes: every field but `hash`, in a fixed, typed-stable form."""
    body = {name: getattr(record, name) for name in _HASHED}
    body["time"] = format_time(record.time)
    for name in LATER_FIELDS:
        if body[name] is None:
            del body[name]
    if all(_same_in_orjson(getattr(record, name)) for name in FLOAT_FIELDS):
        try:
            return orjson.dumps(body)  # a fifth of json's cost; the same bytes (strings, ints, these floats)
        except TypeError:
            pass  # what orjson refuses (a lone surrogate, an int over 64 bits): json's own answer, as ever
    return _CANONICAL_JSON.encode(body).encode()


def _same_in_orjson(value: object) -> bool:
    """orjson writes floats as json does (shortest repr) except the exponent form, used by json below 1e-4 and
    from 1e16 on ("1e-05", orjson "1e-5"), and NaN/Infinity (orjson: null). Those go through json."""
    return not isinstance(value, float) or value == 0.0 or 1e-4 <= abs(value) < 1e16


def chain_hash(record: AuditRecord) -> str:
    return hashlib.sha256(canonical(record)).hexdigest()


def from_row(row: Any) -> AuditRecord:
    """A record from a row of the store's audit table (SQLite gives its times as text or naive, in UTC)."""
    values = dict(row._mapping)
    moment = values["time"]
    if isinstance(moment, str):
        moment = parse_time(moment)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    values["time"] = moment
    return AuditRecord(**values)
