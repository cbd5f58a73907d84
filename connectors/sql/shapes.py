"""The statements kept per query shape: what is kept, how much the caches may hold, and compiling a statement
ahead into SQLAlchemy's cache so that running it compiles nothing on the event loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import compiler

# The caches of statements (by count, and by estimated bytes). Estimates, measured with tracemalloc: a statement
# object holds about 15-40 bytes per character of its SQL, SQLAlchemy's compiled form about 40-95 (bench/abuse.py
# shapes measures the gateway's memory over 1,000 large shapes).
SHAPES_LIMIT = 500
SHAPES_BYTES = 16 * 1024 * 1024
COMPILED_BYTES = 32 * 1024 * 1024
BOOLS_BYTES = 1024 * 1024
STATEMENT_PER_CHAR = 40
COMPILED_PER_CHAR = 100
# A shape with more parts than this (columns, terms, order keys, row-filter terms) is built in a worker thread:
# building and compiling one of 500 columns and 100 terms takes about 40 ms, which would hold the event loop.
BUILD_ON_LOOP = 48


@dataclass(frozen=True, slots=True)
class Shape:
    """A query shape's statement: built once, compiled once (on PostgreSQL: kept here; elsewhere SQLAlchemy keeps
    it), with the keys its pages are positioned on and its estimated size."""

    stmt: Any
    keys: list[tuple[Column[Any], bool]] | None
    compiled: Any
    size: int


def precompile(stmt: Any, dialect: Dialect, cache: Any, names: list[str]) -> int:
    """Compile `stmt` into SQLAlchemy's cache of compiled forms (`cache`) under the key executing it with
    parameters `names` looks up, so that running it does not compile it on the event loop; the length of its SQL.
    This uses SQLAlchemy's own (internal) entry point: should another release change it, the statement is
    compiled when it runs instead, as before, and its size estimated from its parts."""
    try:
        compiled = stmt._compile_w_cache(
            dialect=dialect, compiled_cache=cache, column_keys=names, for_executemany=False,
            schema_translate_map=None, linting=dialect.compiler_linting | compiler.WARN_LINTING)[0]
        return len(compiled.string)
    except (AttributeError, TypeError):
        return 40 * (len(stmt.selected_columns) + len(names) + 8)
