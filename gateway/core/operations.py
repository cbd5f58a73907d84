"""The operations: each declared once, here — its name, the audit record's action, the permission the pipeline
checks before its handler runs, its handler, and where the ways in reach it (HTTP method and path, MCP tool).

The pipeline dispatches on `OPERATIONS[req.operation]` (one dict get); the HTTP routes are built from `ALL`
(transports/data.py, transports/admin.py), the MCP tools name their operation here (transports/mcp.py), and
the metrics' operation labels are the served names. Operations with no handler are recorded by the command
line itself (it writes their audit records; no request serves them).

To add an operation: write its handler (a coroutine taking Services, the request, the agent, the policy and
the trace; returning (status, payload)), declare it below, and give it a route or a tool if agents reach it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway import sqlmode
from gateway.auth import Agent
from gateway.core import query, reads, sqlread
from gateway.core.admin import approvals, review, revocations, stream, trail
from gateway.core.schemas import Param
from gateway.core.services import Services
from gateway.core.types import ReadRequest, Result, Trace
from gateway.policy import Policy

Handler = Callable[[Services, ReadRequest, Agent, Policy, Trace], Awaitable[Result]]


@dataclass(frozen=True, slots=True)
class HttpRoute:
    method: str
    path: str  # a Starlette route's path (transports/data.py registers the `anypath` convertor)
    # The path's and query string's parameters as the handler reads them (the OpenAPI document's); a path
    # parameter not declared here is a string.
    params: tuple[Param, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    name: str  # ReadRequest.operation, and the metrics' `operation` label
    action: str  # the audit record's `action`
    handler: Handler | None = None  # None: recorded by the command line itself, never served
    # (object, act) the policy must allow, checked by the pipeline before the handler (its matched rule is the
    # record's `rule`); None: decided inside the handler, per dataset (data reads).
    permission: tuple[str, str] | None = None
    http: HttpRoute | None = None  # where HTTP serves it
    tool: str | None = None  # MCP: the tool that stands for it
    # The JSON body it reads, as the JSON Schema its parser's module states (the OpenAPI document's); required
    # when the schema refuses an empty object (`required`, `minProperties`).
    body: Mapping[str, Any] | None = None


_REVOCATIONS = ("admin:revocations", "write")
_AUDIT = ("admin:audit", "read")
_APPROVALS_READ, _APPROVALS_WRITE = ("admin:approvals", "read"), ("admin:approvals", "write")


def _get(path: str, *params: Param) -> HttpRoute:
    return HttpRoute("GET", path, params)


def _post(path: str, *params: Param) -> HttpRoute:
    return HttpRoute("POST", path, params)


# In route order: a path is matched before the next (/admin/v1/audit/verify before /admin/v1/audit/{id}).
ALL: tuple[Operation, ...] = (
    # Data: authorised per dataset by their handlers.
    Operation("list", "list", reads.list_datasets, http=_get("/v1/datasets"), tool="list_datasets"),
    Operation("describe", "describe", reads.describe, http=_get("/v1/datasets/{name}"), tool="describe_dataset"),
    Operation("query", "read", reads.query, http=_post("/v1/datasets/{name}/query"), tool="query_dataset",
              body=query.BODY_SCHEMA),
    Operation("proxy", "read", reads.proxy, http=_get("/v1/datasets/{name}/proxy/{path:anypath}")),
    Operation("sql", "read", sqlread.sql, http=_post("/v1/sql"), tool="sql", body=sqlmode.BODY_SCHEMA),
    # Admin: one fixed permission each.
    Operation("list_revocations", "list_revocations", revocations.list_revocations, _REVOCATIONS,
              http=_get("/admin/v1/revocations")),
    Operation("revoke", "revoke", revocations.revoke, _REVOCATIONS, http=_post("/admin/v1/revocations"),
              body=revocations.BODY_SCHEMA),
    Operation("restore", "restore", revocations.restore, _REVOCATIONS,
              http=HttpRoute("DELETE", "/admin/v1/revocations/{id}", (revocations.PATH_ID,))),
    Operation("read_audit", "read_audit", trail.read_audit, _AUDIT, http=_get("/admin/v1/audit", *trail.FILTER_PARAMS)),
    Operation("audit_verify", "verify_audit", trail.audit_verify, _AUDIT,
              http=_get("/admin/v1/audit/verify", *trail.VERIFY_PARAMS)),
    Operation("audit_activity", "read_audit", trail.audit_activity, _AUDIT,
              http=_get("/admin/v1/audit/activity", *trail.ACTIVITY_PARAMS)),
    Operation("audit_export", "export_audit", trail.audit_export, _AUDIT,
              http=_get("/admin/v1/audit/export", *trail.EXPORT_PARAMS)),
    # The trail as it commits, for a SIEM: the same permission; opening it is recorded (who, from which id).
    Operation("audit_stream", "follow_audit", stream.audit_stream, _AUDIT,
              http=_get("/admin/v1/audit/stream", *stream.PARAMS)),
    Operation("audit_record", "read_audit", trail.audit_record, _AUDIT,
              http=_get("/admin/v1/audit/{id}", trail.PATH_ID)),
    # The review page's view (gateway/transports/review/): no route of its own; one view, one record.
    Operation("audit_review", "read_audit", review.audit_review, _AUDIT),
    Operation("list_approvals", "list_approvals", approvals.list_approvals, _APPROVALS_READ,
              http=_get("/admin/v1/approvals", *approvals.LIST_PARAMS)),
    Operation("approve", "approve", approvals.approve, _APPROVALS_WRITE,
              http=_post("/admin/v1/approvals/{id}/approve", approvals.PATH_ID)),
    Operation("deny_approval", "deny", approvals.deny_approval, _APPROVALS_WRITE,
              http=_post("/admin/v1/approvals/{id}/deny", approvals.PATH_ID)),
    # The command line's own, recorded by it (`agentgate audit prune`, `agentgate reload`).
    Operation("prune", "prune"),
    Operation("reload", "reload"),
)

OPERATIONS: Mapping[str, Operation] = {op.name: op for op in ALL}
# The operations a request can name: the metrics' `operation` labels (with "unknown").
SERVED: tuple[str, ...] = tuple(op.name for op in ALL if op.handler is not None)


def under(prefix: str) -> list[tuple[Operation, HttpRoute]]:
    """The operations served over HTTP at paths under `prefix`, with their routes, in route order."""
    return [(op, op.http) for op in ALL if op.handler is not None and op.http and op.http.path.startswith(prefix)]
