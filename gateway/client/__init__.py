"""agentgate's Python client: what an agent imports to read through the gateway (httpx underneath).

    from gateway.client import Client

    with Client("http://127.0.0.1:8080", token, work_unit="TICKET-42") as gate:
        for row in gate.query_all("customers", columns=["id", "name"], where=[["country", "=", "DE"]]):
            ...

It imports nothing of the gateway server (an import-linter contract in pyproject.toml): the server's packages
and their dependencies are not loaded by an agent that only reads. The errors it raises are drawn in
gateway/client/errors.py.
"""

from gateway.client.aio import AsyncClient
from gateway.client.answers import Column, Dataset, Page, ProxyAnswer
from gateway.client.errors import (
    AgentgateError,
    ApprovalPending,
    ApprovalRefused,
    ApprovalTimeout,
    BadRequest,
    BudgetExceeded,
    Forbidden,
    InternalError,
    MethodNotAllowed,
    NotFound,
    ReadLimitReached,
    SourceError,
    SourceTimeout,
    TooLarge,
    Unauthenticated,
    Unavailable,
    Unreachable,
)
from gateway.client.sync import Client

__all__ = [
    "AgentgateError",
    "ApprovalPending",
    "ApprovalRefused",
    "ApprovalTimeout",
    "AsyncClient",
    "BadRequest",
    "BudgetExceeded",
    "Client",
    "Column",
    "Dataset",
    "Forbidden",
    "InternalError",
    "MethodNotAllowed",
    "NotFound",
    "Page",
    "ProxyAnswer",
    "ReadLimitReached",
    "SourceError",
    "SourceTimeout",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "Unreachable",
]
