"""The gateway's own database: tables, engines, one backend per kind, the store file's identity, the change feed.

    schema        the tables (SQLAlchemy Core)
    engines       the engine for a URL, and the backend for an engine (backend_for)
    backend       what a kind's backend owns (StoreBackend): locks, the upsert, the change feed's half
    postgresql    the PostgreSQL backend (advisory locks, NOTIFY, the listener and its probe)
    pgchain       the PostgreSQL backend's audit chain append (its SQL function, the writer's statements)
    sqlite        the SQLite backend (BEGIN IMMEDIATE, the data_version poll)
    transactions  read-only transactions (reading) and the ping
    startup       the tables made at start, shared secrets, waiting a turn for a locked SQLite
    files         a SQLite store's files, held to the ones opened
    feed          keeping a replica in step with the store (StoreSync)
"""

from gateway.store.backend import ChangeFeed, Follower, StoreBackend
from gateway.store.engines import backend_for, make_store_engine
from gateway.store.feed import StoreSync, notify
from gateway.store.files import StoreFile, StoreLost, store_file
from gateway.store.pgchain import CHAIN_LOCK, ChainAppend
from gateway.store.postgresql import FEED_NAME, asyncpg_dsn
from gateway.store.schema import anchor, approvals, audit, checkpoints, meta, metadata, revocations, usage_counters
from gateway.store.startup import START_LOCK_SECONDS, at_start, busy, create_tables, shared_secret
from gateway.store.transactions import ping, reading

__all__ = [
    "CHAIN_LOCK", "FEED_NAME", "START_LOCK_SECONDS", "ChainAppend", "ChangeFeed", "Follower", "StoreBackend",
    "StoreFile", "StoreLost", "StoreSync", "anchor", "approvals", "asyncpg_dsn", "at_start", "audit", "backend_for",
    "busy", "checkpoints", "create_tables", "make_store_engine", "meta", "metadata", "notify", "ping", "reading",
    "revocations", "shared_secret", "store_file", "usage_counters",
]
