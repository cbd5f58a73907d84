"""Audit records stay byte-identical across releases: a trail written by an earlier release verifies with today's
code, each record hashes as it was stored, and exports as it did.

tests/data/trail-063beaf.db is a SQLite store written by the code of commit 063beaf, before the audit package was
split into its modules (issue 14); tests/data/make_trail_063beaf.py made it and its exports (.jsonl, .csv) with that
code. It holds 23 records of every kind (reads answered 200, masked and through SQL mode, refusals 401 and 403, an
approval asked for and granted, an agent revoked and restored, a token revoked from the command line, a prune and
its signed anchor, a signed checkpoint) and records whose canonical form takes the rarer ways: a query over 4 KiB,
texts capped, NUL and lone surrogates stored as U+FFFD, non-ASCII and control characters, floats JSON writes with
an exponent, a time before year 1000, an integer of 63 bits.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import GENESIS, AuditRecord, canonical, chain_hash, export_lines
from gateway.cli import main as cli
from gateway.common.clock import format_time, parse_time
from gateway.store import make_store_engine
from tests.conftest import records, write_workspace

pytestmark = pytest.mark.unit

DATA = Path(__file__).parent / "data"
STORE = DATA / "trail-063beaf.db"
KEY = "compat-checkpoint-key-" + "c" * 32  # the [audit] checkpoint_key it was written with
ANCHOR_HASH = "c7c636c2baa29cdc0623b6417c97c7c0c7d76869e9415134e71cd3e5b5144b5d"  # what record 4 follows


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A workspace whose store is a copy of the old trail (verify may write nothing, but a copy costs little)."""
    cfg = write_workspace(tmp_path, source_url=f"sqlite+aiosqlite:///{tmp_path}/source.db",
                          extra=f'\n[audit]\ncheckpoint_key = "{KEY}"\nverify_seconds = 0\n')
    shutil.copyfile(STORE, tmp_path / "store.db")
    return cfg


def as_record(values: dict[str, Any]) -> AuditRecord:
    """A record from a stored row or an exported line: its time as SQLite or format_time wrote it."""
    moment = values["time"]
    # format_time writes a year before 1000 unpadded ("999-12-31T..."), as strftime does; ISO 8601 wants 4 digits.
    moment = "0" * (4 - moment.index("-")) + moment
    return AuditRecord(**{**values, "time": parse_time(moment)})


def test_audit_verify_passes_on_a_trail_written_before(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["audit", "verify", "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ok 23 records, 1 checkpoints",
        "the trail starts at record 4, after a prune at 2026-12-01T01:39:09.562842Z by cli:root (record 4): 3 "
        "records before 2021-01-01T00:00:00.000000Z deleted (3 by every prune); anchor: record 4 follows hash "
        f"{ANCHOR_HASH}, signed",
    ]


def test_every_stored_record_hashes_again_to_its_stored_hash(config: Path) -> None:
    rows = records(config)
    assert [r["id"] for r in rows] == list(range(4, 27))
    prev = ANCHOR_HASH
    for row in rows:
        rec = as_record(row)
        assert (rec.id, rec.prev_hash) == (row["id"], prev)
        assert chain_hash(rec) == row["hash"], f"record {row['id']} no longer hashes as it was stored"
        prev = row["hash"]
    # The kinds it holds: the fixture keeps covering each way a record is made and hashed.
    kinds = {(r["action"], r["decision"], r["status"]) for r in rows}
    assert {("read", "allow", 200), ("read", "deny", 401), ("read", "deny", 403), ("read", "pending", 202),
            ("approve", "allow", 200), ("revoke", "allow", 201), ("restore", "allow", 204), ("prune", "allow", 200),
            ("list", "allow", 200), ("read_audit", "allow", 200)} <= kinds
    by_agent = {r["agent"]: r for r in rows}
    assert by_agent["tiny-floats"]["duration_ms"] == 1e-05 and by_agent["tiny-floats"]["rows"] == 2**62
    assert by_agent["old-year"]["time"].startswith("0999-")
    assert "\ufffd" in by_agent["nul\ufffdagent"]["query"]
    assert any(r["query_sha256"] for r in rows) and any(r["approved_by"] for r in rows)
    assert any(r["dataset"] == "customers,orders" for r in rows)  # SQL mode names every dataset it read


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
async def test_the_old_trail_exports_as_it_did(config: Path, fmt: str) -> None:
    engine = make_store_engine(f"sqlite+aiosqlite:///{config.parent}/store.db")
    try:
        exported = "".join([line async for line in export_lines(engine, fmt)])
    finally:
        await engine.dispose()
    assert exported.encode() == (DATA / f"trail-063beaf.{fmt}").read_bytes()
    if fmt == "jsonl":  # and what it exports is what the hash covers
        for line in exported.splitlines():
            values = json.loads(line)
            assert chain_hash(as_record(values)) == values["hash"]


# One record's canonical bytes and hash, as the code of 063beaf computed them: every later field but two null (left
# out of the hashed content), non-ASCII kept as UTF-8, quotes escaped, floats in their shortest form.
PINNED = AuditRecord(
    time=dt.datetime(2026, 3, 14, 15, 9, 26, 535897, tzinfo=dt.UTC), request_id="5f1c0de0a1b2c3d4", action="read",
    decision="allow", status=200, agent="support-bot", on_behalf_of="zoë@example.com", dataset="customers",
    query='{"limit": 3, "where": [["name", "=", "O\'Brien \\"Ω\\""]]}', rows=3, bytes=412, duration_ms=2.211,
    source_ms=0.892, response_sha256="ab" * 32, rule="p, support, customers, read, allow", columns='["id","name"]',
    masked='["email"]', transport="http", client="203.0.113.7", user_agent="curl/8.5.0", id=42, prev_hash="cd" * 32)
PINNED_BYTES = (
    '{"action":"read","agent":"support-bot","approved_by":null,"bytes":412,"client":"203.0.113.7","columns":'
    '"[\\"id\\",\\"name\\"]","dataset":"customers","decision":"allow","duration_ms":2.211,"id":42,"masked":'
    '"[\\"email\\"]","on_behalf_of":"zoë@example.com","prev_hash":"' + "cd" * 32 + '","query":"{\\"limit\\": 3, '
    '\\"where\\": [[\\"name\\", \\"=\\", \\"O\'Brien \\\\\\"Ω\\\\\\"\\"]]}","reason":null,"request_id":'
    '"5f1c0de0a1b2c3d4","response_sha256":"' + "ab" * 32 + '","rows":3,"rule":"p, support, customers, read, allow",'
    '"source_ms":0.892,"status":200,"time":"2026-03-14T15:09:26.535897Z","transport":"http","user_agent":'
    '"curl/8.5.0","work_unit":null}').encode()


def test_one_record_has_the_canonical_bytes_and_hash_it_always_had() -> None:
    assert canonical(PINNED) == PINNED_BYTES
    assert chain_hash(PINNED) == "dcaca47120fad338d282f7f617668877b0882a595c6102e53e05ff67c5e0ce01"


def test_the_rare_forms_keep_their_bytes_too() -> None:
    """A float JSON writes with an exponent, and a year before 1000: the json encoder's way, not orjson's."""
    rare = AuditRecord(time=dt.datetime(999, 1, 2, 3, 4, 5, tzinfo=dt.UTC), request_id="r", action="read",
                       decision="deny", status=403, duration_ms=1e-05, source_ms=1e16, id=1, prev_hash=GENESIS)
    assert format_time(rare.time) == "999-01-02T03:04:05.000000Z"
    assert b'"duration_ms":1e-05,' in canonical(rare) and b'"source_ms":1e+16,' in canonical(rare)
    assert chain_hash(rare) == "365ac52a76a5335c495747d847fabbf4f9adc41148f0e891114c70a36d6353d7"
