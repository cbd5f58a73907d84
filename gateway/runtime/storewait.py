"""A store that is not there when the gateway starts.

`agentgate serve` tries the store before it binds its port: a store it cannot reach is one line on stderr
(``unreachable_line``: which store, where, why, what to do) and exit 3. With ``--wait-for-store SECONDS`` it
starts at once instead, and ``Waiting`` holds back everything that needs the store (its tables, the audit
trail, the change feed, the policy and the gateway itself) until the store answers. Meanwhile `/healthz`
answers 200, `/readyz` 503 with the reason, and every other request 503 ``unavailable``: nothing is served,
as no record of it could be written. The store is tried again with a backoff (0.1 s, doubling to 2 s); once
it answers, the gateway starts as it would have at once and turns ready. Past SECONDS it exits 3 with the same
one line. uvicorn accepts no connection until the lifespan's start-up has returned, which is why the waiting
is done in the background, after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from gateway.common import logformat, randomness
from gateway.common.errors import error_body
from gateway.common.textsafe import terminal
from gateway.store import make_store_engine, metadata, ping

log = logging.getLogger("agentgate.store")

STARTUP_FAILURE = 3  # uvicorn's exit status for a start that failed; `serve` keeps it for a store not there
FIRST_DELAY, MAX_DELAY = 0.1, 2.0  # seconds between two tries of the store: doubling from the first to the most
# What a store not (yet) there raises: refused or unanswered connections, a server still starting, a database
# not created yet, wrong credentials (which an orchestrator may yet put right).
NOT_THERE: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError, asyncpg.PostgresError,
                                                asyncpg.InterfaceError)
_KINDS = {"postgresql": "PostgreSQL", "sqlite": "SQLite", "mysql": "MySQL", "mariadb": "MariaDB"}
_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}
# The only paths answered while waiting besides the 503s: liveness and metrics need no store.
_PASSED = frozenset({"/healthz", "/metrics"})


def kind(url: str) -> str:
    backend = make_url(url).get_backend_name()
    return _KINDS.get(backend, backend)


def where(url: str) -> str:
    """The store for an operator: its kind, host and port, database (or file); never its credentials."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return f"SQLite at {parsed.database or ':memory:'}"
    host = parsed.host or str(parsed.query.get("host") or "localhost")
    port = parsed.port or _PORTS.get(backend)
    return f"{kind(url)} at {host}{f':{port}' if port else ''}" + (
        f", database {parsed.database}" if parsed.database else "")


def _chain(exc: BaseException) -> list[BaseException]:
    """The error and those it wraps: SQLAlchemy's `orig`, the driver's `__cause__`."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 6 and seen not in chain:
        chain.append(seen)
        seen = getattr(seen, "orig", None) or seen.__cause__
    return chain


def cause(exc: BaseException) -> str:
    """Why, in a few words: the innermost error SQLAlchemy and the driver wrap."""
    chain = _chain(exc)
    for err in chain:
        if isinstance(err, ConnectionRefusedError):
            return "connection refused (nothing listens there)"
        if isinstance(err, TimeoutError):
            return "no answer in time"
        if isinstance(err, OSError) and err.strerror:
            return err.strerror[0].lower() + err.strerror[1:]
    text = str(chain[-1]).strip().splitlines()
    first = text[0] if text else ""
    if first.startswith("<class "):  # SQLAlchemy's adapted driver error: "<class 'asyncpg....'>: message"
        first = first.partition(": ")[2]
    return first[:160] or type(chain[-1]).__name__


def unreachable_line(url: str, exc: BaseException, waited: float | None = None) -> str:
    """The one line `serve` prints when the store is not there: which store, why, what to do."""
    sqlite = make_url(url).get_backend_name() == "sqlite"
    # The server answered, and said no (a role, a password, a database not there): not a network matter.
    refused = any(isinstance(err, asyncpg.PostgresError) for err in _chain(exc))
    what = "refused the gateway" if refused else "could not be reached"
    within = f" within {waited:g} s" if waited is not None else ""
    if sqlite:
        todo = "check [store] url and that its folder exists and is writable"
    elif refused:
        todo = "correct [store] url (user, password, database), or the store's roles and databases"
    else:
        todo = "start it, or correct [store] url" + (
            "" if waited is not None else "; `serve --wait-for-store SECONDS` waits for a store that starts later")
    return terminal(f"agentgate: the store ({where(url)}) {what}{within}: {cause(exc)}; {todo}")


async def probe(engine: AsyncEngine, seconds: float) -> None:
    """A connection and `SELECT 1` within `seconds`, else the error."""
    async with asyncio.timeout(seconds):
        await ping(engine)


async def report(url: str, seconds: float) -> tuple[list[str], str | None]:
    """For `check`: a line saying whether the store is reachable and one whether it has its tables (tables or
    columns `serve` has yet to make are no fault: it makes them at start), or the fault: a store that cannot be
    reached. Reads only: a SQLite file not there is not made."""
    parsed = make_url(url)
    said = where(url)
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or not await asyncio.to_thread(Path(parsed.database).is_file):
            return [f"store: {said}: no file yet (`agentgate serve` makes it, and its tables)"], None
        engine = create_async_engine(parsed, connect_args={"timeout": seconds})  # no WAL switch: reading only
    else:
        engine = make_store_engine(url, wait_seconds=seconds)
    try:
        async with asyncio.timeout(seconds + 1.0), engine.connect() as conn:
            have = await conn.run_sync(_columns)
    except Exception as exc:
        return [], terminal(f"store: {said}: cannot be reached: {cause(exc)}")
    finally:
        await engine.dispose()
    missing = [t.name for t in metadata.sorted_tables if t.name not in have]
    columns = [f"{t.name}.{c.name}" for t in metadata.sorted_tables if t.name in have
               for c in t.columns if c.name not in have[t.name]]
    if not have:
        tables = "store tables: none yet (`agentgate serve` makes them at start)"
    elif missing or columns:
        tables = (f"store tables: {', '.join(missing + columns)} not there yet (`agentgate serve` makes them, or "
                  "upgrades an earlier release's store, at start)")
    else:
        tables = f"store tables: all {len(metadata.tables)} there: ok"
    return [f"store: {said}: reachable: ok", tables], None


def _columns(conn: Any) -> dict[str, set[str]]:
    inspector = inspect(conn)
    known = set(metadata.tables)
    return {name: {c["name"] for c in inspector.get_columns(name)} for name in inspector.get_table_names()
            if name in known}


def give_up(line: str) -> None:
    """The process ends with the one line, at once: nothing that needs the store has started, so nothing is
    lost (no record was written, none is queued); a worker's supervisor takes status 3 as a failed start and
    stops the others."""
    logformat.say(line, logging.ERROR)  # one JSON object where the log is JSON
    sys.stderr.flush()
    logging.shutdown()
    os._exit(STARTUP_FAILURE)


class Waiting:
    """The gateway's start held back until the store answers (`serve --wait-for-store SECONDS`): see the module
    doc. `start(stack)` starts everything that needs the store, entering what it opens into `stack`."""

    def __init__(self, url: str, engine: AsyncEngine, seconds: float, timeout: float,
                 start: Callable[[contextlib.AsyncExitStack], Awaitable[None]],
                 on_ready: Callable[[], None], on_give_up: Callable[[str], None] = give_up):
        self._url, self._engine, self._seconds, self._timeout = url, engine, seconds, timeout
        self._start, self._on_ready, self._give_up = start, on_ready, on_give_up
        self._began = time.monotonic()
        self._last = "not tried yet"
        self._task: asyncio.Task[None] | None = None
        self._ready = False
        self._stopping = asyncio.Event()

    def begin(self) -> None:
        self._task = asyncio.create_task(self._run(), name="wait-for-store")

    async def close(self) -> None:
        """At shutdown: stop waiting, or close what was started (before the store's engine is disposed)."""
        if self._task is None:
            return
        if self._ready:
            self._stopping.set()  # the task closes what it started: some of it (MCP's task group) must be
        else:  # closed by the task that entered it
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def reason(self) -> str:
        left = max(0.0, self._began + self._seconds - time.monotonic())
        return f"waiting for the store ({kind(self._url)}): {self._last}; {left:.0f} s left before giving up"

    async def answer(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer a request while waiting; False for those that need no store (passed on)."""
        path = scope.get("path", "")
        if path in _PASSED:
            return False
        if path == "/readyz":
            body = {"status": "unavailable", "reason": self.reason()}
            await JSONResponse(body, 503, headers={"Retry-After": "1"})(scope, receive, send)
            return True
        request_id = randomness.request_id()
        payload = error_body("unavailable", "the gateway is starting: its store is not reachable yet; no request "
                             "is served until it is", request_id)
        await JSONResponse(payload, 503, headers={"X-Request-Id": request_id, "Cache-Control": "no-store",
                                                  "Retry-After": "1"})(scope, receive, send)
        return True

    async def _run(self) -> None:
        delay = FIRST_DELAY
        while True:
            left = self._began + self._seconds - time.monotonic()
            try:
                await probe(self._engine, max(0.1, min(self._timeout, left)))
                started = contextlib.AsyncExitStack()
                try:
                    await self._start(started)
                except BaseException:
                    await started.aclose()  # what the try opened, closed before the next
                    raise
            except NOT_THERE as exc:
                self._last = cause(exc)
                failure: BaseException = exc
            except Exception as exc:  # not the store: fail as a start without waiting would
                log.exception("start-up failed")
                self._give_up(f"agentgate: start-up failed: {type(exc).__name__}: {str(exc)[:200]}")
                return
            else:
                log.info("the store (%s) answered after %.1f s; agentgate is ready", where(self._url),
                         time.monotonic() - self._began)
                self._ready = True
                self._on_ready()
                try:
                    await self._stopping.wait()
                finally:
                    await started.aclose()
                return
            left = self._began + self._seconds - time.monotonic()
            if left <= 0:
                self._give_up(unreachable_line(self._url, failure, self._seconds))
                return
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, MAX_DELAY)
