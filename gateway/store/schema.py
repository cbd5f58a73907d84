"""The gateway's own tables (SQLAlchemy Core): the audit trail, its checkpoints and anchor, revocations, budget
counters, approvals and the store's own secrets.

Every module builds its store statements from these tables; the few spelled by hand (locks, NOTIFY, the change
feed's poll and probe, the chain's PostgreSQL append) are the store kinds' backends' (gateway/store/postgresql.py,
gateway/store/pgchain.py, gateway/store/sqlite.py), and the tables' making and upgrade gateway/store/startup.py's.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Float, Index, Integer, MetaData, String, Table, Text, text

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
    # When `query` was kept capped: the whole one's length in bytes and its SHA-256 (gateway/audit/bounds.py).
    Column("query_bytes", BigInteger),
    Column("query_sha256", String(64)),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_time", "time"),
    Index("ix_audit_agent", "agent"),
    Index("ix_audit_dataset", "dataset"),
    Index("ix_audit_decision", "decision"),
    # The review page's and the admin API's other exact filters: a trace's few records, a work unit's, found without
    # reading the trail (added later: _add_new_indexes gives them to an older store). Null work units, most of
    # them, are left out of the index.
    Index("ix_audit_trace_id", "trace_id"),
    Index("ix_audit_work_unit", "work_unit", postgresql_where=text("work_unit IS NOT NULL"),
          sqlite_where=text("work_unit IS NOT NULL")),
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
