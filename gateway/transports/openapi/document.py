"""The OpenAPI 3.1 document of the agents' API and the admin API, built from the operation registry.

Paths, methods and operation ids are the registry's (core.operations: each operation's HttpRoute); path and
query parameters are those its route declares (the handlers' own declarations, core.admin), a `{name}` being a
dataset's name and `{path:anypath}` the proxied path; request bodies are the JSON Schemas that stand next to
their parsers (core.query, sqlmode.parsing, core.admin.revocations); answers are answers.py's, errors the one
shape of common.errors.error_body with the codes of the error classes. Nothing in it comes from the policy: it
names no dataset, agent or source.
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Any

from gateway.core import operations, schemas
from gateway.core.operations import HttpRoute, Operation
from gateway.core.pipeline import HEADER_MAX
from gateway.core.schemas import Param, Schema
from gateway.policy import NAME_PATTERN
from gateway.transports.openapi.answers import ANSWERS, EVERY, MEANING, NAMES, Answer

_PARAMETER = re.compile(r"\{(\w+)(?::\w+)?\}")
# A path parameter no route declares: a dataset's name, or the proxied path (anything, slashes included).
_PATH_DEFAULTS = {
    "name": Param("name", {"type": "string", "pattern": NAME_PATTERN}, "the dataset's name", at="path"),
    "path": Param("path", {"type": "string"}, "the path under the dataset's, as the source takes it (the query "
                  "string is passed on as it is)", at="path"),
}
# Printable ASCII with no space at either end (HTTP drops it); the core also takes other printable characters.
_TEXT_HEADER: Schema = {"type": "string", "maxLength": HEADER_MAX,
                        "pattern": "^[\\x21-\\x7e]([\\x20-\\x7e]*[\\x21-\\x7e])?$"}
_WORK_UNIT: dict[str, Any] = {
    "name": "X-Work-Unit", "in": "header", "schema": _TEXT_HEADER,
    "description": "the unit of work (a ticket, a document) this read is counted against and recorded under"}
_APPROVAL: dict[str, Any] = {
    "name": "X-Approval-Id", "in": "header", "schema": _TEXT_HEADER,
    "description": "a person's approval (the approval_id of a 202), for datasets that need one"}
_TRACEPARENT: dict[str, Any] = {
    "name": "traceparent", "in": "header", "schema": {"type": "string"},
    "description": "W3C Trace Context (`00-<trace id>-<parent id>-<flags>`): the audit record's trace_id is its "
                   "trace id; one that is not valid is ignored, as the standard asks"}
_HEADERS: dict[str, Any] = {
    "X-Request-Id": {"required": True, "schema": {"type": "string"},
                     "description": "the request's id: its audit record's request_id"},
    "traceparent": {"schema": {"type": "string"}, "description": "W3C Trace Context of the request's trace"},
    "Retry-After": {"schema": {"type": "string"}, "description": "seconds to wait before asking again"},
    "WWW-Authenticate": {"schema": {"type": "string"}, "description": "the bearer scheme (RFC 6750)"},
}


def version() -> str:
    try:
        return metadata.version("agentgate")
    except metadata.PackageNotFoundError:  # run from a source tree never installed
        return "0"


def document(*, sql: bool = True) -> dict[str, Any]:
    """The whole document. `sql`: whether SQL mode is on (`[sql] enabled`); off, /v1/sql is not in it."""
    paths: dict[str, dict[str, Any]] = {}
    named = _Named()
    for op in operations.ALL:
        if op.handler is None or op.http is None or (op.name == "sql" and not sql):
            continue
        answer = ANSWERS[op.name]  # a KeyError here: an operation served over HTTP that answers.py lacks
        paths.setdefault(_PARAMETER.sub(r"{\1}", op.http.path), {})[op.http.method.lower()] = _operation(
            op, op.http, answer, named)
    return {
        "openapi": "3.1.0",
        "info": {"title": "agentgate", "version": version(), "description": _INTRO},
        "tags": [{"name": "agents", "description": "the agents' API: datasets, rows, SQL mode, HTTP datasets"},
                 {"name": "admin", "description": "revocations, the audit trail, approvals (authorised by the "
                                                  "same policy, on admin:* objects)"}],
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "a JWT signed with an allowed algorithm, carrying `sub` and `exp` (and `aud`/`iss` "
                           "where configured); optional `jti` and `on_behalf_of`"}},
            "schemas": named.components, "responses": named.responses, "headers": _HEADERS},
        "security": [{"bearer": []}],
    }


_INTRO = ("A data-access gateway for AI agents: every request is authenticated, decided by policy and written to "
          "an audit trail before it is answered. Every refusal is `{\"error\": {\"code\", \"message\", "
          "\"request_id\"}}`; the request id is also the answer's `X-Request-Id` and the audit record's. A method "
          "a path does not take answers 405 with `Allow`. This document names no dataset: ask `GET /v1/datasets` "
          "with a token.")


class _Named:
    """The document's named schemas (components): the answers (answers.NAMES) and the request bodies, each
    written once and referred to where used."""

    def __init__(self) -> None:
        self.components: dict[str, Schema] = {}
        self.responses: dict[str, Any] = {}

    def ref(self, schema: Schema, name: str | None = None) -> Schema:
        name = name or NAMES.get(id(schema))
        if name is None:
            return schema
        self.components[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}

    def refusal(self, status: int) -> dict[str, str]:
        """A refusal's answer, named by its code(s): written once, referred to by every operation."""
        codes = schemas.error_codes()[status]
        name = "_or_".join(codes)
        headers = _headers("X-Request-Id", "traceparent", *_MORE_HEADERS.get(status, ()))
        self.responses[name] = {"description": MEANING[status], "headers": headers, "content": {
            "application/json": {"schema": schemas.error(codes, approval=status == 202)}}}
        return {"$ref": f"#/components/responses/{name}"}


def _operation(op: Operation, http: HttpRoute, answer: Answer, named: _Named) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.name, "summary": answer.summary,
                           "tags": ["admin" if http.path.startswith("/admin/") else "agents"],
                           "parameters": _parameters(op, http)}
    if op.body is not None:
        body = dict(op.body)
        required = bool(body.get("required") or body.get("minProperties"))
        schema = named.ref(body, "".join(part.title() for part in op.name.split("_")) + "Body")
        out["requestBody"] = {"required": required, "content": {"application/json": {"schema": schema}}}
    out["responses"] = _responses(op, http, answer, named)
    return out


def _parameters(op: Operation, http: HttpRoute) -> list[dict[str, Any]]:
    declared = {p.name: p for p in http.params}
    path = [declared.get(name) or _PATH_DEFAULTS.get(name) or Param(name, {"type": "string"}, name, at="path")
            for name in _PARAMETER.findall(http.path)]
    out = [{"name": p.name, "in": "path", "required": True, "schema": p.schema, "description": p.description}
           for p in path]
    out += [{"name": p.name, "in": "query", "required": False, "schema": p.schema, "description": p.description}
            for p in http.params if p.at == "query"]
    if http.path.startswith("/v1/"):
        out.append(_WORK_UNIT)
        if op.action == "read":  # a read of rows or bytes: the one an approval is for
            out.append(_APPROVAL)
    out.append(_TRACEPARENT)
    return out


def _responses(op: Operation, http: HttpRoute, answer: Answer, named: _Named) -> dict[str, Any]:
    success: dict[str, Any] = {"description": answer.summary, "headers": _headers("X-Request-Id", "traceparent")}
    if answer.content:
        success["content"] = {media: ({"schema": named.ref(schema)} if schema is not None else {})
                              for media, schema in answer.content.items()}
    out: dict[str, Any] = {str(answer.status): success}
    refusals = set(EVERY) | set(answer.refusals)
    if http.method in _WITH_BODY:  # its body is read, whatever the operation does with it (transports/data.py)
        refusals.add(413)
    if _PARAMETER.search(http.path):
        refusals.add(404)
    for status in sorted(refusals):
        out[str(status)] = named.refusal(status)
    if answer.passes_through:
        # The source's own 4xx answers keep their status (all but 401 and 407, the gateway's credentials refused:
        # 502), so a refusal documented here may also be the source's answer, in the source's content type.
        for code, ref in list(out.items()):
            if code.startswith("4") and code != "401":
                own = named.responses[ref["$ref"].rsplit("/", 1)[1]]
                out[code] = {**own, "description": f"{own['description']}; or the source's own answer",
                               "content": {**own["content"], "*/*": {}}}
        out["default"] = {"description": "the source's own answer, passed through (status, body, content type)",
                          "headers": _headers("X-Request-Id"), "content": {"*/*": {}}}
    return out


_MORE_HEADERS = {401: ("WWW-Authenticate",), 429: ("Retry-After",)}
_WITH_BODY = ("POST", "PUT", "PATCH")


def _headers(*names: str) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}
