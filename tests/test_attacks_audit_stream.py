"""Attacks on the trail's stream (GET /admin/v1/audit/stream), which a SIEM holds open for hours:

- no token, a bad one, or a token without `admin:audit` read opens no stream (401/403, recorded like every
  admin read); a bad `after` or an unknown parameter is a 400, recorded;
- holding the process's streams: one over `[audit] stream_max` is refused (503, Retry-After, the one error
  shape), and a stream's place comes back however it ends;
- a reader who loses the right to read goes on reading: revoking the agent or its token ends an open stream at
  once, and so does its token expiring or the policy withdrawing the grant (fail closed);
- a client that stops reading would hold its stream for ever: it is cut off (two heartbeats, at least 5 s).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from starlette.testclient import TestClient

from gateway import audit
from tests.conftest import POLICY, bearer, client_for, opened_store, token
from tests.followkit import Stream, stream_workspace
from tests.serving import serving

STREAM = "/admin/v1/audit/stream"


def _records(client: TestClient, n: int = 20) -> list[dict[str, Any]]:
    answer = client.get("/admin/v1/audit", params={"limit": str(n)}, headers=bearer("carol"))
    assert answer.status_code == 200
    return list(answer.json()["records"])


def _refused(client: TestClient, answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The one error shape, and exactly one record of the refusal (action follow_audit)."""
    assert answer.status_code == status, answer.text[:300]
    request_id = answer.headers["x-request-id"]
    assert answer.json() == {"error": {"code": code, "message": answer.json()["error"]["message"],
                                       "request_id": request_id}}
    mine = [r for r in _records(client) if r["request_id"] == request_id]
    assert len(mine) == 1 and mine[0]["status"] == status and mine[0]["action"] == "follow_audit", mine
    return mine[0]


class _Open:
    """A stream opened through the in-process app, in a thread: the test client hands its body over when the
    stream has ended."""

    def __init__(self, client: TestClient, headers: dict[str, str], **params: str):
        self.answer: httpx.Response | None = None
        self.started = time.monotonic()
        self.ended_at = 0.0
        self._thread = threading.Thread(target=self._run, args=(client, headers, params))
        self._thread.start()

    def _run(self, client: TestClient, headers: dict[str, str], params: dict[str, str]) -> None:
        self.answer = client.get(STREAM, params=params, headers=headers)
        self.ended_at = time.monotonic()

    def ended_within(self, seconds: float) -> bool:
        self._thread.join(seconds)
        return not self._thread.is_alive()


def _until(predicate: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.05)


@pytest.mark.integration
def test_no_token_a_bad_one_or_no_grant_opens_no_stream(tmp_path: Path, sqlite_source: str) -> None:
    config = stream_workspace(tmp_path, sqlite_source)
    with client_for(config) as client:
        assert _refused(client, client.get(STREAM), 401, "unauthenticated")["agent"] is None
        forged = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, "another-secret-" + "y" * 40)
        _refused(client, client.get(STREAM, headers={"Authorization": f"Bearer {forged}"}), 401, "unauthenticated")
        denied = _refused(client, client.get(STREAM, headers=bearer("support-bot")), 403, "forbidden")
        assert denied["agent"] == "support-bot"
        for params in ({"after": "abc"}, {"after": "-1"}, {"after": str(2**64)}, {"after": "١٢"},
                       {"since": "2026-01-01"}, {"after": "1", "format": "csv"}):
            _refused(client, client.get(STREAM, params=params, headers=bearer("alice")), 400, "bad_request")
        refused = client.post(STREAM, headers=bearer("alice"))
        assert refused.status_code == 405 and refused.headers["allow"] == "GET"
        assert client.app.state.gateway.services.streams.open == 0  # type: ignore[attr-defined]


@pytest.mark.integration
def test_streams_over_the_cap_are_refused_and_each_place_comes_back(tmp_path: Path, sqlite_source: str) -> None:
    config = stream_workspace(tmp_path, sqlite_source, stream_max=1, stream_max_seconds=2)
    with client_for(config) as client:
        streams = client.app.state.gateway.services.streams  # type: ignore[attr-defined]
        first = _Open(client, bearer("alice"))
        _until(lambda: streams.open == 1, 10)
        for admin in ("alice", "carol", "carol"):  # the same reader, or another: the process's cap
            over = client.get(STREAM, headers=bearer(admin))
            record = _refused(client, over, 503, "unavailable")
            assert over.headers["retry-after"] == "5" and "too many streams" in over.json()["error"]["message"]
            assert record["decision"] == "error" and record["agent"] == admin
        assert first.ended_within(15) and first.answer is not None and first.answer.status_code == 200
        assert streams.open == 0  # ended by its time: its place is back, and the refusals took none
        again = _Open(client, bearer("carol"))
        assert again.ended_within(15) and again.answer is not None and again.answer.status_code == 200
        assert streams.open == 0


@pytest.mark.integration
def test_revoking_the_reader_ends_its_stream_at_once(tmp_path: Path, sqlite_source: str, store_url: str) -> None:
    config = stream_workspace(tmp_path, sqlite_source, store_url)
    with client_for(config) as client:
        open_ = _Open(client, bearer("alice"))
        time.sleep(1.0)
        revoked_at = time.monotonic()
        revoked = client.post("/admin/v1/revocations", json={"agent": "alice", "reason": "left the company"},
                              headers=bearer("carol"))
        assert revoked.status_code == 201
        assert open_.ended_within(5), "a revoked reader's stream stayed open"
        assert open_.ended_at - revoked_at < 3.0  # a pause is cut short by the revocation itself
        assert open_.answer is not None and open_.answer.status_code == 200
        _refused(client, client.get(STREAM, headers=bearer("alice")), 403, "forbidden")
        assert client.app.state.gateway.services.streams.open == 0  # type: ignore[attr-defined]


@pytest.mark.integration
def test_an_expired_token_or_a_withdrawn_grant_ends_the_stream(tmp_path: Path, sqlite_source: str) -> None:
    config = stream_workspace(tmp_path, sqlite_source)
    with client_for(config) as client:
        short = _Open(client, {"Authorization": f"Bearer {token('alice', ttl=2)}"})
        assert short.ended_within(6), "a stream outlived its reader's token"
        assert short.answer is not None and short.answer.status_code == 200
        kept = _Open(client, bearer("alice"))
        time.sleep(0.5)
        # The admin edits the policy: alice is no longer an admin. The reload (within 2 s) ends her stream.
        (config.parent / "policies" / "policy.csv").write_text(
            POLICY.replace("g, alice, security-admin\n", "") + "g, carol, security-admin\n")
        assert kept.ended_within(8), "a stream outlived the grant that opened it"
        _refused(client, client.get(STREAM, headers=bearer("alice")), 403, "forbidden")


@pytest.mark.system
def test_revoking_the_readers_token_from_the_command_line_ends_a_served_stream(tmp_path: Path,
                                                                              sqlite_source: str) -> None:
    config = stream_workspace(tmp_path, sqlite_source)
    jti = "stream-token-1"
    with serving(config, tmp_path / "serve.log") as base:
        stream = Stream(base, token("alice", jti=jti))
        try:
            assert stream.status == 200
            stream.take(1)  # its own record: the stream is open and read
            revoke = subprocess.run([sys.executable, "-m", "gateway.cli", "revoke", "token", jti, "--config",
                                     str(config)], capture_output=True, text=True, timeout=60)
            assert revoke.returncode == 0, revoke.stderr
            revoked_at = time.monotonic()
            assert stream.ended(5), "the stream of a revoked token stayed open"
            assert stream.ended_at is not None and stream.ended_at - revoked_at < 3
            assert stream.error is None  # ended cleanly, as at its time: the client learns why on its next ask
        finally:
            stream.close()
        with httpx.Client(base_url=base) as http:
            again = http.get(STREAM, headers={"Authorization": f"Bearer {token('alice', jti=jti)}"})
        assert again.status_code == 403
    assert "audit stream of alice ended" in (tmp_path / "serve.log").read_text()


async def _big_trail(url: str, n: int) -> None:
    """n records of about 4 KiB each (a query at its bound), appended as the writer appends them."""
    async with opened_store(url) as engine, engine.begin() as conn:
        records = [audit.AuditRecord(time=dt.datetime.now(dt.UTC), request_id=f"bulk-{i}", action="read",
                                     decision="allow", status=200, agent="support-bot", query="q" * 4000)
                   for i in range(n)]
        await audit.append_locked(conn, records, None)


@pytest.mark.system
def test_a_client_that_stops_reading_is_cut_off_and_its_stream_comes_back(tmp_path: Path,
                                                                          sqlite_source: str) -> None:
    config = stream_workspace(tmp_path, sqlite_source, stream_max=1, heartbeat=0.5)  # stalls: cut after 5 s
    asyncio.run(_big_trail(f"sqlite+aiosqlite:///{tmp_path}/store.db", 3000))  # ~13 MB: more than any buffer
    with serving(config, tmp_path / "serve.log") as base:
        port = int(base.rsplit(":", 1)[1])
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", port))
        stalled.sendall(f"GET {STREAM} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token('alice')}\r\n\r\n"
                        .encode())
        try:
            with httpx.Client(base_url=base, timeout=10) as http:
                def opens() -> int:  # a stream asked for, its status read, and let go at once
                    with http.stream("GET", STREAM, params={"after": "2999"}, headers=bearer("carol")) as answer:
                        return answer.status_code

                time.sleep(1.0)
                assert opens() == 503  # the reader that reads nothing holds the one stream
                started = time.monotonic()
                while opens() != 200:
                    assert time.monotonic() - started < 20, "a client that reads nothing kept its stream"
                    time.sleep(0.5)
                assert time.monotonic() - started > 2  # not before it stalled
        finally:
            stalled.close()
    log = (tmp_path / "serve.log").read_text()
    assert re.search(r"a stream's client took nothing for 5 s: its connection is closed", log), log[-2000:]
