"""Approvals, driven through the core: a read of a dataset with approval = "required" opens one (202, its id at
the top level), an admin approves or denies it through the admin operations, and the approved read is served to
that agent, dataset and body only, its record naming who approved (tests/test_approvals.py, SPEC: Approvals)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.corekit import Core, Reply, open_core, people
from tests.test_approvals import GUARDED

pytestmark = pytest.mark.unit

BODY = {"limit": 2}


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    async with open_core(tmp_path, people(), datasets=GUARDED) as c:
        yield c


async def pending(core: Core, agent: str = "support-bot", dataset: str = "customers",
                  body: dict[str, int] | None = None) -> str:
    """A read that opens (or finds) an approval: 202 approval_pending; its id."""
    got = await core.query(agent, dataset, body or BODY)
    assert got.status == 202, got.json
    assert got.error["code"] == "approval_pending"
    aid: str = got.json["approval_id"]
    assert got.error["approval_id"] == aid and len(aid) == 32
    return aid


async def decide(core: Core, verb: str, aid: str, agent: str = "alice") -> Reply:
    return await core.ask("approve" if verb == "approve" else "deny_approval", agent, params={"id": aid})


async def test_pending_then_approved_then_served_with_who_approved_in_the_record(core: Core) -> None:
    first = await core.query("support-bot", body=BODY)
    assert first.status == 202 and "maria.keller@example.com" in first.error["message"]
    aid = first.json["approval_id"]
    record = await core.record_of(first)
    assert (record.decision, record.status, record.approved_by, record.rows) == ("pending", 202, None, None)
    assert record.response_sha256 == first.sha256
    assert aid in (record.reason or "")
    again = await core.query("support-bot", body=BODY, approval_id=aid)
    assert again.status == 202 and again.json["approval_id"] == aid  # still pending

    decided = await decide(core, "approve", aid)
    assert decided.status == 200 and decided.json["approval"]["decided_by"] == "alice"
    act = await core.record_of(decided)
    assert (act.action, act.agent, act.decision, act.status, act.approved_by) == (
        "approve", "alice", "allow", 200, "alice")
    assert act.rule == "p, security-admin, admin:*, *, allow"
    assert json.loads(act.query or "") == {"approval_id": aid, "agent": "support-bot", "dataset": "customers",
                                           "by": "alice"}

    served = await core.query("support-bot", body=BODY, approval_id=aid)
    assert served.status == 200 and len(served.json["rows"]) == 2
    record = await core.record_of(served)
    assert (record.decision, record.status, record.approved_by, record.rows) == ("allow", 200, "alice", 2)
    assert record.response_sha256 == served.sha256
    assert (await core.query("support-bot", body=BODY, approval_id=aid)).status == 200  # until it expires
    assert (await decide(core, "deny", aid)).status == 404  # no longer pending


async def test_an_approval_serves_its_agent_dataset_and_body_only(core: Core) -> None:
    aid = await pending(core)
    assert (await decide(core, "approve", aid)).status == 200
    for reply in (await core.query("analyst-bot", body=BODY, approval_id=aid),
                  await core.query("support-bot", body={"limit": 3}, approval_id=aid),
                  await core.query("support-bot", body=BODY, approval_id="0" * 32)):
        assert reply.status == 403 and reply.error["code"] == "forbidden" and "rows" not in reply.json
    other = await pending(core, "analyst-bot", "orders")
    assert (await decide(core, "approve", other)).status == 200
    assert (await core.query("analyst-bot", "orders", BODY, approval_id=other)).status == 200
    assert (await core.query("analyst-bot", "customers", BODY, approval_id=other)).status == 403


async def test_a_denied_approval_refuses_the_read(core: Core) -> None:
    aid = await pending(core)
    no = await decide(core, "deny", aid)
    assert no.status == 200 and no.json["approval"]["status"] == "denied"
    act = await core.record_of(no)
    assert (act.action, act.agent, act.approved_by) == ("deny", "alice", None)
    denied = await core.query("support-bot", body=BODY, approval_id=aid)
    assert denied.status == 403 and "denied" in denied.error["message"]
    record = await core.record_of(denied)
    assert record.decision == "deny" and record.reason == f"approval {aid} denied by alice"


async def test_agents_cannot_list_approve_or_deny(core: Core) -> None:
    aid = await pending(core)
    for reply in (await core.ask("list_approvals", "support-bot"), await decide(core, "approve", aid, "support-bot"),
                  await decide(core, "deny", aid, "analyst-bot")):
        assert reply.status == 403 and reply.error["code"] == "forbidden"
        assert (await core.record_of(reply)).decision == "deny"
    listed = await core.ask("list_approvals", "alice")
    assert [(a["id"], a["agent"], a["dataset"], a["owner"], a["status"]) for a in listed.json["approvals"]] == [
        (aid, "support-bot", "customers", "maria.keller@example.com", "pending")]
    assert (await core.query("support-bot", body=BODY, approval_id=aid)).status == 202  # nothing was decided


async def test_the_same_request_reuses_its_open_approval_and_a_bad_body_is_a_400_not_an_approval(core: Core) -> None:
    assert await pending(core) == await pending(core)
    assert await pending(core, body={"limit": 1}) != await pending(core)
    bad = await core.query("support-bot", body=b"{not json")
    assert bad.status == 400 and bad.error["code"] == "bad_request"
    listed = await core.ask("list_approvals", "alice")
    assert len(listed.json["approvals"]) == 2


async def test_an_approval_expires_after_its_ttl(tmp_path: Path) -> None:
    async with open_core(tmp_path, people(), datasets=GUARDED, approval_ttl=0) as core:  # expired once given
        aid = await pending(core)
        assert (await decide(core, "approve", aid)).status == 200
        expired = await core.query("support-bot", body=BODY, approval_id=aid)
        assert expired.status == 403 and "expired" in expired.error["message"]
        assert (await core.record_of(expired)).reason == f"approval {aid} expired"
        assert await pending(core) != aid  # asked again without the id: a new approval


async def test_the_person_an_agent_asks_for_cannot_approve_its_read(core: Core) -> None:
    asked = await core.query("support-bot", body=BODY, claims={"on_behalf_of": "alice"})
    aid = asked.json["approval_id"]
    mine = await decide(core, "approve", aid)  # alice, for whom support-bot asked
    assert mine.status == 403 and mine.error["code"] == "forbidden"
    assert (await core.record_of(mine)).decision == "deny"
    listed = await core.ask("list_approvals", "alice")
    assert [(a["id"], a["status"]) for a in listed.json["approvals"]] == [(aid, "pending")]
