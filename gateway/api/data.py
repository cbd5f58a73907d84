"""The agents' API under /v1/: parse HTTP, call the one read path, send its bytes back."""

from __future__ import annotations

from urllib.parse import unquote

from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.api.http import new_request_id, raw_json, read_body
from gateway.core import Gateway, ReadRequest
from gateway.errors import BadRequest, GatewayError, MethodNotAllowed, NotFound


class AnyPath(PathConvertor):
    """Like `path`, but matching control characters too (`.` stops at a newline), so that such a path still
    reaches a route that refuses it and leaves an audit record."""

    regex = r"[\s\S]*"


register_url_convertor("anypath", AnyPath())

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


async def handle(request: Request, operation: str, method: str, dataset: str | None = None,
                 params: dict[str, str] | None = None, route_error: GatewayError | None = None) -> Response:
    """Build the ReadRequest for any route (data or admin) and send back the core's answer unchanged."""
    gateway: Gateway = request.app.state.gateway
    request_id = new_request_id()
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
    if answer.payload is None and answer.media_type != "application/json":  # a source's answer, passed through
        return Response(content=answer.body, status_code=answer.status, media_type=None, headers={
            "X-Request-Id": request_id, "Cache-Control": "no-store", **answer.headers,
            "Content-Type": answer.media_type, "X-Content-Type-Options": "nosniff"})
    return raw_json(answer.status, answer.body, request_id, answer.headers)


async def list_datasets(request: Request) -> Response:
    return await handle(request, "list", "GET")


async def describe_dataset(request: Request) -> Response:
    return await handle(request, "describe", "GET", request.path_params["name"])


async def query_dataset(request: Request) -> Response:
    return await handle(request, "query", "POST", request.path_params["name"])


async def proxy_dataset(request: Request) -> Response:
    """GET through an HTTP dataset. The path is taken as it arrived (percent-encodings intact, so that an
    encoded slash or dot is seen and refused), as is the query string."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    # /v1/datasets/{name}/proxy/{path}: everything after the fifth slash, still encoded.
    parts = raw.decode("latin-1").split("?", 1)[0].split("/", 5)
    path = parts[5] if len(parts) > 5 else ""
    odd = None if len(parts) > 5 and unquote(parts[4]) == "proxy" else BadRequest("malformed proxy path")
    params = {"path": path, "query": request.scope.get("query_string", b"").decode("latin-1")}
    accept = request.headers.get("accept")
    if accept:
        params["accept"] = accept
    return await handle(request, "proxy", "GET", request.path_params["name"], params, route_error=odd)


async def run_sql(request: Request) -> Response:
    """POST /v1/sql: one SELECT over datasets (SQL mode); 404 where [sql] enabled = false."""
    if not request.app.state.settings.sql.enabled:
        return await handle(request, "unknown", request.method)
    return await handle(request, "sql", "POST")


async def unknown(request: Request) -> Response:
    return await handle(request, "unknown", request.method)


routes = [
    Route("/v1/datasets", list_datasets, methods=ALL_METHODS),
    Route("/v1/datasets/{name}", describe_dataset, methods=ALL_METHODS),
    Route("/v1/datasets/{name}/query", query_dataset, methods=ALL_METHODS),
    Route("/v1/datasets/{name}/proxy/{path:anypath}", proxy_dataset, methods=ALL_METHODS),
    Route("/v1/sql", run_sql, methods=ALL_METHODS),
    Route("/v1/{rest:anypath}", unknown, methods=ALL_METHODS),
]
