"""The bytes of an answer: JSON rendered (a large answer's rows a slice at a time), and their SHA-256.

Large answers are made a slice of rows at a time, the event loop free to serve other requests between slices
(connectors/slices.py in_slices): for 100,000 rows of 8 columns, masking takes 0.3 s and one orjson call 75 ms.
A body over BYTES_ON_LOOP is hashed in a worker thread (hashlib lets go of the GIL: 26 ms for 16 MB).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import orjson

from connectors.slices import CELLS_ON_LOOP, in_slices

BYTES_ON_LOOP = 1024 * 1024


def render(payload: Mapping[str, Any]) -> bytes:
    try:
        # A tenth of json's cost; the same bytes but for floats in exponent form ("1e-5" for "1e-05").
        # OPT_NON_STR_KEYS: keys that are str subclasses (SQLAlchemy's quoted_name) are written as strings.
        return orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # what orjson refuses (a lone surrogate, an int over 64 bits): json's answer, as before
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


async def render_answer(payload: Mapping[str, Any]) -> bytes:
    """The bytes of render(payload), a large answer's rows rendered a slice at a time. `"rows":[]` cannot occur
    inside a rendered string (every quote in one is escaped), so its first occurrence is the key's."""
    rows = payload.get("rows")
    columns = len(payload.get("columns") or (0,))
    if not isinstance(rows, list) or len(rows) * columns <= CELLS_ON_LOOP:
        return render(payload)
    head, key, tail = render({**payload, "rows": []}).partition(b'"rows":[]')
    if not key:
        return render(payload)
    parts = await in_slices(rows, columns, lambda part: [b",", render({"r": part})[len(b'{"r":['):-len(b"]}")]])
    parts[0] = head + b'"rows":['  # in place of the first separator: the body is copied once, by the join
    return b"".join([*parts, b"]", tail])


async def sha256(body: bytes) -> str:
    if len(body) > BYTES_ON_LOOP:  # hashlib lets go of the GIL over large inputs: the loop runs meanwhile
        return await asyncio.to_thread(lambda: hashlib.sha256(body).hexdigest())
    return hashlib.sha256(body).hexdigest()
