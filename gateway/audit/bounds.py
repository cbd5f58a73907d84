"""What a record may hold: every field within its bound, and only what a store can keep.

No field of a record grows with what a client sends. The query (a body, SQL text, an MCP call's arguments, a
proxied path) is kept whole up to QUERY_MAX_BYTES bytes of UTF-8, else its start, with the whole one's length
and SHA-256 in query_bytes and query_sha256. Every other text a client, a token or an admin's input can reach
is kept whole up to FIELD_MAX characters, else as textsafe.cap keeps it (its start, its length and the start of
its SHA-256, within the limit). Real values are far shorter: names, addresses, ids, a policy line. The bounds
are applied where records are stored (`storable`), so every way in is held to them.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from gateway.audit.record import TEXT_FIELDS, AuditRecord
from gateway.common.textsafe import cap

QUERY_MAX_BYTES = 4096
FIELD_MAX = {"agent": 256, "on_behalf_of": 256, "work_unit": 128, "dataset": 1024, "reason": 1024,
             "approved_by": 512, "rule": 1024, "columns": 4096, "masked": 4096, "row_filter": 4096,
             "token_id": 256, "client": 256, "user_agent": 256}
_CAPPED = tuple(FIELD_MAX.items())
_QUERY_FITS = QUERY_MAX_BYTES // 4  # characters that surely fit: UTF-8 takes at most 4 bytes a character
_SHORTEST_CAP = min(_QUERY_FITS, *FIELD_MAX.values())  # no text longer than this: nothing to cap (one C call)


def bounded_query(text: str | None, raw: bytes | None = None) -> tuple[str | None, int | None, str | None]:
    """(the query as a record keeps it, query_bytes, query_sha256): the text whole, None, None when it fits in
    QUERY_MAX_BYTES bytes of UTF-8; else its first QUERY_MAX_BYTES bytes (whole characters), and the length and
    SHA-256 of the whole: of `raw`, the body as it came, when the text was decoded from it."""
    if text is None or len(text) <= _QUERY_FITS:
        return text, None, None
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= QUERY_MAX_BYTES:
        return text, None, None
    whole = raw if raw is not None else data
    return data[:QUERY_MAX_BYTES].decode("utf-8", "ignore"), len(whole), hashlib.sha256(whole).hexdigest()


def _bounded(record: AuditRecord) -> AuditRecord:
    """The record with every field within its bound (above), whichever way in built it."""
    over: dict[str, Any] = {}
    for name, limit in _CAPPED:
        value = getattr(record, name)
        if value is not None and len(value) > limit:
            over[name] = cap(value, limit)
    query = record.query
    if query is not None and len(query) > _QUERY_FITS:
        text, size, digest = bounded_query(query)
        if size is not None:
            over["query"] = text
            if record.query_sha256 is None:  # else the way in measured the body as received
                over["query_bytes"], over["query_sha256"] = size, digest
    return replace(record, **over) if over else record


def storable(record: AuditRecord) -> AuditRecord:
    """The record bounded (_bounded), and with what a store cannot hold replaced by U+FFFD: NUL characters
    (PostgreSQL's text has none) and lone surrogates (not UTF-8), which a request body or a token's claims may
    carry. Such a request is then answered and recorded like any other, not refused for want of a record."""
    texts = [v for name in TEXT_FIELDS if isinstance(v := getattr(record, name), str)]
    if texts and max(map(len, texts)) > _SHORTEST_CAP and (bounded := _bounded(record)) is not record:
        record = bounded
        texts = [v for name in TEXT_FIELDS if isinstance(v := getattr(record, name), str)]
    joined = "".join(texts)
    if joined.isascii() and "\x00" not in joined:  # the common case, in two C calls
        return record
    cleaned: dict[str, Any] = {}
    for name in TEXT_FIELDS:
        value = getattr(record, name)
        if isinstance(value, str) and (fixed := _clean(value)) is not value:
            cleaned[name] = fixed
    return replace(record, **cleaned) if cleaned else record


def _clean(text: str) -> str:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text.replace("\x00", "\ufffd") if "\x00" in text else text
