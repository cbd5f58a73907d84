"""An in-memory table source: tables as lists of dicts, read as the SQL connector reads a database.

For fast tests of the core, in the spirit of httpx's MockTransport: a test hands the gateway a MemorySource
where it would hand a SqlConnector, and drives masking, row filters, budgets, approvals and audit fields with no
engine and no server.

    source = MemorySource("main", tables={"customers": [{"id": 1, "name": "Ada", "email": None}, ...]})

It implements TableSource with the SQL connector's semantics (tests/test_memory_source.py runs one set of
queries against both and compares the pages): every operator of connectors.base.OPERATORS, NULL as SQL has it
(a comparison with NULL is false, `not in` included), NULLs ordered after values ascending and before them
descending, keyset pages on the order keys plus the primary key (an offset without one), row filters (scope) as
an OR of AND groups, and the same InvalidQuery messages for unknown columns and values of the wrong kind. Where
the SQL dialects differ among themselves, it behaves as PostgreSQL under the C collation: `like` is
case-sensitive, and text orders by code point.

Columns are inferred from the rows unless given: in order of first appearance, typed by their first non-null
value, nullable when some row holds NULL or lacks the column; a column `id` whose values are all present and
distinct is the primary key. Given as ColumnInfo, their `type` (a SQL type name: integer, numeric(12, 2),
varchar(100), timestamp with time zone...) says how a request's values are coerced. The rows are read on each
fetch, so a test may add rows between two pages. A `failure` (a ConnectorError such as SourceUnavailable or
SourceTimedOut, given or set later) is raised by prepare and fetch, as a source down or late would. SQL mode
needs a SQL source: run_select raises InvalidQuery(NO_SQL). It is no user-facing source kind: no URL opens one.
"""

from connectors.memory.source import NO_SQL, MemorySource

__all__ = ["NO_SQL", "MemorySource"]
