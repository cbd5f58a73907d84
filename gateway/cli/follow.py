"""`agentgate audit export --follow`: the trail to stdout as JSON lines as it commits, for a SIEM's collector.

The lines are `audit export --format jsonl`'s (gateway/audit/export.py), written and flushed a page at a time,
oldest first, each record once; a record reaches stdout at most gateway/audit/follow.py's POLL_SECONDS after
its commit. A collector keeps the last id it took and starts the next run with `--after ID`. Once following,
a store gone away (restarted, failed over, silent) costs one line on stderr; the follower tries again, waiting
RETRY_FIRST_SECONDS, then twice as long each time up to RETRY_MAX_SECONDS, says so in a second line when the
store answers again, and goes on after the last id it printed. SIGINT, SIGTERM and stdout closed by its reader
end it with exit 0, without a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import sys
from typing import Any, TextIO

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit import POLL_SECONDS, AuditFilter, Follow, jsonl_line
from gateway.cli.exits import EXIT_OK
from gateway.common.textsafe import terminal

RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
READ_TIMEOUT_SECONDS = 30.0  # a read the store does not answer within this: a store gone silent, lost too
# What a store gone away raises: the driver's errors come wrapped by SQLAlchemy, a refused or cut connection
# may come as an OSError, a silent one as our timeout.
STORE_LOST: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError, TimeoutError)


async def follow(engine: AsyncEngine, after: int, f: AuditFilter | None, out: TextIO = sys.stdout) -> int:
    """Follow until a signal or a closed stdout: the exit code (0)."""
    follower = Follow(engine, after, f)
    await follower.start()  # a store that cannot be reached at start is the command's failure (exit 1)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    work = asyncio.create_task(_follow(engine, follower, out))
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        stopped.cancel()
        work.cancel()  # a signal: stop where it is (what was printed was flushed)
        with contextlib.suppress(asyncio.CancelledError):
            await work  # anything else it raised goes on up
    return EXIT_OK if work.cancelled() else work.result()


async def _follow(engine: AsyncEngine, follower: Follow, out: TextIO) -> int:
    wait: float | None = None  # while the store is away: how long until the next try
    while True:
        printed = follower.after
        try:
            async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                page = await follower.read()
        except STORE_LOST as exc:
            if wait is None:
                _say(f"the store cannot be reached ({_why(exc)}); trying again, then following on after "
                     f"record {printed}")
            wait = RETRY_FIRST_SECONDS if wait is None else min(2 * wait, RETRY_MAX_SECONDS)
            await _drop_connections(engine)
            await asyncio.sleep(wait)
            continue
        if wait is not None:
            _say(f"the store answers again; following on after record {printed}")
            wait = None
        for fault in page.breaks:
            _say(fault)
        if page.records and not _write(out, "".join(jsonl_line(rec) for rec in page.records)):
            return EXIT_OK
        if not page.full:
            if _reader_gone(out):
                return EXIT_OK
            await asyncio.sleep(POLL_SECONDS)


def _write(out: TextIO, text: str) -> bool:
    """Written and flushed; False when stdout's reader is gone (stdout is then pointed at /dev/null, so that
    the interpreter's own flush at exit finds nothing to complain of)."""
    try:
        out.write(text)
        out.flush()
        return True
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
            os.close(devnull)
        return False


def _reader_gone(out: TextIO) -> bool:
    """Whether stdout is a pipe whose reader has closed it, asked while idle: a follower with nothing to write
    would otherwise learn it only at the next record."""
    try:
        poller = select.poll()
        poller.register(out.fileno(), select.POLLOUT)
        events = poller.poll(0)
    except (OSError, ValueError, AttributeError):  # no descriptor to ask about (a test's captured stream)
        return False
    return any(mask & (select.POLLERR | select.POLLHUP) for _, mask in events)


async def _drop_connections(engine: AsyncEngine) -> None:
    """The pool's connections to a store that went away are of no more use: let them go, without waiting on
    a peer that may never answer."""
    with contextlib.suppress(Exception, TimeoutError):
        async with asyncio.timeout(5.0):
            await engine.dispose()


def _why(exc: BaseException) -> str:
    first: Any = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _say(line: str) -> None:
    with contextlib.suppress(OSError):
        print(f"agentgate: {terminal(line)}", file=sys.stderr, flush=True)
