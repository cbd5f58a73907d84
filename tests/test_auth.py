"""gateway.auth.tokens against real signed JWTs and a real JWKS server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.auth import Agent, Authenticator
from gateway.common.errors import ConfigError, Unauthenticated
from gateway.config import AuthSettings, Secret

pytestmark = pytest.mark.unit

SECRET = "test-secret-that-is-long-enough-for-hs256!"
OTHER_SECRET = "another-secret-that-is-also-long-enough!!"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
MakeAuth = Callable[..., Authenticator]


# --- keys and tokens ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def write_pem(tmp_path: Path, key: PrivateKey) -> Path:
    path = tmp_path / "public.pem"
    path.write_bytes(public_pem(key))
    return path


def claims(**overrides: Any) -> dict[str, Any]:
    """A valid claim set; an override of None drops the claim."""
    base: dict[str, Any] = {"sub": "agent-1", "exp": int(time.time()) + 300}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: str | PrivateKey = SECRET, alg: str = "HS256",
         kid: str | None = None) -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None = None) -> str:
    """A token PyJWT would refuse to produce: alg=none, or HMAC keyed with a PEM."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    sig = b"" if hmac_key is None else hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(sig)}"


@pytest.fixture
async def make_auth() -> AsyncIterator[MakeAuth]:
    made: list[Authenticator] = []

    def make(**settings: Any) -> Authenticator:
        settings.setdefault("secret", Secret(SECRET))
        auth = Authenticator(AuthSettings(**settings))
        made.append(auth)
        return auth

    yield make
    for auth in made:
        await auth.aclose()


async def rejected(auth: Authenticator, token: str | None, *, bearer: bool = True) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as info:
        await auth.authenticate(f"Bearer {token}" if bearer and token is not None else token)
    assert info.value.status == 401
    assert SECRET not in info.value.message
    return info.value


# --- HS256, RS256, ES256, EdDSA ----------------------------------------------------------------

async def test_valid_hs256(make_auth: MakeAuth) -> None:
    auth = make_auth()
    exp = int(time.time()) + 300
    agent = await auth.authenticate("Bearer " + sign(claims(exp=exp, scope="read")))
    assert agent == Agent(name="agent-1", on_behalf_of=None, jti=None,
                          claims={"sub": "agent-1", "exp": exp, "scope": "read"}, expires_at=float(exp))


async def test_scheme_is_case_insensitive(make_auth: MakeAuth) -> None:
    agent = await make_auth().authenticate("bearer " + sign(claims()))
    assert agent.name == "agent-1"


async def test_valid_rs256_from_public_key_file(make_auth: MakeAuth, tmp_path: Path,
                                                rsa_key: rsa.RSAPrivateKey) -> None:
    auth = make_auth(algorithms=("RS256",), public_key_file=write_pem(tmp_path, rsa_key), secret=None)
    agent = await auth.authenticate("Bearer " + sign(claims(sub="rs-agent"), rsa_key, "RS256"))
    assert agent.name == "rs-agent"


async def test_valid_es256(make_auth: MakeAuth, tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    auth = make_auth(algorithms=("ES256",), public_key_file=write_pem(tmp_path, ec_key), secret=None)
    agent = await auth.authenticate("Bearer " + sign(claims(sub="ec-agent"), ec_key, "ES256"))
    assert agent.name == "ec-agent"


async def test_valid_eddsa(make_auth: MakeAuth, tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    auth = make_auth(algorithms=("EdDSA",), public_key_file=write_pem(tmp_path, key), secret=None)
    assert (await auth.authenticate("Bearer " + sign(claims(), key, "EdDSA"))).name == "agent-1"


# --- algorithm and key attacks -----------------------------------------------------------------

@pytest.mark.parametrize("algorithms", [("HS256",), ("HS256", "none")])
async def test_alg_none_is_rejected_even_if_configured(make_auth: MakeAuth, algorithms: tuple[str, ...]) -> None:
    auth = make_auth(algorithms=algorithms)
    for alg in ("none", "None", "NONE"):
        err = await rejected(auth, handmade({"alg": alg, "typ": "JWT"}, claims()))
        assert "not allowed" in err.message


async def test_wrong_hmac_secret(make_auth: MakeAuth) -> None:
    err = await rejected(make_auth(), sign(claims(), OTHER_SECRET))
    assert err.message == "invalid signature"
    assert isinstance(err.__cause__, jwt.InvalidSignatureError)


async def test_wrong_rsa_key(make_auth: MakeAuth, tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                             rsa_key2: rsa.RSAPrivateKey) -> None:
    auth = make_auth(algorithms=("RS256",), public_key_file=write_pem(tmp_path, rsa_key), secret=None)
    assert (await rejected(auth, sign(claims(), rsa_key2, "RS256"))).message == "invalid signature"


async def test_hs_rs_key_confusion(make_auth: MakeAuth, tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    # The attacker knows the public key and signs HS256 with its PEM bytes as the HMAC secret.
    auth = make_auth(algorithms=("HS256", "RS256"), public_key_file=write_pem(tmp_path, rsa_key),
                     secret=Secret(OTHER_SECRET))
    forged = handmade({"alg": "HS256", "typ": "JWT"}, claims(sub="admin"), hmac_key=public_pem(rsa_key))
    assert (await rejected(auth, forged)).message == "invalid signature"
    # The same configuration still accepts honest tokens of both families.
    assert (await auth.authenticate("Bearer " + sign(claims(), rsa_key, "RS256"))).name == "agent-1"
    assert (await auth.authenticate("Bearer " + sign(claims(), OTHER_SECRET))).name == "agent-1"


async def test_algorithm_outside_allow_list(make_auth: MakeAuth, tmp_path: Path,
                                            rsa_key: rsa.RSAPrivateKey) -> None:
    auth = make_auth(algorithms=("RS256",), public_key_file=write_pem(tmp_path, rsa_key))
    assert (await rejected(auth, sign(claims()))).message == "algorithm HS256 not allowed"
    assert (await rejected(auth, sign(claims(), rsa_key, "RS384"))).message == "algorithm RS384 not allowed"
    weird = handmade({"alg": "<script>" * 10}, claims())
    assert (await rejected(auth, weird)).message == "algorithm not allowed"


async def test_hs_without_secret(make_auth: MakeAuth) -> None:
    auth = make_auth(secret=None)
    assert "no secret configured" in (await rejected(auth, sign(claims()))).message


async def test_rsa_key_for_es_token(make_auth: MakeAuth, tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                    ec_key: ec.EllipticCurvePrivateKey) -> None:
    auth = make_auth(algorithms=("RS256", "ES256"), public_key_file=write_pem(tmp_path, rsa_key))
    err = await rejected(auth, sign(claims(), ec_key, "ES256"))
    assert err.message == "cannot verify token: key does not match algorithm"


# --- time claims -------------------------------------------------------------------------------

async def test_expired(make_auth: MakeAuth) -> None:
    auth = make_auth(leeway_seconds=0)
    err = await rejected(auth, sign(claims(exp=int(time.time()) - 60)))
    assert err.message == "token expired"
    assert isinstance(err.__cause__, jwt.ExpiredSignatureError)


async def test_nbf_in_future(make_auth: MakeAuth) -> None:
    auth = make_auth(leeway_seconds=0)
    assert (await rejected(auth, sign(claims(nbf=int(time.time()) + 60)))).message == "token not yet valid"


async def test_within_leeway_accepted(make_auth: MakeAuth) -> None:
    auth = make_auth(leeway_seconds=10)
    now = int(time.time())
    assert (await auth.authenticate("Bearer " + sign(claims(exp=now - 5)))).name == "agent-1"
    early = sign(claims(nbf=now + 5))
    assert (await auth.authenticate("Bearer " + early)).name == "agent-1"
    # Not yet valid without the leeway, so not cached: the answer depends on the clock.
    assert early not in auth._cache


async def test_cache_never_outlives_exp(make_auth: MakeAuth) -> None:
    auth = make_auth(leeway_seconds=0)
    now = time.time()
    exp = int(now) + (1 if now % 1 < 0.5 else 2)  # 0.5 to 1.5 s from now
    token = sign(claims(exp=exp))
    first = await auth.authenticate("Bearer " + token)
    assert await auth.authenticate("Bearer " + token) is first  # served from the cache
    await asyncio.sleep(exp - time.time() + 0.05)
    assert (await rejected(auth, token)).message == "token expired"


async def test_cached_claims_are_read_only(make_auth: MakeAuth) -> None:
    agent = await make_auth().authenticate("Bearer " + sign(claims()))
    with pytest.raises(TypeError):
        agent.claims["sub"] = "root"  # type: ignore[index]


# --- required and checked claims ---------------------------------------------------------------

# Overrides, not claim sets: the claims are made when the test runs, so `exp` is still ahead however long the
# suite took to reach it.
@pytest.mark.parametrize(("overrides", "message"), [
    ({"sub": None}, "token lacks sub"),
    ({"sub": ""}, "token lacks sub"),
    ({"sub": 42}, "token lacks sub"),
    ({"exp": None}, "token lacks exp"),
    ({"exp": "in five minutes"}, "malformed token"),
    ({"nbf": "0"}, "malformed token"),
    ({"on_behalf_of": 7}, "invalid on_behalf_of"),
    ({"on_behalf_of": ""}, "invalid on_behalf_of"),
    ({"jti": 5}, "invalid jti"),
])
async def test_bad_claims(make_auth: MakeAuth, overrides: dict[str, Any], message: str) -> None:
    payload = claims(**overrides)
    if payload.get("exp") == "in five minutes":
        payload["exp"] = str(int(time.time()) + 300)  # a number as a string
    assert (await rejected(make_auth(), sign(payload))).message == message


async def test_audience(make_auth: MakeAuth) -> None:
    auth = make_auth(audience="agentgate")
    assert (await auth.authenticate("Bearer " + sign(claims(aud="agentgate")))).name == "agent-1"
    assert (await auth.authenticate("Bearer " + sign(claims(aud=["x", "agentgate"])))).name == "agent-1"
    assert (await rejected(auth, sign(claims(aud="other-service")))).message == "wrong audience"
    assert (await rejected(auth, sign(claims()))).message == "token lacks aud"


async def test_issuer(make_auth: MakeAuth) -> None:
    auth = make_auth(issuer="https://idp.example")
    assert (await auth.authenticate("Bearer " + sign(claims(iss="https://idp.example")))).name == "agent-1"
    assert (await rejected(auth, sign(claims(iss="https://evil.example")))).message == "wrong issuer"
    assert (await rejected(auth, sign(claims()))).message == "token lacks iss"


async def test_on_behalf_of_and_jti(make_auth: MakeAuth) -> None:
    agent = await make_auth().authenticate("Bearer " + sign(claims(on_behalf_of="alice@example.com",
                                                                   jti="tok-123")))
    assert (agent.on_behalf_of, agent.jti) == ("alice@example.com", "tok-123")


# --- header shapes -----------------------------------------------------------------------------

@pytest.mark.parametrize("token", [
    "garbage", "a.b.c", "...", "eyJhbGciOiJIUzI1NiJ9", "eyJhbGciOiJIUzI1NiJ9.e30",
    "eyJhbGciOiJIUzI1NiJ9.!!!.abc", b64(b"[1,2]") + ".e30.", b64(b'{"alg": ["HS256"]}') + ".e30.",
    b64(b'{"alg": "HS256", "kid": 5}') + ".e30.", "x" * 20_000,
])
async def test_garbage_tokens(make_auth: MakeAuth, token: str) -> None:
    err = await rejected(make_auth(), token)
    assert err.message in {"malformed token", "algorithm not allowed", "invalid signature"}


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Bearer    "])
async def test_missing_bearer_token(make_auth: MakeAuth, header: str | None) -> None:
    assert (await rejected(make_auth(), header, bearer=False)).message == "missing bearer token"


@pytest.mark.parametrize("scheme", ["Basic", "Token", "JWT", ""])
async def test_non_bearer_scheme(make_auth: MakeAuth, scheme: str) -> None:
    header = f"{scheme} {sign(claims())}".strip()
    assert (await rejected(make_auth(), header, bearer=False)).message == "missing bearer token"


# --- start-up checks ---------------------------------------------------------------------------

def test_short_secret_for_hs512_refused() -> None:
    with pytest.raises(ConfigError, match="at least 64 bytes"):
        Authenticator(AuthSettings(algorithms=("HS512",), secret=Secret("x" * 40)))


def test_unreadable_public_key_file(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        Authenticator(AuthSettings(algorithms=("RS256",), public_key_file=path))


# --- JWKS --------------------------------------------------------------------------------------

def jwk(key: PrivateKey, kid: str | None, alg: str | None = None) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        data = RSAAlgorithm.to_jwk(public, as_dict=True)
    else:
        assert isinstance(public, ec.EllipticCurvePublicKey)
        data = ECAlgorithm.to_jwk(public, as_dict=True)
    data["use"] = "sig"
    if kid:
        data["kid"] = kid
    if alg:
        data["alg"] = alg
    return data


class JwksServer:
    """A real HTTP server in a thread; publish() swaps the key set it serves."""

    def __init__(self) -> None:
        self.body = b'{"keys": []}'
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                body = server.body
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # The gateway hangs up on an oversized key set, as it should.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        self.stopped = False

    def publish(self, *keys: dict[str, Any]) -> None:
        self.body = json.dumps({"keys": list(keys)}).encode()

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(timeout=5)


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.integration
async def test_jwks_kid_rotation_and_rate_limit(make_auth: MakeAuth, jwks_server: JwksServer,
                                                rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey,
                                                ec_key: ec.EllipticCurvePrivateKey) -> None:
    jwks_server.publish(jwk(rsa_key, "k1", "RS256"))
    auth = make_auth(algorithms=("RS256",), jwks_url=jwks_server.url, secret=None)
    assert (await auth.authenticate("Bearer " + sign(claims(), rsa_key, "RS256", kid="k1"))).name == "agent-1"
    assert (await auth.authenticate("Bearer " + sign(claims(jti="2"), rsa_key, "RS256", kid="k1"))).jti == "2"
    assert jwks_server.requests == 1  # the key set is cached

    # The IdP rotates to a new key: the unknown kid makes the gateway refetch at once.
    jwks_server.publish(jwk(rsa_key2, "k2", "RS256"))
    agent = await auth.authenticate("Bearer " + sign(claims(sub="rotated"), rsa_key2, "RS256", kid="k2"))
    assert agent.name == "rotated"
    assert jwks_server.requests == 2

    # Another unknown kid inside the 10 s window: no fetch, even once the IdP would know it.
    assert (await rejected(auth, sign(claims(), rsa_key, "RS256", kid="k3"))).message == "unknown signing key"
    jwks_server.publish(jwk(rsa_key2, "k2", "RS256"), jwk(ec_key, "k3", "ES256"))
    assert (await rejected(auth, sign(claims(), ec_key, "ES256", kid="k3"))).message == "algorithm ES256 not allowed"
    assert (await rejected(auth, sign(claims(), rsa_key, "RS256", kid="k3"))).message == "unknown signing key"
    assert jwks_server.requests == 2


@pytest.mark.integration
async def test_jwks_concurrent_fetches_coalesce(make_auth: MakeAuth, jwks_server: JwksServer,
                                                rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.publish(jwk(rsa_key, "k1"))
    auth = make_auth(algorithms=("RS256",), jwks_url=jwks_server.url, secret=None)
    tokens = [sign(claims(jti=str(i)), rsa_key, "RS256", kid="k1") for i in range(20)]
    agents = await asyncio.gather(*(auth.authenticate("Bearer " + t) for t in tokens))
    assert [a.jti for a in agents] == [str(i) for i in range(20)]
    assert jwks_server.requests == 1


@pytest.mark.integration
async def test_jwks_key_pinned_to_other_alg(make_auth: MakeAuth, jwks_server: JwksServer,
                                            rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.publish(jwk(rsa_key, "k1", "RS512"))
    auth = make_auth(algorithms=("RS256", "RS512"), jwks_url=jwks_server.url, secret=None)
    err = await rejected(auth, sign(claims(), rsa_key, "RS256", kid="k1"))
    assert err.message == "cannot verify token: key does not match algorithm"
    assert (await auth.authenticate("Bearer " + sign(claims(), rsa_key, "RS512", kid="k1"))).name == "agent-1"


@pytest.mark.integration
async def test_jwks_token_without_kid(make_auth: MakeAuth, jwks_server: JwksServer,
                                      rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey) -> None:
    jwks_server.publish(jwk(rsa_key, None))
    auth = make_auth(algorithms=("RS256",), jwks_url=jwks_server.url, secret=None)
    assert (await auth.authenticate("Bearer " + sign(claims(), rsa_key, "RS256"))).name == "agent-1"

    jwks_server.publish(jwk(rsa_key, "a"), jwk(rsa_key2, "b"))
    ambiguous = make_auth(algorithms=("RS256",), jwks_url=jwks_server.url, secret=None)
    assert (await rejected(ambiguous, sign(claims(), rsa_key, "RS256"))).message == "token lacks kid"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_jwks_down_without_cache(make_auth: MakeAuth, rsa_key: rsa.RSAPrivateKey) -> None:
    auth = make_auth(algorithms=("RS256",), jwks_url=f"http://127.0.0.1:{free_port()}/jwks", secret=None)
    for _ in range(2):
        err = await rejected(auth, sign(claims(), rsa_key, "RS256", kid="k1"))
        assert err.message == "cannot verify token: key set unavailable"


@pytest.mark.integration
async def test_jwks_outage_uses_cache_until_ten_lifetimes(make_auth: MakeAuth, jwks_server: JwksServer,
                                                          rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.publish(jwk(rsa_key, "k1"))
    auth = make_auth(algorithms=("RS256",), jwks_url=jwks_server.url, secret=None, jwks_cache_seconds=0.05)
    assert (await auth.authenticate("Bearer " + sign(claims(jti="1"), rsa_key, "RS256", kid="k1")))
    fetched = time.monotonic()
    jwks_server.stop()
    await asyncio.sleep(0.1)  # stale, refetch fails, the cached keys still serve
    assert (await auth.authenticate("Bearer " + sign(claims(jti="2"), rsa_key, "RS256", kid="k1")))
    await asyncio.sleep(max(0.0, fetched + 0.55 - time.monotonic()))  # past 10x the lifetime
    err = await rejected(auth, sign(claims(jti="3"), rsa_key, "RS256", kid="k1"))
    assert err.message == "cannot verify token: key set unavailable"


@pytest.mark.integration
async def test_jwks_oversized_response(make_auth: MakeAuth, jwks_server: JwksServer,
                                       rsa_key: rsa.RSAPrivateKey) -> None:
    jwks_server.body = b'{"keys": [' + b" " * (2 << 20) + json.dumps(jwk(rsa_key, "k1")).encode() + b"]}"
    auth = make_auth(algorithms=("RS256",), jwks_url=jwks_server.url, secret=None)
    err = await rejected(auth, sign(claims(), rsa_key, "RS256", kid="k1"))
    assert err.message == "cannot verify token: key set unavailable"
