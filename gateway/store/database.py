"""The gateway's own tables (SQLAlchemy Core) and the engine that reaches them.

SQLite by default, PostgreSQL for production and replicas. The gateway creates
its tables at start; nothing else in the code base builds store SQL except
audit.py (and, later, the other store-backed services) through these tables.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.store import files as storefile

metadata = MetaData()

audit = Table(
    "audit",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("agent", Text),
    Column("on_behalf_of", Text),
    Column("work_unit", Text),
    Column("action", String(64), nullable=False),
    Column("dataset", Text),
    Column("query", Text),
    Column("decision", String(16), nullable=False),
    Column("reason", Text),
    Column("status", Integer, nullable=False),
    Column("rows", Integer),
    Column("bytes", BigInteger),
    Column("duration_ms", Float),
    Column("source_ms", Float),
    Column("response_sha256", String(64)),
    Column("approved_by", Text),
    Column("rule", Text),
    Column("columns", Text),
    Column("masked", Text),
    Column("transport", String(16)),
    Column("row_filter", Text),
    # Added later, nullable: _add_new_columns gives them to an older store, whose records keep verifying.
    Column("token_id", Text),
    Column("client", Text),
    Column("user_agent", Text),
    Column("trace_id", String(32)),
    # When `query` was kept capped: the whole one's length in bytes and its SHA-256 (gateway/audit/trail.py).
    Column("query_bytes", BigInteger),
    Column("query_sha256", String(64)),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_time", "time"),
    Index("ix_audit_agent", "agent"),
    Index("ix_audit_dataset", "dataset"),
    Index("ix_audit_decision", "decision"),
)

revocations = Table(
    "revocations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(8), nullable=False),  # "agent" or "token"
    Column("subject", Text, nullable=False),  # the agent's name or the token's jti
    Column("reason", Text),
    Column("created_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("lifted_by", Text),
    Column("lifted_at", DateTime(timezone=True)),
    Index("ix_revocations_active", "kind", "subject"),
)

checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("record_id", BigInteger, nullable=False),
    Column("record_hash", String(64), nullable=False),
    Column("signature", String(64), nullable=False),
)

# After `audit prune`: where the kept chain starts, so it stays verifiable.
anchor = Table(
    "audit_anchor",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1: one anchor
    Column("first_id", BigInteger, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("pruned", BigInteger, nullable=False),
    Column("before", DateTime(timezone=True), nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("signature", String(64)),
    # Added later, nullable: the id of the last prune's own audit record (who pruned, and how many records).
    Column("record_id", BigInteger),
)

meta = Table(
    "agentgate_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# Budget counters (gateway/services/meter.py): one row per agent, window kind ("minute"/"day") and window start.
usage_counters = Table(
    "usage_counters",
    metadata,
    Column("agent", String(255), primary_key=True),
    Column("kind", String(8), primary_key=True),
    Column("window_start", String(20), primary_key=True),  # "2026-01-31T12:05" or "2026-01-31" (UTC)
    Column("requests", BigInteger, nullable=False),
    Column("rows", BigInteger, nullable=False),
    # Day counters: rows set aside for reads in flight, and when the last was (Unix seconds); NULL: none.
    Column("reserved", BigInteger),
    Column("reserved_at", BigInteger),
)

# Human approvals (gateway/services/approvals.py).
approvals = Table(
    "approvals",
    metadata,
    Column("id", String(32), primary_key=True),  # uuid hex
    Column("agent", Text, nullable=False),
    Column("dataset", Text, nullable=False),
    Column("owner", Text),  # the dataset's owner when it was asked
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False),  # pending, approved, denied
    Column("decided_by", Text),
    Column("decided_at", DateTime(timezone=True)),
    Column("expires_at", DateTime(timezone=True)),
    Column("query", Text),
    Column("request_id", String(64)),
    # Added later, nullable (an older store gains them at start): what an approval is bound to besides its
    # agent and dataset, and the operating-system user who decided on the command line.
    # body_sha256: SHA-256 of the body as submitted, canonicalised (gateway/services/approvals.py)
    Column("body_sha256", String(64)),
    Column("on_behalf_of", Text),  # the token's on_behalf_of when it was asked
    Column("decided_os_user", Text),
    Index("ix_approvals_status", "status"),
)


def make_store_engine(url: str, *, wait_seconds: float | None = None) -> AsyncEngine:
    """The store's engine. `wait_seconds`: the longest a use of the store waits to begin: for a connection of
    the pool, for a new connection, and on SQLite for the write lock. The gateway passes [audit]
    write_timeout_seconds, so that no request waits on the store longer than its audit record may take; the
    commands keep the defaults (PostgreSQL 5 s, SQLite 10 s)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        busy = wait_seconds if wait_seconds is not None else 10.0
        engine = create_async_engine(parsed, connect_args={"timeout": busy})
        _serialise_sqlite_writers(engine, busy)
        if parsed.database:  # held to the files it opens: a store deleted or replaced under it fails closed
            storefile.guard(engine, parsed.database, busy)
        return engine
    wait = wait_seconds if wait_seconds is not None else 5.0
    return create_async_engine(parsed, pool_size=10, max_overflow=10, pool_timeout=wait,
                               connect_args={"timeout": wait, "command_timeout": max(10.0, wait)})


def _serialise_sqlite_writers(engine: AsyncEngine, busy_seconds: float = 10.0) -> None:
    """Let several workers share one SQLite store: WAL, a busy timeout, and write
    transactions that take the lock up front (BEGIN IMMEDIATE), so two writers
    never both read the chain's tail before one of them appends."""

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # Switching the journal mode needs the database to itself: only when it is not WAL yet.
        cur.execute("PRAGMA journal_mode")
        if str(cur.fetchone()[0]).lower() != "wal":
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={max(1, round(busy_seconds * 1000))}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        # A reader (see `reading`) takes a WAL snapshot and waits on nobody; a writer takes the lock up front.
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


READ_ONLY = "agentgate_read_only"


def reading(engine: AsyncEngine) -> AsyncEngine:
    """The store engine for transactions that only read (the same pool). On SQLite these begin as plain
    (deferred) transactions: in WAL mode a reader sees a snapshot and never queues behind the write lock, nor
    holds writers off. Writing in one of them is a mistake: it may fail at once with SQLITE_BUSY."""
    return engine.execution_options(**{READ_ONLY: True})


T = TypeVar("T")

# Replicas started together on one SQLite store take turns for its write lock to make (or upgrade) its tables:
# one waiting past the gateway's short lock wait ([audit] write_timeout_seconds) tries again, for this long.
START_LOCK_SECONDS = 30.0


def busy(exc: BaseException) -> bool:
    """Whether `exc` is SQLite's "database is locked" (another connection holds the lock: the store is there)."""
    return isinstance(exc, OperationalError) and "database is locked" in str(exc.orig)


async def at_start(work: Callable[[], Awaitable[T]]) -> T:
    """`work`, tried again while SQLite says the store is locked, for up to START_LOCK_SECONDS."""
    deadline = time.monotonic() + START_LOCK_SECONDS
    while True:
        try:
            return await work()
        except OperationalError as exc:
            if not busy(exc) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def create_tables(engine: AsyncEngine) -> None:
    await at_start(lambda: _create_tables(engine))


async def _create_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Several replicas may start at once; one creates, the others wait for it.
            await conn.execute(text("SELECT pg_advisory_xact_lock(7243001)"))
        await conn.run_sync(metadata.create_all)
        await conn.run_sync(_add_new_columns)


def _add_new_columns(conn: Any) -> None:
    """Upgrade a store made by an earlier release: add the (nullable) columns it lacks. create_all makes
    missing tables only, never missing columns."""
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in have and column.nullable:
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(text(f"ALTER TABLE {conn.dialect.identifier_preparer.format_table(table)} "
                                  f"ADD COLUMN {conn.dialect.identifier_preparer.format_column(column)} {kind}"))


async def shared_secret(engine: AsyncEngine, key: str) -> str:
    """A random secret kept in the store, the same on every replica (e.g. the cursor key)."""
    return await at_start(lambda: _shared_secret(engine, key))


async def _shared_secret(engine: AsyncEngine, key: str) -> str:
    async with reading(engine).connect() as conn:
        found = (await conn.execute(select(meta.c.value).where(meta.c.key == key))).scalar_one_or_none()
    if found is not None:
        return str(found)
    value = secrets.token_urlsafe(32)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(meta).values(key=key, value=value))
        return value
    except IntegrityError:  # another replica made it first: use theirs
        async with reading(engine).connect() as conn:
            return str((await conn.execute(select(meta.c.value).where(meta.c.key == key))).scalar_one())


def asyncpg_dsn(engine: AsyncEngine) -> str:
    """The store's URL as asyncpg itself takes it (for the listener and the audit writer)."""
    url = make_url(engine.url.render_as_string(hide_password=False)).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


async def ping(engine: AsyncEngine) -> None:
    async with reading(engine).connect() as conn:
        await conn.execute(text("SELECT 1"))
