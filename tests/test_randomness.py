"""The hot path's random bytes: every byte from the kernel's CSPRNG handed out once, in this process and after a
fork; request ids shaped as uuid4().hex."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from gateway.common import randomness

pytestmark = pytest.mark.unit


def test_request_ids_are_version_4_uuids_and_unique() -> None:
    ids = [randomness.request_id() for _ in range(20_000)]  # several refills of the buffer
    assert len(set(ids)) == len(ids)
    for rid in ids[:2000]:
        parsed = uuid.UUID(hex=rid)
        assert parsed.hex == rid and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_bytes_are_never_handed_out_twice_across_refills_and_threads() -> None:
    got: list[bytes] = []

    def draw() -> None:
        got.extend(randomness.random_bytes(16) for _ in range(2000))

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8000 and all(len(b) == 16 for b in got)
    assert len(set(got)) == len(got)


@pytest.mark.system
def test_a_forked_child_does_not_repeat_its_parents_bytes() -> None:
    randomness.random_bytes(16)  # the parent holds a buffer with bytes still to hand out
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send what it would hand out next
        try:
            os.write(write, randomness.random_bytes(64))
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 64)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 64 and child != randomness.random_bytes(64)
