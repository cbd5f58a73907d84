"""The agents' API under /v1/: parse HTTP, call the one read path, send its bytes back."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.api.http import new_request_id, raw_json, read_body
from gateway.core import Gateway, ReadRequest
from gateway.errors import GatewayError, MethodNotAllowed, NotFound

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


async def handle(request: Request, operation: str, method: str, dataset: str | None = None,
                 params: dict[str, str] | None = None) -> Response:
    """Build the ReadRequest for any route (data or admin) and send back the core's answer unchanged."""
    gateway: Gateway = request.app.state.gateway
    request_id = new_request_id()
    route_error: GatewayError | None = None
    if request.method != method:
        route_error = MethodNotAllowed(f"{request.method} is not allowed here; use {method}",
                                       headers={"Allow": method})
    elif operation == "unknown":
        route_error = NotFound(f"no such endpoint: {request.url.path}")
    body, too_large = (None, False)
    if request.method in ("POST", "PUT", "PATCH"):
        body, too_large = await read_body(request, request.app.state.settings.server.max_body_bytes)
    headers = request.headers
    answer = await gateway.handle(ReadRequest(
        request_id=request_id, operation=operation, authorization=headers.get("authorization"),
        dataset=dataset, body=body, body_too_large=too_large, work_unit=headers.get("x-work-unit") or None,
        approval_id=headers.get("x-approval-id") or None, route_error=route_error, params=params or {}))
    if answer.stream is not None:
        return StreamingResponse(answer.stream, status_code=answer.status, media_type=answer.media_type,
                                 headers={"X-Request-Id": request_id, "Cache-Control": "no-store", **answer.headers})
    return raw_json(answer.status, answer.body, request_id, answer.headers)


async def list_datasets(request: Request) -> Response:
    return await handle(request, "list", "GET")


async def describe_dataset(request: Request) -> Response:
    return await handle(request, "describe", "GET", request.path_params["name"])


async def query_dataset(request: Request) -> Response:
    return await handle(request, "query", "POST", request.path_params["name"])


async def unknown(request: Request) -> Response:
    return await handle(request, "unknown", request.method)


routes = [
    Route("/v1/datasets", list_datasets, methods=ALL_METHODS),
    Route("/v1/datasets/{name}", describe_dataset, methods=ALL_METHODS),
    Route("/v1/datasets/{name}/query", query_dataset, methods=ALL_METHODS),
    Route("/v1/{rest:path}", unknown, methods=ALL_METHODS),
]
