"""How tests/data/trail-063beaf.db and its exports (.jsonl, .csv) were made: a SQLite store written by the code
of commit 063beaf (before the audit package was split, issue 14), which tests/test_trail_compat.py verifies, and
exports again, with the code of today.

Run it against that tree, not this one (its imports are the flat modules of the time):

    git archive 063beaf | tar -x -C /tmp/before
    cd /tmp && PYTHONPATH=/tmp/before python /path/to/tests/data/make_trail_063beaf.py /path/to/tests/data

It serves the gateway in process (Starlette's TestClient) on a temporary workspace and makes records of every
kind a trail holds: reads answered 200 (plain, masked, SQL mode, approved), refusals (401, 403, 400), an
approval asked for and granted, an agent revoked and restored through the admin API, a token revoked from the
command line, a prune (with its signed anchor) and a signed checkpoint; then, written straight through the
trail, records whose canonical form takes the less common ways: a query over 4 KiB (kept as its start, its
length and SHA-256), texts to cap, NUL and lone surrogates (stored as U+FFFD), non-ASCII and control
characters, floats JSON writes with an exponent, a time before year 1000, a large integer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import sqlite3
import sys
import tempfile
import uuid
from pathlib import Path

from gateway import audit
from gateway.cli import main as cli
from gateway.store import create_tables, make_store_engine
from tests.conftest import DATASETS, POLICY, bearer, client_for, seed, write_workspace

KEY = "compat-checkpoint-key-" + "c" * 32
NAME = "trail-063beaf.db"
GUARDED = DATASETS + """
[datasets.approved_orders]
source = "main"
table = "orders"
owner = "finance@example.com"
approval = "required"
"""
ALLOWED = POLICY + "p, analyst, approved_orders, read, allow\n"


async def old_records(store_url: str) -> None:
    """Dated 2020: the prune below deletes them, its anchor then vouches for where the kept chain starts."""
    engine = make_store_engine(store_url)
    try:
        await create_tables(engine)
        for i in range(3):
            await audit.record_once(engine, audit.AuditRecord(
                time=dt.datetime(2020, 3, 1, 12, i, tzinfo=dt.UTC), request_id=f"old-{i}", action="read",
                decision="allow", status=200, agent="support-bot", dataset="customers", query='{"limit": 1}',
                rows=1, bytes=120, duration_ms=3.25, source_ms=1.5, transport="http"))
    finally:
        await engine.dispose()


def served(config: Path) -> None:
    with client_for(config) as client:
        # Sent as UTF-8 bytes: the server reads them as Latin-1, so each shows as several odd characters.
        odd = {"User-Agent": 'Zoë/1.0 (北京; "quoted" \\ back) 🚀'.encode(), "X-Work-Unit": "ticket-42",
               "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
        assert client.get("/v1/datasets", headers=bearer("support-bot")).status_code == 200
        assert client.post("/v1/datasets/customers/query", json={"limit": 3},
                           headers=bearer("support-bot") | odd).status_code == 200
        assert client.post("/v1/datasets/customers/query", json={"limit": 2, "where": [["country", "=", "DE"]]},
                           headers=bearer("analyst-bot", on_behalf_of="zoë@example.com")).status_code == 200
        assert client.post("/v1/datasets/customers/query", json={"limit": 1}).status_code == 401
        assert client.post("/v1/datasets/customers/query", json={"limit": 1},
                           headers={"Authorization": "Bearer not-a-jwt"}).status_code == 401
        assert client.post("/v1/datasets/orders/query", json={"limit": 1},
                           headers=bearer("support-bot")).status_code == 403
        long_body = {"limit": 1, "where": [["name", "=", "Ω\u2028\t\"x\\" * 1500]]}
        assert client.post("/v1/datasets/customers/query", json=long_body,
                           headers=bearer("support-bot")).status_code in (200, 400)
        assert client.post("/v1/sql", json={"sql": "SELECT id, name FROM customers WHERE country = 'DE' LIMIT 3"},
                           headers=bearer("analyst-bot")).status_code == 200
        assert client.post("/v1/sql", json={"sql": "SELECT id FROM orders o JOIN customers c ON c.id = o.id"},
                           headers=bearer("support-bot")).status_code == 403
        pending = client.post("/v1/datasets/approved_orders/query", json={"limit": 2}, headers=bearer("analyst-bot"))
        assert pending.status_code == 202, pending.text
        aid = pending.json()["approval_id"]
        assert client.post(f"/admin/v1/approvals/{aid}/approve", headers=bearer("alice")).status_code == 200
        assert client.post("/v1/datasets/approved_orders/query", json={"limit": 2},
                           headers=bearer("analyst-bot") | {"X-Approval-Id": aid}).status_code == 200
        revoked = client.post("/admin/v1/revocations", headers=bearer("alice"),
                              json={"agent": "support-bot", "reason": "rotated: leaked in a log"})
        assert revoked.status_code == 201, revoked.text
        assert client.post("/v1/datasets/customers/query", json={"limit": 1},
                           headers=bearer("support-bot")).status_code == 403
        assert client.delete(f"/admin/v1/revocations/{revoked.json()['id']}",
                             headers=bearer("alice")).status_code == 204
        assert client.get("/admin/v1/audit?limit=5", headers=bearer("alice")).status_code == 200


async def crafted(store_url: str) -> None:
    """Straight through the trail: what no request above makes, each a way the canonical form can take."""
    engine = make_store_engine(store_url)
    base = dict(request_id=uuid.uuid4().hex, action="read", decision="allow", status=200, transport="http")
    try:
        for rec in (
            audit.AuditRecord(time=audit.now(), **base, agent="a" * 300, dataset="customers",
                              query="SELECT 1 -- " + "é" * 3000, user_agent="u" * 400, reason="r" * 2000),
            audit.AuditRecord(time=audit.now(), **base, agent="nul\x00agent", dataset="customers",
                              query="lone \udc80 surrogate and \x00 NUL", work_unit="\x01\x1f\x7f ctl"),
            audit.AuditRecord(time=audit.now(), **base, agent="tiny-floats", duration_ms=1e-05, source_ms=2.5e16,
                              rows=2**62, bytes=0),
            audit.AuditRecord(time=dt.datetime(999, 12, 31, 23, 59, 59, 1, tzinfo=dt.UTC), **base, agent="old-year",
                              duration_ms=0.0, source_ms=123456.789),
            audit.AuditRecord(time=audit.now(), request_id="deny-1", action="read", decision="deny", status=403,
                              agent="analyst-bot", dataset="customers,orders", rule="p, analyst, customers, "
                              "read:pii, deny", columns="id,name,email", masked="email",
                              row_filter="country = 'DE'", token_id="jti-\u00e9", client="203.0.113.7",
                              trace_id="4bf92f3577b34da6a3ce929d0e0e4736"),
        ):
            await audit.record_once(engine, rec)
    finally:
        await engine.dispose()


def main(out_dir: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="trail-063beaf-"))
    source = f"sqlite+aiosqlite:///{root}/source.db"
    seed(source)
    extra = f'\n[audit]\ncheckpoint_key = "{KEY}"\nverify_seconds = 0\n'
    config = write_workspace(root / "ws", source_url=source, datasets=GUARDED, policy=ALLOWED, extra=extra)
    store_url = f"sqlite+aiosqlite:///{config.parent}/store.db"
    args = ["--config", str(config)]
    assert cli(["check", *args]) == 0
    asyncio.run(old_records(store_url))
    assert cli(["audit", "prune", "--before", "2021-01-01", "--yes", *args]) == 0
    served(config)
    assert cli(["revoke", "token", "jti-from-cli", "--reason", "laptop lost", *args]) == 0
    asyncio.run(crafted(store_url))
    assert cli(["audit", "checkpoint", *args]) == 0
    assert cli(["audit", "verify", *args]) == 0
    conn = sqlite3.connect(config.parent / "store.db")
    try:
        conn.execute("VACUUM")
    finally:
        conn.close()
    shutil.copyfile(config.parent / "store.db", out_dir / NAME)
    asyncio.run(exports(store_url, out_dir))
    shutil.rmtree(root)


async def exports(store_url: str, out_dir: Path) -> None:
    """The trail exported as that code exported it: what the export of today must give, byte for byte."""
    engine = make_store_engine(store_url)
    try:
        for fmt in ("jsonl", "csv"):
            with (out_dir / NAME.replace(".db", f".{fmt}")).open("w", newline="") as out:
                async for line in audit.export_lines(engine, fmt):
                    out.write(line)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
