"""Small HTTP helpers shared by the routes: request ids, bounded bodies, JSON answers."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive

from gateway.common import randomness


def new_request_id() -> str:
    return randomness.request_id()


async def read_body(request: Request, limit: int) -> tuple[bytes, bool]:
    """The body, or (b"", True) once it is over `limit` bytes; never buffers more than limit + one chunk."""
    return await read_asgi_body(request.receive, limit, request.headers.get("content-length"))


async def read_asgi_body(receive: Receive, limit: int, declared: str | None) -> tuple[bytes, bool]:
    """`read_body` on the ASGI receive channel itself (the hot path serves reads without a Request object)."""
    # ASCII digits only ('²'.isdigit() is true and int('²') raises), and no int() of thousands of them.
    if declared is not None and declared.isascii() and declared.isdigit() and (
            len(declared) > 18 or int(declared) > limit):
        return b"", True
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def raw_json(status: int, body: bytes, request_id: str, headers: Mapping[str, str] | None = None) -> Response:
    out = {"X-Request-Id": request_id, "Cache-Control": "no-store"}
    if headers:
        out.update(headers)
    return Response(content=body, status_code=status, media_type="application/json", headers=out)

