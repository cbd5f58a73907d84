"""The shipped demo secret may serve this machine only.

The embedded default (agentgate.toml) falls back to a JWT secret printed in this repository, so that
`agentgate serve` runs with nothing to set. Anyone can read that secret and mint a token for any agent, an
admin included: `serve` refuses to listen on an address other machines can reach while it is in force, and
warns on loopback.
"""

from __future__ import annotations

import ipaddress
import socket

from gateway.config import AuthSettings

# The fallback of `[auth] secret` in the shipped agentgate.toml (a test keeps the two the same).
DEMO_JWT_SECRET = "demo-only-secret-change-me-0123456789abcdef"

WARNING = ("agentgate: warning: the JWT secret is the shipped demo one, which anyone can read: fine for trying "
           "agentgate on this machine, never for real data (set AGENTGATE_JWT_SECRET or [auth] secret)")


def uses_demo_secret(auth: AuthSettings) -> bool:
    """Tokens are verified with the demo secret: an HS* algorithm is allowed and the secret is the shipped one."""
    return (auth.secret is not None and auth.secret.reveal() == DEMO_JWT_SECRET
            and any(alg.startswith("HS") for alg in auth.algorithms))


def is_loopback(host: str) -> bool:
    """Whether every address `host` stands for is a loopback one, resolved as the listening socket resolves it
    ("127.1" and "2130706433" are 127.0.0.1; "0" and "" are every interface; a name is looked up, and one that
    does not resolve counts as reachable: fail closed)."""
    if not host.strip():
        return False
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError, ValueError):
        return False
    addresses = {str(info[4][0]).split("%", 1)[0] for info in found}
    return bool(addresses) and all(_loopback(a) for a in addresses)


def _loopback(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 (Python 3.11 does not count it as loopback itself)
    return address.is_loopback


def refusal(auth: AuthSettings, host: str) -> str | None:
    """The one line `serve` exits with when it would listen on `host` with the demo secret; None if it may."""
    if not uses_demo_secret(auth) or is_loopback(host):
        return None
    return (f"agentgate: refusing to listen on {host[:100]!r} with the shipped demo JWT secret, which anyone can "
            "read and mint tokens with: set a real one (AGENTGATE_JWT_SECRET=$(openssl rand -hex 32), or [auth] "
            "secret in the config) or listen on 127.0.0.1")
