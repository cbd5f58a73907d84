"""Small HTTP helpers shared by the routes: request ids, bounded bodies, JSON answers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.common import randomness


def new_request_id() -> str:
    return randomness.request_id()


# Where an HTTP request's Exchange is kept in its ASGI scope.
_EXCHANGE = "agentgate.exchange"


@dataclass(slots=True)
class Exchange:
    """One HTTP request as the gateway answers it: the request id its answer carries (X-Request-Id), which is
    the record's request id of the first call to the core it leads to, and the traceparent the core gave that
    call's answer. Kept in the ASGI scope, so that a route answering in its own way (the MCP SDK, the review
    page's HTML, health checks) still answers with both (`stamped`)."""

    request_id: str
    taken: bool = False
    traceparent: str | None = None

    def call_id(self) -> str:
        """The request id of a call to the core made for this request: the exchange's, then new ones."""
        if self.taken:
            return new_request_id()
        self.taken = True
        return self.request_id

    def answered(self, headers: Mapping[str, str]) -> None:
        """The core answered a call made for this request: its first answer's traceparent is the request's."""
        if self.traceparent is None:
            self.traceparent = headers.get("traceparent")


def exchange(scope: Scope) -> Exchange:
    """The request's Exchange (made on first use: `stamped` makes it for every request the app serves)."""
    found: Exchange | None = scope.get(_EXCHANGE)
    if found is None:
        found = scope[_EXCHANGE] = Exchange(new_request_id())
    return found


def stamped(scope: Scope, send: Send) -> Send:
    """`send`, the answer given X-Request-Id (the exchange's) and traceparent (the core's) where the route did
    not set them: every answer carries a request id, records or not."""
    ex = exchange(scope)

    async def send_stamped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers: list[Any] = list(message.get("headers") or ())
            have = {bytes(k).lower() for k, _ in headers}
            if b"x-request-id" not in have:
                headers.append((b"x-request-id", ex.request_id.encode()))
            if ex.traceparent is not None and b"traceparent" not in have:
                headers.append((b"traceparent", ex.traceparent.encode()))
            message = {**message, "headers": headers}
        await send(message)

    return send_stamped


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

