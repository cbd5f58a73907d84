"""The agents' API under /v1/: parse HTTP, call the one read path, send its bytes back.

The routes are the data operations' (core.operations: each one's method and path); a path none serves is
refused through the core all the same, so it leaves a record."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import unquote

from starlette.convertors import PathConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.common.errors import BadRequest, GatewayError, MethodNotAllowed, NotFound
from gateway.core import operations
from gateway.core.pipeline import Gateway
from gateway.core.types import Answer, ReadRequest
from gateway.transports import caller
from gateway.transports.http import exchange, new_request_id, raw_json, read_asgi_body, read_body


class AnyPath(PathConvertor):
    """Like `path`, but matching control characters too (`.` stops at a newline), so that such a path still
    reaches a route that refuses it and leaves an audit record."""

    regex = r"[\s\S]*"


register_url_convertor("anypath", AnyPath())

ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


async def handle(request: Request, operation: str, method: str, dataset: str | None = None,
                 params: dict[str, str] | None = None, route_error: GatewayError | None = None,
                 allow: Sequence[str] = ()) -> Response:
    """Build the ReadRequest for any route (data or admin) and send back the core's answer unchanged. `allow`:
    every method the path serves (its operations in the registry), when it serves more than `method`."""
    gateway: Gateway = request.app.state.gateway
    request_id = exchange(request.scope).call_id()  # the record's id is the answer's X-Request-Id
    if request.method != method:
        methods = list(allow) or [method]  # RFC 9110: Allow names every method the resource takes
        route_error = MethodNotAllowed(f"{request.method} is not allowed here; use {' or '.join(methods)}",
                                       headers={"Allow": ", ".join(methods)})
    elif operation == "unknown":
        route_error = NotFound(f"no such endpoint: {request.url.path}")
    body, too_large = (None, False)
    if request.method in ("POST", "PUT", "PATCH"):
        body, too_large = await read_body(request, request.app.state.settings.server.max_body_bytes)
    headers = request.headers
    who = caller.from_scope(request.scope, request.app.state.proxies)
    answer = await gateway.handle(ReadRequest(
        request_id=request_id, operation=operation, authorization=headers.get("authorization"),
        dataset=dataset, body=body, body_too_large=too_large, work_unit=headers.get("x-work-unit") or None,
        approval_id=headers.get("x-approval-id") or None, route_error=route_error, params=params or {},
        client=who.client, user_agent=who.user_agent, trace_id=who.trace_id, parent_span=who.parent_span,
        trace_flags=who.trace_flags))
    return _response(answer, request_id)


# The request headers the data routes read; the first of several wins, as with Starlette's Headers.get (but
# X-Forwarded-For, whose several headers are one list).
_READ_HEADERS = frozenset({b"authorization", b"x-work-unit", b"x-approval-id", b"content-length", b"user-agent",
                           b"traceparent"})


# The query operation, taken straight from ASGI (query_asgi): its method, and its path around the dataset's name.
_QUERY = operations.OPERATIONS["query"]
assert _QUERY.http is not None
_QUERY_METHOD = _QUERY.http.method
_QUERY_HEAD, _QUERY_TAIL = _QUERY.http.path.split("{name}")


def query_route(scope: Scope) -> str | None:
    """The dataset name when the request is exactly what the router would send to the query route with a POST
    (path /v1/datasets/{name}/query, name one path segment), else None."""
    if scope["type"] != "http" or scope["method"] != _QUERY_METHOD or scope.get("root_path"):
        return None
    path: str = scope["path"]
    if not (path.startswith(_QUERY_HEAD) and path.endswith(_QUERY_TAIL)):
        return None
    name = path[len(_QUERY_HEAD):-len(_QUERY_TAIL)]
    return name if name and "/" not in name else None


async def query_asgi(state: Any, name: str, scope: Scope, receive: Receive, send: Send) -> None:
    """POST /v1/datasets/{name}/query, the agents' hot path, straight from ASGI: the ReadRequest and the answer
    are those `handle` builds through the router, without Starlette's middleware, routing, Request object and
    per-message send wrappers (a tenth of the gateway's CPU per read, measured by bench/read_path.py)."""
    request_id = new_request_id()
    headers: dict[bytes, str] = {}
    forwarded: list[str] = []
    for key, value in scope["headers"]:
        if key in _READ_HEADERS and key not in headers:
            headers[key] = value.decode("latin-1")
        elif key == b"x-forwarded-for":
            forwarded.append(value.decode("latin-1"))
    body, too_large = await read_asgi_body(receive, state.settings.server.max_body_bytes,
                                           headers.get(b"content-length"))
    who = caller.caller(caller.peer_of(scope), state.proxies, forwarded_for=",".join(forwarded) or None,
                        user_agent=headers.get(b"user-agent"), traceparent=headers.get(b"traceparent"))
    answer = await state.gateway.handle(ReadRequest(
        request_id=request_id, operation=_QUERY.name, authorization=headers.get(b"authorization"), dataset=name,
        body=body, body_too_large=too_large, work_unit=headers.get(b"x-work-unit") or None,
        approval_id=headers.get(b"x-approval-id") or None, client=who.client, user_agent=who.user_agent,
        trace_id=who.trace_id, parent_span=who.parent_span, trace_flags=who.trace_flags))
    await _response(answer, request_id)(scope, receive, send)


def _response(answer: Answer, request_id: str) -> Response:
    if answer.stream is not None:
        return StreamingResponse(answer.stream, status_code=answer.status, media_type=answer.media_type,
                                 headers={"X-Request-Id": request_id, "Cache-Control": "no-store", **answer.headers})
    if answer.payload is None and answer.media_type != "application/json":  # a source's answer, passed through
        return Response(content=answer.body, status_code=answer.status, media_type=None, headers={
            "X-Request-Id": request_id, "Cache-Control": "no-store", **answer.headers,
            "Content-Type": answer.media_type, "X-Content-Type-Options": "nosniff"})
    return raw_json(answer.status, answer.body, request_id, answer.headers)


Endpoint = Callable[[Request], Awaitable[Response]]


def _dataset_route(name: str, method: str) -> Endpoint:
    """A data operation's route: the dataset its path names (none for the list)."""

    async def endpoint(request: Request) -> Response:
        return await handle(request, name, method, request.path_params.get("name"))

    return endpoint


def _proxy_route(name: str, method: str) -> Endpoint:

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
        return await handle(request, name, method, request.path_params["name"], params, route_error=odd)

    return proxy_dataset


def _sql_route(name: str, method: str) -> Endpoint:

    async def run_sql(request: Request) -> Response:
        """POST /v1/sql: one SELECT over datasets (SQL mode); 404 where [sql] enabled = false."""
        if not request.app.state.settings.sql.enabled:
            return await handle(request, "unknown", request.method)
        return await handle(request, name, method)

    return run_sql


async def unknown(request: Request) -> Response:
    return await handle(request, "unknown", request.method)


# How each data operation's request is read from HTTP, where it is more than the dataset in its path.
_ROUTES: dict[str, Callable[[str, str], Endpoint]] = {"proxy": _proxy_route, "sql": _sql_route}

routes = [
    *(Route(http.path, _ROUTES.get(op.name, _dataset_route)(op.name, http.method), methods=ALL_METHODS)
      for op, http in operations.under("/v1/")),
    Route("/v1/{rest:anypath}", unknown, methods=ALL_METHODS),
]
