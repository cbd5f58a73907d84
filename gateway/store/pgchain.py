"""The PostgreSQL backend's chain append: the SQL function that appends a group of audit rows in one round trip
(APPEND_FUNCTION), and every statement the chain's writer sends on its own asyncpg connection, under the
chain's advisory lock (CHAIN_LOCK), which replicas, workers and the commands share.

Rows go in as the store has them (the audit table's columns, gateway/store/schema.py); what they hold, how a
group is linked onto the tail and what is in doubt after a write given up are the trail's (PgChainWriter,
gateway/audit/pgwriter.py), which calls these.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.store.schema import audit

log = logging.getLogger("agentgate.audit")  # its lines are the trail's

CHAIN_LOCK = 7243002  # the advisory lock every writer of the chain takes (integrity's prune too)

APPEND_FUNCTION = "agentgate_audit_append_v2"
# The PostgreSQL append, one round trip whether it succeeds or not: under the chain's lock, and with a snapshot
# taken after the lock (every statement of a volatile function takes its own, so rows committed by whoever held
# the lock before are seen), it inserts the group only if the chain's tail is the one the group was linked
# onto; otherwise it inserts nothing and returns the tail as it is, to link onto and ask again. The records
# come as JSON objects keyed by column (json_populate_recordset: columns follow the table, no signature to
# change when a field is added). It refuses (query_canceled) once the server's clock is past `deadline`: the
# writer has given the group up and its requests were answered 503, so a statement held up on the way (a
# silent network, a stuck proxy) and delivered late never stores records claiming what those requests were
# not answered. (v1, without the deadline, stays for replicas of an earlier release.)
APPEND_FUNCTION_DDL = f"""
CREATE OR REPLACE FUNCTION {APPEND_FUNCTION}(tail_id bigint, tail_hash text, records json, deadline timestamptz)
RETURNS TABLE (chain_id bigint, chain_hash text) LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    cur_id bigint;
    cur_hash text;
BEGIN
    PERFORM pg_advisory_xact_lock({CHAIN_LOCK});
    IF clock_timestamp() > deadline THEN
        RAISE EXCEPTION 'agentgate: audit group past its deadline (its requests were answered 503)'
            USING ERRCODE = 'query_canceled';
    END IF;
    SELECT a.id, a.hash INTO cur_id, cur_hash FROM audit AS a ORDER BY a.id DESC LIMIT 1;
    IF cur_id = tail_id AND cur_hash = tail_hash THEN
        INSERT INTO audit SELECT * FROM json_populate_recordset(NULL::audit, records);
    ELSE
        chain_id := cur_id;
        chain_hash := cur_hash;
        RETURN NEXT;
    END IF;
END
$fn$"""

COLUMNS = tuple(column.name for column in audit.columns)  # a row's values, in this order
_INSERT = 'INSERT INTO audit ({}) VALUES ({})'.format(
    ", ".join(f'"{f}"' for f in COLUMNS), ", ".join(f"${i}" for i in range(1, len(COLUMNS) + 1)))
_APPEND = f"SELECT chain_id, chain_hash FROM {APPEND_FUNCTION}($1, $2, $3, $4)"
_TAIL = "SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1"

Tail = tuple[int, str]  # the chain's last record: its id and hash
Link = Callable[[int | None, str | None], Sequence[Sequence[Any]]]  # the tail (None, None: none) -> rows


@dataclass(frozen=True)
class Opened:
    """The writer's connection, as `ChainAppend.connect` leaves it."""

    conn: Any  # asyncpg.Connection
    function: bool  # APPEND_FUNCTION is there to call
    offset: float  # the server's clock less ours, in seconds
    tail: Tail | None  # the chain's tail (read only when the function is there); None: none


@dataclass(frozen=True)
class ChainAppend:
    """The chain's append on one PostgreSQL store (the backend's `chain_append`): the writer connects through it,
    and sends each statement on that connection through it."""

    dsn: str  # as asyncpg takes it
    timeout: float  # seconds: to connect, and the longest a transaction of the writer's may sit idle

    async def connect(self) -> Opened:
        """The writer's own connection: APPEND_FUNCTION made (or found), the server's clock against ours, the
        tail."""
        # A transaction this writer leaves open (the locked path, the network gone silent mid-way) is ended by
        # the server after `timeout`: it holds the chain's lock, which every replica's writer needs.
        idle_ms = str(max(1, round(self.timeout * 1000)))
        conn = await asyncpg.connect(self.dsn, timeout=self.timeout,
                                     server_settings={"idle_in_transaction_session_timeout": idle_ms})
        try:
            function = await _install_function(conn)
            # The server's clock against ours (to the round trip's half), for the deadline the append checks.
            before = time.time()
            server_now = await conn.fetchval("SELECT clock_timestamp()")
            offset = server_now.timestamp() - (before + time.time()) / 2
            tail = None
            if function:  # the tail, so that the first group goes the one-statement way too
                found = await conn.fetchrow(_TAIL)
                tail = (found["id"], found["hash"]) if found is not None else None
        except BaseException:
            conn.terminate()
            raise
        return Opened(conn, function, offset, tail)

    @staticmethod
    async def append(conn: Any, tail: Tail, rows_json: str, deadline: dt.datetime) -> tuple[bool, Tail | None]:
        """Append the rows (a JSON array of objects keyed by column, linked onto `tail`) by APPEND_FUNCTION, one
        statement, unless the server's clock is past `deadline`: (True, None) when stored; else nothing was
        stored, the chain's tail having moved on: (False, the tail as it is now, None on an empty trail)."""
        moved = await conn.fetchrow(_APPEND, *tail, rows_json, deadline)
        if moved is None:
            return True, None
        return False, ((moved["chain_id"], moved["chain_hash"]) if moved["chain_id"] is not None else None)

    @staticmethod
    async def append_locked(conn: Any, link: Link) -> None:
        """Append in a transaction of its own: the chain's lock, its tail (or the prune anchor's, on an empty
        trail), and the rows `link` makes for that tail (values in COLUMNS order), inserted."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", CHAIN_LOCK)
            tail = await conn.fetchrow(_TAIL)
            if tail is None:  # an empty trail may still go on from a prune's anchor
                tail = await conn.fetchrow("SELECT first_id - 1 AS id, prev_hash AS hash FROM audit_anchor")
            rows = link(tail["id"] if tail else None, tail["hash"] if tail else None)
            await conn.executemany(_INSERT, rows)

    @staticmethod
    async def held(conn: Any, ids: list[int]) -> list[dict[str, Any]]:
        """The rows of `ids` the store holds, read under the chain's lock: a statement that took it before has
        committed by then, and one that takes it after finds its deadline passed and stores nothing."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", CHAIN_LOCK)
            rows = await conn.fetch("SELECT * FROM audit WHERE id = ANY($1::bigint[])", ids)
        return [dict(row) for row in rows]


async def _install_function(conn: Any) -> bool:
    try:
        async with conn.transaction():  # under the lock: replicas starting at once replace it in turn
            await conn.execute("SELECT pg_advisory_xact_lock($1)", CHAIN_LOCK)
            await conn.execute(APPEND_FUNCTION_DDL)
        return True
    except asyncpg.PostgresError as exc:
        # A store role that may not create (or replace another role's) functions: use the function if
        # it is there, else the locked transaction for every group. Slower, never wrong.
        function = bool(await conn.fetchval(
            "SELECT to_regprocedure($1) IS NOT NULL", f"{APPEND_FUNCTION}(bigint,text,json,timestamptz)"))
        log.warning("cannot create %s (%s); audit groups are written %s", APPEND_FUNCTION, exc,
                    "with the existing one" if function else "in locked transactions")
        return function
