"""What requests and answers look like, as JSON Schema (draft 2020-12, OpenAPI 3.1's) data: query parameters
(`Param`, declared by the handlers that read them), the one error shape, and each operation's success answer.

The request bodies' schemas live next to their parsers (core.query, sqlmode.parsing, core.admin.revocations),
built from the parsers' own limits; the registry (core.operations) names each operation's body and parameters;
transports/openapi/ turns all of it into the OpenAPI document. The answers here are the handlers' payloads
(core.reads, core.sqlread, core.admin) written out once; a live `serve` is checked against them
(tests/test_openapi.py, schemathesis), so they cannot quietly drift from what the handlers build.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from gateway.audit import FIELD_ORDER, AuditRecord
from gateway.common import errors
from gateway.policy import APPROVALS
from gateway.services.approvals import STATUSES
from gateway.services.revocations import KINDS

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
TEXT: Schema = {"type": "string", "pattern": "^[^\\u0000]*$"}  # no NUL: no store holds one
TIME: Schema = {"type": "string", "format": "date-time"}


def maybe(schema: Schema) -> Schema:
    """`schema`, or null (JSON Schema 2020-12: a list of types)."""
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def whole(low: int, high: int | None = None) -> Schema:
    """A whole number from `low` (to `high`): what common.inputs.whole reads from a query string."""
    return {"type": "integer", "minimum": low, **({"maximum": high} if high is not None else {})}


@dataclass(frozen=True, slots=True)
class Param:
    """A parameter an operation reads from its path or its query string, as its handler checks it."""

    name: str
    schema: Schema
    description: str
    at: Literal["query", "path"] = "query"


# --- errors --------------------------------------------------------------------------------------------------

def error_codes() -> dict[int, tuple[str, ...]]:
    """Each status a refusal answers with, and the codes it carries, from the error classes of common.errors (the
    one subclass elsewhere, store.StoreLost, keeps its parent's); GatewayError itself is 500 `internal`, a fault
    of the gateway's, still answered in the one shape."""
    found: dict[int, set[str]] = {}
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.GatewayError):
            found.setdefault(cls.status, set()).add(cls.code)
    return {status: tuple(sorted(codes)) for status, codes in sorted(found.items())}


def error(codes: tuple[str, ...] | None = None, *, approval: bool = False) -> Schema:
    """common.errors.error_body's shape; `approval`: the 202's, whose id is also at the top level."""
    code: Schema = {"type": "string", "enum": list(codes)} if codes else STRING
    inner: Schema = {"type": "object", "required": ["code", "message", "request_id"], "properties": {
        "code": code, "message": STRING, "request_id": STRING}}
    if not approval:
        return {"type": "object", "required": ["error"], "properties": {"error": inner}}
    approval_id: Schema = {"type": "string", "description": "ask again with it as X-Approval-Id once approved"}
    inner["required"] = [*inner["required"], "approval_id"]
    inner["properties"]["approval_id"] = approval_id
    return {"type": "object", "required": ["error", "approval_id"],
            "properties": {"error": inner, "approval_id": approval_id}}


# --- the data operations' answers (core.reads, core.sqlread) ---------------------------------------------------

# A value as a source gives it: JSON numbers, text (decimals, dates and times too), booleans, null; a whole-row
# reference in SQL mode is the list of its fields.
VALUE: Schema = {"type": ["string", "number", "boolean", "null", "array"]}

DATASET: Schema = {"type": "object", "required": ["name", "description", "owner", "columns", "max_rows", "approval"],
                   "properties": {
                       "name": STRING, "description": STRING, "owner": STRING,
                       "columns": {"type": "array", "items": {
                           "type": "object", "required": ["name", "class", "type"],
                           "properties": {"name": STRING,
                                          "class": maybe({"type": "string", "description": "its class (pii, ...)"}),
                                          "type": maybe({"type": "string", "description": "the source's type"})}}},
                       "max_rows": whole(1), "approval": {"type": "string", "enum": list(APPROVALS)}}}
DATASETS: Schema = {"type": "object", "required": ["datasets"],
                    "properties": {"datasets": {"type": "array", "items": DATASET}}}
ROWS: Schema = {"type": "object", "required": ["dataset", "columns", "rows", "masked", "next_cursor"],
                "properties": {
                    "dataset": maybe({"type": "string", "description": "SQL mode: the datasets read, comma-separated"}),
                    "columns": {"type": "array", "items": STRING},
                    "rows": {"type": "array", "items": {"type": "object", "additionalProperties": VALUE}},
                    "masked": {"type": "array", "items": STRING,
                               "description": "columns this agent may not see: null in every row"},
                    "next_cursor": maybe({"type": "string", "description": "the next page: the same body with it"})}}

# --- the admin operations' answers (core.admin) ----------------------------------------------------------------

REVOCATION: Schema = {"type": "object", "required": ["id", "kind", "reason", "created_by", "created_at"],
                      "properties": {"id": whole(1), "kind": {"type": "string", "enum": list(KINDS)},
                                     "agent": STRING, "jti": STRING, "reason": maybe(STRING),
                                     "created_by": STRING, "created_at": STRING}}
REVOCATIONS: Schema = {"type": "object", "required": ["revocations"],
                       "properties": {"revocations": {"type": "array", "items": REVOCATION}}}
REVOKED: Schema = {"type": "object", "required": ["id", "already_revoked", "created_at"],
                   "properties": {"id": whole(1), "already_revoked": {"type": "boolean"}, "created_at": STRING}}
APPROVAL: Schema = {"type": "object", "required": ["id", "agent", "dataset", "status", "requested_at"],
                    "properties": {
                        "id": STRING, "agent": STRING, "dataset": STRING, "owner": maybe(STRING),
                        "requested_at": STRING, "status": {"type": "string", "enum": [*STATUSES, "expired"]},
                        "decided_by": maybe(STRING), "decided_at": maybe(STRING), "expires_at": maybe(STRING),
                        "query": maybe(STRING), "on_behalf_of": maybe(STRING), "body_sha256": maybe(STRING),
                        "decided_os_user": maybe(STRING)}}
APPROVALS_PAGE: Schema = {"type": "object", "required": ["approvals", "next"], "properties": {
    "approvals": {"type": "array", "items": APPROVAL},
    "next": maybe({"type": "string", "description": "the next page: pass it as `before`"})}}
DECIDED: Schema = {"type": "object", "required": ["approval"], "properties": {"approval": APPROVAL}}

_KINDS_OF_FIELD = {"int": "integer", "float": "number", "str": "string", "dt.datetime": "string"}


def _record() -> Schema:
    """An audit record (AuditRecord.to_dict): every field, in the contract's order, typed from the dataclass."""
    types = {field.name: str(field.type) for field in dataclasses.fields(AuditRecord)}
    properties: Schema = {}
    for name in FIELD_ORDER:
        kinds = [_KINDS_OF_FIELD[part.strip()] if part.strip() != "None" else "null" for part in types[name].split("|")]
        properties[name] = {"type": kinds if len(kinds) > 1 else kinds[0]}
    return {"type": "object", "required": list(properties), "properties": properties}


RECORD: Schema = _record()
RECORD_PAGE: Schema = {"type": "object", "required": ["records", "next_cursor"], "properties": {
    "records": {"type": "array", "items": RECORD},
    "next_cursor": maybe({"type": "string", "description": "the next (older) page: pass it as `cursor`"})}}
ONE_RECORD: Schema = {"type": "object", "required": ["record"], "properties": {"record": RECORD}}
VERIFIED: Schema = {"type": "object", "required": ["ok", "count", "checkpoints", "bad_id", "problem", "incremental"],
                    "properties": {"ok": {"type": "boolean"}, "count": whole(0), "checkpoints": whole(0),
                                   "bad_id": maybe(whole(0)), "problem": maybe(STRING),
                                   "incremental": {"type": "boolean"}, "full_check_at": maybe(STRING),
                                   "checked": {"type": "object"}, "pruned": maybe({"type": "object"})}}
ACTIVITY: Schema = {"type": "object", "required": ["since", "until", "bucket_seconds", "series", "refused"],
                    "properties": {
                        "since": STRING, "until": STRING, "bucket_seconds": {"type": "number"},
                        "series": {"type": "object", "additionalProperties": {"type": "array", "items": whole(0)},
                                   "description": "reads per time bucket, by agent"},
                        "refused": {"type": "array", "items": whole(0)}}}
