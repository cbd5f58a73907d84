"""Usage per unit (agent, dataset or unit of work) from the data requests in the audit trail.

One GROUP BY in the store (SQLAlchemy Core on the `audit` table, so SQLite and
PostgreSQL alike); SQL-mode records name several datasets, comma-separated, and
count under each of them.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit import CORRECTED_ID, CORRECTION_PREFIX
from gateway.common.clock import parse_time
from gateway.common.textsafe import terminal
from gateway.config import CostSettings
from gateway.store import audit as audit_table
from gateway.store import reading

# The audit actions of the data API (admin acts such as revoke, reload, read_audit are not usage).
DATA_ACTIONS = ("read", "list", "describe", "sql")
# `usage --by` -> the audit column and the key's name in --json.
UNITS = {"agent": ("agent", "agent"), "dataset": ("dataset", "dataset"), "work-unit": ("work_unit", "work_unit")}
# Only requests made with a valid token count: one without (no agent verified), or whose token was refused as it
# was verified (401: a role's name as the subject), is anyone's traffic, and would let whoever sends it write
# requests and cost onto any work unit or dataset it names.
COUNTED = (audit_table.c.agent.is_not(None), audit_table.c.status != 401)

_RELATIVE = re.compile(r"^\s*([0-9]{1,9})\s*([dhms])\s*$")  # ASCII digits (\d also takes '١٢'), no overflow
_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_since(value: str, now: dt.datetime | None = None) -> dt.datetime:
    """ISO 8601, or a time before now: `7d`, `24h`, `30m`, `90s`. Raises ValueError."""
    m = _RELATIVE.match(value)
    if m:
        moment = now or dt.datetime.now(dt.UTC)
        try:
            return moment - dt.timedelta(seconds=int(m.group(1)) * _SECONDS[m.group(2)])
        except OverflowError:  # before year 1
            raise ValueError(f"{value!r} reaches back before year 1") from None
    return parse_time(value)


@dataclass
class Usage:
    key: str | None
    requests: int = 0
    rows: int = 0
    bytes: int = 0
    source_ms: float = 0.0

    def to_dict(self, key_name: str, cost: CostSettings | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {key_name: self.key, "requests": self.requests, "rows": self.rows,
                               "bytes": self.bytes, "source_ms": round(self.source_ms, 3)}
        if cost is not None and cost.priced:
            out["cost"] = cost.cost(self.requests, self.rows, self.source_ms)
        return out


async def usage(engine: AsyncEngine, by: str, since: dt.datetime | None = None,
                until: dt.datetime | None = None) -> list[Usage]:
    """Requests (served or refused), rows, bytes and source time per unit; most requests first."""
    c = audit_table.c
    column = c[UNITS[by][0]]

    def window(stmt: Select[Any]) -> Select[Any]:
        if since is not None:
            stmt = stmt.where(c.time >= since)
        if until is not None:
            stmt = stmt.where(c.time < until)
        return stmt

    totals = window(select(column, func.count(), func.sum(func.coalesce(c.rows, 0)),
                           func.sum(func.coalesce(c.bytes, 0)), func.sum(func.coalesce(c.source_ms, 0.0)))
                    .where(c.action.in_(DATA_ACTIONS), *COUNTED).group_by(column))
    async with reading(engine).connect() as conn:
        rows = (await conn.execute(totals)).fetchall()
        # A record stored after its request was answered 503 (its write timed out) is followed by a correction
        # (gateway/audit/unsettled.py): one request, refused, no data. The correction is counted; the record it corrects
        # is taken off again. Corrections are rare: one scan for them, then their records by id.
        # Both in the window: a record is taken off only where it was counted.
        found = window(select(c.reason).where(c.reason.like(CORRECTION_PREFIX + "%"), *COUNTED))
        corrected = sorted({int(m.group(1)) for (reason,) in (await conn.execute(found)).fetchall()
                            if (m := CORRECTED_ID.match(reason or "")) is not None})
        taken_off = []
        for start in range(0, len(corrected), 1000):  # bound values per statement
            taken_off += (await conn.execute(totals.where(c.id.in_(corrected[start:start + 1000])))).fetchall()
    units: dict[str | None, Usage] = {}
    counted = [(key, sign * (n or 0), sign * (r or 0), sign * (b or 0), sign * (ms or 0.0))
               for sign, part in ((1, rows), (-1, taken_off)) for key, n, r, b, ms in part]
    for key, requests, n_rows, n_bytes, source_ms in counted:
        keys: list[str | None] = [key]
        if by == "dataset" and key is not None and "," in key:
            keys = list(dict.fromkeys(k.strip() for k in key.split(",") if k.strip())) or [None]
        for k in keys:
            u = units.setdefault(k, Usage(k))
            u.requests += int(requests or 0)
            u.rows += int(n_rows or 0)
            u.bytes += int(n_bytes or 0)
            u.source_ms += float(source_ms or 0.0)
    return sorted(units.values(), key=lambda u: (-u.requests, u.key is None, u.key or ""))


def table(units: list[Usage], by: str, cost: CostSettings) -> list[str]:
    """The text form: a header, then one aligned line per unit (no work unit shows as `(none)`)."""
    if not units:
        return ["no data requests"]
    head = [UNITS[by][1], "requests", "rows", "bytes", "source_ms"] + (["cost"] if cost.priced else [])
    lines: list[list[str]] = []
    for u in units:
        row = [terminal(u.key) if u.key is not None else "(none)", str(u.requests), str(u.rows), str(u.bytes),
               f"{u.source_ms:.1f}"]
        if cost.priced:
            row.append(f"{cost.cost(u.requests, u.rows, u.source_ms):.6f}")
        lines.append(row)
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(head)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                         for i, (v, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
    return [fmt(head), *(fmt(r) for r in lines)]
