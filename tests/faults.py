"""Network faults for tests: a loopback TCP proxy that can go silent.

``FreezableProxy(host, port)`` listens on 127.0.0.1 (``proxy.port``) and forwards every connection to
``host:port``. ``freeze()`` stops it moving bytes in both directions and accepting new connections, without
closing anything: peers see neither FIN nor RST, their writes land in kernel buffers and their reads just
wait, as behind a silent network partition or a stuck middlebox. ``freeze(port=P)`` freezes one connection
only, the one whose upstream side uses local port P (PostgreSQL shows it as ``pg_stat_activity.client_port``),
as when one flow's NAT or conntrack entry is lost: the others, and new ones, keep flowing. ``thaw()`` resumes
forwarding (bytes held meanwhile are then delivered, as TCP retransmission would), ``close()`` closes every
socket.

    with FreezableProxy("127.0.0.1", 5432) as proxy:
        url = through("postgresql+asyncpg://postgres@127.0.0.1:5432/test", proxy)
        ...            # connect to url
        proxy.freeze()  # returns once no further byte will be forwarded
        ...
        proxy.thaw()

One background thread per proxy; every method is safe to call from any thread.

``SlowSource``: an HTTP source (for ``loopback_http``) that holds every request until its ``release`` is set,
counting arrivals on ``arrived``: reads held in flight while a test does something to the gateway.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_CHUNK = 65536


class _Pipe:
    """One accepted connection and its upstream: bytes read from one side, waiting to be written to the other."""

    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client, self.upstream = client, upstream
        self.pending: dict[socket.socket, bytearray] = {client: bytearray(), upstream: bytearray()}
        self.read_closed: set[socket.socket] = set()  # sides that sent FIN (passed on once their bytes are out)
        self.frozen = False

    def other(self, sock: socket.socket) -> socket.socket:
        return self.upstream if sock is self.client else self.client

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            sock.close()


class FreezableProxy:
    """A TCP proxy on 127.0.0.1 to ``target_host:target_port`` that ``freeze()`` silences; see the module doc."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.host = "127.0.0.1"
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()  # held while bytes move: freeze() returns only between two moves
        self._frozen = False
        self._closed = False
        self._pipes: dict[socket.socket, _Pipe] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread = threading.Thread(target=self._run, name=f"freezable-proxy-{self.port}", daemon=True)
        self._thread.start()

    @property
    def frozen(self) -> bool:
        return self._frozen

    @property
    def connections(self) -> int:
        """How many proxied connections are open now."""
        with self._lock:
            return len({id(p) for p in self._pipes.values()})

    def freeze(self, port: int | None = None) -> int:
        """Stop forwarding bytes and accepting connections; nothing is closed. Effective when this returns.
        With ``port``: freeze only the connection whose upstream socket has that local port. Returns how many
        open connections are now frozen."""
        with self._lock:
            if port is None:
                self._frozen = True
            for pipe in self._pipes.values():
                if port is None or pipe.upstream.getsockname()[1] == port:
                    pipe.frozen = True
            frozen = len({id(p) for p in self._pipes.values() if p.frozen})
        self._poke()
        return frozen

    def thaw(self) -> None:
        """Forward again on every connection (what was held is delivered) and accept the ones that waited."""
        with self._lock:
            self._frozen = False
            for pipe in self._pipes.values():
                pipe.frozen = False
        self._poke()

    def close(self) -> None:
        """Close the listener and every proxied connection (peers then see the connections end)."""
        with self._lock:
            self._closed = True
        self._poke()
        self._thread.join(5)

    def __enter__(self) -> FreezableProxy:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def _poke(self) -> None:
        with contextlib.suppress(OSError):  # closed, or the wake buffer is full: the loop is awake either way
            self._wake_w.send(b"x")

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    self._register(sel)
                for key, events in sel.select(timeout=1.0):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._wake_r:
                        with contextlib.suppress(BlockingIOError):
                            while self._wake_r.recv(4096):
                                pass
                        continue
                    with self._lock:
                        if self._frozen or self._closed:
                            break  # selected before the freeze: move nothing more
                        if sock is self._listener:
                            self._accept()
                        elif sock in self._pipes and not self._pipes[sock].frozen:
                            self._move(sock, events)
        finally:
            sel.close()
            with self._lock:
                for pipe in {id(p): p for p in self._pipes.values()}.values():
                    pipe.close()
                self._pipes.clear()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _register(self, sel: selectors.BaseSelector) -> None:
        """(Re)register what the loop waits on: only the wake socket while frozen."""
        for key in list(sel.get_map().values()):
            sel.unregister(key.fileobj)
        sel.register(self._wake_r, selectors.EVENT_READ)
        if self._frozen:
            return
        sel.register(self._listener, selectors.EVENT_READ)
        for sock, pipe in self._pipes.items():
            if pipe.frozen:
                continue
            events = 0
            if sock not in pipe.read_closed and len(pipe.pending[pipe.other(sock)]) < _CHUNK * 4:
                events |= selectors.EVENT_READ
            if pipe.pending[sock]:
                events |= selectors.EVENT_WRITE
            if events:
                sel.register(sock, events)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()  # the target refuses: so does the proxy
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe = _Pipe(client, upstream)
        self._pipes[client] = self._pipes[upstream] = pipe

    def _move(self, sock: socket.socket, events: int) -> None:
        pipe = self._pipes[sock]
        peer = pipe.other(sock)
        try:
            if events & selectors.EVENT_READ:
                data = sock.recv(_CHUNK)
                if data:
                    pipe.pending[peer] += data
                else:
                    pipe.read_closed.add(sock)
            for out in (peer, sock):
                buf = pipe.pending[out]
                if buf:
                    sent = out.send(buf)
                    del buf[:sent]
                if not buf and pipe.other(out) in pipe.read_closed:
                    out.shutdown(socket.SHUT_WR)  # pass the FIN on once everything before it is out
        except BlockingIOError:
            return
        except OSError:
            pipe.read_closed.update((pipe.client, pipe.upstream))
        if pipe.read_closed >= {pipe.client, pipe.upstream} and not any(pipe.pending.values()):
            pipe.close()
            del self._pipes[pipe.client], self._pipes[pipe.upstream]


def through(url: str, proxy: FreezableProxy) -> str:
    """``url`` with its host and port replaced by the proxy's (user, password, path and query kept)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{proxy.host}:{proxy.port}" if userinfo else f"{proxy.host}:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class SlowSource(BaseHTTPRequestHandler):
    """An HTTP source that holds every request until `release` is set; `arrived` counts them."""

    arrived = threading.Semaphore(0)
    release = threading.Event()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        SlowSource.arrived.release()
        SlowSource.release.wait(20)
        body = b'{"tickets": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the gateway killed meanwhile
            self.wfile.write(body)
