"""Admin routes under /admin/v1/: thin adapters onto the same core as the agents' API."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.transports.data import ALL_METHODS, handle


async def revocations(request: Request) -> Response:
    if request.method == "GET":
        return await handle(request, "list_revocations", "GET")
    return await handle(request, "revoke", "POST")


async def revocation(request: Request) -> Response:
    return await handle(request, "restore", "DELETE", params={"id": request.path_params["id"]})


async def audit_trail(request: Request) -> Response:
    return await handle(request, "read_audit", "GET", params=dict(request.query_params))


async def audit_record(request: Request) -> Response:
    return await handle(request, "audit_record", "GET", params={"id": request.path_params["id"]})


async def audit_verify(request: Request) -> Response:
    return await handle(request, "audit_verify", "GET", params=dict(request.query_params))


async def audit_activity(request: Request) -> Response:
    return await handle(request, "audit_activity", "GET", params=dict(request.query_params))


async def audit_export(request: Request) -> Response:
    return await handle(request, "audit_export", "GET", params=dict(request.query_params))


async def approvals(request: Request) -> Response:
    return await handle(request, "list_approvals", "GET", params=dict(request.query_params))


async def approve(request: Request) -> Response:
    return await handle(request, "approve", "POST", params={"id": request.path_params["id"]})


async def deny(request: Request) -> Response:
    return await handle(request, "deny_approval", "POST", params={"id": request.path_params["id"]})


async def unknown(request: Request) -> Response:
    return await handle(request, "unknown", request.method)


routes = [
    Route("/admin/v1/revocations", revocations, methods=ALL_METHODS),
    Route("/admin/v1/revocations/{id}", revocation, methods=ALL_METHODS),
    Route("/admin/v1/audit", audit_trail, methods=ALL_METHODS),
    Route("/admin/v1/audit/verify", audit_verify, methods=ALL_METHODS),
    Route("/admin/v1/audit/activity", audit_activity, methods=ALL_METHODS),
    Route("/admin/v1/audit/export", audit_export, methods=ALL_METHODS),
    Route("/admin/v1/audit/{id}", audit_record, methods=ALL_METHODS),
    Route("/admin/v1/approvals", approvals, methods=ALL_METHODS),
    Route("/admin/v1/approvals/{id}/approve", approve, methods=ALL_METHODS),
    Route("/admin/v1/approvals/{id}/deny", deny, methods=ALL_METHODS),
    # anypath (data.py): a path with a newline in it still reaches a route that refuses it and records that.
    Route("/admin/v1/{rest:anypath}", unknown, methods=ALL_METHODS),
]
