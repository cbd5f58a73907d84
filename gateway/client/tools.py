"""The datasets an agent may read as tool definitions for a model's function calling, and a tool call back into
query() arguments.

One tool per dataset with known columns, `query_<dataset>`, its parameters a JSON schema of the query body with
the dataset's columns as enums. `where` terms are objects (`{"column", "operator", "value"}`) in the tool: a
schema can enumerate an object's fields where the common function-calling APIs take no tuple schemas; the call
turns them back into the API's `[column, operator, value]`. Datasets with no columns listed (HTTP datasets)
get no tool: read them with `proxy()`.

Names keep to what those APIs accept (^[a-zA-Z0-9_-]{1,64}$) and never collide: a dataset name's other
characters become `_`, and a name already taken gets `_2`, `_3`... (datasets in name order, so the same
catalog always gives the same names)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.client.answers import Column, Dataset

OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "in", "not in", "like", "is null", "is not null")
NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_NAME = 64
MAX_DESCRIPTION = 1024
STYLES = ("openai", "anthropic")
QUERY_KEYS = ("columns", "where", "order_by", "limit", "cursor")


def definitions(datasets: Sequence[Dataset], style: str = "openai") -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The tool definitions, and which dataset each tool name reads. `style`: "openai" (`{"type": "function",
    "function": {name, description, parameters}}`, also what most frameworks take) or "anthropic"
    (`{name, description, input_schema}`)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}")
    tools: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for ds in sorted(datasets, key=lambda d: d["name"]):
        columns = [c["name"] for c in ds.get("columns") or []]
        if not columns:
            continue
        name = tool_name(ds["name"], names)
        names[name] = ds["name"]
        text, schema = describe(ds), parameters(ds, columns)
        tools.append({"type": "function", "function": {"name": name, "description": text, "parameters": schema}}
                     if style == "openai" else {"name": name, "description": text, "input_schema": schema})
    return tools, names


def tool_name(dataset: str, taken: Mapping[str, str]) -> str:
    base = re.sub(r"[^a-zA-Z0-9_-]", "_", f"query_{dataset}")[:MAX_NAME]
    name, n = base, 1
    while name in taken:
        n += 1
        suffix = f"_{n}"
        name = base[:MAX_NAME - len(suffix)] + suffix
    return name


def describe(ds: Dataset) -> str:
    columns = ", ".join(_column(c) for c in ds["columns"])
    about = (ds.get("description") or "").strip().rstrip(".")
    parts = [f"Read rows of the dataset {ds['name']!r}" + (f": {about}." if about else ".")]
    parts.append(f"Owner: {ds['owner']}. Columns: {columns}.")
    if any(c.get("class") for c in ds["columns"]):
        parts.append("Columns with a class come back null (listed in 'masked') unless this agent may read that "
                     "class, and cannot then be filtered or ordered on.")
    if "max_rows" in ds:
        parts.append(f"At most {ds['max_rows']} rows a call; pass 'next_cursor' back as 'cursor' for more.")
    if ds.get("approval") == "required":
        parts.append("Needs a person's approval: the first call answers pending with an approval id.")
    text = " ".join(parts)
    return text if len(text) <= MAX_DESCRIPTION else text[:MAX_DESCRIPTION - 3] + "..."


def _column(column: Column) -> str:
    kind = " ".join(filter(None, [column.get("type"), f"class {column['class']}" if column.get("class") else None]))
    return f"{column['name']} ({kind})" if kind else column["name"]


def parameters(ds: Dataset, columns: list[str]) -> dict[str, Any]:
    column = {"type": "string", "enum": columns}
    term = {"type": "object", "properties": {
        "column": column, "operator": {"type": "string", "enum": list(OPERATORS)},
        "value": {"description": "what to compare with: a string, number or boolean; a list for 'in' and 'not in'; "
                                 "none for 'is null' and 'is not null'"}},
        "required": ["column", "operator"], "additionalProperties": False}
    limit: dict[str, Any] = {"type": "integer", "minimum": 1, "description": "rows to return (default 100)"}
    if "max_rows" in ds:
        limit["maximum"] = ds["max_rows"]
    return {"type": "object", "properties": {
        "columns": {"type": "array", "items": column, "description": "the columns to return (default: all)"},
        "where": {"type": "array", "items": term, "description": "conditions, all of which a row must meet"},
        "order_by": {"type": "array", "items": {"type": "string", "enum": columns + [f"-{c}" for c in columns]},
                     "description": "columns to sort by; '-name' sorts descending"},
        "limit": limit,
        "cursor": {"type": "string", "description": "the 'next_cursor' of the previous answer, other arguments "
                                                    "unchanged"},
    }, "additionalProperties": False}


def query_arguments(arguments: Mapping[str, Any] | str) -> dict[str, Any]:
    """A tool call's arguments (a model's JSON text or the parsed object) as query() keywords."""
    given = json.loads(arguments) if isinstance(arguments, str) else dict(arguments)
    if not isinstance(given, dict):
        raise ValueError("tool arguments must be a JSON object")
    unknown = sorted(set(given) - set(QUERY_KEYS))
    if unknown:
        raise ValueError(f"unknown tool arguments: {', '.join(unknown)}")
    out = {k: given[k] for k in ("columns", "order_by", "limit", "cursor") if given.get(k) is not None}
    if given.get("where") is not None:
        out["where"] = [_term(t) for t in given["where"]]
    return out


def _term(term: Any) -> list[Any]:
    if not isinstance(term, Mapping):
        return list(term)  # already [column, operator, value]
    if "value" in term and term["operator"] not in ("is null", "is not null"):
        return [term["column"], term["operator"], term["value"]]
    return [term["column"], term["operator"]]
