"""Health, readiness and metrics: for load balancers and Prometheus, no token needed."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.store import StoreLost, ping, store_file


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = request.app.state
    holder = state.policies
    body: dict[str, object] = {"status": "ready"}
    # The last check of the audit chain. A broken chain leaves the status as it is: the gateway still records
    # every request (on after the break), and taking every replica out of rotation would turn a tampered
    # store into an outage. It is for people and alerts (this detail, /metrics, the log), not balancers.
    body["audit_chain"] = state.gateway.chain.summary()
    # The open-file limit and the connection cap it leaves (gateway/runtime/connections.py); "low": the cap is under
    # [server] max_connections. Detail only: the gateway serves; an operator raises the limit.
    body["connections"] = state.capacity.detail()
    if holder.refused:
        # The last good policy still serves; say what was refused and why.
        body["refused"] = holder.refused
    if holder.current is None:
        body.update(status="unavailable", reason="no valid policy is loaded")
        return JSONResponse(body, 503)
    lost = _store_file_problem(state.store)
    if lost is not None:  # the store's file deleted or replaced under this process (gateway/store/files.py)
        return JSONResponse({"status": "unavailable", "reason": f"store file lost: {lost}"}, 503)
    if not state.sync.healthy:
        return JSONResponse({"status": "unavailable",
                             "reason": f"store unreachable: its change channel is lost ({state.sync.last_error})"}, 503)
    try:
        async with asyncio.timeout(2.0):
            await ping(state.store)
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "reason": f"store unreachable: {type(exc).__name__}"}, 503)
    body["policy"] = {"dir": str(holder.current.dir), "datasets": len(holder.current.catalog.datasets),
                      "rules": len(holder.current.rules)}
    return JSONResponse(body)


def _store_file_problem(store: AsyncEngine) -> str | None:
    guard = store_file(store)
    if guard is None:
        return None
    try:
        return guard.problem()
    except StoreLost as exc:  # it cannot be checked (this once)
        return exc.reason


async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
