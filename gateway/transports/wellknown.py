"""OAuth 2.0 Protected Resource Metadata (RFC 9728), and the 401 challenge that points to it (RFC 6750 §3).

The gateway is one protected resource: the same bearer token reads /v1/, /mcp and /admin/v1/. Its metadata, at
/.well-known/oauth-protected-resource, names the resource (the gateway's URL), the authorization server that
issues its tokens ([auth] issuer, when that is an http(s) URL) and how a token is sent (the Authorization
header). An MCP client that meets a 401 follows the challenge's `resource_metadata` there, gets a token from that
server and tries again (OAuth discovery, as the MCP authorization spec has it). /mcp has its own document too, at
the address MCP clients build from the MCP URL when no challenge told them one (…/oauth-protected-resource/mcp).

Every 401 says `Bearer realm="agentgate", resource_metadata="<url>"`, plus `error="invalid_token"` when a
bearer token was sent and refused; none was sent: no error code (RFC 6750 §3). The core writes the challenge
without the URL, which depends on how the client reached the gateway; `challenging` completes it on the way out,
for every way in at once (the agents' API, its fast path, the admin API, MCP, the review page).

The URL is [server] public_url; without it, the request's own scheme and Host header. A client writes its Host,
so it reads that Host back in the resource's URL only, never in the authorization server's (from the config),
and the document is then answered no-store, so that no shared cache keeps one client's Host for another.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import State
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Scope, Send

from gateway.config import Settings

PATH = "/.well-known/oauth-protected-resource"
# The resources with a document of their own: the gateway (its root), and /mcp.
RESOURCES = ("", "/mcp")
# The challenge the core writes (core.pipeline), completed here.
_CORE_CHALLENGE = b'Bearer realm="agentgate"'
# A Host header that may stand in a URL and in a quoted header value: a name, an IPv4 address or a bracketed IPv6
# one, and a port. Anything else is not believed (the socket's own address is taken instead).
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})(?::[0-9]{1,5})?", re.ASCII)
_CORS = {"Access-Control-Allow-Origin": "*"}  # a public document: browser-based clients discover it too


def base_url(scope: Scope, public_url: str | None) -> str:
    """The gateway's URL as this request reached it: [server] public_url, else the request's scheme and Host."""
    if public_url is not None:
        return public_url
    scheme = "https" if scope.get("scheme") == "https" else "http"
    return f"{scheme}://{_host(scope)}"


def _host(scope: Scope) -> str:
    for key, value in scope.get("headers") or ():
        if key == b"host":
            host: str = value.decode("latin-1")
            if _HOST.fullmatch(host):
                return host.lower()
            break
    server = scope.get("server")
    if not server:
        return "localhost"
    address, port = str(server[0]), server[1]
    address = f"[{address}]" if ":" in address else address
    return address if port is None else f"{address}:{port}"


def document(resource: str, issuer: str | None) -> dict[str, Any]:
    """RFC 9728 §2's metadata. With no issuer configured (or one that is not an http(s) URL) there is no
    authorization server to name, and `authorization_servers` (optional in RFC 9728) is left out: such a gateway
    takes tokens handed to its agents, and a client cannot sign in through discovery."""
    out: dict[str, Any] = {"resource": resource}
    if issuer is not None and issuer.startswith(("https://", "http://")):
        out["authorization_servers"] = [issuer]
    out["bearer_methods_supported"] = ["header"]
    out["resource_name"] = "agentgate"
    return out


def _endpoint(suffix: str) -> Callable[[Request], Awaitable[Response]]:
    async def metadata(request: Request) -> Response:
        if request.method == "OPTIONS":  # a browser's preflight (MCP clients send MCP-Protocol-Version)
            return Response(status_code=204, headers={**_CORS, "Access-Control-Allow-Methods": "GET, OPTIONS",
                                                      "Access-Control-Allow-Headers": "*",
                                                      "Access-Control-Max-Age": "86400"})
        settings: Settings = request.app.state.settings
        public_url = settings.server.public_url
        body = document(base_url(request.scope, public_url) + suffix, settings.auth.issuer)
        cache = "public, max-age=3600" if public_url is not None else "no-store"
        return JSONResponse(body, headers={**_CORS, "Cache-Control": cache})

    return metadata


def metadata_url(scope: Scope, state: State) -> str:
    """Where a 401 sends the client: the gateway's own document (the resource its tokens are for)."""
    settings: Settings | None = getattr(state, "settings", None)
    return base_url(scope, settings.server.public_url if settings is not None else None) + PATH


def challenge(scope: Scope, state: State) -> bytes:
    """The WWW-Authenticate value of a 401 to this request."""
    value = _CORE_CHALLENGE + b', resource_metadata="' + metadata_url(scope, state).encode("ascii") + b'"'
    return value + b', error="invalid_token"' if _sent_a_token(scope) else value


def _sent_a_token(scope: Scope) -> bool:
    """A bearer token was sent (the core's test: "missing bearer token" is the refusal of everything else)."""
    for key, value in scope.get("headers") or ():
        if key == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            return kind.lower() == "bearer" and bool(token.strip())
    return False


def challenging(scope: Scope, state: State, send: Send) -> Send:
    """`send`, with the core's challenge on a 401 completed (where the metadata is; whether the token was bad)."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 401:
            headers = [(k, challenge(scope, state) if k.lower() == b"www-authenticate" and v == _CORE_CHALLENGE
                        else v) for k, v in message.get("headers") or ()]
            message = {**message, "headers": headers}
        await send(message)

    return sending


routes = [Route(PATH + suffix, _endpoint(suffix), methods=["GET", "OPTIONS"]) for suffix in RESOURCES]
