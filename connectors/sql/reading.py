"""Reading from a SQL source: a pooled connection per read (dropped when the read breaks it), results taken a
slice at a time, and what the drivers raise mapped into the connector's errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from connectors.base import InvalidQuery, SourceRefused, SourceTimedOut, SourceUnavailable
from connectors.slices import CELLS_ON_LOOP

# Errors by which a server says "your statement ran out of time".
_TIMEOUT_MARKERS = ("statement timeout", "canceling statement", "max_statement_time", "interrupted")


async def fetched(result: Any, limit: int, columns: int) -> list[Any]:
    """At most `limit` rows of a SQLAlchemy result whose rows are in memory already (no server-side cursor), a
    slice at a time (see in_slices): SQLAlchemy's work on each row is Python."""
    size = max(1, CELLS_ON_LOOP // max(1, columns))
    raw: list[Any] = []
    while len(raw) < limit:
        if raw:
            await asyncio.sleep(0)
        part = result.fetchmany(min(size, limit - len(raw)))
        if not part:
            break
        raw.extend(part)
    return raw


@contextlib.contextmanager
def driver_errors(name: str, timeout: float, *, agent_sql: bool) -> Iterator[None]:
    """What the driver raises while a read runs, as the connector's errors: out of time (ours or the
    server's) SourceTimedOut; a value the driver cannot send InvalidQuery; the server refusing an agent's own
    SQL (SQL mode), or the driver unable to convert a value of its answer, SourceRefused; anything else
    SourceUnavailable. Nothing a driver raises leaves as an unexpected exception (a 500)."""
    late = f"source {name!r} did not answer within {timeout:g}s"
    try:
        yield
    except TimeoutError:
        raise SourceTimedOut(late) from None
    except asyncpg.QueryCanceledError as exc:
        raise SourceTimedOut(late) from exc
    except asyncpg.PostgresError as exc:
        if agent_sql:  # the server refusing an agent's statement read on the asyncpg pool (a large read)
            said = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
            raise SourceRefused(f"source {name!r} refused the statement: {said}") from exc
        if isinstance(exc, asyncpg.DataError):  # the server's class 22 (data exception): the value's fault
            raise InvalidQuery("the request holds a value the source cannot take") from None
        raise SourceUnavailable(f"source {name!r} failed: {type(exc).__name__}") from exc
    except (UnicodeEncodeError, asyncpg.DataError):
        # Text or a value the driver cannot send (checked before, in coerce and SQL mode: a last line).
        raise InvalidQuery("the request holds a value the source cannot take") from None
    except (ValueError, OverflowError) as exc:
        # A value the driver cannot convert, mostly of the answer (a date past year 9999, an interval past
        # timedelta's range): an agent's own SQL asked for it; a table read met it in the data.
        said = f"source {name!r}: the driver cannot convert a value: {type(exc).__name__}: {exc}"[:300]
        if agent_sql:
            raise SourceRefused(said) from exc
        raise SourceUnavailable(said) from exc
    except DBAPIError as exc:
        if any(marker in str(exc.orig).lower() for marker in _TIMEOUT_MARKERS):
            raise SourceTimedOut(late) from exc
        if agent_sql and not exc.connection_invalidated:
            raise SourceRefused(f"source {name!r} refused the statement: {short(exc)}") from exc
        raise SourceUnavailable(f"source {name!r} failed: {type(exc.orig).__name__}") from exc
    except (SQLAlchemyError, OSError, asyncpg.InterfaceError) as exc:
        raise SourceUnavailable(f"source {name!r} failed: {type(exc).__name__}") from exc


@contextlib.asynccontextmanager
async def connected(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A pooled connection for one read, discarded rather than pooled again when the read fails other than by the
    server's own refusal of the statement (a driver error mid-protocol, a value it could not encode, a read
    cancelled by its timeout): its state is unknown, and one agent's bad input must not break the next agent's
    read (asyncpg, handed a lone surrogate, answered every later statement on that connection with "another
    operation is in progress")."""
    async with engine.connect() as conn:
        try:
            yield conn
        except BaseException as exc:
            if not _server_refused(exc):
                with contextlib.suppress(Exception):
                    await conn.invalidate()
            raise


def _server_refused(exc: BaseException) -> bool:
    """Whether `exc` is the server's answer to a statement, after which its connection is as it was."""
    return isinstance(exc, DBAPIError) and not exc.connection_invalidated and not isinstance(exc, InterfaceError)


def short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return f"{type(orig or exc).__name__}: {str(orig or exc).splitlines()[0][:200]}"
