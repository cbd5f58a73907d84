"""The trail exported as JSON lines or CSV: the one function every export (CLI, admin API, review page) uses."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.reading import AuditFilter, iter_records
from gateway.audit.record import FIELD_ORDER, AuditRecord
from gateway.common.textsafe import spreadsheet_cell


def jsonl_line(record: AuditRecord) -> str:
    """One record as a JSON line (every field, null when empty; ASCII, so no control character reaches a
    terminal or a collector raw): what every JSON lines export and follower sends."""
    return json.dumps(record.to_dict(), separators=(",", ":")) + "\n"


async def export_lines(engine: AsyncEngine, fmt: str, f: AuditFilter | None = None,
                       after: int = 0) -> AsyncIterator[str]:
    """The trail (ids above `after`) as JSON lines or CSV (header first), oldest first, one record at a time.
    JSON lines are exact; a CSV cell that a spreadsheet would run as a formula starts with a single quote
    (textsafe.spreadsheet_cell)."""
    if fmt == "jsonl":
        async for rec in iter_records(engine, f, after=after):
            yield jsonl_line(rec)
        return
    buffer = io.StringIO()
    # CRLF ends a row (RFC 4180), so the writer quotes every cell holding a CR or an LF: a bare CR in an agent's
    # name would otherwise end the row in a spreadsheet and let the rest of the cell forge a row of its own.
    writer = csv.DictWriter(buffer, fieldnames=list(FIELD_ORDER), lineterminator="\r\n")
    writer.writeheader()
    yield buffer.getvalue()
    async for rec in iter_records(engine, f, after=after):
        buffer.seek(0)
        buffer.truncate()
        writer.writerow({k: spreadsheet_cell(v) if isinstance(v, str) else v for k, v in rec.to_dict().items()})
        yield buffer.getvalue()
