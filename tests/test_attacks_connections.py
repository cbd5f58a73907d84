"""Holding connections: one client must not be able to stop `agentgate serve` from serving other agents.

The attacks, against a real server on 127.0.0.1: connections that send nothing, half a request line, headers
a byte at a while, headers without end, half a body (slowloris, slow POST); idle keep-alive connections;
more connections than the cap; more half-sent requests than the server has file descriptors. The properties
(gateway/runtime/connections.py, `[server]` settings): a request's head must arrive within header_timeout_seconds
(408, closed), its body within body_timeout_seconds; an idle keep-alive connection is closed after
keep_alive_seconds; heads over max_header_bytes answer 431; at max_connections the oldest connection not
being answered is closed for a newcomer, and only when all are being answered is the newcomer refused (503,
Retry-After); the cap is kept under the open-file limit, which `serve` raises to its hard limit and
`/readyz` reports. None of these refusals is a request: they leave no audit record and no traceback.
"""

from __future__ import annotations

import contextlib
import resource
import select
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import DATASETS, POLICY, bearer, loopback_http, records, write_workspace
from tests.faults import SlowSource
from tests.serving import serving

pytestmark = pytest.mark.system

QUERY = b'{"limit": 1}'


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def connect(base: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port_of(base)), timeout=5)


def read_until_closed(sock: socket.socket, within: float = 5.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    sock.settimeout(within)
    got = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            got += chunk
    return got, time.monotonic() - started


def request(path: str = "/healthz", *, headers: bytes = b"", body: bytes = b"", method: bytes = b"GET") -> bytes:
    length = b"Content-Length: %d\r\n" % len(body) if body else b""
    return b"%s %s HTTP/1.1\r\nHost: gateway\r\n%s%s\r\n%s" % (method, path.encode(), length, headers, body)


@pytest.fixture
def timeouts(tmp_path: Path, sqlite_source: str) -> Iterator[tuple[str, Path]]:
    config = write_workspace(tmp_path, source_url=sqlite_source, extra="""
[server]
header_timeout_seconds = 0.5
body_timeout_seconds = 0.5
keep_alive_seconds = 0.5
max_header_bytes = 8192
""")
    with serving(config, tmp_path / "serve.log") as base:
        yield base, config


def test_connections_that_do_not_send_a_request_in_time_are_closed(timeouts: tuple[str, Path]) -> None:
    base, config = timeouts
    agent = bearer("support-bot")["Authorization"].encode()
    # Nothing sent: closed, without a word.
    got, took = read_until_closed(connect(base))
    assert got == b"" and 0.4 <= took < 3
    # Half a request line; headers a byte every 0.1 s (the timeout counts from the first byte, not the last);
    # headers whole but half the body.
    for first, trickle in ((b"GET /heal", b""), (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"a"),
                           (request("/v1/datasets/customers/query", method=b"POST", body=QUERY,
                                    headers=b"Authorization: " + agent + b"\r\n")[:-4], b"")):
        sock = connect(base)
        sock.sendall(first)
        started = time.monotonic()
        with contextlib.suppress(OSError):  # until the server answers (or 2 s)
            while trickle and not select.select([sock], [], [], 0.1)[0] and time.monotonic() - started < 2:
                sock.sendall(trickle)
        got, took = read_until_closed(sock)
        assert got.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), got
        assert b"connection: close" in got
        assert time.monotonic() - started < 3
    # A request sent in pieces, whole within the timeout, is served; then, idle, its connection is closed after
    # keep_alive_seconds.
    sock = connect(base)
    whole = request("/v1/datasets/customers/query", method=b"POST", body=QUERY,
                    headers=b"Authorization: " + agent + b"\r\n")
    for n in range(0, len(whole), len(whole) // 3 + 1):
        sock.sendall(whole[n:n + len(whole) // 3 + 1])
        time.sleep(0.1)
    got, took = read_until_closed(sock)
    assert got.startswith(b"HTTP/1.1 200 OK\r\n"), got[:300]
    assert 0.4 <= took < 3  # the answer came at once; the close after keep_alive_seconds
    # Only the one served read is in the trail: the others never were requests.
    assert [(r["action"], r["status"]) for r in records(config)] == [("read", 200)]


def test_request_heads_over_max_header_bytes_answer_431(timeouts: tuple[str, Path]) -> None:
    base, config = timeouts
    with httpx.Client(base_url=base, timeout=5) as http:
        assert http.get("/healthz", headers={"X-Fill": "a" * 4000}).status_code == 200
    for head in (request(headers=b"X-Fill: " + b"a" * 9000 + b"\r\n"),  # one long header
                 request(headers=b"".join(b"X-%d: a\r\n" % n for n in range(2000))),  # many short ones
                 b"GET /" + b"a" * 20000):  # a request line without end
        sock = connect(base)
        with contextlib.suppress(OSError):
            sock.sendall(head)
        got, _ = read_until_closed(sock)
        assert got.startswith(b"HTTP/1.1 431 "), got[:200]
    assert records(config) == []




def test_at_the_connection_cap_the_oldest_waiting_connection_makes_room(tmp_path: Path, sqlite_source: str) -> None:
    SlowSource.arrived, SlowSource.release = threading.Semaphore(0), threading.Event()
    with loopback_http(SlowSource) as tickets:
        config = write_workspace(
            tmp_path, source_url=sqlite_source, policy=POLICY + "p, support, tickets, read, allow\n",
            datasets=DATASETS + '\n[datasets.tickets]\nsource = "tix"\npath = "/tickets"\nowner = "o@example.com"\n',
            extra=f'\n[sources.tix]\nurl = "{tickets}"\n\n[server]\nmax_connections = 4\n')
        with serving(config, tmp_path / "serve.log") as base:
            agent = bearer("support-bot")
            # Four idle connections fill the cap; an agent's connection closes the oldest and is served.
            idle = [connect(base) for _ in range(4)]
            time.sleep(0.2)
            with httpx.Client(base_url=base, timeout=10) as http:
                assert http.post("/v1/datasets/customers/query", json={"limit": 1}, headers=agent).status_code == 200
            assert read_until_closed(idle[0], 2)[0] == b""  # closed to make room
            for sock in idle:
                sock.close()
            # Four connections being answered (a slow source): the fifth is refused, 503 with Retry-After.
            with ThreadPoolExecutor(4) as pool:
                def slow(_: int) -> int:
                    with httpx.Client(base_url=base, timeout=10) as http:
                        return http.get("/v1/datasets/tickets/proxy/any", headers=agent).status_code
                reads = list(map(pool.submit, [slow] * 4, range(4)))
                for _ in range(4):  # all four are being answered (their source holds them)
                    assert SlowSource.arrived.acquire(timeout=20)
                sock = connect(base)
                sock.sendall(request())
                got, _ = read_until_closed(sock)
                SlowSource.release.set()
                assert got.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), got
                assert b"retry-after: 1\r\n" in got and b"too many open connections" in got
                assert [r.result() for r in reads] == [200] * 4
            with httpx.Client(base_url=base, timeout=10) as http:  # and once they are answered, served again
                assert http.get("/v1/datasets", headers=agent).status_code == 200
    assert "closed or refused" in (tmp_path / "serve.log").read_text()


class Attacker:
    """Holds `count` connections, each with a request half sent (its head, or its body), and opens a new one
    for each the server closes, until stopped."""

    def __init__(self, base: str, count: int):
        self.port, self.count = port_of(base), count
        self.stop = threading.Event()
        self.opened = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Attacker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _open(self, selector: selectors.BaseSelector) -> None:
        sock = socket.socket()
        try:
            sock.settimeout(2)
            sock.connect(("127.0.0.1", self.port))
            half = (request(headers=b"X-Slow: a\r\n")[:-2] if self.opened % 2 else
                    request("/v1/datasets/customers/query", method=b"POST", body=QUERY)[:-4])
            sock.sendall(half)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            self.opened += 1
        except OSError:
            sock.close()

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            while not self.stop.is_set():
                while len(selector.get_map()) < self.count and not self.stop.is_set():
                    self._open(selector)
                for key, _ in selector.select(0.05):
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        closed = not sock.recv(4096)
                    except OSError:
                        closed = True
                    if closed:
                        selector.unregister(sock)
                        sock.close()
            for key in list(selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]


def test_more_half_sent_requests_than_file_descriptors_do_not_stop_other_agents(tmp_path: Path,
                                                                               sqlite_source: str) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"this test holds 400 sockets; the open-file hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        config = write_workspace(tmp_path, source_url=sqlite_source)
        log = tmp_path / "serve.log"
        with serving(config, log, open_files=256) as base, httpx.Client(base_url=base, timeout=10) as http:
            detail = http.get("/readyz").json()["connections"]
            # The cap left room under the 256 files for the store's and the source's pools, and says so.
            assert detail["open_files"] == 256 and detail["low"] is True
            assert detail["max_connections"] == 256 - detail["reserved"] < 256
            with Attacker(base, 400) as attacker:
                deadline = time.monotonic() + 10
                while attacker.opened < 400 and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert attacker.opened >= 400  # more half-sent requests than the server has file descriptors
                agent = bearer("support-bot")
                for _ in range(5):
                    r = http.post("/v1/datasets/customers/query", json={"limit": 1}, headers=agent)
                    assert r.status_code == 200, r.text
                    with httpx.Client(base_url=base, timeout=10) as fresh:  # a new connection each time, too
                        assert fresh.get("/v1/datasets", headers=agent).status_code == 200
                    time.sleep(0.1)
            assert http.get("/healthz").status_code == 200
        assert "the open-file limit (256) leaves room for" in log.read_text()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
