"""What the tests of following the trail share: a follower as an operator runs it (`agentgate audit export
--follow` in a subprocess, its lines read as they come), a stream of the admin API read with a real HTTP client
in a thread, and the checks that a followed trail came whole (every id once, in order, each record linking to
the one before)."""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import POLICY, write_workspace

END = object()  # put on a line queue when its stream ended


def stream_workspace(root: Path, source_url: str, store_url: str | None = None, *, stream_max: int = 4,
                     stream_max_seconds: float = 60, heartbeat: float = 0.3, policy_extra: str = "") -> Path:
    """A workspace whose admin streams are short-lived and beat often (so tests see both in seconds); alice and
    carol are admins."""
    return write_workspace(root, source_url=source_url, store_url=store_url,
                           policy=POLICY + "g, carol, security-admin\n" + policy_extra,
                           extra=f"[audit]\nstream_max = {stream_max}\nstream_max_seconds = {stream_max_seconds}\n"
                                 f"stream_heartbeat_seconds = {heartbeat}\n")


def _pump(lines: Any, into: queue.Queue[Any]) -> None:
    for line in lines:
        into.put(line)
    into.put(END)


class Follower:
    """`agentgate audit export --format jsonl --follow [ARGS]`, its stdout read line by line in a thread."""

    def __init__(self, config: Path, *args: str):
        env = {k: v for k, v in os.environ.items() if k != "AGENTGATE_CONFIG"}
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "audit", "export", "--format", "jsonl",
                                      "--follow", *args, "--config", str(config)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).parent)
        self.lines: queue.Queue[Any] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=_pump, args=(self.proc.stdout, self.lines), daemon=True).start()

    def take(self, n: int, seconds: float = 20) -> list[dict[str, Any]]:
        return take(self.lines, n, seconds)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """Signalled: its exit code and its stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()


def take(lines: queue.Queue[Any], n: int, seconds: float = 20, *, beats: list[float] | None = None
         ) -> list[dict[str, Any]]:
    """The next `n` records of a line queue (empty lines, heartbeats, are skipped: their times go to `beats`)."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while len(out) < n:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"only {len(out)} of {n} records within {seconds} s") from None
        if line is END:
            raise AssertionError(f"the stream ended after {len(out)} of {n} records")
        if line.strip():
            out.append(json.loads(line))
        elif beats is not None:
            beats.append(time.monotonic())
    return out


class Stream:
    """GET /admin/v1/audit/stream read with httpx as it comes, in a thread: its lines on a queue (END once it
    ended), its status and headers once they came."""

    def __init__(self, base: str, token: str, after: int | None = None):
        self.lines: queue.Queue[Any] = queue.Queue()
        self.opened = threading.Event()
        self.status = 0
        self.headers: httpx.Headers | None = None
        self.error: BaseException | None = None
        self.ended_at: float | None = None
        params = {"after": str(after)} if after is not None else {}
        self._client = httpx.Client(base_url=base, timeout=httpx.Timeout(30, read=30))
        self._thread = threading.Thread(target=self._read, args=(token, params), daemon=True)
        self._thread.start()
        assert self.opened.wait(20), "the stream did not open"

    def _read(self, token: str, params: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", "/admin/v1/audit/stream", params=params,
                                     headers={"Authorization": f"Bearer {token}"}) as answer:
                self.status, self.headers = answer.status_code, answer.headers
                self.opened.set()
                for line in answer.iter_lines():
                    self.lines.put(line)
        except BaseException as exc:  # a closed client (the test is done with it) ends it too
            self.error = exc
        finally:
            self.ended_at = time.monotonic()
            self.opened.set()
            self.lines.put(END)

    def take(self, n: int, seconds: float = 20, beats: list[float] | None = None) -> list[dict[str, Any]]:
        return take(self.lines, n, seconds, beats=beats)

    def ended(self, seconds: float) -> bool:
        self._thread.join(seconds)
        return not self._thread.is_alive()

    def close(self) -> None:
        self._client.close()
        self._thread.join(10)


def assert_whole(records: list[dict[str, Any]], first: int = 1) -> None:
    """Every id from `first` once, in order, each record naming the one before's hash."""
    ids = [rec["id"] for rec in records]
    assert ids == list(range(first, first + len(ids))), ids
    for before, rec in itertools.pairwise(records):
        assert rec["prev_hash"] == before["hash"], rec["id"]
