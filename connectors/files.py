"""A directory of files as an HTTP source: a GET answers with one file's bytes (static reference data, the demo).

The connector knows nothing of agents, policy or audit. The agent's path is first checked as an HTTP source's is
(connectors/http.confine: no dot segments, encoded slashes, backslashes, control characters or NUL, in any reading),
then opened one segment at a time beneath the root directory's descriptor with O_NOFOLLOW: no symlink is followed,
out of the root or within it, and no name is ever resolved against anything but the directory opened before it. Only
a regular file is read (a directory, FIFO or device answers 404), within the size cap of an HTTP source's answer.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path
from urllib.parse import unquote

from connectors.base import HttpAnswer, SourceTimedOut, SourceUnavailable
from connectors.http import DEFAULT_MAX_BYTES, ResponseTooLarge, clean_query, confine

# By the file's extension; anything else is plain bytes (no guessing from the system's tables: the answer must not
# depend on the machine). No HTML: the gateway's origin never serves a page it did not write.
CONTENT_TYPES = {".json": "application/json", ".txt": "text/plain; charset=utf-8",
                 ".md": "text/markdown; charset=utf-8", ".csv": "text/csv; charset=utf-8"}
OCTETS = "application/octet-stream"
# What names no regular file under the root: missing, a symlink (O_NOFOLLOW: ELOOP, or EMLINK on BSDs), a file
# where a directory was named, a name too long. Any other failure (permissions, I/O) is the source failing: 502.
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EMLINK, errno.ENAMETOOLONG, errno.EISDIR})
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO never waits for a writer (it is then refused as no regular file); O_NOCTTY: a terminal
# never becomes the gateway's.
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CHUNK = 1 << 20


class FileSource:
    """One directory served read-only as an HTTP source: `{prefix}/{path}` names a file beneath `root`."""

    def __init__(self, name: str, root: Path, *, timeout_seconds: float = 10.0, pool_size: int = 10,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        self.name = name
        self.root = root
        self.timeout_seconds = timeout_seconds
        self.max_bytes = max_bytes
        # Its own threads, `pool_size` of them: a slow disk holds up this source's reads, never the rest of the
        # process's work on the default executor.
        self._pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix=f"agentgate-files-{name}")

    @staticmethod
    def names_for(prefix: str, raw_path: str) -> list[str]:
        """The names, one per directory level beneath the root, that a GET of `raw_path` (percent-encoded, as it
        arrived) under the dataset's `prefix` opens; InvalidQuery for a path that could leave it."""
        return [part for part in prefix.split("/") if part] + [unquote(seg) for seg in confine(raw_path).split("/")]

    async def get(self, prefix: str, raw_path: str, raw_query: str = "", *, accept: str | None = None,
                  traceparent: str | None = None) -> HttpAnswer:
        """The file's bytes (200) or 404; `raw_query` is checked as an HTTP source's and otherwise ignored, as are
        `accept` and `traceparent` (a file has one representation and no trace of its own)."""
        names = self.names_for(prefix, raw_path)
        clean_query(raw_query)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_seconds):
                answer = await asyncio.get_running_loop().run_in_executor(self._pool, self._read, names)
        except TimeoutError as exc:
            raise SourceTimedOut(f"source {self.name!r} did not answer within {self.timeout_seconds:g}s") from exc
        ms = (time.perf_counter() - started) * 1000
        if answer is None:
            return HttpAnswer(status=404, content_type="text/plain; charset=utf-8", body=b"not found\n", headers={},
                              source_ms=ms)
        body, modified = answer
        content_type = CONTENT_TYPES.get(os.path.splitext(names[-1])[1].lower(), OCTETS)
        return HttpAnswer(status=200, content_type=content_type, body=body,
                          headers={"Last-Modified": formatdate(modified, usegmt=True)}, source_ms=ms)

    def _read(self, names: list[str]) -> tuple[bytes, float] | None:
        """(the file's bytes, its modification time), or None when `names` lead to no regular file. Blocking."""
        if "" in names:  # the dataset's own prefix, or a path ending in '/': a directory, not a file
            return None
        try:
            fd = self._open(names)
        except ValueError:  # a NUL in a name (confine refuses one first; never a 500 should it not)
            return None
        except OSError as exc:
            if exc.errno in _ABSENT:
                return None
            raise SourceUnavailable(f"source {self.name!r} failed: {exc.strerror}") from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None
            if info.st_size > self.max_bytes:
                raise ResponseTooLarge(f"source {self.name!r}: the file is {info.st_size} bytes, over the "
                                       f"{self.max_bytes}-byte cap")
            return self._bytes(fd), info.st_mtime
        finally:
            os.close(fd)

    def _open(self, names: list[str]) -> int:
        """The last name's descriptor, each name opened in the directory opened before it, no symlink followed."""
        try:
            fd = os.open(self.root, _DIR)
        except OSError as exc:  # the root itself gone or unreadable: the source failing, not a missing file
            raise SourceUnavailable(f"source {self.name!r}: its directory cannot be opened: {exc.strerror}") from exc
        try:
            for name in names[:-1]:
                parent, fd = fd, -1
                try:
                    fd = os.open(name, _DIR, dir_fd=parent)
                finally:
                    os.close(parent)
            return os.open(names[-1], _FILE, dir_fd=fd)
        finally:
            if fd >= 0:
                os.close(fd)

    def _bytes(self, fd: int) -> bytes:
        """At most max_bytes; a file grown past the cap since its size was read is refused as well."""
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, _CHUNK):
            size += len(chunk)
            if size > self.max_bytes:
                raise ResponseTooLarge(f"source {self.name!r}: the file is over the {self.max_bytes}-byte cap")
            chunks.append(chunk)
        return b"".join(chunks)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
