"""The security reviewers' page at /admin/: server-rendered HTML, a thin adapter onto the one read path.

Every piece of data shown comes from ``Gateway.handle(ReadRequest(...))`` with the reviewer's
token from the session cookie, ``transport="web"`` and the admin operations (`audit_review` for
the trail's page, `audit_record`, `audit_export`; `read_audit` to sign in). So authentication,
revocations, policy (`admin:audit` `read`) and the audit record apply to every page view
exactly as they do to `/admin/v1/`, one request (one record) per view; nothing here reads the store.

The session is the token itself, held in an HttpOnly, SameSite=Strict cookie scoped to
/admin. It is checked by the core on every request, so an expired or revoked token, or a
policy change, takes effect on the next page view. The token is never logged nor echoed.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import shlex
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.common import tracing
from gateway.common.textsafe import multiline
from gateway.core.admin.review import FILTERS
from gateway.core.pipeline import Gateway
from gateway.core.types import Answer, ReadRequest
from gateway.transports import caller
from gateway.transports.http import exchange, read_body
from gateway.transports.review import chart

COOKIE = "agentgate_review"
COOKIE_PATH = "/admin"
MAX_FORM_BYTES = 16 * 1024
DECISIONS = ("allow", "deny", "pending", "error")
# What a JWT (or any token a cookie can carry unquoted) is made of.
TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]+")


def _shown(value: Any) -> Any:
    """Every value a template prints, with control and format characters as escapes (a bidi override would show
    an agent's name reversed; gateway/common/textsafe.py), its line breaks kept. HTML escaping comes after, as ever."""
    if isinstance(value, str):
        shown = multiline(value)
        return Markup(shown) if isinstance(value, Markup) else shown
    return value


templates = Environment(loader=PackageLoader("gateway.transports.review", "templates"), autoescape=True,
                        finalize=_shown, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _short_time(value: str | None) -> str:
    """2026-01-31T12:00:00.123456Z -> 2026-01-31 12:00:00"""
    if not value:
        return ""
    return value.replace("T", " ")[:19]


def _pretty(value: Any) -> str:
    """A JSON text pretty-printed; anything else as it is."""
    if value is None:
        return ""
    if isinstance(value, str):
        try:
            return json.dumps(json.loads(value), indent=2, ensure_ascii=False, sort_keys=False)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser (a recorded body can be)
            return value
    return str(value)


def _num(value: Any) -> str:
    """1240 -> 1,240; 300.0 -> 300"""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}" if isinstance(value, int | float) else str(value)


templates.filters["short_time"] = _short_time
templates.filters["num"] = _num
# A value shown inside a command to copy (a token id, an agent name): quoted for the shell, so that whatever a
# token carried cannot become a second command when pasted.
templates.filters["shell"] = shlex.quote
templates.filters["pretty"] = _pretty


class Refused(Exception):
    """The core did not answer 200: carries its status, message and request id."""

    def __init__(self, answer: Answer, request_id: str):
        super().__init__(answer.status)
        self.status = answer.status
        error = (answer.payload or {}).get("error") or {}
        self.message = str(error.get("message") or "the gateway refused the request")
        self.code = str(error.get("code") or "")
        self.request_id = str(error.get("request_id") or request_id)


async def _call(request: Request, token: str, operation: str, params: Mapping[str, str]) -> tuple[str, Answer]:
    """One request through the one read path, as the signed-in reviewer, recorded with transport web."""
    gateway: Gateway = request.app.state.gateway
    # The page's X-Request-Id and traceparent are its first call's (a page view may make several).
    ex = exchange(request.scope)
    request_id = ex.call_id()
    who = caller.from_scope(request.scope, request.app.state.proxies)
    answer = await gateway.handle(ReadRequest(request_id=request_id, operation=operation,
                                              authorization=f"Bearer {token}", transport="web",
                                              params=dict(params), client=who.client, user_agent=who.user_agent,
                                              trace_id=who.trace_id, parent_span=who.parent_span,
                                              trace_flags=who.trace_flags))
    ex.answered(answer.headers)
    return request_id, answer


async def _ask(request: Request, token: str, operation: str, params: Mapping[str, str]) -> dict[str, Any]:
    request_id, answer = await _call(request, token, operation, params)
    if answer.status != 200 or answer.payload is None:
        raise Refused(answer, request_id)
    return dict(answer.payload)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    context.setdefault("session", bool(request.cookies.get(COOKIE)))
    html = templates.get_template(name).render(nonce=nonce, **context)
    return HTMLResponse(html, status_code=status, headers={
        "Cache-Control": "no-store",
        "Content-Security-Policy": (f"default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self' data:; "
                                    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
    })


def _sign_in_page(request: Request, *, error: str | None = None, status: int = 200,
                  request_id: str | None = None, notice: str | None = None, next_url: str = "") -> HTMLResponse:
    response = _render(request, "login.html", status, error=error, request_id=request_id, notice=notice,
                       next_url=next_url if _safe_next(next_url) else "", session=False)
    if request.cookies.get(COOKIE):
        _clear(response, request)
    return response


def _error_page(request: Request, exc: Refused) -> HTMLResponse:
    return _render(request, "error.html", exc.status, error_status=exc.status, code=exc.code,
                   message=exc.message, request_id=exc.request_id)


def _refused(request: Request, exc: Refused) -> HTMLResponse:
    if exc.status in (401, 403):
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return _sign_in_page(request, error=exc.message, status=exc.status, request_id=exc.request_id,
                             next_url=here)
    return _error_page(request, exc)


def _clear(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, secure=_secure(request), httponly=True, samesite="strict")


def _same_origin(request: Request) -> bool:
    """A form post must come from this page (belt and braces beside SameSite=Strict)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _safe_next(url: str) -> bool:
    """Where to go after signing in: a page of this site under /admin/, nothing else."""
    return (url.startswith("/admin/") and not url.startswith("/admin/login") and "//" not in url
            and "\\" not in url and not any(ord(ch) < 0x21 for ch in url))


def _filters(query: Mapping[str, str]) -> dict[str, str]:
    return {k: query[k].strip() for k in FILTERS if query.get(k, "").strip()}


def _beside_rule(record: Mapping[str, Any]) -> str | None:
    """A record's reason as the table shows it beside its rule: None when it only repeats the rule."""
    reason, rule = record.get("reason"), record.get("rule")
    if reason and rule and reason in (f"denied by {rule}", f"allowed by {rule}"):
        return None
    return str(reason) if reason else None


templates.filters["beside_rule"] = _beside_rule


Page = Callable[[Request, str], Awaitable[Response]]


def signed_in(page: Page) -> Callable[[Request], Awaitable[Response]]:
    """Run a page with the session's token; no session or a refusal from the core shows the sign-in form."""

    async def endpoint(request: Request) -> Response:
        token = request.cookies.get(COOKIE)
        if not token:
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return _sign_in_page(request, status=401, error="sign in to see this page", next_url=here)
        try:
            return await page(request, token)
        except Refused as exc:
            return _refused(request, exc)

    return endpoint


# --- pages -----------------------------------------------------------------------------------------


@signed_in
async def dashboard(request: Request, token: str) -> Response:
    params = _view_params(request.query_params)
    filters = {k: params[k] for k in FILTERS if k in params}
    # One request through the core for the whole view (the page of records, the counts of the same filter's
    # reads, the chain's check): one audit record per view, naming what was viewed.
    view = await _ask(request, token, "audit_review", params)
    records, summary, verify = view["records"], view["summary"], view["chain"]
    return _render(
        request, "dashboard.html",
        records=records,
        filters=filters,
        decisions=DECISIONS,
        summary=summary,
        timeline=chart.timeline(summary),
        legend=chart.keys(summary["totals"]),
        agents=chart.ranking(summary["agents"], "agents"),
        datasets=chart.ranking(summary["datasets"], "datasets"),
        chain=verify,
        checked=verify.get("checked"),
        pruned=verify.get("pruned"),  # where the trail starts after a prune, or None
        paged=bool({"before", "after", "cursor"} & set(params)),
        **_pager(filters, records, view),
        export_csv=f"/admin/export?{urlencode({'format': 'csv', **filters})}",
        export_jsonl=f"/admin/export?{urlencode({'format': 'jsonl', **filters})}",
        page_size=view["page_size"],
    )


def _view_params(query: Mapping[str, str]) -> dict[str, str]:
    """What the view asks the core for: every parameter with a value (an empty form field is no filter; the core
    answers 400 for one it does not know), the sign-in page's own left out."""
    return {k: v.strip() for k, v in query.items() if v.strip() and k != "signed_out"}


def _pager(filters: Mapping[str, str], records: list[dict[str, Any]], view: Mapping[str, Any]) -> dict[str, Any]:
    """The links to the newest page, the page before (newer) and after (older) this one: keyset by record id,
    each keeping the filters."""
    def url(**paging: str) -> str:
        query = urlencode({**filters, **paging})
        return f"/admin/?{query}" if query else "/admin/"

    return {"newest_url": url(),
            "newer_url": url(after=str(records[0]["id"])) if view.get("newer") and records else None,
            "older_url": url(before=str(records[-1]["id"])) if view.get("older") and records else None}


@signed_in
async def record(request: Request, token: str) -> Response:
    rid = request.path_params["id"]
    answer = await _ask(request, token, "audit_record", {"id": rid})
    rec = answer["record"]
    # Who owns what was read: catalog metadata from the policy in force (no data, nothing to authorise).
    policy = request.app.state.policies.current
    owners = []
    for name in (rec.get("dataset") or "").split(","):
        ds = policy.catalog.get(name) if policy is not None and name else None
        if ds is not None:
            owners.append((ds.name, ds.owner))
    # The chain's last verdict, kept in memory by this process (this view itself was authorised by the core).
    chain = request.app.state.gateway.chain.status()
    trace_id = rec.get("trace_id")  # its trace's other records, by the trail's trace_id filter
    trace_url = f"/admin/?{urlencode({'trace_id': trace_id})}" if trace_id and tracing.is_trace_id(trace_id) else None
    return _render(request, "record.html", record=rec, json_fields=("query", "columns", "masked"),
                   mono_fields=("request_id", "response_sha256", "prev_hash", "hash", "token_id", "trace_id"),
                   owners=owners, chain=chain, checked=None, trace_url=trace_url)


@signed_in
async def export(request: Request, token: str) -> Response:
    fmt = request.query_params.get("format", "csv")
    request_id, answer = await _call(request, token, "audit_export",
                                     {"format": fmt, **_filters(request.query_params)})
    if answer.status != 200 or answer.stream is None:
        raise Refused(answer, request_id)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    filename = f"agentgate-audit-{stamp}.{'csv' if fmt == 'csv' else 'jsonl'}"
    return StreamingResponse(answer.stream, media_type=answer.media_type, headers={
        "Content-Disposition": f'attachment; filename="{filename}"', "X-Request-Id": request_id,
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


async def login(request: Request) -> Response:
    if not _same_origin(request):
        return _sign_in_page(request, error="the sign-in form must be sent from this page", status=403)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body, too_large = await read_body(request, MAX_FORM_BYTES)
    if too_large or content_type != "application/x-www-form-urlencoded":
        return _sign_in_page(request, error="send the sign-in form", status=400)
    form = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    token = (form.get("token") or [""])[0].strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    next_url = (form.get("next") or [""])[0]
    if not token:
        return _sign_in_page(request, error="paste a reviewer token to sign in", status=400, next_url=next_url)
    # A real read through the core: the token must be valid, not revoked, and allowed to read the trail.
    request_id, answer = await _call(request, token, "read_audit", {"limit": "1"})
    if answer.status != 200:
        exc = Refused(answer, request_id)
        if exc.status in (401, 403):
            return _sign_in_page(request, error=exc.message, status=exc.status, request_id=exc.request_id,
                                 next_url=next_url)
        return _error_page(request, exc)
    if not TOKEN_CHARS.fullmatch(token):
        return _sign_in_page(request, error="this token cannot be kept in a session cookie", status=400)
    response = RedirectResponse(next_url if _safe_next(next_url) else "/admin/", status_code=303,
                                headers={"Cache-Control": "no-store"})
    response.set_cookie(COOKIE, token, path=COOKIE_PATH, httponly=True, samesite="strict", secure=_secure(request))
    return response


async def logout(request: Request) -> Response:
    if not _same_origin(request):
        return _sign_in_page(request, error="the sign-out form must be sent from this page", status=403)
    response = RedirectResponse("/admin/?signed_out=1", status_code=303, headers={"Cache-Control": "no-store"})
    _clear(response, request)
    return response


async def index(request: Request) -> Response:
    if not request.cookies.get(COOKIE):
        notice = "You have signed out." if request.query_params.get("signed_out") else None
        return _sign_in_page(request, notice=notice)
    return await dashboard(request)


async def to_index(request: Request) -> Response:
    return RedirectResponse("/admin/", status_code=307)


routes = [
    Route("/admin", to_index, methods=["GET", "HEAD"]),
    Route("/admin/", index, methods=["GET", "HEAD"]),
    Route("/admin/login", login, methods=["POST"]),
    Route("/admin/logout", logout, methods=["POST"]),
    Route("/admin/records/{id}", record, methods=["GET", "HEAD"]),
    Route("/admin/export", export, methods=["GET", "HEAD"]),
]
