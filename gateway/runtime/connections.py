"""Bounded connections: what one client can make `agentgate serve` hold open.

uvicorn (with httptools) gives a connection as long as it likes to send a request: a connection that sends
nothing, or half a request line, or headers a byte at a while, is kept for ever, and headers are taken
without limit of size. Enough of them hold every file descriptor, and then no agent connects (slowloris).
``BoundedHttpProtocol`` is uvicorn's httptools protocol with the bounds ``[server]`` sets:

- ``header_timeout_seconds``: a request's line and headers must arrive within it, counted from the
  connection's start or the request's first byte; else 408 and the connection is closed (nothing sent at
  all: closed). ``body_timeout_seconds``: its body, counted from the end of its headers.
- ``keep_alive_seconds``: an idle keep-alive connection is closed (uvicorn's own timer).
- ``max_header_bytes``: larger request heads are answered 431 and the connection closed.
- ``max_connections``: a connection beyond it first closes the oldest connection that is not being answered
  (idle, or still sending its request: what an attacker holds), so that an agent whose request comes whole
  is served; only when every connection is being answered is the newcomer refused (503, Retry-After: 1).

None of these reach the gateway: no request was read, so there is no audit record. They are logged, a line
per 10 s at most (``agentgate.connections``). The open-file limit is raised to its hard limit at start
(``raise_open_files``); ``max_connections`` is kept below it, leaving room for the store's and the sources'
pools (``capacity``), and `/readyz` says so when the limit is low.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import resource
import sys
import time
import weakref
from collections import Counter, OrderedDict
from typing import Any

import httptools
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.config import Settings
from gateway.runtime import parentwatch

log = logging.getLogger("agentgate.connections")

# File descriptors kept for the process itself (stdio, epoll, the listening socket, the policy watcher, logs,
# the JWKS client) and for the store's pool (10 + 10 overflow), its audit writer and change channel; each
# source's pool counts once (`pool_size`: the one pool every interface reads the source through).
RESERVED_FDS = 64 + 24
_LOG_EVERY = 10.0  # seconds between two log lines of connections closed or refused
# Phases of a connection.
_HEAD, _BODY, _DONE = 0, 1, 2  # reading a request's head, its body; read whole
_SCAN = 32  # connections looked at, oldest first, for one to close at the cap


@dataclasses.dataclass(frozen=True)
class Bounds:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive: float = 5.0
    max_connections: int = 1024
    max_header_bytes: int = 65_536


@dataclasses.dataclass(frozen=True)
class Capacity:
    """The connection cap a process can keep, for its open-file limit."""

    open_files: int  # RLIMIT_NOFILE (soft), after raise_open_files
    hard: int
    reserved: int  # kept for everything but client connections
    configured: int  # [server] max_connections
    max_connections: int  # what is enforced: configured, or less when the open files do not allow it

    @property
    def low(self) -> bool:
        return self.max_connections < self.configured

    def detail(self) -> dict[str, Any]:
        return {"open_files": self.open_files, "open_files_hard": self.hard, "reserved": self.reserved,
                "max_connections": self.max_connections, "configured": self.configured, "low": self.low}


def raise_open_files() -> tuple[int, int]:
    """The soft open-file limit raised to the hard one (a process may; systemd and Docker set hard limits far
    over the usual soft 1,024). Returns (soft, hard) as they are then."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # An unlimited hard limit the kernel refuses as a soft one: the soft one stays.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def capacity(settings: Settings) -> Capacity:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    reserved = RESERVED_FDS + sum(s.pool_size for s in settings.sources.values())
    configured = settings.server.max_connections
    room = configured if soft == resource.RLIM_INFINITY else max(1, min(configured, soft - reserved))
    return Capacity(open_files=soft, hard=hard, reserved=reserved, configured=configured, max_connections=room)


def bounds(settings: Settings, room: Capacity) -> Bounds:
    server = settings.server
    return Bounds(header_timeout=server.header_timeout_seconds, body_timeout=server.body_timeout_seconds,
                  keep_alive=server.keep_alive_seconds, max_connections=room.max_connections,
                  max_header_bytes=server.max_header_bytes)


class ServerConfig(uvicorn.Config):
    """uvicorn's Config with the bounds its protocol enforces; pickled to worker processes with it."""

    def __init__(self, app: Any, *, limits: Bounds, **kwargs: Any):
        super().__init__(app, http=BoundedHttpProtocol, h11_max_incomplete_event_size=limits.max_header_bytes,
                         **kwargs)
        self.bounds = limits

    def load(self) -> None:
        # In a worker of `serve --workers N` (a multiprocessing child of uvicorn's supervisor), as it starts: it
        # stops when the supervisor dies, rather than serve on unsupervised and hold the port.
        parent = multiprocessing.parent_process()
        if self.workers > 1 and parent is not None and parent.pid is not None:
            parentwatch.watch(parent.pid, grace=(self.timeout_graceful_shutdown or 0) + ORPHAN_SHUTDOWN_SECONDS)
        super().load()


# An orphaned worker's stop: uvicorn's graceful shutdown (timeout_graceful_shutdown), then this long for the
# lifespan's (the audit records still queued written), before it exits regardless.
ORPHAN_SHUTDOWN_SECONDS = 15.0


def serve(config: ServerConfig) -> None:
    """What uvicorn.run does with its Config, for ours: one server, or a supervisor of worker processes."""
    server = uvicorn.Server(config)
    try:
        if config.workers > 1:
            from uvicorn.supervisors import Multiprocess

            supervisor = Multiprocess(config, sockets=[config.bind_socket()])
            supervisor.run()
            # A worker that failed its start (status 3: a store not there past --wait-for-store, say) stopped the
            # supervisor: so does serve, with that status.
            if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
                sys.exit(STARTUP_FAILURE)
        else:
            server.run()
    except KeyboardInterrupt:
        pass
    if not server.started and config.workers == 1:
        sys.exit(STARTUP_FAILURE)


class _Tally:
    """Connections closed or refused, logged a line per _LOG_EVERY seconds at most, whatever a client does."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.logged = -_LOG_EVERY

    def add(self, what: str) -> None:
        self.counts[what] += 1
        now = time.monotonic()
        if now - self.logged >= _LOG_EVERY:
            log.warning("connections closed or refused since the last line: %s",
                        ", ".join(f"{n} {what}" for what, n in sorted(self.counts.items())))
            self.counts.clear()
            self.logged = now


TALLY = _Tally()
# Per server: its connections that are not being answered, oldest first (the ones to close at the cap).
_WAITING: weakref.WeakKeyDictionary[ServerState, OrderedDict[BoundedHttpProtocol, None]] = (
    weakref.WeakKeyDictionary())


def _plain(status: bytes, message: str, *extra: bytes) -> bytes:
    body = message.encode()
    return b"".join([b"HTTP/1.1 ", status, b"\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n",
                     *extra, b"content-length: ", str(len(body)).encode(), b"\r\n\r\n", body])


TIMED_OUT = _plain(b"408 Request Timeout", "the request did not arrive in time")
TOO_LARGE = _plain(b"431 Request Header Fields Too Large", "the request's headers are over the size limit")
MALFORMED = _plain(b"400 Bad Request", "Invalid HTTP request received.")
AT_CAP = _plain(b"503 Service Unavailable", "too many open connections; try again shortly", b"retry-after: 1\r\n")


class _HeadTooLarge(Exception):
    """Raised in httptools' callbacks to stop parsing a head over max_header_bytes."""


class BoundedHttpProtocol(HttpToolsProtocol):
    def __init__(self, config: uvicorn.Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None):
        super().__init__(config, server_state, app_state, _loop)
        self._bounds: Bounds = getattr(config, "bounds", None) or Bounds()
        self.timeout_keep_alive = self._bounds.keep_alive  # type: ignore[assignment]  # uvicorn types it int
        waiting = _WAITING.get(server_state)
        if waiting is None:
            waiting = _WAITING[server_state] = OrderedDict()
        self._waiting = waiting
        self._phase = _HEAD  # of the request being read
        self._head_bytes = 0  # bytes received while reading its head (its own, or more: see _head_over)
        self._answering = False  # a request read whole and not yet answered whole
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._bounds.max_connections and not self._close_one_waiting():
            self._refuse(AT_CAP, "refused at the connection cap")
            return
        self._waiting[self] = None
        self._arm(self._bounds.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._waiting.pop(self, None)
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own, but for what a head over the limit and a malformed request get (431 / 400, a line per
        # _LOG_EVERY seconds in the log rather than a warning each), and the timers.
        self._unset_keepalive_if_required()
        if self._phase == _HEAD:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse(TOO_LARGE, "heads over max_header_bytes")
            else:
                self._refuse(MALFORMED, "malformed requests")
            return
        if self._phase == _HEAD and self._head_over():
            self._refuse(TOO_LARGE, "heads over max_header_bytes")
        elif self._timer is None and not self.transport.is_closing():
            if self._phase == _HEAD:  # a request begun, not yet whole: timed from its first byte
                self._arm(self._bounds.header_timeout)
            elif self._phase == _BODY:
                self._arm(self._bounds.body_timeout)

    def _head_over(self) -> bool:
        """The head being read is over max_header_bytes. The bytes received while reading it say when it cannot
        be (the common case, one addition a read); when they may, its own size is counted (a read can also
        carry a request before it, or its body)."""
        if self._head_bytes <= self._bounds.max_header_bytes:
            return False
        size = len(self.url or b"") + sum(len(name) + len(value) + 4 for name, value in self.headers or ())
        return size > self._bounds.max_header_bytes

    # httptools' callbacks, in a request's order (a pipelined request's head is read in phase _DONE, untimed:
    # uvicorn reads no more of the connection until the request before it is answered)
    def on_headers_complete(self) -> None:
        if self._phase == _HEAD and self._head_over():  # all of it came in one read
            raise _HeadTooLarge
        self._disarm()
        self._phase = _BODY
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        if self.cycle is not None and self.cycle.response_complete:
            # Answered before it was read whole (a body over the limit: 413): idle now, and uvicorn, whose
            # keep-alive timer the body's bytes stopped, will not time it; this does.
            self._phase, self._head_bytes = _HEAD, 0
            self._arm(self._bounds.header_timeout)
        else:
            self._phase, self._answering = _DONE, True
            self._waiting.pop(self, None)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        queued = bool(self.pipeline)
        super().on_response_complete()
        if queued or self.transport.is_closing():  # uvicorn started the next request, or is closing
            return
        self._answering = False
        if self._phase == _DONE:  # idle: uvicorn's keep-alive timer runs
            self._phase, self._head_bytes = _HEAD, 0
        self._waiting[self] = None

    def _waits(self) -> bool:
        """Not being answered: idle, or still sending its request (no answer begun)."""
        cycle = self.cycle
        return not self._answering and (cycle is None or not cycle.response_started or cycle.response_complete)

    def _close_one_waiting(self) -> bool:
        for n, other in enumerate(self._waiting):
            if n >= _SCAN:
                break
            if other is not self and other._waits():
                other._refuse(b"", "closed at the connection cap (the oldest not being answered)")
                return True
        return False

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._phase == _HEAD and not self._head_bytes:
            self._refuse(b"", "idle past header_timeout_seconds")
        else:
            what = "head" if self._phase == _HEAD else "body"
            self._refuse(TIMED_OUT, f"{what} not received within {'header' if what == 'head' else what}"
                                    "_timeout_seconds")

    def _refuse(self, answer: bytes, why: str) -> None:
        """Answer (unless an answer is under way) and close: nothing more of this connection reaches the app;
        a request of it still waiting for its body is told the client left."""
        self._waiting.pop(self, None)
        self._disarm()
        if self.transport.is_closing():
            return
        TALLY.add(why)
        if answer and self._waits():
            self.transport.write(answer)
        self.transport.close()
