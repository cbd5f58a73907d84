"""A file source (connectors/files.py) serves its directory and nothing else. Threat: an agent reading a file
outside the dataset's folder — the gateway's own config and store, the demo secret, /etc — through the proxy path:
`..` in every encoding, absolute paths and URLs, NUL, encoded slashes and backslashes, symlinks out of the root
(and within it: none is followed), a FIFO that would hang a read, a file over the size cap. Each is refused (400),
not found (404) or the source failing (502); never a byte of what lies outside, never a 500, always recorded."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from connectors.base import InvalidQuery, SourceUnavailable
from connectors.files import FileSource
from connectors.http import DEFAULT_MAX_BYTES
from gateway.common.errors import ConfigError
from gateway.config import load_settings
from tests.conftest import POLICY, client_for, records, token, write_workspace
from tests.test_http_sources import _raw_get

pytestmark = pytest.mark.integration

SECRET = b"TOP-SECRET-outside-the-root"
ARTICLE = b'{"id": "ok"}'

DATASETS = """
[datasets.customers]
source = "main"
table = "customers"
owner = "maria.keller@example.com"

[datasets.docs]
source = "files"
path = "/articles"
owner = "support-leads@example.com"
"""

# Paths (as sent, after /proxy/) that could leave the dataset's folder: each is a 400 before any file is opened.
ESCAPES = [
    "..", "../private.json", "sub/../../private.json", "%2e%2e/private.json", "%2E%2E/private.json",
    ".%2e/private.json", "%252e%252e/private.json", "..%2fprivate.json", "..%2f..%2foutside%2fsecret.txt",
    "sub%2fdeep.json", "sub%5cdeep.json", "..%5cprivate.json", "%5c..%5cprivate.json", "..;/private.json",
    "%2fetc%2fpasswd", "%2f%2fetc/passwd", "file:%2f%2f%2fetc%2fpasswd", "http:%2f%2fexample.com%2fx",
    "ok.json%00", "ok.json%00.txt", "%00", "sub//deep.json", "%EF%BC%8E%EF%BC%8E/private.json", "%C0%AE%C0%AE/x",
    "ok.json%0a", "...", ".", "%E2%80%A6",
]
# Names that are no regular file beneath the folder, or lead through a symlink: 404, the target never read.
ABSENT = ["missing.json", "link-out", "dir-out/secret.txt", "link-in", "sub-link/deep.json", "sub", "sub/",
          "fifo", "x" * 300, "ok.json/x"]


def build(root: Path) -> Path:
    """Beside each other: `outside/` (a secret), and `files/` (the source's root) whose `articles/` is the
    dataset's folder, holding files, a subfolder, symlinks out and in, a FIFO and a sparse file over the cap."""
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    files = root / "files"
    articles = files / "articles"
    (articles / "sub").mkdir(parents=True)
    (files / "private.json").write_bytes(SECRET)  # in the root, outside the dataset's prefix
    (articles / "ok.json").write_bytes(ARTICLE)
    (articles / "sub" / "deep.json").write_bytes(b'{"deep": true}')
    (articles / "link-out").symlink_to(outside / "secret.txt")
    (articles / "dir-out").symlink_to(outside, target_is_directory=True)
    (articles / "link-in").symlink_to("ok.json")
    (articles / "sub-link").symlink_to("sub", target_is_directory=True)
    os.mkfifo(articles / "fifo")
    with (articles / "big.bin").open("wb") as big:
        big.truncate(DEFAULT_MAX_BYTES + 1)
    return files


def get(source: FileSource, raw: str) -> tuple[int, bytes]:
    async def one() -> tuple[int, bytes]:
        try:
            answer = await asyncio.wait_for(source.get("/articles", raw), 5)
        finally:
            await source.close()
        return answer.status, answer.body

    return asyncio.run(one())


@pytest.mark.unit
@pytest.mark.parametrize("raw", ESCAPES)
def test_a_path_that_could_leave_is_refused_before_any_file_is_opened(tmp_path: Path, raw: str) -> None:
    source = FileSource("files", tmp_path / "no-such-root")  # opening anything would fail otherwise: 502
    with pytest.raises(InvalidQuery):
        get(source, raw)


@pytest.mark.unit
@pytest.mark.parametrize("raw", ABSENT)
def test_no_symlink_is_followed_and_only_regular_files_are_read(tmp_path: Path, raw: str) -> None:
    status, body = get(FileSource("files", build(tmp_path)), raw)
    assert (status, body) == (404, b"not found\n"), raw


@pytest.mark.unit
def test_files_under_the_prefix_are_served_with_a_type_by_extension(tmp_path: Path) -> None:
    files = build(tmp_path)
    assert get(FileSource("files", files), "ok.json") == (200, ARTICLE)
    assert get(FileSource("files", files), "sub/deep.json") == (200, b'{"deep": true}')

    async def typed() -> str | None:
        source = FileSource("files", files)
        try:
            return (await source.get("/articles", "ok.json", "x=1")).content_type
        finally:
            await source.close()

    assert asyncio.run(typed()) == "application/json"


@pytest.mark.unit
def test_sizes_are_capped(tmp_path: Path) -> None:
    files = build(tmp_path)
    with pytest.raises(SourceUnavailable, match="cap"):
        get(FileSource("files", files), "big.bin")  # sparse: refused by its size, before a byte is read
    (files / "articles" / "eleven.txt").write_bytes(b"x" * 11)
    with pytest.raises(SourceUnavailable, match="cap"):
        get(FileSource("files", files, max_bytes=10), "eleven.txt")
    assert get(FileSource("files", files, max_bytes=11), "eleven.txt") == (200, b"x" * 11)


@pytest.mark.unit
def test_a_root_that_is_gone_is_the_source_failing(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable):
        get(FileSource("files", tmp_path / "gone"), "ok.json")


@pytest.mark.unit
@pytest.mark.parametrize("url,fault", [
    ("file://host/files", "names no host"), ("file:missing", "is not a directory"),
    ("file:///", "is not a directory"), ("file:", "is not a directory"), ("file:outside/secret.txt", "directory")])
def test_agentgate_toml_takes_only_a_directory(tmp_path: Path, url: str, fault: str) -> None:
    build(tmp_path)
    config = write_workspace(tmp_path, source_url="sqlite:///src.db", datasets=DATASETS, policy=POLICY,
                             extra=f'[sources.files]\nurl = "{url}"\n')
    with pytest.raises(ConfigError, match=fault):
        load_settings(config)


@pytest.mark.unit
def test_a_file_source_takes_no_credentials(tmp_path: Path) -> None:
    build(tmp_path)
    config = write_workspace(tmp_path, source_url="sqlite:///src.db", datasets=DATASETS, policy=POLICY,
                             extra='[sources.files]\nurl = "file:files"\nheaders = { X = "y" }\n')
    with pytest.raises(ConfigError, match="takes no headers"):
        load_settings(config)


# --- through the gateway ------------------------------------------------------------------------------------------

@pytest.fixture
def gateway(tmp_path: Path, sqlite_source: str) -> Iterator[tuple[TestClient, Path]]:
    build(tmp_path)
    config = write_workspace(tmp_path, source_url=sqlite_source, datasets=DATASETS,
                             policy=POLICY + "p, support, docs, read, allow\n",
                             extra='[sources.files]\nurl = "file:files"\n')
    with client_for(config) as client:
        yield client, config


def raw_get(client: TestClient, raw: str, agent: str = "support-bot") -> tuple[int, bytes]:
    assert client.portal is not None
    status, body = client.portal.call(_raw_get, client.app, f"/v1/datasets/docs/proxy/{raw}".encode(),
                                      f"Bearer {token(agent)}")
    return status, body


def test_through_the_gateway_nothing_outside_is_served(gateway: tuple[TestClient, Path]) -> None:
    client, config = gateway
    assert raw_get(client, "ok.json") == (200, ARTICLE)
    for n, raw in enumerate(ESCAPES + ABSENT + ["big.bin"]):
        status, body = raw_get(client, raw)
        want = 400 if raw in ESCAPES else 404 if raw in ABSENT else 502
        assert status == want, (raw, status, body)
        assert SECRET not in body and b"Traceback" not in body, raw
        rec = records(config)[-1]
        assert (rec["dataset"], rec["status"], rec["id"]) == ("docs", want, n + 2), (raw, rec)


def test_the_agents_token_and_policy_still_decide(gateway: tuple[TestClient, Path]) -> None:
    client, config = gateway
    status, body = raw_get(client, "ok.json", "analyst-bot")
    assert status == 403 and ARTICLE not in body
    assert records(config)[-1]["decision"] == "deny"
