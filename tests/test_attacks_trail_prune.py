"""Attacks on the trail through its own retention: `audit prune` used to erase every record without a question
(a date in the future did it), and `verify` then said "ok 1 records" as if nothing had happened.

A prune now refuses a cut-off in the future or inside `[audit] min_retention_days`, asks for a yes (on a
terminal, or --yes; never from a pipe), can be tried with --dry-run, writes its own record in the same
transaction, and `verify`, the admin API and the review page say where the trail starts and why: when, by
whom, how many records, the anchor. On the SQLite and PostgreSQL stores."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import pty
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select, update

from gateway.audit import AuditRecord, AuditTrail
from gateway.common.clock import now
from gateway.store import anchor as anchor_table
from gateway.store import audit as audit_table
from tests.conftest import bearer, client_for, opened_store, token, write_workspace
from tests.test_cli import agentgate, agentgate_many, one_line_reason, output

pytestmark = pytest.mark.system

KEY = "checkpoint-key-" + "k" * 32
NOW = now()
# Five old records (a year and more), three recent ones (this week): a prune before 90 days ago takes five.
AGES_DAYS = (500, 400, 300, 200, 100, 3, 2, 1)
OLD = sum(age > 90 for age in AGES_DAYS)


def iso(moment: dt.datetime) -> str:
    return moment.isoformat()


def workspace(root: Path, source: str, store: str, extra: str = "") -> Path:
    cfg = write_workspace(root, source_url=source, store_url=store, extra=extra)
    asyncio.run(_fill(store))
    return cfg


async def _fill(url: str) -> None:
    async with opened_store(url) as engine:
        trail = AuditTrail(engine)
        await trail.start()
        try:
            for i, age in enumerate(AGES_DAYS):
                await trail.record(AuditRecord(
                    time=NOW - dt.timedelta(days=age), request_id=f"old-{i}", action="read", decision="allow",
                    status=200, agent="support-bot", dataset="customers", rows=1))
        finally:
            await trail.close()


def snapshot(url: str) -> tuple[list[tuple[int, str]], list[object]]:
    """Every record's (id, action) and the anchor row: what a refused prune must leave as it was."""
    async def read() -> tuple[list[tuple[int, str]], list[object]]:
        async with opened_store(url) as engine, engine.connect() as conn:
            ids = [(r.id, r.action) for r in await conn.execute(
                select(audit_table.c.id, audit_table.c.action).order_by(audit_table.c.id))]
            anchors = list((await conn.execute(select(anchor_table))).fetchall())
        return ids, anchors
    return asyncio.run(read())


# --- refused cut-offs ----------------------------------------------------------------------------------

def test_a_cut_off_in_the_future_or_inside_retention_is_refused(tmp_path: Path, sqlite_source: str) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    cfg = workspace(tmp_path, sqlite_source, store, extra="\n[audit]\nmin_retention_days = 90\n")
    before = snapshot(store)
    later = NOW + dt.timedelta(hours=1)
    cut_offs = [
        "2030-01-01",  # the example: every record, without a question
        "9999-12-31T23:59:59Z",
        iso(later),
        # An hour ahead, written in a zone whose clock reads nine hours ago: still in the future.
        later.astimezone(dt.timezone(dt.timedelta(hours=-10))).isoformat(),
        later.replace(tzinfo=None).isoformat(),  # a naive time is UTC
        iso(NOW - dt.timedelta(days=89)),  # inside [audit] min_retention_days = 90
        NOW.date().isoformat(),  # today at midnight
        iso(NOW - dt.timedelta(days=60)),
    ]
    runs = agentgate_many([("audit", "prune", "--before", c, "--yes", "--config", cfg) for c in cut_offs]
                          + [("audit", "prune", "--before", "last tuesday", "--yes", "--config", cfg),
                             ("audit", "prune", "--before", "2030-01-01", "--dry-run", "--config", cfg)])
    for cut, proc in zip([*cut_offs, "last tuesday", "2030-01-01 (dry run)"], runs, strict=True):
        assert proc.returncode == 2, (cut, output(proc))
        reason = one_line_reason(proc)
        assert "future" in reason or "min_retention_days (90)" in reason or "ISO 8601" in reason, (cut, reason)
        assert proc.stdout == ""
    assert snapshot(store) == before  # nothing deleted, no anchor, no record
    allowed = agentgate("audit", "prune", "--before", iso(NOW - dt.timedelta(days=91)), "--dry-run",
                        "--config", cfg)
    assert allowed.returncode == 0 and f"dry run: {OLD} records" in allowed.stdout, output(allowed)


def test_the_default_retention_is_thirty_days(tmp_path: Path, sqlite_source: str) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    cfg = workspace(tmp_path, sqlite_source, store)
    inside, outside = agentgate_many([
        ("audit", "prune", "--before", iso(NOW - dt.timedelta(days=29)), "--dry-run", "--config", cfg),
        ("audit", "prune", "--before", iso(NOW - dt.timedelta(days=31)), "--dry-run", "--config", cfg)])
    assert inside.returncode == 2 and "min_retention_days (30)" in one_line_reason(inside)
    assert outside.returncode == 0 and f"dry run: {OLD} records" in outside.stdout


def test_a_bad_retention_setting_stops_the_command(tmp_path: Path, sqlite_source: str) -> None:
    for value in ("-1", "36501", '"30"', "1.5"):
        cfg = write_workspace(tmp_path / value.strip('"').replace(".", "_"), source_url=sqlite_source,
                              extra=f"\n[audit]\nmin_retention_days = {value}\n")
        proc = agentgate("audit", "prune", "--before", "2020-01-01", "--dry-run", "--config", cfg)
        assert proc.returncode == 1 and "min_retention_days" in one_line_reason(proc), output(proc)


# --- dry run and the yes -------------------------------------------------------------------------------

def test_a_dry_run_counts_and_changes_nothing(tmp_path: Path, sqlite_source: str, store_url: str) -> None:
    cfg = workspace(tmp_path, sqlite_source, store_url)
    before = snapshot(store_url)
    cut = iso(NOW - dt.timedelta(days=90))
    dry = agentgate("audit", "prune", "--before", cut, "--dry-run", "--config", cfg)
    assert dry.returncode == 0, output(dry)
    assert dry.stdout.startswith(f"dry run: {OLD} records before ") and "nothing was changed" in dry.stdout
    assert snapshot(store_url) == before
    verify = agentgate("audit", "verify", "--config", cfg)
    assert verify.stdout == f"ok {len(AGES_DAYS)} records\n"  # never pruned: nothing to say about it


def test_without_a_terminal_a_prune_needs_yes(tmp_path: Path, sqlite_source: str) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    cfg = workspace(tmp_path, sqlite_source, store)
    before = snapshot(store)
    base = [sys.executable, "-m", "gateway.cli", "audit", "prune", "--before", iso(NOW - dt.timedelta(days=90)),
            "--config", str(cfg)]
    # No stdin at all, and `yes | agentgate audit prune`: a pipe is not a person.
    for stdin in (subprocess.DEVNULL, None):
        proc = subprocess.run(base, input=None if stdin is not None else "y\ny\n", stdin=stdin,
                              capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent)
        assert proc.returncode == 2, output(proc)
        assert f"would delete {OLD} records" in one_line_reason(proc) and "--yes" in proc.stderr
    assert snapshot(store) == before


def _answer_on_a_terminal(cmd: list[str], answer: bytes) -> subprocess.CompletedProcess[str]:
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(cmd, stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=Path(__file__).parent)
        os.close(follower)
        os.write(leader, answer)  # typed ahead: the terminal holds it until the prompt reads a line
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(leader)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_on_a_terminal_a_prune_asks_first(tmp_path: Path, sqlite_source: str) -> None:
    store = f"sqlite+aiosqlite:///{tmp_path}/store.db"
    cfg = workspace(tmp_path, sqlite_source, store)
    before = snapshot(store)
    cmd = [sys.executable, "-m", "gateway.cli", "audit", "prune", "--before", iso(NOW - dt.timedelta(days=90)),
           "--config", str(cfg)]
    for answer in (b"n\n", b"\n", b"no\n", b"yess\n", b"\x04"):  # anything but yes keeps every record
        proc = _answer_on_a_terminal(cmd, answer)
        assert proc.returncode == 1, (answer, output(proc))
        assert f"delete {OLD} records before" in proc.stderr and "[y/N]" in proc.stderr
        assert "cancelled; nothing was deleted" in proc.stderr
        assert snapshot(store) == before
    done = _answer_on_a_terminal(cmd, b"y\n")
    assert done.returncode == 0, output(done)
    assert done.stdout.startswith(f"pruned {OLD} records before ")
    ids, [anchor] = snapshot(store)
    assert [i for i, _ in ids] == list(range(OLD + 1, len(AGES_DAYS) + 2)) and ids[-1][1] == "prune"
    assert anchor.first_id == OLD + 1 and anchor.record_id == len(AGES_DAYS) + 1  # type: ignore[attr-defined]


# --- what verify, the admin API and the page say -----------------------------------------------------

PRUNE_LINE = re.compile(r"the trail starts at record (\d+), after a prune at (\S+) by cli:(\S+) \(record (\d+)\): "
                        r"(\d+) records before (\S+) deleted \((\d+) by every prune\); anchor: record \1 follows hash "
                        r"([0-9a-f]{64}), (signed|unsigned)")


def test_verify_the_api_and_the_page_say_where_the_trail_starts(tmp_path: Path, sqlite_source: str,
                                                                 store_url: str) -> None:
    cfg = workspace(tmp_path, sqlite_source, store_url, extra=f'\n[audit]\ncheckpoint_key = "{KEY}"\n')
    exported = [json.loads(line) for line in agentgate("audit", "export", "--format", "jsonl", "--config",
                                                       cfg).stdout.splitlines()]
    last_pruned_hash = exported[OLD - 1]["hash"]
    with client_for(cfg) as client:
        # A gateway running beside the prune keeps writing (on PostgreSQL its writer holds the tail in memory).
        assert client.get("/v1/datasets", headers=bearer("support-bot")).status_code == 200
        done = agentgate("audit", "prune", "--before", iso(NOW - dt.timedelta(days=90)), "--yes", "--config", cfg)
        assert done.returncode == 0 and done.stdout.startswith(f"pruned {OLD} records"), output(done)
        assert client.get("/v1/datasets", headers=bearer("support-bot")).status_code == 200
        api = client.get("/admin/v1/audit/verify", headers=bearer("alice"))
        assert api.status_code == 200, api.text
        body = api.json()
        assert body["ok"] is True
        pruned = body["pruned"]
        assert pruned["by"].startswith("cli:") and pruned["pruned"] == OLD and pruned["total"] == OLD
        assert pruned["first_id"] == OLD + 1 and pruned["prev_hash"] == last_pruned_hash and pruned["signed"]
        # The prune's own record: in the chain, naming the anchor it made.
        record = client.get(f"/admin/v1/audit/{pruned['record_id']}", headers=bearer("alice")).json()["record"]
        assert record["action"] == "prune" and record["agent"] == pruned["by"] and record["rows"] == OLD
        assert json.loads(record["query"])["first_id"] == OLD + 1
        assert client.post("/admin/login", data={"token": token("alice")}, follow_redirects=False).status_code == 303
        page = client.get("/admin/").text
        shown = re.search(r'<p class="notice info" id="prune-status">(.*?)</p>', page, re.S)
        assert shown is not None
        text = re.sub(r"<[^>]+>|\s+", " ", shown.group(1))
        assert f"starts at record {OLD + 1}" in text and pruned["by"] in text and f"{OLD} records" in text
        assert last_pruned_hash in text and "signed" in text
    verify = agentgate("audit", "verify", "--config", cfg)
    assert verify.returncode == 0, output(verify)
    first, second = verify.stdout.splitlines()
    assert first.startswith("ok ")
    match = PRUNE_LINE.fullmatch(second)
    assert match is not None, second
    assert (int(match[1]), int(match[4]), int(match[5]), int(match[7]), match[8], match[9]) == (
        OLD + 1, pruned["record_id"], OLD, OLD, last_pruned_hash, "signed")


def test_pruning_everything_old_still_says_so(tmp_path: Path, sqlite_source: str, store_url: str) -> None:
    """The issue's case: every record older than the cut-off. The trail keeps the prune's record, and verify says
    that the one record it found is what is left after a prune of all the others."""
    cfg = workspace(tmp_path, sqlite_source, store_url, extra="\n[audit]\nmin_retention_days = 0\n")
    done = agentgate("audit", "prune", "--before", iso(NOW - dt.timedelta(seconds=1)), "--yes", "--config", cfg)
    assert done.returncode == 0, output(done)
    again = agentgate("audit", "prune", "--before", iso(NOW - dt.timedelta(days=200)), "--yes", "--config", cfg)
    assert again.returncode == 0 and again.stdout.startswith("nothing to prune"), output(again)
    verify = agentgate("audit", "verify", "--config", cfg)
    first, second = verify.stdout.splitlines()
    assert first == "ok 2 records"  # the prune's record and the empty second prune's
    match = PRUNE_LINE.fullmatch(second)
    assert match is not None and int(match[5]) == len(AGES_DAYS) and int(match[1]) == len(AGES_DAYS) + 1, second
    listed = json.loads(agentgate("audit", "list", "--json", "--config", cfg).stdout)
    assert [(r["action"], r["rows"]) for r in listed] == [("prune", 0), ("prune", len(AGES_DAYS))]


def test_a_second_prune_is_counted_and_named(tmp_path: Path, sqlite_source: str, store_url: str) -> None:
    cfg = workspace(tmp_path, sqlite_source, store_url)
    first = agentgate("audit", "prune", "--before", iso(NOW - dt.timedelta(days=350)), "--yes", "--config", cfg)
    second = agentgate("audit", "prune", "--before", iso(NOW - dt.timedelta(days=90)), "--yes", "--config", cfg)
    assert first.stdout.startswith("pruned 2 records") and second.stdout.startswith(f"pruned {OLD - 2} records")
    line = agentgate("audit", "verify", "--config", cfg).stdout.splitlines()[1]
    match = PRUNE_LINE.fullmatch(line)
    assert match is not None and (int(match[5]), int(match[7])) == (OLD - 2, OLD), line


def test_a_prune_by_hand_in_the_store_is_not_attributed(tmp_path: Path, sqlite_source: str,
                                                        store_url: str) -> None:
    """Someone with the store's password deletes old records and writes an anchor themselves (no checkpoint key, so
    nothing is signed): the chain still verifies from the anchor, but nothing names a person, and an anchor
    pointed at an unrelated record does not borrow its author."""
    cfg = workspace(tmp_path, sqlite_source, store_url)

    async def cut(record_id: int | None) -> None:
        async with opened_store(store_url) as engine, engine.begin() as conn:
            last = (await conn.execute(select(audit_table.c.hash).where(audit_table.c.id == 3))).scalar_one()
            await conn.execute(delete(audit_table).where(audit_table.c.id <= 3))
            await conn.execute(insert(anchor_table).values(id=1, first_id=4, prev_hash=last, pruned=3,
                                                           before=NOW - dt.timedelta(days=250), time=now(),
                                                           record_id=record_id))

    asyncio.run(cut(None))
    verify = agentgate("audit", "verify", "--config", cfg)
    assert verify.returncode == 0, output(verify)
    assert verify.stdout.splitlines()[1].startswith(
        "the trail starts at record 4, after a prune at ") and "by whom the trail does not say" in verify.stdout

    async def borrow() -> None:  # point the anchor at a read record, written by support-bot
        async with opened_store(store_url) as engine, engine.begin() as conn:
            await conn.execute(update(anchor_table).values(record_id=5))

    asyncio.run(borrow())
    with client_for(cfg) as client:
        pruned = client.get("/admin/v1/audit/verify", headers=bearer("alice")).json()["pruned"]
    assert pruned["by"] is None and pruned["pruned"] is None and pruned["record_id"] is None
    assert (pruned["first_id"], pruned["total"], pruned["signed"]) == (4, 3, False)


@pytest.fixture
def no_prune(tmp_path: Path, sqlite_source: str) -> Iterator[Path]:
    yield workspace(tmp_path, sqlite_source, f"sqlite+aiosqlite:///{tmp_path}/store.db")


@pytest.mark.integration
def test_a_trail_never_pruned_says_nothing_about_pruning(no_prune: Path) -> None:
    with client_for(no_prune) as client:
        assert client.get("/admin/v1/audit/verify", headers=bearer("alice")).json()["pruned"] is None
        assert client.post("/admin/login", data={"token": token("alice")}, follow_redirects=False).status_code == 303
        assert 'id="prune-status"' not in client.get("/admin/").text
