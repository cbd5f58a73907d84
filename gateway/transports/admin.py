"""Admin routes under /admin/v1/: thin adapters onto the same core as the agents' API.

One route per path of the admin operations (core.operations, in their order). A path's `{id}` is its
operation's parameter, else a GET's query string is; a method no operation of the path takes is answered by
the path's last operation (405, its Allow naming every method the path's operations take), through the core, so
it leaves a record.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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
        return await handle(request, name, method, params=params, allow=allow)

    return Route(path, endpoint, methods=ALL_METHODS)


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
