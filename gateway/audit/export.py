"""The trail exported as JSON lines or CSV: the one function every export (CLI, admin API, review page) uses."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit.reading import AuditFilter, iter_records
from gateway.audit.record import FIELD_ORDER
from gateway.common.textsafe import spreadsheet_cell


async def export_lines(engine: AsyncEngine, fmt: str, f: AuditFilter | None = None) -> AsyncIterator[str]:
    """The trail as JSON lines or CSV (header first), oldest first, one record at a time. JSON lines are exact;
    a CSV cell that a spreadsheet would run as a formula starts with a single quote (textsafe.spreadsheet_cell)."""
    if fmt == "jsonl":
        async for rec in iter_records(engine, f):
            yield json.dumps(rec.to_dict(), separators=(",", ":")) + "\n"
        return
    buffer = io.StringIO()
    # CRLF ends a row (RFC 4180), so the writer quotes every cell holding a CR or an LF: a bare CR in an agent's
    # name would otherwise end the row in a spreadsheet and let the rest of the cell forge a row of its own.
    writer = csv.DictWriter(buffer, fieldnames=list(FIELD_ORDER), lineterminator="\r\n")
    writer.writeheader()
    yield buffer.getvalue()
    async for rec in iter_records(engine, f):
        buffer.seek(0)
        buffer.truncate()
        writer.writerow({k: spreadsheet_cell(v) if isinstance(v, str) else v for k, v in rec.to_dict().items()})
        yield buffer.getvalue()
