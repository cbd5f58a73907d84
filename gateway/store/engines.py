"""Which kind a store is: the engine made for its URL, and the backend that speaks its dialect.

SQLite by default, PostgreSQL for production and replicas. The choice is made here once, from the URL (the
engine) or from the engine's dialect (the backend); everything that differs between the kinds lives in their
backends (gateway/store/backend.py).
"""

from __future__ import annotations

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.store.backend import StoreBackend
from gateway.store.postgresql import POSTGRESQL
from gateway.store.sqlite import SQLITE


def make_store_engine(url: str, *, wait_seconds: float | None = None) -> AsyncEngine:
    """The store's engine. `wait_seconds`: the longest a use of the store waits to begin: for a connection of
    the pool, for a new connection, and on SQLite for the write lock. The gateway passes [audit]
    write_timeout_seconds, so that no request waits on the store longer than its audit record may take; the
    commands keep the defaults (PostgreSQL 5 s, SQLite 10 s)."""
    parsed = make_url(url)
    kind: StoreBackend = SQLITE if parsed.get_backend_name() == "sqlite" else POSTGRESQL
    return kind.make_engine(parsed, wait_seconds)


def backend_for(bind: AsyncEngine | AsyncConnection) -> StoreBackend:
    """The backend of the store `bind` (an engine, or one of its connections) reaches."""
    return POSTGRESQL if bind.dialect.name == "postgresql" else SQLITE
