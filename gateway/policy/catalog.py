"""datasets.toml -> Dataset objects: the governed views agents may ask for."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.common.errors import ConfigError
from gateway.config import SourceSettings
from gateway.policy.rowfilters import FilterSyntaxError, RowFilter
from gateway.policy.rowfilters import parse as parse_filter

DEFAULT_MAX_ROWS = 1000
# A dataset's name (also the OpenAPI document's pattern of the {name} in a path).
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$"
_NAME = re.compile(NAME_PATTERN)
APPROVALS = ("none", "required")  # a dataset's `approval`
_CLASS = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
# Every key a [datasets.NAME] table takes; the README documents each (a test checks).
DATASET_KEYS = {"source", "table", "path", "owner", "description", "max_rows", "approval", "columns",
                "row_filters"}


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str
    owner: str
    description: str = ""
    max_rows: int = DEFAULT_MAX_ROWS
    approval: str = "none"  # or "required"
    table: str | None = None  # SQL sources: "schema.table" or "table"
    path: str | None = None  # HTTP sources: path prefix under the base URL
    column_classes: Mapping[str, str] = field(default_factory=dict)
    row_filters: Mapping[str, RowFilter] = field(default_factory=dict)  # role (or agent, or "*") -> filter

    @property
    def classes(self) -> frozenset[str]:
        return frozenset(self.column_classes.values())


@dataclass(frozen=True)
class Catalog:
    datasets: Mapping[str, Dataset]

    def get(self, name: str) -> Dataset | None:
        return self.datasets.get(name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.datasets.values())


def load_catalog(path: Path, sources: Mapping[str, SourceSettings]) -> Catalog:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"invalid TOML: {exc}") from None
    for key in raw:
        if key != "datasets":
            raise ConfigError(path, key, "unknown key (expected [datasets.NAME] tables)")
    tables = raw.get("datasets", {})
    if not isinstance(tables, dict):
        raise ConfigError(path, "datasets", "must be a table")
    return Catalog({name: _dataset(path, name, body, sources) for name, body in tables.items()})


def _dataset(path: Path, name: str, body: Any, sources: Mapping[str, SourceSettings]) -> Dataset:
    key = f"datasets.{name}"
    if not _NAME.match(name):
        raise ConfigError(path, key, "a dataset name is letters, digits, '_', '.', '-' (starting with a letter)")
    if not isinstance(body, dict):
        raise ConfigError(path, key, "must be a table")
    for k in body:
        if k not in DATASET_KEYS:
            raise ConfigError(path, f"{key}.{k}",
                              f"unknown key (expected one of: {', '.join(sorted(DATASET_KEYS))})")
    owner = _text(path, key, body, "owner")
    if not owner or not owner.strip():
        raise ConfigError(path, f"{key}.owner", "is required: every dataset names an owner")
    source_name = _text(path, key, body, "source", required=True)
    assert source_name is not None
    source = sources.get(source_name)
    if source is None:
        known = ", ".join(sorted(sources)) or "none configured"
        raise ConfigError(path, f"{key}.source", f"unknown source {source_name!r} (known: {known})")
    max_rows = body.get("max_rows", DEFAULT_MAX_ROWS)
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or not 1 <= max_rows <= 100_000:
        raise ConfigError(path, f"{key}.max_rows", "must be a whole number from 1 to 100000")
    approval = body.get("approval", "none")
    if approval not in APPROVALS:
        raise ConfigError(path, f"{key}.approval", 'must be "none" or "required"')
    table, prefix = _location(path, key, body, source_name, source.kind)
    classes = _column_classes(path, key, body.get("columns", {}))
    description = body.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(path, f"{key}.description", "must be a string")
    return Dataset(name=name, source=source_name, owner=owner.strip(), description=description,
                   max_rows=max_rows, approval=approval, table=table, path=prefix, column_classes=classes,
                   row_filters=_row_filters(path, key, body.get("row_filters", {}), table is not None))


def _text(path: Path, key: str, body: dict[str, Any], k: str, required: bool = False) -> str | None:
    v = body.get(k)
    if v is None:
        if required:
            raise ConfigError(path, f"{key}.{k}", "is required")
        return None
    if not isinstance(v, str) or (required and not v.strip()):
        raise ConfigError(path, f"{key}.{k}", "must be a non-empty string")
    return v


def _location(path: Path, key: str, body: dict[str, Any], source_name: str,
              kind: str) -> tuple[str | None, str | None]:
    """Where the dataset lives on its source: (table, None) on a SQL source, (None, path prefix) on an HTTP one."""
    table, prefix = _text(path, key, body, "table"), _text(path, key, body, "path")
    if kind == "sql":
        if not table:
            raise ConfigError(path, f"{key}.table", f"is required for the SQL source {source_name!r}")
        if prefix is not None:
            raise ConfigError(path, f"{key}.path", "only datasets on HTTP sources take a path")
        if table.count(".") > 1 or not all(table.split(".")):
            raise ConfigError(path, f"{key}.table", "must be schema.table or table")
        return table, None
    if not prefix:
        raise ConfigError(path, f"{key}.path", f"is required for the HTTP source {source_name!r}")
    if table is not None:
        raise ConfigError(path, f"{key}.table", "only datasets on SQL sources take a table")
    if not prefix.startswith("/") or ".." in prefix.split("/") or "?" in prefix or "#" in prefix:
        raise ConfigError(path, f"{key}.path", "must be an absolute path such as /tickets")
    return None, prefix.rstrip("/")


def _column_classes(path: Path, key: str, columns: Any) -> dict[str, str]:
    """[datasets.NAME.columns.COLUMN] class = "pii" -> column -> class."""
    if not isinstance(columns, dict):
        raise ConfigError(path, f"{key}.columns", "must be a table of [datasets.NAME.columns.COLUMN]")
    classes: dict[str, str] = {}
    for col, spec in columns.items():
        ckey = f"{key}.columns.{col}"
        if not isinstance(spec, dict):
            raise ConfigError(path, ckey, "must be a table with a class")
        for k in spec:
            if k != "class":
                raise ConfigError(path, f"{ckey}.{k}", "unknown key (expected: class)")
        cls = spec.get("class")
        if not isinstance(cls, str) or not _CLASS.match(cls):
            raise ConfigError(path, f"{ckey}.class", "must be a class name such as pii")
        classes[col] = cls
    return classes


def _row_filters(path: Path, key: str, raw: Any, sql: bool) -> dict[str, RowFilter]:
    """[datasets.NAME.row_filters]: role = "filter" (see gateway/policy/rowfilters.py)."""
    if not isinstance(raw, dict):
        raise ConfigError(path, f"{key}.row_filters", 'must be a table of role = "filter"')
    if raw and not sql:
        raise ConfigError(path, f"{key}.row_filters", "only datasets on SQL sources take row filters")
    out: dict[str, RowFilter] = {}
    for role, text in raw.items():
        fkey = f"{key}.row_filters.{role}"
        if not role.strip():
            raise ConfigError(path, fkey, "a row filter is keyed by a role, an agent or \"*\"")
        if not isinstance(text, str):
            raise ConfigError(path, fkey, 'must be a filter such as "region = {claims.region}"')
        try:
            out[role] = parse_filter(text, role)
        except FilterSyntaxError as exc:
            raise ConfigError(path, fkey, str(exc)) from None
    return out
