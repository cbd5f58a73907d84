"""Signing in to /mcp as standard MCP clients do: OAuth 2.0 Protected Resource Metadata (RFC 9728) naming the
configured issuer as the authorization server, every 401's challenge pointing to it (RFC 6750 §3:
error="invalid_token" only when a token was sent), and the official SDK's own OAuth client going from a bare
401 to a token and a read: against a real `agentgate serve` and an authorization server on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import httpx
import httpx2
import jwt
import pytest
from mcp import Client
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken, ProtectedResourceMetadata
from starlette.datastructures import State

from gateway.common.errors import ConfigError
from gateway.config import load_settings
from gateway.transports import wellknown
from tests.conftest import AUDIENCE, SECRET, bearer, client_for, loopback_http, seed, token, write_workspace
from tests.serving import serving

PATH = "/.well-known/oauth-protected-resource"
CLIENT_SECRET = "client-secret-of-support-bot"


class AuthorizationServer(BaseHTTPRequestHandler):
    """A small OAuth authorization server (RFC 8414 metadata, a client-credentials token endpoint) issuing the
    tokens the gateway takes: HS256 with its secret, `iss` this server, `aud` the gateway's audience."""

    token_requests: ClassVar[list[dict[str, str]]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path != "/.well-known/oauth-authorization-server":
            self._json(404, {"error": "not_found"})
            return
        self._json(200, {"issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
                         "token_endpoint": f"{self.issuer}/token", "grant_types_supported": ["client_credentials"],
                         "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                         "response_types_supported": ["code"]})

    def do_POST(self) -> None:
        form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
        AuthorizationServer.token_requests.append(form)
        kind, _, credentials = (self.headers.get("Authorization") or "").partition(" ")
        basic = base64.b64decode(credentials).decode() if kind == "Basic" else ":"
        client_id, _, secret = basic.partition(":")
        if self.path != "/token" or form.get("grant_type") != "client_credentials" or secret != CLIENT_SECRET:
            self._json(400, {"error": "invalid_client"})
            return
        now = int(time.time())
        access = jwt.encode({"sub": urllib.parse.unquote(client_id), "iss": self.issuer, "aud": AUDIENCE,
                             "iat": now, "exp": now + 300}, SECRET, algorithm="HS256")
        self._json(200, {"access_token": access, "token_type": "Bearer", "expires_in": 300})


@dataclass
class Served:
    base: str
    issuer: str
    http: httpx.Client


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("mcp-signin")
    seed(f"sqlite+aiosqlite:///{root / 'source.db'}")
    with contextlib.ExitStack() as stack:
        issuer = stack.enter_context(loopback_http(AuthorizationServer, prefix=""))
        config = write_workspace(root, source_url=f"sqlite+aiosqlite:///{root / 'source.db'}")
        text = config.read_text()
        config.write_text(text.replace(f'audience = "{AUDIENCE}"\n', f'audience = "{AUDIENCE}"\nissuer = "{issuer}"\n'))
        base = stack.enter_context(serving(config, root / "serve.log"))
        http = stack.enter_context(httpx.Client(base_url=base, timeout=20))
        yield Served(base, issuer, http)


# --- the metadata --------------------------------------------------------------------------------------------

@pytest.mark.system
def test_the_metadata_names_the_gateway_and_its_issuer(served: Served) -> None:
    got = served.http.get(PATH)  # no token: it describes, it reveals nothing
    assert got.status_code == 200, got.text
    assert got.json() == {"resource": served.base, "authorization_servers": [served.issuer],
                          "bearer_methods_supported": ["header"], "resource_name": "agentgate"}
    ProtectedResourceMetadata.model_validate_json(got.content)  # as the SDK's OAuth client reads it
    # From the request's Host (no [server] public_url): never kept by a shared cache; readable from a browser.
    assert got.headers["cache-control"] == "no-store" and got.headers["access-control-allow-origin"] == "*"
    # /mcp's own, where MCP clients look when no challenge names one (RFC 9728 §3.1: the path after the name).
    mcp = served.http.get(f"{PATH}/mcp").json()
    assert mcp == {**got.json(), "resource": f"{served.base}/mcp"}
    preflight = served.http.options(PATH, headers={"Origin": "http://localhost:6274",
                                                   "Access-Control-Request-Method": "GET",
                                                   "Access-Control-Request-Headers": "mcp-protocol-version"})
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == "*"


@pytest.mark.system
def test_every_401_points_to_the_metadata_and_says_whether_the_token_was_bad(served: Served) -> None:
    http = served.http
    metadata = f"{served.base}{PATH}"
    none = f'Bearer realm="agentgate", resource_metadata="{metadata}"'
    bad = f'{none}, error="invalid_token"'
    hello = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    ways = {
        "list": lambda h: http.get("/v1/datasets", headers=h),
        "query (the fast path)": lambda h: http.post("/v1/datasets/customers/query", headers=h, json={}),
        "admin": lambda h: http.get("/admin/v1/revocations", headers=h),
        "mcp": lambda h: http.post("/mcp", headers={**h, "Accept": "application/json, text/event-stream"},
                                   json=hello),
    }
    tokens: dict[str, tuple[dict[str, str], str]] = {
        "no token": ({}, none),
        "another scheme": ({"Authorization": "Basic c3VwcG9ydC1ib3Q6eA=="}, none),  # no bearer token sent
        "an empty bearer": ({"Authorization": "Bearer"}, none),
        "not a JWT": ({"Authorization": "Bearer nope"}, bad),
        "expired": ({"Authorization": f"Bearer {token('support-bot', ttl=-3600)}"}, bad),
        "forged": ({"Authorization": f"Bearer {token('support-bot', secret='forged-' + SECRET)}"}, bad),
        "another issuer": ({"Authorization": f"Bearer {token('support-bot', iss='https://elsewhere.example')}"}, bad),
    }
    for way, call in ways.items():
        for case, (headers, expected) in tokens.items():
            answer = call(headers)
            assert answer.status_code == 401, (way, case, answer.text)
            assert answer.headers["www-authenticate"] == expected, (way, case)
    # A revoked agent's token is refused 403 (forbidden, as the contract has it): no challenge to sign in again.
    assert http.post("/admin/v1/revocations", headers=bearer("alice", iss=served.issuer),
                     json={"agent": "analyst-bot"}).status_code == 201
    revoked = http.get("/v1/datasets", headers=bearer("analyst-bot", iss=served.issuer))
    assert revoked.status_code == 403 and "www-authenticate" not in revoked.headers


# --- the SDK's OAuth client ----------------------------------------------------------------------------------

class Tokens:
    """The SDK's TokenStorage, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


@pytest.mark.system
def test_the_sdks_oauth_client_signs_in_through_discovery_and_reads(served: Served) -> None:
    """No token at first: the 401's challenge leads the client to the metadata, the metadata to the issuer, the
    issuer's metadata to its token endpoint; with the token it got, the same call is answered."""
    url = f"{served.base}/mcp"
    storage = Tokens()
    AuthorizationServer.token_requests.clear()

    async def run() -> Any:
        provider = ClientCredentialsOAuthProvider(server_url=url, storage=storage, client_id="support-bot",
                                                  client_secret=CLIENT_SECRET, issuer=served.issuer)
        async with (httpx2.AsyncClient(auth=provider, timeout=20) as http,
                    Client(streamable_http_client(url, http_client=http)) as client):
            return await client.call_tool("query_dataset", {"name": "customers", "columns": ["id"], "limit": 2,
                                                            "work_unit": "OAUTH-1"})

    page = asyncio.run(run())
    assert not page.is_error, page.content
    assert page.structured_content["rows"] == [{"id": 1}, {"id": 2}]
    (asked,) = AuthorizationServer.token_requests  # one token, asked for once
    assert asked["grant_type"] == "client_credentials"
    assert asked["resource"] == served.base  # RFC 8707: the resource the metadata named
    assert storage.tokens is not None and jwt.decode(storage.tokens.access_token, options={
        "verify_signature": False})["iss"] == served.issuer
    records = served.http.get("/admin/v1/audit?agent=support-bot&limit=50",
                              headers=bearer("alice", iss=served.issuer)).json()["records"]
    (read,) = [r for r in records if r["work_unit"] == "OAUTH-1"]
    assert (read["transport"], read["decision"], read["rows"]) == ("mcp", "allow", 2)


# --- where the URLs come from ----------------------------------------------------------------------------------

def _scope(headers: list[tuple[bytes, bytes]], scheme: str = "http",
           server: tuple[str, int] | None = ("10.0.0.5", 8080)) -> dict[str, Any]:
    return {"type": "http", "scheme": scheme, "headers": headers, "server": server}


@pytest.mark.unit
def test_the_resource_url_is_the_setting_else_the_requests_own() -> None:
    assert wellknown.base_url(_scope([(b"host", b"evil.example")]), "https://gate.example") == "https://gate.example"
    assert wellknown.base_url(_scope([(b"host", b"Gate.Example:8443")], "https"), None) == "https://gate.example:8443"
    assert wellknown.base_url(_scope([(b"host", b"[::1]:8080")]), None) == "http://[::1]:8080"
    # A Host that could not stand in a URL or a quoted header value: the socket's own address instead.
    for host in (b'gate"x', b"gate example", b"a/b", b"gate\\x", b"", b"x" * 300):
        assert wellknown.base_url(_scope([(b"host", host)]), None) == "http://10.0.0.5:8080", host
    assert wellknown.base_url(_scope([], server=("::1", 8080)), None) == "http://[::1]:8080"
    assert wellknown.base_url(_scope([], server=None), None) == "http://localhost"


@pytest.mark.unit
def test_the_document_names_an_authorization_server_only_when_an_issuer_url_is_set() -> None:
    assert wellknown.document("https://gate.example", "https://idp.example/realms/agents") == {
        "resource": "https://gate.example", "authorization_servers": ["https://idp.example/realms/agents"],
        "bearer_methods_supported": ["header"], "resource_name": "agentgate"}
    for issuer in (None, "agentgate-demo"):
        assert "authorization_servers" not in wellknown.document("https://gate.example", issuer)


@pytest.mark.unit
def test_the_challenge_has_an_error_code_only_when_a_bearer_token_was_sent() -> None:
    state = State()
    base = b'Bearer realm="agentgate", resource_metadata="http://gate:8080/.well-known/oauth-protected-resource"'
    host = (b"host", b"gate:8080")
    assert wellknown.challenge(_scope([host]), state) == base
    assert wellknown.challenge(_scope([host, (b"authorization", b"Basic eDp5")]), state) == base
    assert wellknown.challenge(_scope([host, (b"authorization", b"Bearer  ")]), state) == base
    assert wellknown.challenge(_scope([host, (b"authorization", b"bearer x.y.z")]), state) == (
        base + b', error="invalid_token"')


@pytest.mark.unit
def test_public_url_is_an_origin(tmp_path: Path) -> None:
    def load(value: str) -> str | None:
        config = tmp_path / "agentgate.toml"
        config.write_text(f'[server]\npublic_url = "{value}"\n[auth]\nsecret = "{SECRET}"\n')
        return load_settings(config, {}).server.public_url

    assert load("https://Gate.Example/") == "https://gate.example"
    assert load("http://10.0.0.5:8080") == "http://10.0.0.5:8080"
    for bad in ("gate.example", "ftp://gate.example", "https://gate.example/agentgate", "https://gate.example?x=1",
                "https://user@gate.example", "https://gate.example:99999", 'https://gate"x', "https://"):
        with pytest.raises(ConfigError, match="public_url"):
            load(bad)


@pytest.mark.integration
def test_with_public_url_set_the_document_ignores_the_host_and_may_be_cached(tmp_path: Path, sqlite_source: str
                                                                             ) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source,
                             extra='\n[server]\npublic_url = "https://agentgate.example.com"\n')
    with client_for(config) as client:
        got = client.get(PATH, headers={"Host": "evil.example"})
        assert got.json()["resource"] == "https://agentgate.example.com"
        assert "authorization_servers" not in got.json()  # no [auth] issuer in this workspace
        assert got.headers["cache-control"] == "public, max-age=3600"
        refused = client.get("/v1/datasets", headers={"Host": "evil.example"})
        assert refused.headers["www-authenticate"] == (
            'Bearer realm="agentgate", resource_metadata="https://agentgate.example.com/.well-known/'
            'oauth-protected-resource"')
