"""The audit record of each request, driven through the core: one record per request, written before the answer,
whose fields describe what left — the action of its operation, the decision and status, who asked and for whom,
what was asked, the rows, columns and masks, the rule, the answer's length and SHA-256 — and a chain that
verifies (tests/test_api.py, tests/test_core_operations.py's actions, SPEC: Audit trail)."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import QUERY_MAX_BYTES, verify
from tests.corekit import Core, open_core, people

pytestmark = pytest.mark.unit

ADMIN_RULE = "p, security-admin, admin:*, *, allow"


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    async with open_core(tmp_path, people()) as c:
        yield c


async def test_the_record_of_a_read_describes_what_left(core: Core) -> None:
    body = {"columns": ["id", "email"], "where": [["country", "=", "DE"]], "limit": 3}
    got = await core.query("analyst-bot", body=body, claims={"on_behalf_of": "jane@example.com", "jti": "tok-77"},
                           work_unit="TICKET-7", transport="mcp", client="10.0.0.7", user_agent="agent/1.0",
                           trace_id="0af7651916cd43dd8448eb211c80319c")
    assert got.status == 200
    record = await core.record_of(got)
    assert (record.agent, record.on_behalf_of, record.token_id, record.work_unit) == (
        "analyst-bot", "jane@example.com", "tok-77", "TICKET-7")
    assert (record.action, record.dataset, record.decision, record.status, record.reason) == (
        "read", "customers", "allow", 200, None)
    assert json.loads(record.query or "") == body and (record.query_bytes, record.query_sha256) == (None, None)
    assert (record.rows, record.bytes, record.response_sha256) == (3, len(got.answer.body), got.sha256)
    assert record.rule == "p, analyst, customers, read, allow"
    assert (json.loads(record.columns or ""), json.loads(record.masked or "")) == (["id"], ["email"])
    assert (record.row_filter, record.approved_by) == (None, None)
    assert (record.transport, record.client, record.user_agent, record.trace_id) == (
        "mcp", "10.0.0.7", "agent/1.0", "0af7651916cd43dd8448eb211c80319c")
    assert record.duration_ms is not None and record.source_ms is not None
    assert record.duration_ms >= record.source_ms >= 0


async def test_every_request_leaves_exactly_one_record_and_the_chain_verifies(core: Core) -> None:
    replies = [await core.query("support-bot", body={"limit": 2}), await core.query("stranger", body={}),
               await core.query(body={}, authorization=None), await core.query("support-bot", body=b"{"),
               await core.ask("list", "analyst-bot")]
    records = await core.records()
    assert [r.request_id for r in records] == [r.request_id for r in replies]
    assert [(r.status, r.decision) for r in records] == [
        (200, "allow"), (403, "deny"), (401, "deny"), (400, "error"), (200, "allow")]
    assert all(r.response_sha256 == hashlib.sha256(reply.answer.body).hexdigest()
               for r, reply in zip(records, replies, strict=True))
    assert [r.id for r in records] == [1, 2, 3, 4, 5]
    assert all(later.prev_hash == earlier.hash for earlier, later in itertools.pairwise(records))
    checked = await verify(core.store)
    assert checked.ok and checked.count == 5


async def test_a_long_query_is_kept_capped_with_its_length_and_digest(core: Core) -> None:
    raw = json.dumps({"where": [["name", "=", "x" * (2 * QUERY_MAX_BYTES)]]}).encode()
    got = await core.query("support-bot", body=raw)
    assert got.status == 200 and got.json["rows"] == []
    record = await core.record_of(got)
    assert record.query is not None and len(record.query.encode()) == QUERY_MAX_BYTES
    assert raw.decode().startswith(record.query)
    assert (record.query_bytes, record.query_sha256) == (len(raw), hashlib.sha256(raw).hexdigest())


@pytest.mark.parametrize(("operation", "fields", "action", "status"), [
    ("list", {}, "list", 200),
    ("describe", {"dataset": "customers"}, "describe", 200),
    ("query", {"dataset": "customers", "body": {"limit": 1}}, "read", 200),
    ("list_revocations", {}, "list_revocations", 200),
    ("revoke", {"body": {"agent": "support-bot"}}, "revoke", 201),
    ("restore", {"params": {"id": "99"}}, "restore", 404),
    ("read_audit", {"params": {"limit": "5"}}, "read_audit", 200),
    ("audit_record", {"params": {"id": "1"}}, "read_audit", 200),
    ("audit_verify", {}, "verify_audit", 200),
    ("audit_activity", {}, "read_audit", 200),
    ("list_approvals", {}, "list_approvals", 200),
    ("approve", {"params": {"id": "0" * 32}}, "approve", 404),
    ("deny_approval", {"params": {"id": "0" * 32}}, "deny", 404),
])
async def test_each_operation_records_its_action(tmp_path: Path, operation: str, fields: dict[str, Any],
                                                 action: str, status: int) -> None:
    # An admin who may also read customers, so that one agent can run every operation.
    policy = f"{ADMIN_RULE}\np, security-admin, customers, read, allow\ng, alice, security-admin\n"
    async with open_core(tmp_path, people(), policy=policy) as core:
        await core.query("alice", body={})  # a record for audit_record to find
        got = await core.ask(operation, "alice", **fields)
        assert got.status == status, got.json
        record = await core.record_of(got)
        assert (record.action, record.agent, record.status) == (action, "alice", status)
        assert record.response_sha256 == got.sha256 and record.bytes == len(got.answer.body)
        if operation not in ("list", "describe", "query"):
            assert record.rule == ADMIN_RULE  # the registry's permission, checked by the pipeline


async def test_an_export_is_recorded_before_its_stream_and_without_a_digest(core: Core) -> None:
    read = await core.query("support-bot", body={"limit": 1})
    got = await core.ask("audit_export", "alice", params={"format": "jsonl"})
    assert got.status == 200 and got.answer.stream is not None and got.answer.media_type == "application/x-ndjson"
    record = await core.record_of(got)  # written already, before a byte of the stream
    assert (record.action, record.response_sha256, record.bytes) == ("export_audit", None, None)
    lines = [json.loads(line) async for chunk in got.answer.stream for line in chunk.decode().splitlines()]
    assert [line["request_id"] for line in lines] == [read.request_id, got.request_id]

