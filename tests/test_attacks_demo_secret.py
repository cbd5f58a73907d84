"""The shipped demo JWT secret is public (it is in agentgate.toml): whoever reads it mints tokens for any agent,
admins included. `agentgate serve` refuses to listen anywhere but loopback while it is in force, however the
address is given (--host, [server] host, an environment variable in the config, with --workers), exit 2 with
one line; on loopback it warns (one line) and the README's Quickstart runs as before. The Docker image's
default command listens on 0.0.0.0, so it refuses until a real secret is set."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import tests.serving
from gateway.auth.exposure import DEMO_JWT_SECRET, uses_demo_secret
from gateway.config import load_settings
from tests.serving import env, serving
from tests.test_cli import agentgate_many, one_line_reason, output

pytestmark = pytest.mark.system

REPO = Path(__file__).parent.parent
REAL_SECRET = "a-real-secret-for-this-test-only-" + "k" * 40
# A first start of the embedded default creates the demo database from its seed: slower than a test
# workspace's start on a busy shared machine.
FIRST_START = 60.0


def shipped(root: Path) -> Path:
    """The embedded default as the Quickstart and the image run it: agentgate.toml, policies/, demo/."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "agentgate.toml", root / "agentgate.toml")
    shutil.copytree(REPO / "policies", root / "policies")
    shutil.copytree(REPO / "demo", root / "demo")
    return root / "agentgate.toml"


def serve_env(**extra: str) -> dict[str, str]:
    """The environment of a `serve` run: the test's own, without a JWT secret, plus `extra`."""
    environ = {k: v for k, v in env().items() if k != "AGENTGATE_JWT_SECRET"}
    environ.update(extra)
    return environ


def serve(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "serve", *args], capture_output=True, text=True,
                          env=serve_env(), timeout=60, cwd=cwd)


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.unit
def test_the_demo_secret_is_the_shipped_configs_fallback() -> None:
    demo = load_settings(REPO / "agentgate.toml", environ={})
    assert demo.auth.secret is not None and demo.auth.secret.reveal() == DEMO_JWT_SECRET
    assert uses_demo_secret(demo.auth)
    real = load_settings(REPO / "agentgate.toml", environ={"AGENTGATE_JWT_SECRET": REAL_SECRET})
    assert not uses_demo_secret(real.auth)


# (serve's arguments, the config's [server] host line (None: as shipped), extra environment)
REACHABLE = {
    "--host 0.0.0.0": (["--host", "0.0.0.0"], None, {}),
    "--host :: (every IPv6 interface)": (["--host", "::"], None, {}),
    "--host 0 (is 0.0.0.0)": (["--host", "0"], None, {}),
    "--host a LAN address": (["--host", "192.168.1.23"], None, {}),
    "--host a LAN address, --workers 2": (["--host", "10.1.2.3", "--workers", "2"], None, {}),
    "--host IPv4-mapped LAN address": (["--host", "::ffff:10.0.0.1"], None, {}),
    "--host a name that looks like loopback (and does not resolve)": (["--host", "127.0.0.1.invalid"], None, {}),
    "[server] host in the config": ([], 'host = "0.0.0.0"', {}),
    "[server] host from an environment variable": ([], 'host = "${AGENTGATE_HOST}"', {"AGENTGATE_HOST": "0.0.0.0"}),
    "[server] host with a line break in it": ([], 'host = "0.0.0.0\\n# x"', {}),
    "the demo secret set through AGENTGATE_JWT_SECRET": (["--host", "0.0.0.0"], None,
                                                        {"AGENTGATE_JWT_SECRET": DEMO_JWT_SECRET}),
    "the config found through AGENTGATE_CONFIG": (["--host", "0.0.0.0"], None, {"AGENTGATE_CONFIG": "@"}),
}


def test_the_demo_secret_is_refused_on_a_reachable_address(tmp_path: Path) -> None:
    calls: list[tuple[list[str | Path], dict[str, Any]]] = []
    for n, (args, host_line, extra) in enumerate(REACHABLE.values()):
        config = shipped(tmp_path / f"case-{n}")
        if host_line is not None:
            text = config.read_text()
            config.write_text(re.sub(r'(?m)^host = "127\.0\.0\.1"$', lambda _, line=host_line: line, text, count=1))
            assert host_line in config.read_text()
        extra = {k: (str(config) if v == "@" else v) for k, v in extra.items()}
        where: list[str | Path] = [] if "AGENTGATE_CONFIG" in extra else ["--config", config]
        calls.append((["serve", *where, *args], {"cwd": config.parent, "env": serve_env(**extra)}))
    for case, proc, (_, options) in zip(REACHABLE, agentgate_many(calls), calls, strict=True):
        assert proc.returncode == 2, (case, output(proc))
        line = one_line_reason(proc)  # one line, nothing else
        assert line.startswith("agentgate: refusing to listen on ") and "demo JWT secret" in line, case
        assert "AGENTGATE_JWT_SECRET" in line and "[auth] secret" in line, case  # how to set a real one
        assert proc.stdout == "", case
        assert not (options["cwd"] / "var").exists(), case  # refused before anything was opened or created


LOOPBACK = ["127.0.0.1", "127.3.2.1", "127.1", "localhost", "::1", "::ffff:127.0.0.1"]


def test_loopback_passes_with_one_warning(tmp_path: Path) -> None:
    calls: list[tuple[list[str | Path], dict[str, Any]]] = []
    for n, host in enumerate(LOOPBACK):
        config = shipped(tmp_path / f"host-{n}")
        # A fault in the catalog stops start-up just after the check, so no port is bound here.
        catalog = config.parent / "policies" / "datasets.toml"
        catalog.write_text(catalog.read_text() + '\ncolour_of_the_bikeshed = "red"\n')
        calls.append((["serve", "--config", config, "--host", host], {"cwd": config.parent, "env": serve_env()}))
    for host, proc in zip(LOOPBACK, agentgate_many(calls), strict=True):
        assert proc.returncode == 1, (host, output(proc))
        warning, fault = lines(proc.stderr)
        assert warning.startswith("agentgate: warning: the JWT secret is the shipped demo one"), host
        assert "AGENTGATE_JWT_SECRET" in warning, host
        assert "colour_of_the_bikeshed" in fault, host


def test_the_quickstart_runs_on_loopback_with_the_demo_secret(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTGATE_JWT_SECRET", raising=False)
    monkeypatch.setattr(tests.serving, "START_TIMEOUT", FIRST_START)
    config = shipped(tmp_path)
    log = tmp_path / "serve.log"
    with serving(config, log) as base:
        minted = subprocess.run([sys.executable, "-m", "gateway.cli", "token", "issue", "--agent", "support-bot",
                                 "--config", str(config)], capture_output=True, text=True, env=env(), timeout=60)
        assert minted.returncode == 0, minted.stderr
        r = httpx.get(f"{base}/v1/datasets", headers={"Authorization": f"Bearer {minted.stdout.strip()}"})
        assert r.status_code == 200 and [d["name"] for d in r.json()["datasets"]] == ["customers", "help_articles"]
    assert log.read_text().count("the JWT secret is the shipped demo one") == 1


def test_a_real_secret_listens_on_every_interface_without_a_warning(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """What the image does once AGENTGATE_JWT_SECRET is set (traffic goes to 127.0.0.1 only)."""
    monkeypatch.setenv("AGENTGATE_JWT_SECRET", REAL_SECRET)
    monkeypatch.setattr(tests.serving, "START_TIMEOUT", FIRST_START)
    config = shipped(tmp_path)
    log = tmp_path / "serve.log"
    with serving(config, log, "--host", "0.0.0.0") as base:
        assert httpx.get(f"{base}/v1/datasets").status_code == 401
    assert "shipped demo" not in log.read_text() and "agentgate ready" in log.read_text()


def _instruction(dockerfile: str, name: str) -> list[str]:
    (found,) = re.findall(rf"(?m)^{name} (\[.*\])$", dockerfile)
    value: list[str] = json.loads(found)
    return value


def test_the_images_default_command_refuses_the_demo_secret(tmp_path: Path) -> None:
    """The image (WORKDIR /app: agentgate.toml, policies/, demo/) runs ENTRYPOINT + CMD; with no secret set
    it stops with the one line saying how to set one, instead of serving the world with the demo secret."""
    dockerfile = (REPO / "Dockerfile").read_text()
    assert _instruction(dockerfile, "ENTRYPOINT") == ["agentgate"]
    command = _instruction(dockerfile, "CMD")
    assert command[0] == "serve" and "0.0.0.0" in command
    shipped(tmp_path)
    proc = serve(tmp_path, *command[1:])  # as WORKDIR /app holds them
    assert proc.returncode == 2, proc.stderr
    (line,) = lines(proc.stderr)
    assert line.startswith("agentgate: refusing to listen on '0.0.0.0'") and "AGENTGATE_JWT_SECRET" in line
    assert "AGENTGATE_JWT_SECRET" in dockerfile  # the image says what to set
