"""The trail: records, the writer and its hash chain, reading, export, verification, replay.

Import from here (`from gateway.audit import AuditRecord, AuditTrail`): the modules behind it are this package's
own, each one job —

- record.py: AuditRecord, its fields and the canonical bytes its hash covers;
- bounds.py: each field within its bound, and only what a store can keep;
- chain.py: records linked onto the tail, and the walk that verifies the chain;
- writer.py: AuditTrail, the group-committing writer (and SQLite's append);
- pgwriter.py: PostgreSQL's append, one round trip under the chain's advisory lock (its SQL: gateway/store/pgchain.py);
- unsettled.py: records in doubt after a write given up, and the corrections owed;
- reading.py, export.py: the trail read, filtered, paged, counted over time and exported;
- summary.py: the review page's counts (allowed and refused reads by time, agent and dataset), by the store;
- follow.py: the trail followed as it commits (a follower's place, its checks; the admin API's open streams);
- integrity.py, chainwatch.py: signed checkpoints, the prune anchor, and the running gateway's checks;
- replay.py: the trail's reads decided again under a proposed policy (`agentgate check --replay`).

integrity, summary and replay are used as namespaces (`from gateway.audit import integrity`); their names are not
repeated here. The clock (now, format_time, parse_time) is gateway.common.clock's.
"""

from gateway.audit.bounds import FIELD_MAX, QUERY_MAX_BYTES, bounded_query
from gateway.audit.chain import GENESIS, Verification, verify
from gateway.audit.chainwatch import ChainWatch
from gateway.audit.export import export_lines, jsonl_line
from gateway.audit.follow import PAGE, POLL_SECONDS, Follow, Page, Slot, Streams
from gateway.audit.integrity import Checkpointer
from gateway.audit.reading import (
    AuditFilter,
    RecordPage,
    activity,
    get_record,
    iter_records,
    list_records,
    page_after,
    record_page,
)
from gateway.audit.record import DECISIONS, FIELD_ORDER, LATER_FIELDS, AuditRecord, canonical, chain_hash
from gateway.audit.unsettled import CORRECTED_ID, CORRECTION_PREFIX, SETTLE_SECONDS
from gateway.audit.writer import CLI_WRITE_TIMEOUT, AuditTrail, append_locked, record_once
from gateway.store import CHAIN_LOCK

__all__ = [
    "CHAIN_LOCK",
    "CLI_WRITE_TIMEOUT",
    "CORRECTED_ID",
    "CORRECTION_PREFIX",
    "DECISIONS",
    "FIELD_MAX",
    "FIELD_ORDER",
    "GENESIS",
    "LATER_FIELDS",
    "PAGE",
    "POLL_SECONDS",
    "QUERY_MAX_BYTES",
    "SETTLE_SECONDS",
    "AuditFilter",
    "AuditRecord",
    "AuditTrail",
    "ChainWatch",
    "Checkpointer",
    "Follow",
    "Page",
    "RecordPage",
    "Slot",
    "Streams",
    "Verification",
    "activity",
    "append_locked",
    "bounded_query",
    "canonical",
    "chain_hash",
    "export_lines",
    "get_record",
    "iter_records",
    "jsonl_line",
    "list_records",
    "page_after",
    "record_once",
    "record_page",
    "verify",
]
