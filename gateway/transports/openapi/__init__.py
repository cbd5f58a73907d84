"""GET /openapi.json and GET /docs: the agents' API and the admin API described, no token needed.

The document is built from the operation registry and the schemas its parsers state (document.py); /docs lists
its operations (page.py). Both are made once, when the app is built: they describe, they read no policy. Like
/healthz and /metrics they are served outside the read path: no audit record, not in the request metrics.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from gateway.transports.openapi import page
from gateway.transports.openapi.document import document

__all__ = ["document", "routes"]

_PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                 "X-Content-Type-Options": "nosniff"}


def routes(*, sql: bool) -> list[Route]:
    """The two routes, for an app whose SQL mode is on (`sql`) or off."""
    described = document(sql=sql)
    body = json.dumps(described, ensure_ascii=False, separators=(",", ":")).encode()
    html = page.render(described)

    async def openapi_json(request: Request) -> Response:
        return Response(body, media_type="application/json")

    async def docs(request: Request) -> Response:
        return HTMLResponse(html, headers=_PAGE_HEADERS)

    return [Route("/openapi.json", openapi_json, methods=["GET"]), Route("/docs", docs, methods=["GET"])]
