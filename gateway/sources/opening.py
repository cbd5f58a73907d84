"""Open every configured source, through the registry of source kinds (registry.py), and check the catalog's
tables against them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from connectors.base import (
    Filter,
    HttpSource,
    InvalidQuery,
    MissingTable,
    SourceTimedOut,
    SourceUnavailable,
    TableSource,
)
from gateway.common.errors import ConfigError
from gateway.config import SourceSettings
from gateway.policy import Catalog, Claim, Dataset, Term
from gateway.sources.registry import opener_for


def open_sources(settings: Mapping[str, SourceSettings]) -> dict[str, TableSource]:
    """The table sources (SQL: one pooled engine each, its pool the only one every read of the source uses; a
    SQLite source with a seed created on first run), each opened as its URL's scheme says (registry.SCHEMES).
    Blocking: called off the event loop."""
    out: dict[str, TableSource] = {}
    for name, src in settings.items():
        opener = opener_for(name, src).tables
        if opener is not None:  # HTTP sources are opened by open_http_sources
            out[name] = opener(name, src)
    return out


def open_http_sources(settings: Mapping[str, SourceSettings]) -> dict[str, HttpSource]:
    """The HTTP sources (one pooled client each, its configured headers sent on every request)."""
    out: dict[str, HttpSource] = {}
    for name, src in settings.items():
        opener = opener_for(name, src).http
        if opener is not None:
            out[name] = opener(name, src)
    return out


async def check_tables(catalog: Catalog, sources: Mapping[str, TableSource], policy_file: object,
                       *, strict_reachability: bool, faults: list[ConfigError] | None = None) -> list[str]:
    """Reflect every catalog table. A missing table is a ConfigError; an unreachable source is
    one (when strict, as in `check`) or a warning returned (at start: the source may come back).
    With `faults`, every fault is collected there (for `check`) instead of the first being raised."""
    warnings: list[str] = []
    found: list[ConfigError] = []

    async def one(ds: Dataset, table: str, source: TableSource) -> None:
        name = ds.name
        try:
            await source.prepare([table])
            present = {c.name for c in await source.columns(table)}
        except MissingTable as exc:
            found.append(ConfigError(policy_file, f"datasets.{name}.table", str(exc)))
            return
        except (SourceUnavailable, SourceTimedOut) as exc:
            if strict_reachability:
                found.append(ConfigError(policy_file, f"datasets.{name}.source", str(exc)))
            else:
                warnings.append(f"dataset {name!r}: {exc}")
            return
        found.extend(ConfigError(policy_file, f"datasets.{name}.columns.{column}",
                                 f"table {table!r} has no column {column!r}")
                     for column in ds.column_classes if column not in present)
        for role, rf in ds.row_filters.items():
            for term in rf.terms:
                fault = await _filter_fault(source, table, term, present)
                if fault is not None:
                    found.append(ConfigError(policy_file, f"datasets.{name}.row_filters.{role}", fault))
                    break

    jobs = [one(ds, ds.table, sources[ds.source]) for ds in catalog
            if ds.table is not None and ds.source in sources]
    await asyncio.gather(*jobs)
    if faults is not None:
        faults.extend(found)
    elif found:
        raise found[0]
    return warnings


async def _filter_fault(source: TableSource, table: str, term: Term, present: set[str]) -> str | None:
    """Why a row filter's term cannot apply to its table: an unknown column, or a literal of the wrong type
    (values from claims are checked on each read)."""
    if term.column not in present:
        return f"table {table!r} has no column {term.column!r}"
    value = term.value
    if isinstance(value, Claim) or (isinstance(value, tuple) and any(isinstance(v, Claim) for v in value)):
        return None
    try:
        await source.check_filter(table, Filter(term.column, term.op, list(value) if isinstance(value, tuple)
                                                else value))
    except InvalidQuery as exc:
        return str(exc)
    return None
