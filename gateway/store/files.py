"""A SQLite store's files, held to the ones this process opened.

A process that has the store open keeps writing to the files it opened, whatever the path names now: after
`rm agentgate.db*` (or `mv other.db agentgate.db`, or the folder removed) a gateway answered 200 on and on, its
records going to a file nobody can open again. So the files at the configured path — the database, its `-wal`
and its `-shm` — are recorded when the store is first opened (device and inode, `StoreFile.opened`), and checked
against the path (one stat() each, about a microsecond) before every commit on the store, before every new
connection is opened (so none is made to a file at the path that is not the store: SQLite would create an empty
one in place of a deleted file), and by /readyz. A difference is final for this process: every commit is
refused (no record is written anywhere but the store) and so every request answers 503, /readyz says why, and
the log says it once. Only a restart opens whatever is at the path then (docs: README, Operations).

Why not recover when the file comes back? A file restored from a backup is another file, whose trail may end
before records this process wrote to the lost one; connections opened while the path named another file may
still be in the pool. Only a restart starts clean. (A stat() that fails for another reason, EIO or EACCES, fails
that one commit, not the process: it is not known that the file changed.)

The process also keeps one plain connection to the store open for as long as the engine lives (the anchor):
SQLite deletes the -wal and -shm files when the last connection to them closes, and makes new ones at the next
open (another inode), which must not read as a replaced store; and an inode the anchor holds open is never
given to another file, so an identity that matches is the very file opened.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.common.errors import Unavailable

log = logging.getLogger("agentgate.store")

SUFFIXES = ("", "-wal", "-shm")
Identity = tuple[int, int]  # st_dev, st_ino


class StoreLost(Unavailable):
    """The store's file at its path is not the one this process opened (or cannot be checked): 503."""


class StoreFile:
    def __init__(self, path: Path, busy_seconds: float = 10.0):
        self.path = path
        self._busy = busy_seconds  # the engine's own lock wait: the anchor's open waits no longer
        self._paths = [Path(f"{path}{suffix}") for suffix in SUFFIXES]
        self.opened: list[Identity | None] | None = None  # per file of _paths; None: not there when opened
        self.lost: str | None = None  # why, once the files at the path are found not to be the ones opened
        self._anchor: sqlite3.Connection | None = None

    def open(self) -> None:
        """Record the files at the path, once the store's first connection has made them (WAL mode: the
        database, its -wal and -shm), and hold them open (the anchor)."""
        if self.opened is not None:
            return
        anchor = sqlite3.connect(self.path, timeout=self._busy, check_same_thread=False)
        try:
            anchor.execute("SELECT count(*) FROM sqlite_master").fetchall()  # opens the -wal and -shm too
        except BaseException:
            anchor.close()
            raise
        self._anchor = anchor
        self.opened = [_identity(p) for p in self._paths]

    def problem(self) -> str | None:
        """Why the store at the path is not the one opened (then final: see `lost`), or None. Raises StoreLost for
        a check that cannot be made (stat() failing other than with "no such file")."""
        if self.lost is not None or self.opened is None:
            return self.lost
        for path, was in zip(self._paths, self.opened, strict=True):
            if was is None:
                continue
            try:
                now = _identity(path, missing_ok=False)
            except (FileNotFoundError, NotADirectoryError):
                folder = path.parent
                gone = f"its folder {folder} is gone" if not folder.is_dir() else f"{path.name} is gone"
                return self._lose(f"{gone} (deleted or moved)")
            except OSError as exc:
                raise StoreLost("the store cannot be checked; no data is served without an audit record",
                                reason=f"store file {path} cannot be checked: {exc}") from exc
            if now != was:
                return self._lose(f"{path.name} is another file now (replaced, or deleted and made again)")
        return None

    def check(self) -> None:
        """Raise StoreLost unless the files at the path are the ones opened."""
        why = self.problem()
        if why is not None:
            raise StoreLost("the gateway's store is not the file it opened; no data is served without an audit "
                            "record", reason=f"store file lost: {why}")

    def _lose(self, why: str) -> str:
        self.lost = f"{why}: {self.path} is not the store this process opened; restart the gateway"
        log.error("the SQLite store is lost (%s): every request is refused (503) until the gateway is restarted, "
                  "and no record is written meanwhile", self.lost)
        return self.lost

    def close(self) -> None:
        """The engine was disposed of: let the files go. A lost store stays lost."""
        if self._anchor is not None:
            self._anchor.close()
            self._anchor = None
        if self.lost is None:
            self.opened = None


def _identity(path: Path, *, missing_ok: bool = True) -> Identity | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise
    return st.st_dev, st.st_ino


_GUARDS: weakref.WeakKeyDictionary[Engine, StoreFile] = weakref.WeakKeyDictionary()


def guard(engine: AsyncEngine, database: str, busy_seconds: float = 10.0) -> None:
    """Hold a SQLite store engine to the files at `database` as first opened (see the module's docstring)."""
    store = _GUARDS[engine.sync_engine] = StoreFile(Path(database), busy_seconds)

    @event.listens_for(engine.sync_engine, "do_connect")
    def _before_connect(_dialect: Any, _record: Any, _cargs: Any, _cparams: Any) -> None:
        store.check()  # a file deleted would be made again, empty, by SQLite's open

    @event.listens_for(engine.sync_engine, "connect")
    def _connected(_dbapi_conn: Any, _record: Any) -> None:
        if store.opened is None:
            store.open()
        store.check()

    @event.listens_for(engine.sync_engine, "commit")
    def _before_commit(_conn: Any) -> None:
        store.check()  # the last moment before the transaction (an audit group) is committed

    @event.listens_for(engine.sync_engine, "engine_disposed")
    def _disposed(_engine: Any) -> None:
        store.close()


def store_file(engine: AsyncEngine) -> StoreFile | None:
    """The guard of a SQLite store engine (None for PostgreSQL)."""
    return _GUARDS.get(engine.sync_engine)
