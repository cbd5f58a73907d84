"""Opening a SQL source: its async engine (read-only, time-limited sessions; the source's one pool) and, for a
SQLite source with a seed script, its database file made on first run."""

from __future__ import annotations

import fcntl
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def make_engine(url: str, *, timeout_seconds: float, pool_size: int = 10, read_only: bool = True) -> AsyncEngine:
    """An async engine whose sessions are read-only and time-limited on the server too."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    connect_args: dict[str, Any] = {}
    kwargs: dict[str, Any] = {}
    if backend == "postgresql":
        settings = {"statement_timeout": str(int(timeout_seconds * 1000))}
        if read_only:
            settings["default_transaction_read_only"] = "on"
        connect_args["server_settings"] = settings
        connect_args["timeout"] = min(timeout_seconds, 10.0)
        connect_args["command_timeout"] = timeout_seconds
        # Autocommit: one statement, one round trip; no BEGIN/ROLLBACK around every read. No overflow:
        # a connection opened for a burst is closed again on return, and opening one costs more than a read.
        # This pool is the source's only one: the reader (PgReader) borrows its connections as asyncpg's own,
        # so `pool_size` bounds what every interface holds together. JSON comes back as its text, as asyncpg
        # gives it (SQLAlchemy's codec would make it a dict, then written out as Python's repr).
        kwargs.update(pool_size=pool_size, max_overflow=0, pool_timeout=timeout_seconds,
                      isolation_level="AUTOCOMMIT", json_deserializer=_json_text)
    elif backend in ("mysql", "mariadb"):
        init = f"SET SESSION max_statement_time={timeout_seconds:g}"
        if read_only:
            init += ", SESSION tx_read_only=1"
        connect_args["init_command"] = init
        connect_args["connect_timeout"] = max(1, int(min(timeout_seconds, 10.0)))
        kwargs.update(pool_size=pool_size, max_overflow=0, pool_timeout=timeout_seconds, pool_recycle=3600,
                      isolation_level="AUTOCOMMIT")
    elif backend == "sqlite" and read_only:
        # Opened through a URI in read-only mode: the source file is never written by the gateway.
        parsed = parsed.set(database=f"file:{parsed.database}?mode=ro", query={"uri": "true"})
    return create_async_engine(parsed, **kwargs, connect_args=connect_args)


def seed_sqlite(url: str, seed: Path) -> bool:
    """Create a SQLite source from a seed script on first run; True when it did.

    Replicas (and a supervisor and its workers) started at once on a fresh folder all get here: one seeds, under
    an exclusive lock on a file beside the database, and the others wait for it and then find the database made.
    Without the lock two of them wrote the same temporary file (`table ... already exists`) or one renamed it
    from under the other (`attempt to write a readonly database`)."""
    database = make_url(url).database
    assert database
    target = Path(database)
    if target.exists():  # made only by the rename below: whole, never half-seeded
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.with_name(target.name + ".seed-lock")
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        seeded = not target.exists()  # else another process seeded it while this one waited
        if seeded:
            tmp = target.with_name(target.name + ".seeding")
            tmp.unlink(missing_ok=True)  # left by a seed that crashed
            conn = sqlite3.connect(tmp)
            try:
                conn.executescript(seed.read_text(encoding="utf-8"))
                conn.commit()
            finally:
                conn.close()
            tmp.replace(target)  # atomic: a crash mid-seed never leaves a half-made source
        # Safe to remove once the database exists: whoever still waits on this file, or makes a new one, looks
        # for the database first once it holds the lock, and finds it. (A failed seed leaves it: harmless.)
        lock_path.unlink(missing_ok=True)
    return seeded


def _json_text(value: str) -> str:
    return value

