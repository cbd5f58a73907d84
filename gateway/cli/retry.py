"""A command that only reads the store, run again when a SQLite store is busy for a moment."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy.exc import OperationalError


def read_only(run: Callable[[], int], attempts: int = 5) -> int:
    """Run a command that only reads the store, again when a SQLite store is busy for a moment
    (another process closing it checkpoints the WAL under an exclusive lock). Never for writes."""
    for attempt in range(attempts):
        try:
            return run()
        except OperationalError as exc:
            if "database is locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")
