"""What each operation answers over HTTP, for the OpenAPI document: its summary, its success (status and body),
and the refusals it can answer beyond those every request can (each in the one error shape).

Keyed by the registry's operation names (core.operations): the document refuses to build for an operation served
over HTTP that has no entry here, so a new operation cannot be left out of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.core import schemas
from gateway.core.schemas import Schema

# Answered by any request through the core, whatever its operation: a bad X-Work-Unit or X-Approval-Id header
# (400), no valid token (401), a revoked agent or token or a policy's refusal (403), too many failed requests
# from the client or a spent budget (429), an audit record that could not be written or a replica that cannot
# show its view of revocations is current (503).
EVERY = (400, 401, 403, 429, 503)

# What each refusal means (SPEC.md's table, with what the operations add).
MEANING = {
    202: "the dataset needs a person's approval: ask again with `X-Approval-Id: <approval_id>` once approved",
    400: "malformed request: body, parameter, header, unknown column, bad operator or value",
    401: "no token, a bad signature, a disallowed algorithm, expired, wrong audience or issuer",
    403: "the policy denies it, the agent or token is revoked, or no such dataset (the same answer, so that "
         "names do not leak)",
    404: "no such endpoint or object (a path parameter that names nothing)",
    413: "the request body is over the size limit",
    429: "the agent's budget is spent, or too many failed requests from this client (`Retry-After` says when)",
    502: "the source failed (its own error text is never passed on)",
    503: "the audit record could not be written (no data is served without one), no valid policy, the "
         "revocations in force could not be shown current, or (a stream of the trail) every stream is taken "
         "(`Retry-After` says when to ask again)",
    504: "the source did not answer in time",
}


@dataclass(frozen=True, slots=True)
class Answer:
    summary: str
    status: int  # the success status
    content: Mapping[str, Schema | None]  # media type -> its schema (None: bytes of any shape); {}: no body
    refusals: tuple[int, ...] = ()  # beyond EVERY (and 413 for a body, 404 for a path with parameters)
    passes_through: bool = False  # the source's own answers reach the agent (the proxy)


def _json(schema: Schema) -> Mapping[str, Schema | None]:
    return {"application/json": schema}


ANSWERS: dict[str, Answer] = {
    "list": Answer("The datasets this agent may read, with their columns", 200, _json(schemas.DATASETS)),
    "describe": Answer("One dataset: description, owner, columns (with class and type), max_rows", 200,
                       _json(schemas.DATASET)),
    "query": Answer("Read rows of a SQL dataset: columns, filters, order, a page at a time", 200,
                    _json(schemas.ROWS), (202, 502, 504)),
    "proxy": Answer("Read through an HTTP dataset: GET its base URL, the dataset's path, then this path", 200,
                    {"*/*": None}, (202, 502, 504), passes_through=True),
    "sql": Answer("One read-only SELECT in which datasets stand as tables (SQL mode)", 200, _json(schemas.ROWS),
                  (502, 504)),
    "list_revocations": Answer("The revocations in force", 200, _json(schemas.REVOCATIONS)),
    "revoke": Answer("Revoke an agent or one token, on every replica at once", 201, _json(schemas.REVOKED)),
    "restore": Answer("Lift a revocation", 204, {}),
    "read_audit": Answer("The audit trail, newest first, a page at a time", 200, _json(schemas.RECORD_PAGE)),
    "audit_verify": Answer("Check the audit trail's hash chain", 200, _json(schemas.VERIFIED)),
    "audit_activity": Answer("Reads over time, by agent", 200, _json(schemas.ACTIVITY)),
    "audit_export": Answer("The audit trail for a SIEM or a spreadsheet (every field, oldest first)", 200,
                           {"application/x-ndjson": {"type": "string"}, "text/csv": {"type": "string"}}),
    "audit_stream": Answer("The audit trail as it is written, for a SIEM: JSON lines (one record a line, oldest "
                           "first, from the id after `after`), an empty line as a heartbeat; long-lived, it ends "
                           "cleanly after [audit] stream_max_seconds (resume with after= the last id); 503 with "
                           "Retry-After when [audit] stream_max streams are open", 200,
                           {"application/x-ndjson": {"type": "string"}}),
    "audit_record": Answer("One audit record", 200, _json(schemas.ONE_RECORD)),
    "list_approvals": Answer("People's approvals of reads, newest first, a page at a time", 200,
                             _json(schemas.APPROVALS_PAGE)),
    "approve": Answer("Approve a pending read", 200, _json(schemas.DECIDED)),
    "deny_approval": Answer("Deny a pending read", 200, _json(schemas.DECIDED)),
}

# The answers' names in the document (its components), by the schema objects themselves.
NAMES: dict[int, str] = {id(schema): name for name, schema in (
    ("DatasetList", schemas.DATASETS), ("Dataset", schemas.DATASET), ("Rows", schemas.ROWS),
    ("RevocationList", schemas.REVOCATIONS), ("Revoked", schemas.REVOKED), ("AuditPage", schemas.RECORD_PAGE),
    ("AuditVerified", schemas.VERIFIED), ("AuditActivity", schemas.ACTIVITY), ("AuditRecordAnswer", schemas.ONE_RECORD),
    ("ApprovalPage", schemas.APPROVALS_PAGE), ("ApprovalDecided", schemas.DECIDED))}
