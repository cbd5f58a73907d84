"""GET /admin/v1/audit/stream (`admin:audit` read): the trail as it commits, as JSON lines, for a SIEM.

Opening it is an admin read like the others: authorised by the policy and recorded (who followed, from which
id: `query` `{"after": N}`) before the first byte leaves. Then the records with ids above `after`, oldest first,
each the line `audit export` writes (gateway/audit/export.py), as they commit (gateway/audit/follow.py: within
POLL_SECONDS), and an empty line every `[audit] stream_heartbeat_seconds` while no record is sent: NDJSON
readers skip it, and proxies see traffic and keep the connection open.

Bounded: at most `[audit] stream_max` streams open in the process (one more is answered 503 with Retry-After);
each ends cleanly after `[audit] stream_max_seconds` (its client resumes with `after=` its last id); each holds
one page of records (PAGE) at a time; a client that stops reading is cut off (gateway/transports/admin.py).
Fail closed: before each page is sent and at every pause, the stream ends when its reader's agent or token
has been revoked (a revocation also cuts a pause short: Registry.guarded), when this replica cannot show that
its view of the revocations is current, when the policy in force no longer grants `admin:audit` read, or when
the reader's token has expired.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Mapping

from sqlalchemy.exc import SQLAlchemyError

from gateway import audit
from gateway.auth import Agent
from gateway.common import inputs
from gateway.common.errors import BadRequest, GatewayError, Unavailable
from gateway.core.schemas import Param, whole
from gateway.core.services import Services
from gateway.core.types import ReadRequest, Result, Trace
from gateway.policy import Policy

log = logging.getLogger("agentgate.audit")

PERMISSION = ("admin:audit", "read")  # the trail's readers' (core/operations.py declares it for each of them)
PAGE = 100  # records read (and held) at a time by one stream
READ_TIMEOUT_SECONDS = 10.0  # a store that does not answer a page within this ends the stream
RETRY_AFTER_SECONDS = 5  # told to a client refused for want of a free stream
PARAMS = (Param("after", {**whole(0, inputs.MAX_WHOLE), "default": 0},
                "the records with ids above this one: the last id the client took (0: from the start)"),)
_STORE_LOST = (SQLAlchemyError, OSError, TimeoutError)


def _after(params: Mapping[str, str]) -> int:
    unknown = sorted(set(params) - {"after"})
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0][:60]!r} (expected after)")
    raw = params.get("after") or "0"
    after = inputs.whole(raw)
    if after is None:
        raise BadRequest("'after' is a record's id: a whole number (the last id the client took)")
    return after


async def audit_stream(services: Services, req: ReadRequest, agent: Agent, policy: Policy, trace: Trace) -> Result:
    after = _after(req.params)
    trace.query = json.dumps({"after": after})
    streams = services.streams
    slot = streams.take()
    if slot is None:
        raise Unavailable(f"too many streams of the audit trail are open here (at most {streams.max_open}); try "
                          "again shortly", reason=f"audit streams: all {streams.max_open} taken",
                          headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    follow = audit.Follow(services.store, after, page=PAGE)
    try:  # the first page before the answer: a store that cannot be read now is a 503, not an empty stream
        async with asyncio.timeout(READ_TIMEOUT_SECONDS):
            await follow.start()
            first = await follow.read()
    except BaseException as exc:
        slot.release()
        if isinstance(exc, _STORE_LOST):
            raise Unavailable("the audit trail cannot be read now; try again",
                              reason=f"audit stream: the store failed ({type(exc).__name__})") from exc
        raise
    body = _stream(services, agent, policy, follow, first, slot)
    # Given back when the stream ends (or is closed), or when it is dropped unstarted (its record could not be
    # written, its client went before the first byte): a generator never started runs no `finally`.
    weakref.finalize(body, slot.release)
    trace.stream = body
    trace.media_type = "application/x-ndjson"
    return 200, None


async def _stream(services: Services, agent: Agent, granting: Policy, follow: audit.Follow, page: audit.Page,
                  slot: audit.Slot) -> AsyncIterator[bytes]:
    streams = services.streams
    loop = asyncio.get_running_loop()
    ends = loop.time() + streams.max_seconds
    beat = loop.time() + streams.heartbeat_seconds
    gate = _Gate(services, agent, granting)
    try:
        while True:
            refused = await gate.refused()
            if refused is not None:
                log.info("audit stream of %s ended after record %d: %s", agent.name, follow.after, refused)
                return
            for fault in page.breaks:
                log.warning("audit stream of %s: %s", agent.name, fault)
            if page.records:
                yield "".join(audit.jsonl_line(rec) for rec in page.records).encode()
                beat = loop.time() + streams.heartbeat_seconds
            elif loop.time() >= beat:
                yield b"\n"
                beat = loop.time() + streams.heartbeat_seconds
            if loop.time() >= ends:  # clean end: the client asks again with after= its last id
                return
            if not page.full:
                pause = max(0.0, min(audit.POLL_SECONDS, beat - loop.time(), ends - loop.time()))
                await services.revocations.guarded(agent, asyncio.sleep(pause))
            async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                page = await follow.read()
    except GatewayError as exc:  # revoked during a pause (Registry.guarded)
        log.info("audit stream of %s ended after record %d: %s", agent.name, follow.after, exc.reason)
    except _STORE_LOST as exc:
        log.warning("audit stream of %s ended after record %d: the store failed (%s)", agent.name, follow.after,
                    type(exc).__name__)
    finally:
        slot.release()


class _Gate:
    """Whether the stream's reader may still read the trail, asked before each page and at each pause."""

    def __init__(self, services: Services, agent: Agent, granting: Policy):
        self._services, self._agent = services, agent
        self._granting: Policy | None = granting  # the last policy known to grant it

    async def refused(self) -> str | None:
        """Why the reader may not go on reading, or None."""
        agent = self._agent
        if time.time() >= agent.expires_at:
            return "its token expired"
        revocations = self._services.revocations
        try:
            await revocations.wait_current()  # a busy moment is waited out, as every request waits it out
            revocations.check(agent)
        except GatewayError as exc:  # revoked (403), or this replica's view not shown current (503)
            return exc.reason
        policy = self._services.policies.current
        if policy is None:
            return "no valid policy is loaded"
        if policy is not self._granting:
            decision = await policy.decide(agent.name, *PERMISSION)
            if not decision.allowed:
                return f"the policy in force no longer grants {PERMISSION[0]} {PERMISSION[1]}"
            self._granting = policy
        return None
