"""Who may read what: a dataset cleared for an agent by the policy, the rows of it the agent may see, the
columns it may filter on, and a person's approval for datasets that need one. Shared by every data read."""

from __future__ import annotations

from collections.abc import Sequence

from connectors.base import Filter
from gateway.auth import Agent
from gateway.common import inputs, tracing
from gateway.common.errors import NOT_ALLOWED, ApprovalPending, BadRequest, Forbidden
from gateway.core.query import parse_body
from gateway.core.record import query_text
from gateway.core.services import Services
from gateway.core.types import ReadRequest, Trace
from gateway.policy import Dataset, Decision, Policy, rowfilters
from gateway.services import approvals

# One answer for "denied" and "no such dataset", so dataset names do not leak.
FORBIDDEN = NOT_ALLOWED
# Refusing an approval id that does not serve the request: the same words whatever did not match.
_NOT_THIS_APPROVAL = ("this approval id does not serve this request: an approval covers one agent, one dataset and "
                      "one body")


async def readable(policy: Policy, agent: Agent, name: str | None, trace: Trace, *,
                   approval_handled: bool = False) -> Dataset:
    """The dataset, if the policy lets this agent read it. A caller that does not handle human approval
    (approval_handled False, e.g. SQL mode) gets datasets that need one refused: fail closed."""
    ds = policy.catalog.get(name) if name else None
    if ds is None:
        raise Forbidden(FORBIDDEN, reason="no such dataset")
    decision = await tracing.spanned(trace.span, tracing.DECIDE, policy.may_read(agent.name, ds), said)
    trace.rule = decision.rule
    if not decision.allowed:
        raise Forbidden(FORBIDDEN, reason=decision.reason)
    if not rows_for(policy, agent, ds):
        # Answered as an unknown dataset: it is not listed to this agent either.
        raise Forbidden(FORBIDDEN, reason=f"no row filter of {ds.name!r} for the agent's roles")
    if ds.approval == "required" and not approval_handled:
        raise Forbidden(f"{ds.name!r} needs a person's approval; read it through its query endpoint",
                        reason="approval required")
    trace.cleared += (ds.name,)
    return ds


def said(decision: Decision) -> dict[str, bool | str | None]:
    """A decision as its span says it (common/tracing.py)."""
    return {"agentgate.allowed": decision.allowed, "agentgate.rule": decision.rule}


def rows_for(policy: Policy, agent: Agent, ds: Dataset) -> bool:
    """Whether some rows of `ds` are the agent's to see: no row filters, or one keyed by it or its roles."""
    return not ds.row_filters or rowfilters.applies(ds.row_filters, agent.name, policy.roles_of(agent.name))


def scope(policy: Policy, agent: Agent, ds: Dataset) -> tuple[Sequence[Sequence[Filter]] | None, str | None]:
    """The rows of `ds` this agent may see, as the connector takes them (None: every row), and as the audit
    record says it; Forbidden when no row filter applies to the agent or one lacks a claim."""
    found = rowfilters.scope_for(ds.name, ds.row_filters, agent.name, agent.claims, policy.roles_of(agent.name))
    if found is None:
        return None, None
    return (None if found.unrestricted else found.alternatives), found.text


def usable(ds: Dataset, known: list[str], hidden: set[str], column: str, verb: str) -> None:
    if column not in known:
        raise BadRequest(f"unknown column {column!r} in {ds.name!r}")
    if column in hidden:
        # Filtering or ordering on a masked column would let its values be guessed.
        raise Forbidden(f"cannot {verb} {column!r}: this agent sees it masked",
                        reason=f"{verb} masked column {column!r}")


async def approved(services: Services, req: ReadRequest, agent: Agent, ds: Dataset) -> str:
    """A read of a dataset that needs a person's approval: who approved it, or 202 / 403. An approval covers
    the request as submitted: its agent (and on_behalf_of), its dataset and its body (approvals.binding)."""
    if req.operation == "query":
        parse_body(req.body)  # a malformed body is a 400 now, not an approval for a request that cannot run
    submitted = query_text(req)
    if req.approval_id is None:
        aid, reused = await approvals.open_request(services.store, agent.name, ds.name, ds.owner, submitted,
                                                   req.request_id, on_behalf_of=agent.on_behalf_of,
                                                   max_pending=services.approval_max_pending)
        raise ApprovalPending(f"reading {ds.name!r} needs a person's approval (owner: {ds.owner}); ask again "
                              "with header X-Approval-Id once it is approved", aid,
                              reason=f"approval {aid} {'already open' if reused else 'opened'}, pending")
    # An id no approval can have (they are 32 hex digits) is not looked up: the store may not take it (NUL).
    found = (await approvals.get(services.store, req.approval_id)
             if len(req.approval_id) <= 64 and inputs.holdable(req.approval_id) else None)
    if (found is None or found.agent != agent.name or found.dataset != ds.name
            or found.on_behalf_of != agent.on_behalf_of):
        raise Forbidden(_NOT_THIS_APPROVAL, reason=f"approval {req.approval_id[:64]!r} unknown or for another agent, "
                                                   "person or dataset")
    if not found.covers(approvals.digest(approvals.binding(submitted))):
        raise Forbidden(_NOT_THIS_APPROVAL, reason=f"approval {found.id} was asked for another body")
    if found.status == "pending":
        raise ApprovalPending(f"approval {found.id} is still pending", found.id,
                              reason=f"approval {found.id} still pending")
    if found.status != "approved":
        raise Forbidden(f"approval {found.id} was denied",
                        reason=f"approval {found.id} denied by {found.decided_by}")
    if found.expired():
        raise Forbidden(f"approval {found.id} has expired; read without X-Approval-Id to ask again",
                        reason=f"approval {found.id} expired")
    return found.decided_by or "unknown"
