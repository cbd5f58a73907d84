"""Every refusal the gateway answers, as an exception of its own; the client raises nothing else.

Each carries the answer's HTTP status, the contract's error code, the gateway's message and the request id:
the audit record of the failed request has that `request_id`, so an agent can log which record its failure is.

    AgentgateError              status, code, message, request_id, retry_after, body
    ├── ApprovalPending     202 approval_pending     .approval_id
    │   └── ApprovalTimeout     a bounded wait ended with the approval still pending
    ├── BadRequest          400 bad_request
    ├── Unauthenticated     401 unauthenticated
    ├── Forbidden           403 forbidden
    │   └── ApprovalRefused     403 to a read carrying an approval id: denied, expired or not for this request
    ├── NotFound            404 not_found
    ├── MethodNotAllowed    405 method_not_allowed
    ├── TooLarge            413 too_large
    ├── BudgetExceeded      429 budget_exceeded      .retry_after (seconds)
    ├── InternalError       500 internal
    ├── SourceError         502 source_error
    ├── Unavailable         503 unavailable          .retry_after when the gateway sets it
    ├── SourceTimeout       504 source_timeout
    ├── Unreachable           no answer: connection refused or reset, or the client's own timeout (status 0)
    └── ReadLimitReached      query_all's guard stopped a read with rows left (status 0; .next_cursor resumes)

A code this client does not know maps to AgentgateError itself; an answer without agentgate's error body
(a proxy in front of the gateway) maps by its status.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class AgentgateError(Exception):
    status: int = 0
    code: str = "error"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 request_id: str | None = None, retry_after: float | None = None,
                 body: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.status = type(self).status if status is None else status
        self.code = type(self).code if code is None else code
        self.request_id = request_id
        self.retry_after = retry_after
        self.body: Mapping[str, Any] = body or {}

    def __str__(self) -> str:
        where = f", request {self.request_id}" if self.request_id else ""
        return f"{self.code} ({self.status}{where}): {self.message}"


class ApprovalPending(AgentgateError):
    """Not a failure: the read waits for a person. Ask again with `approval_id=` once it is approved."""

    status, code = 202, "approval_pending"

    def __init__(self, message: str, *, approval_id: str = "", **answer: Any):
        super().__init__(message, **answer)
        self.approval_id = approval_id or str(self.body.get("approval_id") or "")


class ApprovalTimeout(ApprovalPending):
    """The client waited as long as it was told to; the approval is still pending (its id still serves)."""


class BadRequest(AgentgateError):
    status, code = 400, "bad_request"


class Unauthenticated(AgentgateError):
    status, code = 401, "unauthenticated"


class Forbidden(AgentgateError):
    status, code = 403, "forbidden"


class ApprovalRefused(Forbidden):
    """A read with an approval id was refused: the approval was denied, has expired or covers another request,
    or the agent may no longer read the dataset. The gateway's message says which."""

    def __init__(self, message: str, *, approval_id: str = "", **answer: Any):
        super().__init__(message, **answer)
        self.approval_id = approval_id


class NotFound(AgentgateError):
    status, code = 404, "not_found"


class MethodNotAllowed(AgentgateError):
    status, code = 405, "method_not_allowed"


class TooLarge(AgentgateError):
    status, code = 413, "too_large"


class BudgetExceeded(AgentgateError):
    status, code = 429, "budget_exceeded"


class InternalError(AgentgateError):
    status, code = 500, "internal"


class SourceError(AgentgateError):
    status, code = 502, "source_error"


class Unavailable(AgentgateError):
    status, code = 503, "unavailable"


class SourceTimeout(AgentgateError):
    status, code = 504, "source_timeout"


class Unreachable(AgentgateError):
    code = "unreachable"


class ReadLimitReached(AgentgateError):
    """More rows remain than query_all was allowed to read: resume with `cursor=next_cursor` if you mean to."""

    code = "read_limit_reached"

    def __init__(self, message: str, *, next_cursor: str, pages: int, rows: int):
        super().__init__(message)
        self.next_cursor, self.pages, self.rows = next_cursor, pages, rows


_ANSWERED: tuple[type[AgentgateError], ...] = (
    ApprovalPending, BadRequest, Unauthenticated, Forbidden, NotFound, MethodNotAllowed, TooLarge, BudgetExceeded,
    InternalError, SourceError, Unavailable, SourceTimeout)
_BY_CODE = {cls.code: cls for cls in _ANSWERED}
_BY_STATUS = {cls.status: cls for cls in _ANSWERED}


def error_from(status: int, body: Any, headers: Mapping[str, str]) -> AgentgateError:
    """The exception for an answer that is not what was asked for: by its error code, else by its status."""
    request_id = headers.get("x-request-id")
    retry_after = _seconds(headers.get("retry-after"))
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        cls = _BY_CODE.get(error["code"], AgentgateError)
        return cls(str(error.get("message") or ""), status=status, code=error["code"],
                   request_id=str(error.get("request_id") or request_id or "") or None, retry_after=retry_after,
                   body=body)
    cls = _BY_STATUS.get(status, AgentgateError)
    code = cls.code if cls is not AgentgateError else f"http_{status}"
    return cls(f"HTTP {status} without agentgate's error body", status=status, code=code, request_id=request_id,
               retry_after=retry_after, body=body if isinstance(body, dict) else None)


def _seconds(value: str | None) -> float | None:
    """Retry-After in seconds (the gateway sends whole seconds; an HTTP date is not worth a guess)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None
