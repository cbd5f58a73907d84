"""Revoking and restoring agents and tokens, and listing the revocations in force (`admin:revocations`)."""

from __future__ import annotations

import json
from typing import Any

from gateway.auth import Agent
from gateway.common import inputs
from gateway.common.errors import BadRequest, Forbidden, NotFound
from gateway.core.schemas import TEXT, Param, maybe, whole
from gateway.core.services import Services
from gateway.core.types import ReadRequest, Result, Trace
from gateway.policy import Policy


async def revoke(services: Services, req: ReadRequest, agent: Agent, policy: Policy, trace: Trace) -> Result:
    key, subject, reason = _target(req.body)
    trace.query = json.dumps({key: subject, "reason": reason})
    if subject == (agent.name if key == "agent" else agent.jti):
        # An admin locking itself out by mistake (or a stolen admin token silencing its owner's session first)
        # is refused; another admin, or `agentgate revoke` on the command line, can still do it.
        raise Forbidden("an admin may not revoke itself nor the token it is using: ask another admin, or run "
                        "`agentgate revoke` on the command line", reason=f"self-revocation refused ({key})")
    stored, created = await services.revocations.revoke("agent" if key == "agent" else "token", subject, reason,
                                                        agent.name)
    # Idempotent: a subject already revoked keeps its one revocation, and its id is answered (201 as for a new
    # one, as the contract says, with already_revoked true).
    trace.reason = None if created else f"already revoked (revocation {stored.id}); nothing stored"
    return 201, {"id": stored.id, "already_revoked": not created, "created_at": stored.created_at}


# The body as JSON Schema (the OpenAPI document's): what _target takes. No NUL in a text (the pattern), nor a lone
# surrogate (no JSON Schema states it): no token can carry such a name, no store can hold it.
BODY_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {"agent": {**TEXT, "minLength": 1, "description": "every token of this agent"},
                   "jti": {**TEXT, "minLength": 1, "description": "one token: its jti claim"},
                   "reason": {**maybe(TEXT), "description": "kept with the revocation"}},
    "oneOf": [{"required": ["agent"]}, {"required": ["jti"]}],
    "examples": [{"agent": "payroll-bot", "reason": "leaked token"}],
}
PATH_ID = Param("id", whole(0, inputs.MAX_INT32), "the revocation's id", at="path")


def _target(raw: bytes | None) -> tuple[str, str, str | None]:
    """What a revocation's body names: ("agent" or "jti", the subject, the reason)."""
    body = _json_body(raw)
    unknown = sorted(set(body) - set(BODY_SCHEMA["properties"]))
    if unknown:
        raise BadRequest(f"unknown key {unknown[0]!r} (expected agent or jti, and reason)")
    targets = [(k, body[k]) for k in ("agent", "jti") if k in body]
    if len(targets) != 1 or not isinstance(targets[0][1], str) or not targets[0][1]:
        raise BadRequest('give exactly one of {"agent": NAME} or {"jti": TOKEN_ID}')
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BadRequest("'reason' must be a string")
    key, subject = targets[0]
    if not inputs.holdable(subject) or (reason is not None and not inputs.holdable(reason)):
        # No token can carry such a name (auth refuses them), and no store can hold it.
        raise BadRequest(f"'{key}' and 'reason' may not hold NUL characters or lone surrogates")
    return key, subject, reason


def _json_body(raw: bytes | None) -> dict[str, Any]:
    data = inputs.json_body(raw or b"{}")
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


async def restore(services: Services, req: ReadRequest, agent: Agent, policy: Policy, trace: Trace) -> Result:
    raw = req.params.get("id", "")
    rid = inputs.whole(raw, inputs.MAX_INT32)
    if rid is None:
        raise NotFound(f"no active revocation {raw[:64]!r}")
    lifted = await services.revocations.restore(rid, agent.name)
    if lifted is None:
        trace.query = json.dumps({"id": rid})
        raise NotFound(f"no active revocation {rid}")
    trace.query = json.dumps({"id": lifted.id, "agent" if lifted.kind == "agent" else "jti": lifted.subject})
    return 204, None


async def list_revocations(services: Services, req: ReadRequest, agent: Agent, policy: Policy,
                           trace: Trace) -> Result:
    items = [r.to_dict() for r in services.revocations.items]
    trace.rows = len(items)
    return 200, {"revocations": items}
