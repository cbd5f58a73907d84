"""Authorization header -> verified ``Agent``.

Fails closed: every fault, whatever raised it, leaves here as ``Unauthenticated``
with a short message that names the fault but never a key or a secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.types import Options

from gateway.common import inputs
from gateway.common.errors import ConfigError, Unauthenticated
from gateway.config import AuthSettings

log = logging.getLogger(__name__)

CACHE_MAX_ENTRIES = 10_000
MAX_TOKEN_CHARS = 16_384  # far above any real JWT; bounds what the cache can be made to hold
JWKS_MIN_REFETCH_SECONDS = 10.0
JWKS_TIMEOUT_SECONDS = 5.0
JWKS_MAX_BYTES = 1 << 20
JWKS_STALE_FACTOR = 10

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
_Jwk = tuple[str | None, PublicKey]  # (the alg the key set pins the key to, the key)

# Which key type may verify which algorithm family; asymmetric only, HS* never reaches a public key.
_KEY_TYPES: dict[str, tuple[type[Any], ...]] = {
    "RS": (rsa.RSAPublicKey,),
    "PS": (rsa.RSAPublicKey,),
    "ES": (ec.EllipticCurvePublicKey,),
    "Ed": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey),
}
_PUBLIC_KEY_TYPES = (rsa.RSAPublicKey, ec.EllipticCurvePublicKey,
                     ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)
_HS_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 §3.2: at least the hash size
_SHOWABLE_ALG = re.compile(r"[A-Za-z0-9]{1,16}")

# Most specific first: InvalidSignatureError is a DecodeError.
_MESSAGES: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidSignatureError, "invalid signature"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.exceptions.InvalidSubjectError, "token lacks sub"),
    (jwt.exceptions.InvalidJTIError, "invalid jti"),
    (jwt.InvalidAlgorithmError, "algorithm not allowed"),
    (jwt.InvalidKeyError, "cannot verify token: unusable key"),
    (TypeError, "cannot verify token: unusable key"),
)


@dataclass(frozen=True, slots=True)
class Agent:
    name: str
    on_behalf_of: str | None
    jti: str | None
    claims: Mapping[str, Any]
    expires_at: float


class Authenticator:
    def __init__(self, settings: AuthSettings, *, http_client: httpx.AsyncClient | None = None) -> None:
        self._settings = settings
        # One prebuilt list per allowed alg: the allow-list check and jwt.decode's argument in one lookup.
        self._algorithms = {alg: [alg] for alg in settings.algorithms if alg.lower() != "none"}
        self._secret = settings.secret.reveal().encode() if settings.secret is not None else None
        for alg, need in _HS_MIN_BYTES.items():
            # PyJWT only warns on a short HMAC key; refuse at start-up rather than accept weak tokens.
            if alg in self._algorithms and self._secret is not None and len(self._secret) < need:
                raise ConfigError("[auth]", "auth.secret", f"must be at least {need} bytes long for {alg}")
        path = settings.public_key_file
        self._public_key = _load_public_key(path) if path is not None else None
        self._options: Options = {"require": ["exp", "sub"], "enforce_minimum_key_length": True}
        self._cache: dict[str, tuple[float, Agent]] = {}
        self._jwks_url = settings.jwks_url
        self._owns_client = http_client is None and self._jwks_url is not None
        if http_client is None and self._jwks_url is not None:
            http_client = httpx.AsyncClient(timeout=JWKS_TIMEOUT_SECONDS, follow_redirects=False)
        self._client = http_client
        self._jwks_by_kid: dict[str, _Jwk] = {}
        self._jwks_single: _Jwk | None = None
        self._jwks_at = -math.inf
        self._last_rotation = -math.inf
        self._last_failure = -math.inf
        self._fetches = 0
        self._lock = asyncio.Lock()

    async def aclose(self) -> None:
        if self._owns_client and self._client is not None:
            await self._client.aclose()

    async def authenticate(self, authorization: str | None) -> Agent:
        if not authorization:
            raise Unauthenticated("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("missing bearer token")
        hit = self._cache.get(token)
        if hit is not None:
            if time.time() < hit[0]:
                return hit[1]
            self._cache.pop(token, None)
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthenticated("malformed token")
        return await self._verify(token)

    async def _verify(self, token: str) -> Agent:
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise Unauthenticated("malformed token") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or (algorithms := self._algorithms.get(alg)) is None:
            shown = f" {alg}" if isinstance(alg, str) and _SHOWABLE_ALG.fullmatch(alg) else ""
            raise Unauthenticated(f"algorithm{shown} not allowed")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("malformed token")
        key: bytes | PublicKey
        if alg.startswith("HS"):
            if self._secret is None:
                raise Unauthenticated("cannot verify token: no secret configured")
            key = self._secret
        else:
            key = await self._public_key_for(alg, kid)
        s = self._settings
        try:
            claims = jwt.decode(token, key, algorithms=algorithms, options=self._options,
                                audience=s.audience, issuer=s.issuer, leeway=s.leeway_seconds)
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token lacks {exc.claim}") from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            message = next((m for kind, m in _MESSAGES if isinstance(exc, kind)), "malformed token")
            raise Unauthenticated(message) from exc
        return self._agent(token, claims)

    def _agent(self, token: str, claims: dict[str, Any]) -> Agent:
        sub, exp, nbf, iat = claims["sub"], claims["exp"], claims.get("nbf"), claims.get("iat")
        if not isinstance(sub, str) or not sub:
            raise Unauthenticated("token lacks sub")
        # PyJWT coerces NumericDates with int(), so "123" or true would pass it; only real numbers do here.
        if not all(t is None or _is_number(t) for t in (nbf, iat)) or not _is_number(exp):
            raise Unauthenticated("malformed token")
        obo, jti = claims.get("on_behalf_of"), claims.get("jti")
        if "on_behalf_of" in claims and (not isinstance(obo, str) or not obo):
            raise Unauthenticated("invalid on_behalf_of")
        if jti == "":
            raise Unauthenticated("invalid jti")
        # A NUL or a lone surrogate ("\u0000", "\ud800" in the claims' JSON) is in no agent's name: no store holds
        # it (the trail would keep U+FFFD, another name), so no revocation nor filter could name it.
        for claim, value in (("sub", sub), ("on_behalf_of", obo), ("jti", jti)):
            if isinstance(value, str) and not inputs.holdable(value):
                raise Unauthenticated(f"invalid {claim}")
        agent = Agent(name=sub, on_behalf_of=obo, jti=jti, claims=MappingProxyType(claims),
                      expires_at=float(exp))
        # Cache only answers time cannot change before exp; int() matches PyJWT's own exp/nbf reading,
        # and the deadline ignores leeway so a cached answer never outlives the token.
        now, deadline = time.time(), float(int(exp))
        if deadline > now and (nbf is None or int(nbf) <= now) and (iat is None or int(iat) <= now):
            cache = self._cache
            if len(cache) >= CACHE_MAX_ENTRIES:
                del cache[next(iter(cache))]
            cache[token] = (deadline, agent)
        return agent

    async def _public_key_for(self, alg: str, kid: str | None) -> PublicKey:
        kinds = _KEY_TYPES.get(alg[:2])
        if kinds is None:
            raise Unauthenticated(f"algorithm {alg} not allowed")
        pinned: str | None = None
        if self._jwks_url is not None and (kid is not None or self._public_key is None):
            pinned, key = await self._jwks_key(kid)
        elif self._public_key is not None:
            key = self._public_key
        else:
            raise Unauthenticated("cannot verify token: no public key configured")
        if not _fits(key, kinds) or (pinned is not None and pinned != alg):
            raise Unauthenticated("cannot verify token: key does not match algorithm")
        return key

    async def _jwks_key(self, kid: str | None) -> _Jwk:
        fetches = self._fetches
        if time.monotonic() - self._jwks_at >= self._settings.jwks_cache_seconds:
            await self._refresh(fetches, rotation=False)
        entry = self._find(kid)
        # A fetch since this request began is as fresh as a rotation refetch would be.
        if entry is None and kid is not None and self._fetches == fetches:
            await self._refresh(fetches, rotation=True)
            entry = self._find(kid)
        if entry is not None:
            return entry
        if not self._usable():
            raise Unauthenticated("cannot verify token: key set unavailable")
        raise Unauthenticated("unknown signing key" if kid is not None else "token lacks kid")

    def _usable(self) -> bool:
        # A failing IdP must not stop the gateway at once, but keys are not trusted forever either.
        age = time.monotonic() - self._jwks_at
        return age < self._settings.jwks_cache_seconds * JWKS_STALE_FACTOR

    def _find(self, kid: str | None) -> _Jwk | None:
        if not self._usable():
            return None
        return self._jwks_single if kid is None else self._jwks_by_kid.get(kid)

    async def _refresh(self, seen: int, *, rotation: bool) -> None:
        """``seen``: the fetch count when the request began, so a fetch that ended since then suffices."""
        async with self._lock:
            if self._fetches != seen:
                return
            now = time.monotonic()
            # Unknown kids are attacker-chosen, and a down IdP should not be retried per request.
            if now - self._last_failure < JWKS_MIN_REFETCH_SECONDS:
                return
            if rotation:
                if now - self._last_rotation < JWKS_MIN_REFETCH_SECONDS:
                    return
                self._last_rotation = now
            try:
                by_kid, keys = _parse_jwks(await self._download())
            except (httpx.HTTPError, jwt.PyJWTError, ValueError, TypeError, TimeoutError, RecursionError) as exc:
                self._last_failure = time.monotonic()
                self._fetches += 1
                log.warning("cannot fetch JWKS from %s: %s", self._jwks_url, type(exc).__name__)
                return
            # Counted only once an attempt is over (a cancelled one is not): whoever queued behind
            # it then takes its result instead of fetching again.
            self._jwks_by_kid, self._jwks_single = by_kid, keys[0] if len(keys) == 1 else None
            self._jwks_at = time.monotonic()
            self._fetches += 1

    async def _download(self) -> bytes:
        if self._client is None or self._jwks_url is None:
            raise ValueError("no JWKS configured")
        body = bytearray()
        # httpx timeouts are per socket operation; asyncio.timeout bounds a slow drip as a whole.
        # Ask for identity encoding so the bound is on what is parsed; a server that compresses anyway
        # still works, decoded chunk by chunk.
        async with (asyncio.timeout(JWKS_TIMEOUT_SECONDS),
                    self._client.stream("GET", self._jwks_url, timeout=JWKS_TIMEOUT_SECONDS,
                                        headers={"Accept": "application/json",
                                                 "Accept-Encoding": "identity"}) as resp):
            resp.raise_for_status()
            if int(resp.headers.get("content-length") or 0) > JWKS_MAX_BYTES:
                raise ValueError("JWKS response too large")
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > JWKS_MAX_BYTES:
                    raise ValueError("JWKS response too large")
        return bytes(body)


def _parse_jwks(body: bytes) -> tuple[dict[str, _Jwk], list[_Jwk]]:
    doc = json.loads(body)
    raw_keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(raw_keys, list):
        raise ValueError("not a JWK set")
    by_kid: dict[str, _Jwk] = {}
    keys: list[_Jwk] = []
    for raw in raw_keys:
        if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(raw).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue  # as PyJWKSet does: one key we cannot use must not sink the whole set
        # Symmetric or private JWKs in a public key set are a misconfiguration, never a verification key.
        if not isinstance(key, _PUBLIC_KEY_TYPES):
            continue
        pinned, kid = raw.get("alg"), raw.get("kid")
        entry: _Jwk = (pinned if isinstance(pinned, str) else None, key)
        keys.append(entry)
        if isinstance(kid, str):
            by_kid[kid] = entry
    if not keys:
        raise ValueError("JWKS has no usable signing keys")
    return by_kid, keys


def _fits(key: PublicKey, kinds: tuple[type[Any], ...]) -> bool:
    return isinstance(key, kinds)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _load_public_key(path: Path) -> PublicKey:
    try:
        data = path.read_bytes()
        if b"-----BEGIN CERTIFICATE-----" in data:
            key: object = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = load_pem_public_key(data)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(path, "auth.public_key_file", "not a PEM public key or certificate") from exc
    if not isinstance(key, _PUBLIC_KEY_TYPES):
        raise ConfigError(path, "auth.public_key_file", "not an RSA, EC or Ed25519/Ed448 public key")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise ConfigError(path, "auth.public_key_file", "RSA keys must be at least 2048 bits")
    return key
