"""/mcp: the Model Context Protocol (streamable HTTP, official `mcp` SDK) on the one read path.

Every tool call builds a ReadRequest with the HTTP request's own Authorization header and
``transport="mcp"`` and hands it to ``Gateway.handle``: the same authentication, revocations, policy,
masking and one audit record as the HTTP API. Requests without a valid token are refused with 401 before
the SDK sees them, and that refusal is recorded through the core too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mcp import types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from gateway.api.http import new_request_id, raw_json
from gateway.core import ACTIONS, Answer, Gateway, ReadRequest
from gateway.errors import BadRequest, GatewayError, NotFound

QUERY_KEYS = ("columns", "where", "order_by", "limit", "cursor")
# The `sql` tool stands for the core's operation "sql" (SQL mode): offered only where the core has it.
CORE_HAS_SQL = "sql" in ACTIONS
_PASS = {"work_unit": {"type": "string", "description": "the work unit this read serves (recorded in the audit)"},
         "approval_id": {"type": "string", "description": "a person's approval, for datasets that need one"}}

LIST_TOOL = types.Tool(
    name="list_datasets", description="The datasets this agent may read, with their columns.",
    input_schema={"type": "object", "properties": {}})
DESCRIBE_TOOL = types.Tool(
    name="describe_dataset", description="One dataset: description, owner, columns (with class and type), max_rows.",
    input_schema={"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]})
QUERY_TOOL = types.Tool(
    name="query_dataset",
    description="Read rows of a dataset: columns, where ([[column, operator, value], ...]), order_by (column "
                "names, '-name' for descending), limit, cursor (a page's next_cursor). "
                "Columns this agent may not see come back null and are named in `masked`.",
    input_schema={"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"},
        "columns": {"type": "array", "items": {"type": "string"}},
        "where": {"type": "array", "items": {"type": "array"}},
        "order_by": {"type": "array", "items": {"type": "string"}},
        "limit": {"type": "integer", "minimum": 1},
        "cursor": {"type": "string"},
        **_PASS}})
SQL_TOOL = types.Tool(
    name="sql", description="One SELECT over datasets standing as tables (SQL mode); masked columns come back null.",
    input_schema={"type": "object", "required": ["sql"], "properties": {"sql": {"type": "string"}, **_PASS}})


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def tool_request(name: str, arguments: Mapping[str, Any] | None, authorization: str | None, *,
                 sql: bool = False) -> ReadRequest:
    """The ReadRequest a tool call stands for (an unknown tool or bad arguments still reach the core, which
    refuses them and records the refusal)."""
    args = dict(arguments or {})
    common: dict[str, Any] = {"request_id": new_request_id(), "authorization": authorization, "transport": "mcp"}
    if name == "list_datasets":
        return ReadRequest(operation="list", **common)
    if name == "sql" and sql:
        return ReadRequest(operation="sql", body=json.dumps({"sql": args.get("sql")}).encode(),
                           work_unit=_text(args.get("work_unit")), approval_id=_text(args.get("approval_id")),
                           **common)
    if name not in ("describe_dataset", "query_dataset"):
        return ReadRequest(operation="unknown", route_error=NotFound(f"no such tool: {name[:100]!r}"), **common)
    dataset = args.get("name")
    error: GatewayError | None = None
    if not isinstance(dataset, str) or not dataset:
        dataset, error = None, BadRequest("argument 'name' (a dataset name) is required")
    if name == "describe_dataset":
        return ReadRequest(operation="describe", dataset=dataset, route_error=error, **common)
    for key in ("work_unit", "approval_id"):
        if args.get(key) is not None and not isinstance(args.get(key), str):
            error = error or BadRequest(f"argument {key!r} must be a string")
    body = json.dumps({k: args[k] for k in QUERY_KEYS if args.get(k) is not None}).encode()
    return ReadRequest(operation="query", dataset=dataset, body=body, work_unit=_text(args.get("work_unit")),
                       approval_id=_text(args.get("approval_id")), route_error=error, **common)


def tool_result(answer: Answer) -> types.CallToolResult:
    """The core's JSON answer as the tool's structured result; a refusal (>= 400, or 202 pending approval) is a
    tool error carrying the core's error object."""
    payload = dict(answer.payload) if answer.payload is not None else {}
    failed = answer.status >= 400 or answer.status == 202
    text = answer.body.decode("utf-8", errors="replace") if answer.payload is not None else json.dumps(payload)
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=payload,
                                is_error=failed)


def _authorization(ctx: ServerRequestContext[Any, Any]) -> str | None:
    request = ctx.request
    headers = getattr(request, "headers", None)
    if headers is None:
        return None
    value = headers.get("authorization")
    return value if isinstance(value, str) else None


def build_server(gateway: Gateway, *, sql_enabled: bool = False) -> Server[Any]:
    sql = sql_enabled and CORE_HAS_SQL

    async def list_tools(ctx: ServerRequestContext[Any, Any],
                         params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        # Only the tools this agent may use: the data tools only if it may read at least one dataset.
        answer = await gateway.handle(ReadRequest(request_id=new_request_id(), operation="list",
                                                  authorization=_authorization(ctx), transport="mcp"))
        if answer.status != 200 or answer.payload is None:
            return types.ListToolsResult(tools=[])
        tools = [LIST_TOOL]
        if answer.payload.get("datasets"):
            tools += [DESCRIBE_TOOL, QUERY_TOOL, *([SQL_TOOL] if sql else [])]
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: ServerRequestContext[Any, Any],
                        params: types.CallToolRequestParams) -> types.CallToolResult:
        req = tool_request(params.name, params.arguments, _authorization(ctx), sql=sql)
        return tool_result(await gateway.handle(req))

    return Server("agentgate", on_list_tools=list_tools, on_call_tool=call_tool)


def session_manager(gateway: Gateway, max_body_bytes: int, *, sql_enabled: bool = False
                    ) -> StreamableHTTPSessionManager:
    """Stateless, JSON answers, bodies capped like the HTTP API's. DNS-rebinding protection is off: every
    request must carry a bearer token, which a browser never adds on its own, so a rebound page gets 401."""
    return StreamableHTTPSessionManager(
        app=build_server(gateway, sql_enabled=sql_enabled), stateless=True, json_response=True,
        max_request_body_size=max_body_bytes,
        security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False))


class McpEndpoint:
    """ASGI app at /mcp: refuse a request without a valid, unrevoked token (401, recorded through the core),
    then hand it to the SDK's session manager (app.state.mcp, run by the app's lifespan)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        gateway: Gateway = state.gateway
        authorization = Headers(scope=scope).get("authorization")
        try:
            agent = await gateway.auth.authenticate(authorization)
            gateway.revocations.check(agent)
        except GatewayError:
            request_id = new_request_id()
            answer = await gateway.handle(ReadRequest(request_id=request_id, operation="list",
                                                      authorization=authorization, transport="mcp"))
            await raw_json(answer.status, answer.body, request_id, answer.headers)(scope, receive, send)
            return
        manager: StreamableHTTPSessionManager = state.mcp
        await manager.handle_request(scope, receive, send)
