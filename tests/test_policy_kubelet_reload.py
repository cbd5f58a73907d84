"""Live policy on a Kubernetes ConfigMap volume: the policy directory laid out and updated as the kubelet does.

The kubelet's AtomicWriter never writes a policy file in place. The volume holds a timestamped directory with the
files, a symlink `..data` to it, and one symlink per file, `policy.csv -> ..data/policy.csv`. An update writes a
new timestamped directory, points a symlink `..data_tmp` at it, renames `..data_tmp` over `..data` (one atomic
rename), then removes the old directory. No event ever names `policy.csv` itself: the gateway must still reload.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gateway.policy import POLICY_FILES
from tests.conftest import client_for, token, write_workspace

pytestmark = pytest.mark.integration

QUERY = "/v1/datasets/customers/query"
DATA = "..data"


def wait_for(predicate: Callable[[], bool], seconds: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > seconds:
            raise AssertionError(f"not true within {seconds}s")
        time.sleep(0.02)
    return time.monotonic() - start


def status(client: TestClient, agent: str) -> int:
    return client.post(QUERY, headers={"Authorization": f"Bearer {token(agent)}"}, json={"limit": 1}).status_code


class KubeletVolume:
    """A ConfigMap volume as the kubelet's AtomicWriter keeps it (pkg/volume/util/atomic_writer.go)."""

    def __init__(self, root: Path, files: dict[str, str]):
        self.root, self.serial = root, 0
        root.mkdir()
        target = self._write_version(files)
        os.symlink(target, root / DATA)
        for name in files:
            os.symlink(f"{DATA}/{name}", root / name)

    def _write_version(self, files: dict[str, str]) -> str:
        self.serial += 1
        name = f"..2025_01_01_00_00_00.{self.serial:09d}"  # the kubelet's timestamped directory
        folder = self.root / name
        folder.mkdir()
        for file, text in files.items():
            (folder / file).write_text(text)
        return name

    def update(self, files: dict[str, str]) -> None:
        old = os.readlink(self.root / DATA)
        target = self._write_version(files)
        os.symlink(target, self.root / "..data_tmp")
        os.rename(self.root / "..data_tmp", self.root / DATA)  # the one atomic step
        shutil.rmtree(self.root / old)


@pytest.fixture
def volume(tmp_path: Path, sqlite_source: str) -> Iterator[tuple[Path, KubeletVolume]]:
    config = write_workspace(tmp_path / "plain", source_url=sqlite_source)
    plain = config.parent / "policies"
    files = {p.name: p.read_text() for p in sorted(plain.iterdir()) if p.name in POLICY_FILES}
    volume = KubeletVolume(tmp_path / "policies", files)
    config.write_text(config.read_text().replace('dir = "policies"', f'dir = "{volume.root}"'))
    yield config, volume


def test_a_configmap_update_swapping_the_data_symlink_reloads_the_policy(
        volume: tuple[Path, KubeletVolume]) -> None:
    config, vol = volume
    files = {name: (vol.root / name).read_text() for name in os.listdir(vol.root) if name in POLICY_FILES}
    assert "policy.csv" in files and (vol.root / "policy.csv").is_symlink()
    with client_for(config) as client:
        assert status(client, "newcomer") == 403 and status(client, "support-bot") == 200
        time.sleep(0.3)  # the watcher is watching (the lifespan started it)
        vol.update({**files, "policy.csv": files["policy.csv"] + "g, newcomer, support\n"})
        took = wait_for(lambda: status(client, "newcomer") == 200, seconds=5)
        print(f"\nkubelet-style ConfigMap update obeyed after {took * 1000:.0f} ms")
        assert status(client, "support-bot") == 200

        # A second swap (the directory the first created is now the old one): the grant taken back.
        vol.update(files)
        wait_for(lambda: status(client, "newcomer") == 403, seconds=5)

        # A broken update is refused as any other: the last good policy stays, /readyz says why.
        vol.update({**files, "policy.csv": files["policy.csv"] + "p, half a line\n"})
        wait_for(lambda: client.get("/readyz").json().get("refused") is not None, seconds=5)
        assert client.get("/readyz").status_code == 200
        assert status(client, "support-bot") == 200 and status(client, "newcomer") == 403
