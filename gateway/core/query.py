"""The query body of POST /v1/datasets/{name}/query: parsing, and the opaque cursor.

Parsing checks shapes only; names are checked against the reflected table and
the agent's rights in core.py. BODY_SCHEMA states the same body as JSON Schema,
from the parser's own limits (the OpenAPI document shows it). Cursors are
encrypted and authenticated with a key kept in the store, so they work on any
replica, cannot be forged, and do not show the key values they carry (which
may belong to masked columns).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV

from connectors.base import (
    LIST_OPERATORS,
    MAX_BOUND_VALUES,
    MAX_LIST_VALUES,
    NULL_OPERATORS,
    OPERATORS,
    Filter,
    SortKey,
    bound_values,
)
from gateway.common.errors import BadRequest
from gateway.common.inputs import json_body
from gateway.common.randomness import random_bytes

DEFAULT_LIMIT = 100
MAX_COLUMNS = 500
MAX_TERMS = 100
MAX_ORDER_KEYS = 16
MAX_CURSOR_CHARS = 8192


def _any_case(operators: tuple[str, ...]) -> str:
    """A pattern for `operators` in any case of their letters (the parser lowers an operator first)."""
    assert all(c.isalpha() or c in " =!<>" for op in operators for c in op)  # nothing to escape
    words = ("".join(f"[{c}{c.upper()}]" if c.isalpha() else c for c in op) for op in operators)
    return f"^(?:{'|'.join(words)})$"


def _term(operators: tuple[str, ...], *value: dict[str, Any]) -> dict[str, Any]:
    items = [{"type": "string", "description": "a column"}, {"type": "string", "pattern": _any_case(operators),
                                                             "examples": list(operators)}, *value]
    return {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)}


_SCALAR = {"type": ["string", "number", "boolean", "null"]}
_VALUED = tuple(op for op in OPERATORS if op not in NULL_OPERATORS and op not in LIST_OPERATORS)
# The body as JSON Schema: what parse_query takes, from its own limits (and its keys are this schema's). Two
# rules no JSON Schema states are in the descriptions: at most MAX_BOUND_VALUES values bound in all, and no
# column ordered twice ("name" and "-name"). An `in` list's 1 to MAX_LIST_VALUES items are the source's rule.
BODY_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "description": f"Every key is optional; an empty body reads the first {DEFAULT_LIMIT} rows. Unknown keys are "
                   f"a 400. The next page: the same body with `cursor` set to the answer's next_cursor.",
    "properties": {
        "columns": {"type": ["array", "null"], "items": {"type": "string", "minLength": 1}, "minItems": 1,
                    "maxItems": MAX_COLUMNS, "uniqueItems": True, "description": "the columns to read (default: all)"},
        "where": {"type": ["array", "null"], "maxItems": MAX_TERMS, "items": {"anyOf": [
            _term(NULL_OPERATORS), _term(LIST_OPERATORS, {"type": "array", "items": _SCALAR, "minItems": 1,
                                                          "maxItems": MAX_LIST_VALUES}),
            _term(_VALUED, _SCALAR)]},
            "description": f"[column, operator, value] terms, ANDed (no value for the `is null` forms); operators "
                           f"in any case. At most {MAX_BOUND_VALUES} values in all, `in` lists included."},
        "order_by": {"type": ["array", "null"], "maxItems": MAX_ORDER_KEYS, "items": {"type": "string",
                                                                                     "pattern": "[^-]"},
                     "description": "column names, `-name` for descending; each column once"},
        "limit": {"type": ["integer", "null"], "minimum": 1, "default": DEFAULT_LIMIT,
                  "description": "rows per page; above the dataset's max_rows it is lowered to it"},
        "cursor": {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_CURSOR_CHARS,
                   "description": "the next_cursor of the previous page"},
    },
}
_KEYS = frozenset(BODY_SCHEMA["properties"])


@dataclass(frozen=True)
class QueryBody:
    columns: tuple[str, ...] | None
    where: tuple[Filter, ...]
    order_by: tuple[SortKey, ...]
    limit: int
    cursor: str | None

    def fingerprint(self, dataset: str) -> str:
        """What a cursor is bound to: the same dataset, columns, filters and order."""
        shape = [dataset, self.columns, [[f.column, f.op, f.value] for f in self.where],
                 [[k.column, k.descending] for k in self.order_by]]
        return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()[:32]


def parse_body(raw: bytes | None) -> QueryBody:
    if not raw or not raw.strip():
        data: Any = {}
    else:
        data = json_body(raw)
    return parse_query(data)


def parse_query(data: Any) -> QueryBody:
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise BadRequest(f"unknown key {unknown[0]!r} (expected: {', '.join(sorted(_KEYS))})")
    columns = data.get("columns")
    if columns is not None:
        if not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns):
            raise BadRequest("'columns' must be a list of column names")
        if not columns or len(columns) > MAX_COLUMNS:
            raise BadRequest(f"'columns' must name 1 to {MAX_COLUMNS} columns")
        if len(set(columns)) != len(columns):
            raise BadRequest("'columns' names a column twice")
        columns = tuple(columns)
    where = _where(data.get("where"))
    n = bound_values(where)
    if n > MAX_BOUND_VALUES:
        raise BadRequest(f"the query binds {n} values; at most {MAX_BOUND_VALUES} in all ('where' values and the "
                         "items of every 'in' / 'not in' list together)")
    return QueryBody(columns=columns, where=where, order_by=_order(data.get("order_by")),
                     limit=_limit(data.get("limit")), cursor=_cursor(data.get("cursor")))


def _where(value: Any) -> tuple[Filter, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_TERMS:
        raise BadRequest(f"'where' must be a list of at most {MAX_TERMS} [column, operator, value] terms")
    out: list[Filter] = []
    for term in value:
        if not isinstance(term, list) or len(term) not in (2, 3) or not isinstance(term[0], str):
            raise BadRequest(f"a 'where' term is [column, operator, value], not {json.dumps(term)[:80]}")
        column, op = term[0], term[1]
        if not isinstance(op, str) or op.lower() not in OPERATORS:
            raise BadRequest(f"unknown operator {op!r} (use one of: {', '.join(OPERATORS)})")
        op = op.lower()
        if op in NULL_OPERATORS:
            if len(term) != 2:
                raise BadRequest(f"{op!r} takes no value: [column, {op!r}]")
            out.append(Filter(column, op))
            continue
        if len(term) != 3:
            raise BadRequest(f"{op!r} needs a value: [column, {op!r}, value]")
        v = term[2]
        if op in LIST_OPERATORS:
            if not isinstance(v, list) or any(isinstance(x, (list, dict)) for x in v):
                raise BadRequest(f"{op!r} takes a list of values")
        elif isinstance(v, (list, dict)):
            raise BadRequest(f"{op!r} takes a single value")
        out.append(Filter(column, op, v))
    return tuple(out)


def _order(value: Any) -> tuple[SortKey, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_ORDER_KEYS or not all(isinstance(v, str) and v.strip("-")
                                                                             for v in value):
        raise BadRequest("'order_by' must be a list of column names, '-name' for descending")
    keys = tuple(SortKey(v[1:], True) if v.startswith("-") else SortKey(v, False) for v in value)
    if len({k.column for k in keys}) != len(keys):
        raise BadRequest("'order_by' names a column twice")
    return keys


def _limit(value: Any) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest("'limit' must be a whole number of at least 1")
    return value


def _cursor(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value or len(value) > MAX_CURSOR_CHARS):
        raise BadRequest("'cursor' must be the next_cursor string of a previous answer, or null")
    return value


class CursorCodec:
    """Cursors sealed with AES-GCM-SIV (an AEAD that stays safe if a random nonce ever repeats), as "v2." and
    URL-safe base64 of nonce and ciphertext: a fifth of Fernet's cost on every page. Cursors of the earlier
    Fernet form are still read, so pages in flight across an upgrade go on working."""

    _PREFIX = "v2."

    def __init__(self, secret: str):
        digest = hashlib.sha256(("agentgate-cursor:" + secret).encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))
        self._aead = AESGCMSIV(hashlib.sha256(b"agentgate-cursor-siv:" + digest).digest())

    def encode(self, fingerprint: str, position: Any) -> str:
        nonce = random_bytes(12)
        try:
            plain = orjson.dumps({"f": fingerprint, "p": position})
        except TypeError:  # what orjson refuses (an int over 64 bits): json's form
            plain = json.dumps({"f": fingerprint, "p": position}).encode()
        sealed = self._aead.encrypt(nonce, plain, None)
        return self._PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def decode(self, fingerprint: str, cursor: str) -> Any:
        try:
            if cursor.startswith(self._PREFIX):
                raw = base64.urlsafe_b64decode(cursor[len(self._PREFIX):].encode())
                data = json.loads(self._aead.decrypt(raw[:12], raw[12:], None))
            else:
                data = json.loads(self._fernet.decrypt(cursor.encode()))
        except (InvalidToken, InvalidTag, ValueError):
            raise BadRequest("the cursor is not valid (use next_cursor as returned)") from None
        if not isinstance(data, dict) or data.get("f") != fingerprint:
            raise BadRequest("the cursor belongs to another query (ask the next page with the same body)")
        return data.get("p")
