"""An HTTP API as a source: one pooled client per source, GET only, confined to a dataset's path prefix.

The connector knows nothing of agents, policy or audit. It receives the path an agent asked for
(still percent-encoded, as it arrived) and the raw query string, refuses anything that could leave
the dataset's prefix or the source's host, injects the source's own credentials, and returns the
source's answer with a capped, fully read body.
"""

from __future__ import annotations

import asyncio
import re
import time
import unicodedata
from collections.abc import Mapping
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import quote, unquote

import httpx

from connectors.base import HttpAnswer, InvalidQuery, SourceTimedOut, SourceUnavailable

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
# Never passed back: hop-by-hop headers, cookies, and what no longer fits the (decoded, re-sent) body.
STRIPPED = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                      "te", "trailer", "trailers", "transfer-encoding", "upgrade", "set-cookie", "set-cookie2",
                      "content-length", "content-encoding"})
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"
_QUERY_SAFE = "!$&'()*+,;=:@-._~/?%[]"


class ResponseTooLarge(SourceUnavailable):
    """The source's answer is over the size cap: nothing of it is served."""


def _has_control(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def confine(raw_path: str) -> str:
    """The agent's path (percent-encoded, relative to the dataset's prefix) as canonical segments, or InvalidQuery.

    Refused: `.`/`..` segments in any encoding, encoded or literal backslashes, encoded slashes, empty
    segments (`//host`), a scheme (`http:`), control characters and NUL — so the result always stays under
    the prefix it is appended to. Each segment is checked in every reading an upstream server might make of
    it (see _readings): percent-decoded again, NFKC-normalised, path parameters (`;...`) dropped."""
    if _has_control(raw_path) or "\\" in raw_path or any(ord(ch) > 0x7E for ch in raw_path):
        raise InvalidQuery("the path holds characters a path may not hold")
    if raw_path.startswith("/") or _SCHEME.match(raw_path) or _SCHEME.match(unquote(raw_path)):
        raise InvalidQuery("the path must be relative to the dataset; absolute URLs are refused")
    segments = raw_path.split("/")
    out: list[str] = []
    for i, seg in enumerate(segments):
        if seg == "" and i != len(segments) - 1:
            raise InvalidQuery("empty path segments are refused")
        for form in _readings(seg):
            if _leaves(form):
                raise InvalidQuery("the path may not leave the dataset (dot segments, encoded slashes)")
            if i == 0 and _SCHEME.match(form):
                raise InvalidQuery("the path must be relative to the dataset; absolute URLs are refused")
        out.append(quote(unquote(seg), safe=_SEGMENT_SAFE))
    return "/".join(out)


# Readings of a segment: each round percent-decodes and NFKC-normalises every form found so far (servers do
# either, in either order: `%EF%BC%8E` is a full-width dot once decoded, `.` once normalised). A segment still
# changing after this many rounds is refused as encoded too many times.
_READING_ROUNDS = 8
# Read as separators or dots by some server or platform though NFKC keeps them (division and fraction slashes,
# big solidi, set minus: best-fit code-page mappings; ideographic full stops: IDNA-style dot folding).
_SLASH_LIKE = frozenset("/\\\u2215\u2044\u29f8\u29f9\u2216")
_DOT_LIKE = str.maketrans({"\u3002": ".", "\uff61": "."})


def _readings(segment: str) -> set[str]:
    """`segment` and every form an upstream might turn it into (see _READING_ROUNDS), or InvalidQuery when a
    form is not valid percent-encoded UTF-8 or the forms do not settle."""
    seen = {segment}
    frontier = [segment]
    for _ in range(_READING_ROUNDS):
        found = []
        for form in frontier:
            for other in (unicodedata.normalize("NFKC", form), _decoded(form)):
                if other not in seen:
                    seen.add(other)
                    found.append(other)
        if not found:
            return seen
        frontier = found
    raise InvalidQuery("the path is encoded too many times")


def _decoded(form: str) -> str:
    if "%" not in form:
        return form
    try:
        return unquote(form, errors="strict")
    except UnicodeDecodeError:
        raise InvalidQuery("the path is not valid percent-encoded UTF-8") from None


def _leaves(form: str) -> bool:
    """Whether a reading of a segment could take the path elsewhere: a separator or a control character in it,
    or, once its path parameters are dropped (Tomcat, Jetty and Spring read `..;x` as `..`), a run of dots
    (Windows reads `...` as `..`) or nothing at all (`;x` as an empty segment)."""
    if any(ch in _SLASH_LIKE or unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in form):
        return True
    base = form.split(";", 1)[0].translate(_DOT_LIKE).strip()
    return base.strip(".") == "" if base else ";" in form


def clean_query(raw_query: str) -> str:
    if not raw_query:
        return ""
    if _has_control(raw_query) or " " in raw_query or "#" in raw_query:
        raise InvalidQuery("the query string holds characters a URL may not hold")
    return quote(raw_query, safe=_QUERY_SAFE)


class HttpConnector:
    """One HTTP source: a pooled client, its credentials, its limits."""

    def __init__(self, name: str, base_url: str, *, headers: Mapping[str, str] | None = None,
                 timeout_seconds: float = 10.0, pool_size: int = 10, max_bytes: int = DEFAULT_MAX_BYTES):
        self.name = name
        self.base = httpx.URL(base_url)
        if self.base.scheme not in ("http", "https") or not self.base.host:
            raise ValueError(f"source {name!r}: {base_url!r} is not an http(s) base URL")
        self._base_path = self.base.raw_path.split(b"?", 1)[0].decode("ascii").rstrip("/")
        self.timeout_seconds = timeout_seconds
        self.max_bytes = max_bytes
        self._headers = {k: v for k, v in (headers or {}).items()}
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
            timeout=httpx.Timeout(timeout_seconds), follow_redirects=False, trust_env=False,
            # No cookie jar shared between agents: the source's cookies are never stored or sent.
            cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])))

    def url_for(self, prefix: str, raw_path: str, raw_query: str = "") -> httpx.URL:
        """`{base}{prefix}/{path}?{query}`, the path confined to the prefix (InvalidQuery otherwise)."""
        path = confine(raw_path)
        query = clean_query(raw_query)
        full = f"{self._base_path}/{prefix.strip('/')}/{path}" if prefix.strip("/") else f"{self._base_path}/{path}"
        target = full + (f"?{query}" if query else "")
        return self.base.copy_with(raw_path=target.encode("ascii"), fragment=None)

    async def get(self, prefix: str, raw_path: str, raw_query: str = "", *, accept: str | None = None,
                  traceparent: str | None = None) -> HttpAnswer:
        url = self.url_for(prefix, raw_path, raw_query)
        headers = {"User-Agent": "agentgate"}
        if traceparent:  # made by the gateway (common/tracing.py), never the agent's header as it came
            headers["traceparent"] = traceparent
        if accept:
            # Sent as it came, so it must be what a header may carry: visible ASCII, spaces and tabs. httpx encodes
            # header values as ASCII (a latin-1 `é` failed there, a 500); a control character could split it.
            if not all(" " <= ch <= "~" or ch == "\t" for ch in accept):
                raise InvalidQuery("the Accept header may hold only visible ASCII characters")
            headers["Accept"] = accept
        headers.update(self._headers)  # the source's own credentials; never the agent's
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_seconds):
                return await self._fetch(url, headers, started)
        except TimeoutError as exc:
            raise SourceTimedOut(f"source {self.name!r} did not answer within {self.timeout_seconds:g}s") from exc
        except httpx.TimeoutException as exc:
            raise SourceTimedOut(f"source {self.name!r} did not answer in time ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise SourceUnavailable(f"source {self.name!r} failed: {type(exc).__name__}: {exc}") from exc

    async def _fetch(self, url: httpx.URL, headers: dict[str, str], started: float) -> HttpAnswer:
        request = self._client.build_request("GET", url, headers=headers)
        response = await self._client.send(request, stream=True)
        try:
            declared = response.headers.get("content-length", "")
            # ASCII digits only ('²'.isdigit() is true, int('²') raises), and no int() of 5,000 of them.
            if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > self.max_bytes):
                raise ResponseTooLarge(f"source {self.name!r} answered {declared} bytes, over the "
                                       f"{self.max_bytes}-byte cap")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise ResponseTooLarge(f"source {self.name!r} answered more than {self.max_bytes} bytes")
                chunks.append(chunk)
        finally:
            await response.aclose()
        kept = {k: v for k, v in response.headers.items() if k.lower() not in STRIPPED}
        return HttpAnswer(status=response.status_code, content_type=response.headers.get("content-type"),
                          body=b"".join(chunks), headers=kept,
                          source_ms=(time.perf_counter() - started) * 1000)

    async def close(self) -> None:
        await self._client.aclose()
