"""Crafted input, refused as what it is (a 4xx), before it can reach a store, a source or a parser's limits.

Three classes a client can send anywhere and that used to answer 500:

- JSON nested deeper than the parser goes (`[[[[…` a hundred thousand deep): `json_body` is the one parse of a JSON
  body, RecursionError included.
- Numbers in ids, limits and cursors that Python reads but the store cannot take: `'²'.isdigit()` is true and
  `int('²')` raises; `int('١٢')` is 12 (Arabic-Indic digits) but no client means that; `'9' * 30` overflows a
  64-bit column, `'9' * 5000` overflows int()'s own limit. `whole` takes 1 to 19 ASCII digits, nothing else.
- Text no store or source can hold: NUL (PostgreSQL's text has none) and lone surrogates (`"\\ud800"` in JSON;
  not UTF-8, so no driver can send them). `holdable` says whether a text is free of both.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.common.errors import BadRequest

MAX_WHOLE = 2**63 - 1  # a signed 64-bit column's largest value (BIGINT: audit record ids)
MAX_INT32 = 2**31 - 1  # an INTEGER column's (revocation ids)


def whole(text: str, high: int = MAX_WHOLE) -> int | None:
    """`text` as a whole number from 0 to `high` when it is 1 to 19 ASCII digits; else None."""
    if not (0 < len(text) <= 19 and text.isascii() and text.isdigit()):
        return None
    number = int(text)
    return number if number <= high else None


def holdable(text: str) -> bool:
    """Whether every store and source can hold `text`: no NUL, no lone surrogate."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_body(raw: bytes) -> Any:
    """A JSON document as sent, or BadRequest (not JSON, not UTF-8, or nested past what the parser takes)."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not valid JSON") from None
    except RecursionError:  # json's C decoder gives up on arrays nested thousands deep
        raise BadRequest("the body is nested too deeply") from None
