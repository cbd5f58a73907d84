"""The access log: one line per HTTP request (logger `agentgate.access`, at INFO), and the request every other
line logged while it is served belongs to (common/logformat.py).

app.py's GatewayApp runs each HTTP request through `logged`, the agents' hot path included (it skips
Starlette's middleware, not this). The line says: the method; the path as it was sent (percent-encodings
intact, no query string: a query string may carry what an admin filters on or what a proxied source is
asked); the status (null when the client left before an answer started); the bytes of the answer's body; the
time from the request's start to its answer's last byte; the request id the answer carries (X-Request-Id,
also the audit record's); the agent and dataset the core saw; the client's address as caller.py decides it
(a trusted proxy's X-Forwarded-For) and its user agent (capped as the record keeps it). uvicorn's own access
log is off (cli/serve.py): one line per request, not two.

A request only notes its line; the lines are logged a batch at a time, at most FLUSH_SECONDS later, each with
the time its request ended. Logged one by one, each line ran logging's and the formatter's code cold, between
two reads, at some 100 µs of CPU (a tenth of a read's); a batch runs it warm (README, Performance). What is
pending is logged when the app stops and when the process exits; a process killed outright loses at most
FLUSH_SECONDS of access lines (the audit trail, written before each answer, loses none).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import time
from collections import deque
from collections.abc import Awaitable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.common import logformat
from gateway.common.logformat import AccessLine
from gateway.common.textsafe import cap
from gateway.transports.caller import peer_of

ACCESS = logging.getLogger("agentgate.access")
# Off until `serve` turns it on (cli/logs.uvicorn_config): the access log is the server's. An app hosted in a
# process that logs at INFO for its own ends (a test run, a command run in process, another ASGI server with its
# own access log) writes no line it did not ask for, at a time (FLUSH_SECONDS later) no caller expects. Only when
# nothing set its level yet: a `serve --workers N` worker applies serve's logging config before it imports this.
if ACCESS.level == logging.NOTSET:
    ACCESS.setLevel(logging.WARNING)
PATH_MAX = 1024  # characters of a path kept (textsafe.cap: its start, its length and a digest beyond)
FLUSH_SECONDS = 0.2  # the longest an access line waits to be logged (longer: larger batches, cheaper lines)
PENDING_MAX = 1024  # lines waiting at most (each a few KiB at most): beyond, logged at once


class _Answer:
    """`send`, noting what the access line tells of the answer as it passes."""

    __slots__ = ("_send", "bytes", "request_id", "status")

    def __init__(self, send: Send):
        self._send = send
        self.status: int | None = None
        self.request_id: str | None = None
        self.bytes = 0

    def send(self, message: Message) -> Awaitable[None]:
        """Not a coroutine itself: what the wrapped `send` returns is awaited (no frame of its own per message)."""
        if message["type"] == "http.response.body":
            self.bytes += len(message.get("body", b""))
        elif message["type"] == "http.response.start":
            self.status = message["status"]
            for key, value in message.get("headers") or ():
                if key == b"x-request-id":  # as every answer names it (Starlette writes header names lowercase)
                    self.request_id = bytes(value).decode("latin-1")
                    break
        return self._send(message)


async def logged(app: ASGIApp, state: Any, scope: Scope, receive: Receive, send: Send) -> None:
    """`app` serving the HTTP request, within its log context, and its access line once it is answered."""
    context, token = logformat.opened()
    try:
        if not ACCESS.isEnabledFor(logging.INFO):  # [log] access = false, or a level above info
            await app(scope, receive, send)
            return
        started = time.perf_counter()
        answer = _Answer(send)
        try:
            await app(scope, receive, answer.send)
        finally:
            _pending.add(_noted(scope, state, answer, context, time.perf_counter() - started))
    finally:
        logformat.closed(context, token)


# A request's access line as noted: when it ended, then AccessLine's fields in their order (made into one when
# logged: a tuple costs the request a fraction of a dataclass's constructor, run cold).
Noted = tuple[float, str, str, int | None, int, float, str | None, str | None, str | None, str | None, str | None]


def _noted(scope: Scope, state: Any, answer: _Answer, context: logformat.RequestContext, seconds: float) -> Noted:
    user_agent: bytes | None = None
    forwarded: list[str] = []
    for key, value in scope.get("headers") or ():
        if key == b"user-agent":
            if user_agent is None:
                user_agent = value
        elif key == b"x-forwarded-for":
            forwarded.append(value.decode("latin-1"))
    client = peer_of(scope)
    if forwarded:  # believed only from a trusted proxy (none known while the gateway waits for its store)
        proxies = getattr(state, "proxies", None)
        if proxies:
            client = proxies.client(client, ",".join(forwarded))
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    path = cap(raw.partition(b"?")[0].decode("latin-1"), PATH_MAX) or ""
    return (time.time(), scope.get("method", ""), path, answer.status, answer.bytes, round(seconds * 1000, 2), client,
            cap(user_agent.decode("latin-1")) if user_agent is not None else None,
            answer.request_id or context.request_id, context.agent(), context.dataset())


class _Pending:
    """The access lines noted and not yet logged. A deque: requests served on other threads' loops (tests, a host
    running several apps) may note lines while one is being flushed."""

    def __init__(self) -> None:
        self._lines: deque[Noted] = deque()
        self._timed = False  # a flush is due (a timer runs on the loop that noted the first line since the last)

    def add(self, noted: Noted) -> None:
        lines = self._lines
        lines.append(noted)
        if len(lines) >= PENDING_MAX:
            self.flush()
        elif not self._timed:
            self._timed = True
            asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Every line noted, logged now, each record with its request's end as its time."""
        self._timed = False
        lines = self._lines
        while lines:
            try:
                noted = lines.popleft()
            except IndexError:  # another thread took the last one
                return
            ACCESS.handle(_record(noted[0], AccessLine(*noted[1:])))


def _record(at: float, line: AccessLine) -> logging.LogRecord:
    """The line's record, as ACCESS.info would make it at `at`, from a copy of one made once: what LogRecord's
    constructor works out again each time (the code's file and module, the thread and the process) is the same for
    every access line of a process (the flush runs on its event loop), and costs more than the line's own fields."""
    record = logging.LogRecord.__new__(logging.LogRecord)
    record.__dict__.update(_TEMPLATE)
    record.created, record.msecs = at, (at - int(at)) * 1000 // 1
    record.relativeCreated = (at - _TEMPLATE["created"]) * 1000 + _TEMPLATE["relativeCreated"]
    record.args = (line.method, line.path, "-" if line.status is None else line.status)
    record.access = line
    return record


_TEMPLATE = ACCESS.makeRecord(ACCESS.name, logging.INFO, __file__, 0, "%s %s %s", (), None).__dict__
_pending = _Pending()
flush = _pending.flush  # what app.py calls as the app stops
atexit.register(flush)
