"""Admin routes under /admin/v1/: thin adapters onto the same core as the agents' API.

One route per path of the admin operations (core.operations, in their order). A path's `{id}` is its
operation's parameter, else a GET's query string is; a method no operation of the path takes is answered by
the path's last operation (405, its Allow naming every method the path's operations take), through the core, so
it leaves a record.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from gateway.core import operations
from gateway.core.operations import HttpRoute, Operation
from gateway.transports.data import ALL_METHODS, handle


def _route(path: str, served: list[tuple[Operation, HttpRoute]]) -> Route:
    by_method = {http.method: (op.name, http.method) for op, http in served}
    otherwise = by_method[served[-1][1].method]
    allow = tuple(by_method)
    takes_id = "{id}" in path

    async def endpoint(request: Request) -> Response:
        name, method = by_method.get(request.method, otherwise)
        params: dict[str, str] | None = None
        if takes_id:
            params = {"id": request.path_params["id"]}
        elif method == "GET":
            params = dict(request.query_params)
        response = await handle(request, name, method, params=params, allow=allow)
        if name in STREAMED and isinstance(response, StreamingResponse):
            return _Unstalled(response, request.app.state.gateway.services.streams.stall_seconds)
        return response

    return Route(path, endpoint, methods=ALL_METHODS)


log = logging.getLogger("agentgate.audit")

STREAMED = frozenset({"audit_stream"})  # long-lived answers: a client that stops reading is cut off


class _Unstalled(Response):
    """A long-lived stream whose every chunk must be taken by the client within `stall` seconds, else the
    connection is closed: a client that stops reading would otherwise hold its stream (one of the few a process
    allows, gateway/audit/follow.py: Streams) for ever, the stream's own end waiting on a send that never
    completes."""

    def __init__(self, inner: StreamingResponse, stall: float):
        super().__init__(status_code=inner.status_code)
        self._inner, self._stall = inner, stall
        inner.headers["X-Accel-Buffering"] = "no"  # nginx: pass each line on as it comes, do not buffer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def bounded(message: Message) -> None:
            async with asyncio.timeout(self._stall):
                await send(message)

        try:
            await self._inner(scope, receive, bounded)
        except TimeoutError:
            log.warning("a stream's client took nothing for %g s: its connection is closed", self._stall)
        finally:
            # However it ended (its time, the client gone, cut off), the stream is closed now, so that what it
            # holds (its place among the process's streams) is given back at once, not when it is collected.
            close = getattr(self._inner.body_iterator, "aclose", None)
            if close is not None:
                await close()


def _paths(prefix: str) -> dict[str, list[tuple[Operation, HttpRoute]]]:
    paths: dict[str, list[tuple[Operation, HttpRoute]]] = {}
    for op, http in operations.under(prefix):
        paths.setdefault(http.path, []).append((op, http))
    return paths


async def unknown(request: Request) -> Response:
    return await handle(request, "unknown", request.method)


routes = [
    *(_route(path, served) for path, served in _paths("/admin/v1/").items()),
    # anypath (data.py): a path with a newline in it still reaches a route that refuses it and records that.
    Route("/admin/v1/{rest:anypath}", unknown, methods=ALL_METHODS),
]
