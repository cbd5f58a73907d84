"""The tools /mcp offers, as an MCP client sees them in tools/list: name, title, description, annotations, the
arguments each takes (input schema: REST's path, headers and body) and what each answers (output schema).

A tool's structured result is REST's answer to the same request: the page, the dataset, the list; or, when the
call is refused (isError), REST's error body. Clients that check structured content against the output schema
check error results too (the TypeScript SDK's client does), so each output schema admits both: the answer
(core.schemas, the shapes the OpenAPI document gives) or the error body.
"""

from __future__ import annotations

from typing import Any

from mcp import types

from gateway import sqlmode
from gateway.core import query, schemas

# Arguments that are not the REST body: the dataset (REST's path) and the X-Work-Unit / X-Approval-Id headers.
PASSED = {"work_unit": {"type": "string", "description": "the work unit this read serves (recorded in the audit)"},
          "approval_id": {"type": "string", "description": "a person's approval, for datasets that need one"}}
_NAME = {"name": {"type": "string", "minLength": 1, "description": "the dataset's name"}}
# The arguments of each tool that are not the REST body.
NOT_BODY: dict[str, tuple[str, ...]] = {"list_datasets": (), "describe_dataset": ("name",),
                                        "query_dataset": ("name", *PASSED), "sql": (*PASSED,)}


def _schema(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    # additionalProperties false: what the tool does not take is refused (a misspelt `wher` would otherwise
    # read unfiltered rows), and says so to clients that check arguments before sending them.
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


def _answers(answer: schemas.Schema) -> dict[str, Any]:
    """The answer, or the error body of a refusal (an approval's id beside it, for a 202). An object at the root,
    as the protocol before 2026-07-28 requires; the answer's $defs lifted there, where its $refs point."""
    inner = {k: v for k, v in answer.items() if k != "$defs"}
    out: dict[str, Any] = {"type": "object", "anyOf": [inner, schemas.error()]}
    if "$defs" in answer:
        out["$defs"] = answer["$defs"]
    return out


def _tool(name: str, title: str, description: str, arguments: dict[str, Any], answer: schemas.Schema
          ) -> types.Tool:
    # Every tool reads, and only what the policy names (a closed world: the catalog's datasets); asking again
    # changes nothing but the audit trail and the budget.
    hints = types.ToolAnnotations(title=title, read_only_hint=True, open_world_hint=False)
    return types.Tool(name=name, title=title, description=description, input_schema=arguments,
                      output_schema=_answers(answer), annotations=hints)


LIST_TOOL = _tool(
    "list_datasets", "List datasets", "The datasets this agent may read, with their columns.",
    _schema({}), schemas.DATASETS)
DESCRIBE_TOOL = _tool(
    "describe_dataset", "Describe a dataset",
    "One dataset: description, owner, columns (with class and type), max_rows.",
    _schema(_NAME, ("name",)), schemas.DATASET)
QUERY_TOOL = _tool(
    "query_dataset", "Read rows of a dataset",
    "Read rows of a dataset: columns, where ([[column, operator, value], ...]), order_by (column "
    "names, '-name' for descending), limit, cursor (a page's next_cursor). "
    "Columns this agent may not see come back null and are named in `masked`.",
    _schema({
        **_NAME,
        **query.BODY_SCHEMA["properties"],  # REST's body, as its parser states it (core/query.py)
        **PASSED}, ("name",)),
    schemas.ROWS)
SQL_TOOL = _tool(
    "sql", "Read with SQL", "One SELECT over datasets standing as tables (SQL mode); masked columns come back null.",
    _schema({**sqlmode.BODY_SCHEMA["properties"], **PASSED}, ("sql",)), schemas.ROWS)
TOOLS = {tool.name: tool for tool in (LIST_TOOL, DESCRIBE_TOOL, QUERY_TOOL, SQL_TOOL)}

# serverInfo's description, and the instructions a client may hand its model.
DESCRIPTION = "A data-access gateway: every read authorised by policy, masked, budgeted and audited."
INSTRUCTIONS = (
    "Read-only access to the datasets this agent's policy allows. Start with list_datasets (or describe_dataset) "
    "to learn the names and columns, then query_dataset. A column this agent may not see comes back null and is "
    "named in `masked`. A refused call is a tool error whose structured result is {\"error\": {\"code\", "
    "\"message\", \"request_id\"}}; code approval_pending carries an approval_id: once a person approves it, call "
    "again with the same arguments and approval_id. Pass work_unit to say which task a read serves.")
