"""PostgreSQL reads on asyncpg directly: SQLAlchemy builds and compiles the statement, asyncpg runs it on a
connection borrowed from the engine's own pool, skipping SQLAlchemy's execution layer (a third of the gateway's
CPU per read). Large reads come in batches through a cursor."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import TextClause


class PgReader:
    """Runs SQLAlchemy-built SELECTs on asyncpg connections, each compiled once per query shape (the connector keeps
    the compiled form with the shape's statement), executed as a prepared statement.

    The connections are the engine's, borrowed from its pool as the asyncpg connections they are: one pool per
    source (its sessions read-only and time-limited, see make_engine), whatever reads from it. A pool of its own
    here, beside the engine's that SQL mode and reflection use, let a source hold twice `pool_size` connections."""

    def __init__(self, engine: AsyncEngine):
        self._engine = engine
        self._dialect = engine.dialect

    @contextlib.asynccontextmanager
    async def _borrowed(self) -> AsyncIterator[Any]:
        """An asyncpg connection of the engine's pool for one read, returned after it. Returning it costs no round
        trip (nothing to reset: the read ran in autocommit, or in a transaction of its own that has ended). A
        read that failed other than by the server's refusal may leave the connection mid-protocol: it is
        terminated, never handed to the next read, and the pool opens another when one is wanted."""
        # No timeout of the pool's own to keep apart: the caller's bounds the wait for a connection and the read
        # together (the pool's, pool_timeout, is the same length).
        borrowed = await self._engine.raw_connection()
        try:
            yield borrowed.driver_connection
        except asyncpg.PostgresError:
            raise  # the server's own refusal: the connection is as it was
        except BaseException:
            # Outside SQLAlchemy's greenlet, invalidating terminates the connection at once (no graceful close
            # to wait on while cancelled).
            with contextlib.suppress(Exception):
                borrowed.invalidate()
            raise
        finally:
            borrowed.close()

    def compile(self, stmt: Any) -> Any:
        return stmt.compile(dialect=self._dialect)

    async def fetch(self, compiled: Any, values: dict[str, Any], rows: int) -> list[Any]:
        """Run `compiled` (one per query shape) with `values` for its named parameters, reading at most `rows`
        rows (its LIMIT)."""
        params = compiled.construct_params(params=values)
        processors = compiled._bind_processors
        args = [processors[n](params[n]) if n in processors else params[n] for n in compiled.positiontup]
        async with self._borrowed() as conn:
            if rows <= BATCH_ROWS:
                return list(await conn.fetch(compiled.string, *args))
            return (await _batched(conn, compiled.string, args, rows))[1]

    async def select(self, statement: TextClause | str, limit: int) -> tuple[list[str], list[Any]]:
        """A large SQL-mode read (already built and validated, its LIMIT written in it): its column names and at
        most `limit` rows, read in batches as a large page is, on one of the engine's connections."""
        if isinstance(statement, str):
            sql, args = statement, []
        else:  # row-filter values, bound as their columns' types
            compiled: Any = statement.compile(dialect=self._dialect)
            params = compiled.construct_params()
            processors = compiled._bind_processors
            sql = compiled.string
            args = [processors[n](params[n]) if n in processors else params[n] for n in compiled.positiontup]
        async with self._borrowed() as conn:
            return await _batched(conn, sql, args, limit)


# A page that may hold more rows than this is read in batches of this many (PostgreSQL).
BATCH_ROWS = 2_000


async def _batched(conn: Any, sql: str, args: list[Any], limit: int) -> tuple[list[str], list[Any]]:
    """The column names and (at most `limit`) rows of a large read, fetched a batch at a time through a cursor and
    kept as tuples. asyncpg's records are tracked by the garbage collector, and 100,000 of them alive at once
    make each full collection (a large read causes several) walk them all, 50-300 ms with the GIL held, during
    which no request is served; tuples of plain values drop out of the collector's sight at its next pass."""
    out: list[Any] = []
    async with conn.transaction():  # a cursor lives in a transaction (read-only, as the session is)
        prepared = await conn.prepare(sql)
        columns = [attribute.name for attribute in prepared.get_attributes()]
        cursor = await prepared.cursor(*args)
        while len(out) < limit and (batch := await cursor.fetch(min(BATCH_ROWS, limit - len(out)))):
            out.extend(tuple(r) for r in batch)
    return columns, out
