"""The one error hierarchy of the gateway.

Every failure an agent can see is a ``GatewayError`` carrying its HTTP status
and its contract code; lower-level exceptions (JWT, SQLAlchemy, httpx) are
mapped into it at the edge where they happen (``raise ... from exc``). The
transports render all of them through ``error_body`` so there is one JSON
shape for every error.

    GatewayError
    ├── ApprovalPending     202 approval_pending (body carries approval_id at its top level)
    ├── BadRequest          400 bad_request
    ├── Unauthenticated     401 unauthenticated
    ├── Forbidden           403 forbidden
    ├── NotFound            404 not_found        (unknown route, admin ids)
    ├── MethodNotAllowed    405 method_not_allowed
    ├── TooLarge            413 too_large
    ├── BudgetExceeded      429 budget_exceeded
    ├── SourceError         502 source_error
    ├── Unavailable         503 unavailable
    └── SourceTimeout       504 source_timeout

``ConfigError`` is separate: it stops start-up or a reload, never reaches an agent.
"""

from __future__ import annotations

from typing import Any

# One answer for "denied" and "no such dataset" (and "no rows of it are yours"), so dataset names do not leak.
NOT_ALLOWED = "not allowed: the dataset does not exist or this agent may not read it"


class GatewayError(Exception):
    status: int = 500
    code: str = "internal"
    decision: str = "error"

    def __init__(self, message: str, *, reason: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        # What the audit record says; may be more precise than what the agent is told.
        self.reason = reason or message
        self.headers = headers or {}


class ApprovalPending(GatewayError):
    """Not a failure: the read waits for a person. The answer carries the approval's id."""

    status, code, decision = 202, "approval_pending", "pending"

    def __init__(self, message: str, approval_id: str, *, reason: str | None = None):
        super().__init__(message, reason=reason)
        self.approval_id = approval_id


class BadRequest(GatewayError):
    status, code = 400, "bad_request"


class Unauthenticated(GatewayError):
    status, code, decision = 401, "unauthenticated", "deny"


class Forbidden(GatewayError):
    status, code, decision = 403, "forbidden", "deny"


class NotFound(GatewayError):
    status, code = 404, "not_found"


class MethodNotAllowed(GatewayError):
    status, code = 405, "method_not_allowed"


class TooLarge(GatewayError):
    status, code = 413, "too_large"


class BudgetExceeded(GatewayError):
    status, code, decision = 429, "budget_exceeded", "deny"


class SourceError(GatewayError):
    status, code = 502, "source_error"


class Unavailable(GatewayError):
    status, code = 503, "unavailable"


class SourceTimeout(GatewayError):
    status, code = 504, "source_timeout"


class ConfigError(Exception):
    """A fault in agentgate.toml or the policy directory: one line naming file, key and fault."""

    def __init__(self, file: object, key: str | None, fault: str):
        where = f"{file}" + (f": {key}" if key else "")
        super().__init__(f"{where}: {fault}")
        self.file, self.key, self.fault = file, key, fault


def error_body(code: str, message: str, request_id: str, **extra: Any) -> dict[str, Any]:
    """The single JSON shape of every error the gateway answers."""
    return {"error": {"code": code, "message": message, "request_id": request_id, **extra}}
