"""Running `agentgate serve` as a subprocess for the tests that need a real process on a real port."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

START_TIMEOUT = 15.0


def env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AGENTGATE_CONFIG"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (uvicorn shuts down gracefully, workers too); SIGKILL the whole group if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@contextlib.contextmanager
def serving(config: Path, log: Path, *extra: str, open_files: int | None = None) -> Iterator[str]:
    """`agentgate serve` on a free port; yields the base URL once /readyz answers 200. `open_files`: the
    server's RLIMIT_NOFILE, soft and hard (so that it cannot raise it)."""
    port = free_port()

    def limit() -> None:  # in the child, before it runs Python
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config),
                                 "--port", str(port), *extra], stdout=out, stderr=subprocess.STDOUT, env=env(),
                                cwd=Path(__file__).parent, start_new_session=True,
                                preexec_fn=limit if open_files is not None else None)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base, log, time.monotonic() + START_TIMEOUT)
        yield base
    finally:
        stop(proc)
    # A clean shutdown: 0, or uvicorn re-raising the SIGTERM it handled.
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "Traceback" not in log.read_text()


def wait_ready(proc: subprocess.Popen[bytes], base: str, log: Path, deadline: float) -> None:
    """Until `agentgate serve` at `base` answers /readyz 200; the test fails, with its log, if it exits first or
    is not ready by `deadline` (monotonic)."""
    while True:
        if proc.poll() is not None:
            pytest.fail(f"agentgate serve exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"agentgate serve was not ready in time:\n{log.read_text()}")
        time.sleep(0.1)
