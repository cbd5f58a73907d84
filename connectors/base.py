"""The one small interface every connector offers, and the types it speaks.

A connector receives a query that the gateway has already authorised and
trimmed to visible columns; it checks identifiers against the source's own
schema, binds every value, enforces its limits and returns JSON-ready rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "in", "not in", "like", "is null", "is not null")
NULL_OPERATORS = ("is null", "is not null")
LIST_OPERATORS = ("in", "not in")
MAX_LIST_VALUES = 1000
# Values one query may bind in all (every `in` list and every other term's value together): the work of checking,
# binding and sending them stays bounded whatever the body holds.
MAX_BOUND_VALUES = 1000

# A whole-row reference (SQL mode on PostgreSQL) comes back as the list of its fields.
JSONValue = None | bool | int | float | str | list["JSONValue"]


@dataclass(frozen=True, slots=True)
class Filter:
    column: str
    op: str
    value: Any = None


@dataclass(frozen=True, slots=True)
class SortKey:
    column: str
    descending: bool = False


@dataclass(frozen=True, slots=True)
class TableQuery:
    table: str  # "schema.table" or "table", as the catalog names it
    columns: Sequence[str]  # columns to fetch, in answer order
    where: Sequence[Filter] = ()
    order_by: Sequence[SortKey] = ()
    limit: int = 100
    after: Any = None  # a position a previous Page returned, or None for the first page
    # Rows the reader may see at all (row filters): any of these ANDed groups; None for every row.
    scope: Sequence[Sequence[Filter]] | None = None


def bound_values(filters: Sequence[Filter]) -> int:
    """How many values `filters` bind: one per list item, one per other valued term, none for a null test."""
    n = 0
    for f in filters:
        if f.op in LIST_OPERATORS and isinstance(f.value, list):
            n += len(f.value)
        elif f.op not in NULL_OPERATORS:
            n += 1
    return n


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    name: str
    type: str
    nullable: bool
    primary_key: bool


@dataclass(frozen=True, slots=True)
class Page:
    columns: Sequence[str]
    rows: list[dict[str, JSONValue]]
    after: Any  # JSON-serialisable position of the next page, None on the last page
    source_ms: float


class ConnectorError(Exception):
    """Base of what connectors raise; the gateway maps each kind to its answer."""


class InvalidQuery(ConnectorError):
    """The query names something that is not there or a value of the wrong kind (the caller's fault)."""


class SourceRefused(ConnectorError):
    """The source refused a statement the agent wrote (SQL mode). The text is the source's own: it may name its
    tables and quote its values, so it goes to the audit record and the log, never to the agent."""


class SourceUnavailable(ConnectorError):
    """The source failed or cannot be reached."""


class SourceTimedOut(ConnectorError):
    """The source did not answer within its time limit."""


class MissingTable(ConnectorError):
    """A catalog table that the source does not have."""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    content_type: str | None
    body: bytes
    headers: Mapping[str, str]  # the source's headers, hop-by-hop ones and cookies removed
    source_ms: float


# The two kinds of source the core reads. The core depends on these protocols only, never on a connector class:
# a new kind of source is a new class that offers one of them, and a URL scheme in gateway/sources/.


class TableSource(Protocol):
    """A source of tables: the catalog's datasets with a `table` are read through one."""

    name: str

    @property
    def dialect(self) -> str:
        """The SQL dialect statements in SQL mode are written in ("postgresql", "mysql", "sqlite"...)."""
        ...

    async def prepare(self, tables: Sequence[str]) -> None:
        """Learn the tables' columns; MissingTable names the first that does not exist."""

    async def columns(self, table: str) -> list[ColumnInfo]: ...

    async def fetch(self, query: TableQuery) -> Page:
        """The rows `query` asks for, identifiers checked and values bound; InvalidQuery for the caller's faults,
        SourceUnavailable / SourceTimedOut for the source's."""
        ...

    async def check_filter(self, table: str, f: Filter) -> None:
        """InvalidQuery when `f` cannot apply to `table` (an unknown column, a value of the wrong type)."""

    async def run_select(self, sql: str, limit: int, binds: Mapping[str, tuple[str, str, Any]] | None = None) -> Page:
        """A checked SELECT (SQL mode), at most `limit` rows; SourceRefused when the source refuses it."""
        ...

    async def close(self) -> None: ...


class HttpSource(Protocol):
    """A source over HTTP: the catalog's datasets with a `path` prefix are read through one, GET only."""

    name: str

    async def get(self, prefix: str, raw_path: str, raw_query: str = "", *, accept: str | None = None,
                  traceparent: str | None = None) -> HttpAnswer:
        """The source's answer for `{base}{prefix}/{raw_path}?{raw_query}`, the path confined to the prefix;
        `traceparent` (W3C) sent along, so the source's own trace joins the agent's."""
        ...

    async def close(self) -> None: ...
