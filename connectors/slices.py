"""Large answers worked on a slice at a time, so that one big read never holds the event loop.

Used by the SQL connector (rows made JSON-ready) and by the core (masking, rendering the answer)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

# The most values (rows x columns) a request's work on rows handles before it lets the event loop serve others:
# 100,000 rows of 8 columns take about 0.8 s to make JSON-ready, which would hold the loop (other requests,
# /healthz included, would wait); a slice of 5,000 values takes about 5 ms. Slices on the loop rather than a
# worker thread: a thread busy in Python would take the GIL from the loop for up to 5 ms at each of its turns.
CELLS_ON_LOOP = 5_000


async def in_slices(items: Sequence[Any], columns: int, work: Callable[[Sequence[Any]], list[Any]]) -> list[Any]:
    """`work` over `items` (rows of `columns` values each), a slice of at most CELLS_ON_LOOP values at a time, the
    event loop free to run other tasks between slices."""
    size = max(1, CELLS_ON_LOOP // max(1, columns))
    if len(items) <= size:
        return work(items)
    out: list[Any] = []
    for start in range(0, len(items), size):
        if start:
            await asyncio.sleep(0)
        out.extend(work(items[start:start + size]))
    return out
