"""GET /docs: the operations of the OpenAPI document as one small HTML page, self-contained (no script, no
stylesheet or font from elsewhere: the gateway often runs where nothing outside can be reached)."""

from __future__ import annotations

import re
from html import escape
from typing import Any

_CODE = re.compile(r"`([^`]+)`")

_STYLE = """body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:70rem;padding:0 1rem;color:#222}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #ddd;
vertical-align:top}th:first-child{width:5rem}th:nth-child(2){width:45%}code{font:13px ui-monospace,monospace}
.m{font-weight:600}.p{color:#555;font-size:13px}"""


def _text(markdown: str) -> str:
    """A description's text as HTML: escaped, its `code` spans shown as code (the only markup it uses)."""
    return _CODE.sub(r"<code>\1</code>", escape(markdown))


def render(document: dict[str, Any]) -> str:
    """The page: the document's title and version, a link to it, and per tag a table of its operations."""
    info = document["info"]
    sections = [_section(tag, document["paths"]) for tag in document.get("tags", ())]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(info["title"])} API'
            f'</title><style>{_STYLE}</style></head><body><h1>{escape(info["title"])} API '
            f'<small>{escape(info["version"])}</small></h1><p>{_text(info["description"])}</p>'
            '<p>The whole description, for tools and code generators: <a href="openapi.json"><code>'
            'GET /openapi.json</code></a> (OpenAPI 3.1). Every operation takes '
            '<code>Authorization: Bearer &lt;JWT&gt;</code>.</p>' + "".join(sections) + "</body></html>")


def _section(tag: dict[str, str], paths: dict[str, dict[str, Any]]) -> str:
    rows = []
    for path, methods in paths.items():
        for method, op in methods.items():
            if tag["name"] not in op.get("tags", ()):
                continue
            params = ", ".join(f'{p["name"]} ({p["in"]})' for p in op.get("parameters", ()))
            statuses = " ".join(op.get("responses", {}))
            rows.append(f'<tr><td class="m">{method.upper()}</td><td><code>{escape(path)}</code><div class="p">'
                        f'{escape(params)}</div></td><td>{_text(op["summary"])}<div class="p">'
                        f'<code>{escape(op["operationId"])}</code> · answers {escape(statuses)}</div></td></tr>')
    return (f'<h2>{escape(tag["name"])}</h2><p>{_text(tag["description"])}</p><table><tr><th>method</th>'
            f'<th>path</th><th>what it does</th></tr>{"".join(rows)}</table>')
