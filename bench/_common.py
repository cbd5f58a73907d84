"""Small helpers shared by the benches: percentiles and plain-text tables."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left-aligned text table (numbers right-aligned)."""
    cells = [[str(h) for h in head]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    numeric = [all(_is_num(row[i]) for row in rows) if rows else False for i in range(len(head))]
    out = []
    for n, row in enumerate(cells):
        out.append("  ".join((c.rjust(w) if numeric[i] and n else c.ljust(w))
                             for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _cell(v: object) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)
