"""Error mapping, driven through the core: every refusal and failure is its status and code in the one error
shape (SPEC: Errors), with exactly one audit record whose decision and reason say why — the source's own text in
the record, never in the answer (tests/test_api.py, tests/test_revocations.py, tests/test_attacks_crafted_input.py).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from connectors.base import ConnectorError, SourceTimedOut, SourceUnavailable
from gateway.common.errors import MethodNotAllowed, NotFound
from tests.conftest import AUDIENCE, token
from tests.corekit import FORBIDDEN_MSG, Core, Reply, open_core, people

pytestmark = pytest.mark.unit

# What a source's driver says when it fails: an address, an account; the agent is told none of it.
SOURCE_TEXT = "could not connect to 10.9.8.7:5432: password authentication failed for user db_admin"


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    async with open_core(tmp_path, people()) as c:
        yield c


async def refused(core: Core, reply: Reply, status: int, code: str, decision: str) -> Any:
    """`reply` is `status` with `code` in the one error shape, and left exactly one record saying so."""
    assert reply.status == status and reply.error["code"] == code, reply.json
    record = await core.record_of(reply)
    assert (record.status, record.decision, record.rows) == (status, decision, None)
    assert record.response_sha256 == reply.sha256 and record.bytes == len(reply.answer.body)
    return record


async def test_an_unknown_dataset_is_answered_as_a_forbidden_one(core: Core) -> None:
    for operation in ("query", "describe"):
        denied = await core.ask(operation, "support-bot", dataset="orders", body={} if operation == "query" else None)
        unknown = await core.ask(operation, "support-bot", dataset="nope", body={} if operation == "query" else None)
        assert denied.error["message"] == unknown.error["message"] == FORBIDDEN_MSG
        assert (await refused(core, denied, 403, "forbidden", "deny")).reason == "no policy line grants this"
        assert (await refused(core, unknown, 403, "forbidden", "deny")).reason == "no such dataset"


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", {"colums": ["id"]}, {"columns": ["nope"]},
                                  {"where": [["id", "~", 1]]}, {"where": [["id", "=", "seven"]]}, {"limit": "all"},
                                  {"cursor": "v2.not-a-cursor"}])
async def test_a_bad_body_is_a_400(core: Core, body: Any) -> None:
    record = await refused(core, await core.query("support-bot", body=body), 400, "bad_request", "error")
    assert record.agent == "support-bot" and record.dataset == "customers" and record.query is not None


async def test_a_body_over_the_limit_is_a_413_recorded_without_it(core: Core) -> None:
    got = await core.query("support-bot", body=None, body_too_large=True)
    record = await refused(core, got, 413, "too_large", "error")
    assert record.query is None and record.agent is None  # refused before the token was read


@pytest.mark.parametrize(("failure", "status", "code", "message"), [
    (SourceUnavailable(SOURCE_TEXT), 502, "source_error", "the source failed"),
    (SourceTimedOut(SOURCE_TEXT), 504, "source_timeout", "the source did not answer in time"),
])
async def test_a_failing_source_is_a_502_or_504_its_text_kept_for_the_record_only(
        tmp_path: Path, failure: ConnectorError, status: int, code: str, message: str) -> None:
    async with open_core(tmp_path, people(), failure=failure) as core:
        got = await core.query("support-bot", body={"limit": 2})
        assert got.error["message"] == message
        for secret in ("10.9.8.7", "db_admin", "password"):
            assert secret.encode() not in got.answer.body
        record = await refused(core, got, status, code, "error")
        assert SOURCE_TEXT in (record.reason or "") and record.rule == "p, support, customers, read, allow"
        core.source.failure = None  # the source is back: so are its reads
        assert (await core.query("support-bot", body={"limit": 2})).status == 200


async def test_an_unexpected_failure_is_a_500_and_still_recorded(core: Core, caplog: pytest.LogCaptureFixture) -> None:
    core.source.failure = ConnectorError(SOURCE_TEXT)  # no kind the core maps: a bug, as far as it knows
    with caplog.at_level(logging.ERROR, logger="agentgate.core"):
        got = await core.query("support-bot", body={"limit": 2})
    assert got.error == {"code": "internal", "message": "internal error", "request_id": got.request_id}
    assert (await refused(core, got, 500, "internal", "error")).reason == "internal error"
    assert f"request {got.request_id} failed" in caplog.text


def _hs512() -> str:
    # Signed with a key long enough for HS512: refused for its algorithm alone.
    return jwt.encode({"sub": "support-bot", "exp": 2**31, "aud": AUDIENCE}, "k" * 64, algorithm="HS512")


@pytest.mark.parametrize("authorization", [
    None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer not.a.jwt",
    f"Bearer {token('support-bot', secret='another-secret-' + 'y' * 40)}",
    f"Bearer {token('support-bot', ttl=-120)}",
    f"Bearer {token('support-bot', aud='someone-else')}",
    f"Bearer {token(None)}",
    f"Bearer {_hs512()}",
], ids=["missing", "empty", "scheme", "garbage", "signature", "expired", "audience", "no-sub", "hs512"])
async def test_no_valid_token_is_a_401_with_www_authenticate(core: Core, authorization: str | None) -> None:
    got = await core.query(body={"limit": 1}, authorization=authorization)
    assert got.answer.headers["WWW-Authenticate"] == 'Bearer realm="agentgate"'
    record = await refused(core, got, 401, "unauthenticated", "deny")
    assert (record.agent, record.token_id, record.rule) == (None, None, None)
    assert record.reason


async def test_a_token_whose_subject_is_a_role_is_a_401(core: Core) -> None:
    got = await core.query("support", body={"limit": 1})
    record = await refused(core, got, 401, "unauthenticated", "deny")
    assert record.reason == "token subject 'support' is a role in the policy"


async def test_a_revoked_agent_or_token_is_a_403_until_restored(core: Core) -> None:
    revoked = await core.ask("revoke", "alice", body={"agent": "support-bot", "reason": "leaking data"})
    assert revoked.status == 201 and revoked.json["already_revoked"] is False
    got = await core.query("support-bot", body={"limit": 1})
    assert "revoked" in got.error["message"] and "leaking" not in got.error["message"]
    record = await refused(core, got, 403, "forbidden", "deny")
    assert record.reason == f"revoked (agent revocation {revoked.json['id']}: leaking data)"
    assert (await core.query("analyst-bot", body={"limit": 1})).status == 200  # nobody else
    restored = await core.ask("restore", "alice", params={"id": str(revoked.json["id"])})
    assert restored.status == 204 and restored.answer.body == b""
    assert (await core.query("support-bot", body={"limit": 1})).status == 200

    first, second = token("support-bot", jti="tok-1"), token("support-bot", jti="tok-2")
    assert (await core.ask("revoke", "alice", body={"jti": "tok-1"})).status == 201
    assert (await core.query(body={}, authorization=f"Bearer {first}")).status == 403
    assert (await core.query(body={}, authorization=f"Bearer {second}")).status == 200


async def test_agents_are_not_admins(core: Core) -> None:
    got = await core.ask("revoke", "support-bot", body={"agent": "analyst-bot"})
    record = await refused(core, got, 403, "forbidden", "deny")
    assert record.action == "revoke" and record.rule is None
    assert (await core.query("analyst-bot", body={"limit": 1})).status == 200


async def test_route_errors_keep_their_status_and_headers(core: Core) -> None:
    nowhere = await core.ask("unknown", route_error=NotFound("no such endpoint: /v1/nothing/here"))
    assert (await refused(core, nowhere, 404, "not_found", "error")).action == "unknown"
    wrong = await core.ask("query", dataset="customers",
                           route_error=MethodNotAllowed("GET is not allowed here; use POST", headers={"Allow": "POST"}))
    await refused(core, wrong, 405, "method_not_allowed", "error")
    assert wrong.answer.headers["Allow"] == "POST"
    unnamed = await core.ask("no-such-operation")
    assert (await refused(core, unnamed, 400, "bad_request", "error")).action == "no-such-operation"


async def test_no_data_without_its_record(core: Core, tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "store.db")
    try:
        db.execute("ALTER TABLE audit RENAME TO audit_elsewhere")
        db.commit()
        got = await core.query("support-bot", body={"limit": 5})
        assert got.status == 503 and got.error["code"] == "unavailable"
        assert b"rows" not in got.answer.body and b"example.com" not in got.answer.body
        db.execute("ALTER TABLE audit_elsewhere RENAME TO audit")
        db.commit()
    finally:
        db.close()
    assert [r.request_id for r in await core.records()] == []  # nothing was written for it
    again = await core.query("support-bot", body={"limit": 5})
    assert again.status == 200 and len(again.json["rows"]) == 5
