"""Who called, for the audit record: the caller's address, its user agent and its W3C trace context (the trace id,
and the agent's span the gateway's span is a child of; core/pipeline.py starts a new trace when there is none).

The address is the TCP peer's. A proxy's X-Forwarded-For is believed only when the peer is one of the
proxies named in ``[server] forwarded_allow_ips`` (as uvicorn's setting of that name, which `serve` turns
off so that this is the one place deciding); anyone else could write any address into that header.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.common.textsafe import cap

# W3C Trace Context: version-traceid-parentid-flags, lowercase hex; version ff is invalid, and version 00
# has nothing after the flags (later versions may add fields, after a dash).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.ASCII | re.DOTALL)
_ZERO_TRACE, _ZERO_PARENT = "0" * 32, "0" * 16
_XFF_MAX_HOPS = 64  # hops of X-Forwarded-For looked at, from the right: headers are bounded, stay bounded here
_SEEN_MAX = 4096  # addresses remembered, parsed and judged

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Caller:
    client: str | None = None
    user_agent: str | None = None
    # Of a valid W3C traceparent (else None): the trace, the agent's span (the gateway's span's parent), flags.
    trace_id: str | None = None
    parent_span: str | None = None
    trace_flags: str | None = None


class TrustedProxies:
    """The proxies whose X-Forwarded-For is believed: addresses or networks, or "*" (every peer)."""

    def __init__(self, entries: Iterable[str] = ()):
        items = list(entries)
        self.everyone = "*" in items
        self._networks: tuple[Network, ...] = tuple(ipaddress.ip_network(e, strict=False) for e in items if e != "*")
        self._seen: dict[str, tuple[str | None, bool]] = {}

    def __bool__(self) -> bool:
        return self.everyone or bool(self._networks)

    def trusts(self, address: Address | None) -> bool:
        if self.everyone:
            return True
        if address is None:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in net for net in self._networks)

    def client(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The caller's address: the peer's, or, when the peer is a trusted proxy, the nearest hop of its
        X-Forwarded-For that is not itself a trusted proxy (each proxy appends the address it saw, so the
        hops to the left of an untrusted one are whatever that caller wrote). With "*" every hop is trusted,
        and the leftmost is taken, as uvicorn does."""
        if not forwarded_for or not self:
            return peer
        if not self.everyone and not (peer and self._hop(peer)[1]):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",")][-_XFF_MAX_HOPS:]
        if self.everyone:
            return self._hop(hops[0])[0] or peer
        found = peer
        for hop in reversed(hops):
            address, trusted = self._hop(hop)
            if address is None:  # not an address: nothing further left can be vouched for
                return found
            found = address
            if not trusted:
                return found
        return found

    def _hop(self, text: str) -> tuple[str | None, bool]:
        """(the address as recorded, or None if it is none; whether it is a trusted proxy), remembered: the same
        few proxies and callers come back, and parsing an address costs a few microseconds."""
        known = self._seen.get(text)
        if known is None:
            address = _address(text)
            known = (str(address), self.trusts(address)) if address is not None else (None, False)
            if len(self._seen) >= _SEEN_MAX:  # bounded, whatever callers write
                self._seen.clear()
            self._seen[text] = known
        return known


def _address(text: str | None) -> Address | None:
    """An IP address, also as written with a port ("10.0.0.1:5000", "[2001:db8::1]:443"); None if it is none."""
    if not text:
        return None
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


_NO_PARENT = (None, None, None)


def trace_parent(traceparent: str | None) -> tuple[str, str, str] | tuple[None, None, None]:
    """(trace-id, parent-id, flags) of a valid W3C traceparent header, else three Nones."""
    if not traceparent or len(traceparent) > 512:
        return _NO_PARENT
    m = _TRACEPARENT.fullmatch(traceparent.strip(" \t"))
    if m is None:
        return _NO_PARENT
    version, trace, parent, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None) or trace == _ZERO_TRACE or parent == _ZERO_PARENT:
        return _NO_PARENT
    return trace, parent, flags


def caller(peer: str | None, proxies: TrustedProxies, *, forwarded_for: str | None, user_agent: str | None,
           traceparent: str | None) -> Caller:
    trace, parent, flags = trace_parent(traceparent)
    return Caller(client=proxies.client(peer, forwarded_for), user_agent=cap(user_agent), trace_id=trace,
                  parent_span=parent, trace_flags=flags)


_CALLER_HEADERS = {b"x-forwarded-for", b"user-agent", b"traceparent"}


def from_scope(scope: Any, proxies: TrustedProxies) -> Caller:
    """The caller of an ASGI HTTP request. Several X-Forwarded-For headers are one list, in order (RFC 9110);
    of the others, the first counts."""
    found: dict[bytes, str] = {}
    forwarded: list[str] = []
    for key, value in scope.get("headers") or ():
        if key in _CALLER_HEADERS:
            if key == b"x-forwarded-for":
                forwarded.append(value.decode("latin-1"))
            elif key not in found:
                found[key] = value.decode("latin-1")
    return caller(peer_of(scope), proxies, forwarded_for=",".join(forwarded) or None,
                  user_agent=found.get(b"user-agent"), traceparent=found.get(b"traceparent"))


def peer_of(scope: Any) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None
