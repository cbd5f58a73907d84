"""/mcp: the Model Context Protocol (streamable HTTP, official `mcp` SDK) on the one read path.

Every tool call builds a ReadRequest with the HTTP request's own Authorization header and
``transport="mcp"`` and hands it to ``Gateway.handle``: the same authentication, revocations, policy,
masking and one audit record as the HTTP API. A tool's arguments are REST's path, headers and body: nothing
is dropped, the core parses the body as REST's, and the record's ``query`` holds the arguments as sent.
Requests without a valid token (or over the body limit) are refused before the SDK sees them, through the
core too, as a JSON-RPC error an MCP client shows; a tools/call the SDK itself refuses is recorded as well.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pydantic_core
from mcp import MCPError, types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import INVALID_PARAMS
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive, Scope, Send

from gateway import __version__
from gateway.common.errors import BadRequest, GatewayError, NotFound
from gateway.core import operations
from gateway.core.pipeline import Gateway
from gateway.core.types import Answer, ReadRequest
from gateway.transports import caller
from gateway.transports.http import exchange, new_request_id, raw_json, read_asgi_body
from gateway.transports.mcptools import (
    DESCRIBE_TOOL,
    DESCRIPTION,
    INSTRUCTIONS,
    LIST_TOOL,
    NOT_BODY,
    PASSED,
    QUERY_TOOL,
    SQL_TOOL,
    TOOLS,
)

# The `sql` tool stands for the core's operation "sql" (SQL mode): offered only where the core has it.
CORE_HAS_SQL = "sql" in operations.OPERATIONS
# The operation each tool stands for (core.operations declares its tool).
_OPERATIONS = {op.tool: op.name for op in operations.ALL if op.tool is not None}


def tool_request(name: str, arguments: Mapping[str, Any] | None, authorization: str | None, *,
                 sql: bool = False, max_body_bytes: int = 1_048_576) -> ReadRequest:
    """The ReadRequest a tool call stands for. Nothing is dropped: for `query_dataset` and `sql`, every argument
    but `name`, `work_unit` and `approval_id` is the REST body, which the core parses as it parses REST's (an
    unknown key or a wrong type is the same 400, with the same message); `list_datasets` and
    `describe_dataset` take nothing else. Bad arguments and unknown tools still reach the core, which
    refuses them and records the refusal with the arguments as sent."""
    args = dict(arguments or {})
    error: GatewayError | None = None
    try:
        recorded, too_large = _recorded(arguments, max_body_bytes)
    except RecursionError:  # nested past what json writes (the SDK's own parser stops near 200 levels)
        recorded, too_large = None, False
        error, args = BadRequest("the arguments are nested too deeply"), {}
    common: dict[str, Any] = {"request_id": new_request_id(), "authorization": authorization, "transport": "mcp",
                              "recorded_query": recorded, "body_too_large": too_large}
    operation = _OPERATIONS.get(name) if name != "sql" or sql else None
    if operation is None:
        return ReadRequest(operation="unknown", route_error=NotFound(f"no such tool: {name[:100]!r}"), **common)
    dataset: str | None = None
    if "name" in NOT_BODY[name] and error is None:
        dataset = args.get("name")
        if dataset is None or dataset == "":
            dataset, error = None, BadRequest("argument 'name' (a dataset name) is required")
        elif not isinstance(dataset, str):
            dataset, error = None, BadRequest("argument 'name' must be a dataset name (a string)")
    passed: dict[str, str | None] = {}
    for key in PASSED:
        value = args.get(key)
        if key in NOT_BODY[name] and value is not None and not isinstance(value, str):
            error = error or BadRequest(f"argument {key!r} must be a string")
        passed[key] = value if isinstance(value, str) and value else None
    if operation in ("list", "describe"):
        unknown = sorted(set(args) - set(NOT_BODY[name]))
        if unknown:  # the form of REST's answer to an unknown body key
            expected = ", ".join(NOT_BODY[name]) or "no arguments"
            error = error or BadRequest(f"unknown key {unknown[0]!r} (expected: {expected})")
        return ReadRequest(operation=operation, dataset=dataset, route_error=error, **common)
    body = {k: v for k, v in args.items() if k not in NOT_BODY[name]}
    return ReadRequest(operation=operation, dataset=dataset, body=_json(body).encode(), route_error=error,
                       work_unit=passed["work_unit"], approval_id=passed["approval_id"], **common)


def _json(value: Any) -> str:
    """JSON text as a reviewer reads it; a lone surrogate (which UTF-8 cannot store) escaped instead."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, separators=(",", ":"))
    return text


def _recorded(arguments: Any, max_body_bytes: int) -> tuple[str | None, bool]:
    """The arguments as sent, for the audit record's `query`; over the body limit they are refused (413) and not
    kept, as a REST body over it is."""
    if arguments is None:
        return None, False
    text = _json(arguments)
    if len(text.encode("utf-8")) > max_body_bytes:
        return None, True
    return text, False


def tool_result(answer: Answer) -> types.CallToolResult:
    """The core's JSON answer as the tool's structured result; a refusal (>= 400, or 202 pending approval) is a
    tool error carrying the core's error object."""
    payload = dict(answer.payload) if answer.payload is not None else {}
    failed = answer.status >= 400 or answer.status == 202
    text = answer.body.decode("utf-8", errors="replace") if answer.payload is not None else json.dumps(payload)
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=payload,
                                is_error=failed)


def _called(ctx: ServerRequestContext[Any, Any]) -> dict[str, Any]:
    """Who called, for the record: the HTTP request carrying the MCP message (its peer, or a trusted proxy's
    X-Forwarded-For; its User-Agent and traceparent, else the message's own `_meta.traceparent`), and the
    request id its answer carries (the first call's; transports/http.py Exchange)."""
    scope = getattr(ctx.request, "scope", None)
    if not isinstance(scope, dict) or "app" not in scope:
        return {"request_id": new_request_id()}
    who = caller.from_scope(scope, scope["app"].state.proxies)
    meta = ctx.meta.get("traceparent") if isinstance(ctx.meta, Mapping) else None
    if who.trace_id is None and isinstance(meta, str):
        trace, parent, flags = caller.trace_parent(meta)
        who = replace(who, trace_id=trace, parent_span=parent, trace_flags=flags)
    return {"request_id": exchange(scope).call_id(), **_fields(who)}


def _answered(ctx: ServerRequestContext[Any, Any], answer: Answer) -> Answer:
    """The core's answer, its traceparent kept for the HTTP answer the SDK sends (transports/http.py stamped)."""
    scope = getattr(ctx.request, "scope", None)
    if isinstance(scope, dict):
        exchange(scope).answered(answer.headers)
    return answer


def _fields(who: caller.Caller) -> dict[str, Any]:
    return {"client": who.client, "user_agent": who.user_agent, "trace_id": who.trace_id,
            "parent_span": who.parent_span, "trace_flags": who.trace_flags}


def _authorization(ctx: ServerRequestContext[Any, Any]) -> str | None:
    request = ctx.request
    headers = getattr(request, "headers", None)
    if headers is None:
        return None
    value = headers.get("authorization")
    return value if isinstance(value, str) else None


def build_server(gateway: Gateway, *, sql_enabled: bool = False, max_body_bytes: int = 1_048_576) -> Server[Any]:
    sql = sql_enabled and CORE_HAS_SQL

    async def list_tools(ctx: ServerRequestContext[Any, Any],
                         params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        # Only the tools this agent may use: the data tools only if it may read at least one dataset.
        answer = _answered(ctx, await gateway.handle(ReadRequest(operation="list", authorization=_authorization(ctx),
                                                                 transport="mcp", **_called(ctx))))
        if answer.status != 200 or answer.payload is None:
            return types.ListToolsResult(tools=[])
        tools = [LIST_TOOL]
        if answer.payload.get("datasets"):
            tools += [DESCRIBE_TOOL, QUERY_TOOL, *([SQL_TOOL] if sql else [])]
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: ServerRequestContext[Any, Any],
                        params: types.CallToolRequestParams) -> types.CallToolResult:
        req = tool_request(params.name, params.arguments, _authorization(ctx), sql=sql,
                           max_body_bytes=max_body_bytes)
        return tool_result(_answered(ctx, await gateway.handle(replace(req, **_called(ctx)))))

    # The schemas are fixed: given here, the SDK's check of Mcp-Param-* headers (protocol 2026-07-28) does not
    # call list_tools, which would ask the core and leave a second record for one tool call.
    server: Server[Any] = Server("agentgate", version=__version__, title="agentgate", description=DESCRIPTION,
                                 instructions=INSTRUCTIONS, on_list_tools=list_tools, on_call_tool=call_tool,
                                 get_tool_input_schema=lambda name: TOOLS[name].input_schema if name in TOOLS else None)
    server.middleware.append(RecordRefusedCalls(gateway))
    return server


class RecordRefusedCalls:
    """A tools/call the SDK refuses before `call_tool` runs (arguments that are not an object, no tool name) is
    a tool call all the same: refused through the core, so it leaves its one record, and answered with the
    core's message and error body (JSON-RPC invalid params)."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method != "tools/call" or ctx.request_id is None:
            return await call_next(ctx)
        try:
            return await call_next(ctx)
        except (ValidationError, MCPError) as exc:
            # call_tool never raises these (the core answers every failure), so the SDK refused the call.
            if isinstance(exc, MCPError) and exc.error.code != INVALID_PARAMS:
                raise
            params: Any = ctx.params
            if isinstance(params, Mapping):
                params = {k: v for k, v in params.items() if k != "_meta"}
            name = params.get("name") if isinstance(params, dict) else None
            try:
                recorded: str | None = _json(params)
            except RecursionError:
                recorded = None
            answer = _answered(ctx, await self.gateway.handle(ReadRequest(
                operation=_OPERATIONS.get(name, "unknown") if isinstance(name, str)
                else "unknown", authorization=_authorization(ctx), transport="mcp", recorded_query=recorded,
                **_called(ctx),
                route_error=BadRequest("a tools/call takes the tool's name (a string) and its arguments (an object)"))))
            payload = dict(answer.payload or {})
            message = str(payload.get("error", {}).get("message", ""))
            raise MCPError(code=INVALID_PARAMS, message=message, data=payload) from None


def session_manager(gateway: Gateway, max_body_bytes: int, *, sql_enabled: bool = False
                    ) -> StreamableHTTPSessionManager:
    """Stateless, JSON answers, bodies capped like the HTTP API's. DNS-rebinding protection is off: every
    request must carry a bearer token, which a browser never adds on its own, so a rebound page gets 401."""
    return StreamableHTTPSessionManager(
        app=build_server(gateway, sql_enabled=sql_enabled, max_body_bytes=max_body_bytes), stateless=True,
        json_response=True,
        max_request_body_size=max_body_bytes,
        security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False))


# JSON-RPC's range for errors a server defines: the gateway refused the request (data: its error object).
REFUSED = -32010


class McpEndpoint:
    """ASGI app at /mcp: refuse a body over the size limit (413) and a request without a valid token, or of a
    revoked agent (401 / 403), through the core, which records the refusal; else hand the request to the SDK's
    session manager (app.state.mcp, run by the app's lifespan). A refusal keeps its HTTP status and headers and
    is a JSON-RPC error an MCP client shows: message the gateway's, data the gateway's error object."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        gateway: Gateway = state.gateway
        headers = Headers(scope=scope)
        authorization = headers.get("authorization")
        body, too_large = b"", False
        if scope["method"] == "POST":  # read here, bounded, so that an oversized body is refused on the trail
            try:
                body, too_large = await read_asgi_body(receive, state.settings.server.max_body_bytes,
                                                       headers.get("content-length"))
            except ClientDisconnect:
                return
        if not too_large:
            try:
                agent = await gateway.auth.authenticate(authorization)
                await gateway.admit(agent)  # the core's own check after the token: a role's name, a revocation
            except GatewayError:
                pass
            else:
                refused = _unreadable_call(body, authorization, scope)
                if refused is None:
                    manager: StreamableHTTPSessionManager = state.mcp
                    await manager.handle_request(scope, _replay(body, receive), send)
                    return
                answer = await gateway.handle(refused)
                await raw_json(answer.status, _refusal(answer, body), refused.request_id, answer.headers)(
                    scope, receive, send)
                return
        request_id = exchange(scope).call_id()
        answer = await gateway.handle(ReadRequest(request_id=request_id, operation="list", body_too_large=too_large,
                                                  authorization=authorization, transport="mcp",
                                                  **_fields(caller.from_scope(scope, state.proxies))))
        await raw_json(answer.status, _refusal(answer, body), request_id, answer.headers)(scope, receive, send)


# What the SDK's JSON parser (pydantic_core.from_json) refuses in a body Python's json reads: a lone surrogate
# (an escape \ud800-\udfff not in a pair, or its three UTF-8 bytes) and nesting past its depth limit (200).
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_SDK_DEPTH_HINT = 190  # opening brackets: fewer cannot nest past the SDK's limit


def _unreadable_call(body: bytes, authorization: str | None, scope: Scope) -> ReadRequest | None:
    """A tools/call the SDK's parser cannot read, though it is JSON: a lone surrogate in it (REST refuses such a
    value with 400), or arguments nested past the parser's depth limit. The SDK answers those with a parse error
    before it sees a tool call, and nothing would record them; they are refused through the core instead, as a
    call with bad arguments (400, one record). Everything else goes to the SDK as it is. The two parses here
    run only for bodies that hint at either (a regular expression and a count, in C)."""
    suspect = (b"\\u" in body or b"\xed" in body) and _SURROGATE_HINT.search(body) is not None
    if not suspect and body.count(b"[") + body.count(b"{") < _SDK_DEPTH_HINT:
        return None
    try:
        pydantic_core.from_json(body)
        return None  # the SDK reads it (a surrogate pair written as two escapes, brackets in strings)
    except ValueError:
        pass
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON at all: no tool call to speak of (the SDK's parse error answers it)
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        return None
    params = message.get("params")
    try:
        recorded: str | None = _json(params)
    except RecursionError:
        recorded = None
    name = params.get("name") if isinstance(params, dict) else None
    return ReadRequest(
        request_id=exchange(scope).call_id(),
        operation=_OPERATIONS.get(name, "unknown") if isinstance(name, str) else "unknown",
        authorization=authorization, transport="mcp", recorded_query=recorded,
        route_error=BadRequest("the call cannot be read: it holds a lone surrogate (a \\ud800-\\udfff escape not "
                               "in a pair) or is nested too deeply"),
        **_fields(caller.from_scope(scope, scope["app"].state.proxies)))


def _replay(body: bytes, receive: Receive) -> Receive:
    """The request's body, already read, handed to the SDK as if it came off the wire."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _refusal(answer: Answer, body: bytes) -> bytes:
    """The core's error answer as a JSON-RPC error response to the request's id (null when it had none): the
    core's bytes, unchanged, are its `data`, so the record's response_sha256 still covers them."""
    message = ((answer.payload or {}).get("error") or {}).get("message", "")
    return b"".join((b'{"jsonrpc":"2.0","id":', json.dumps(_jsonrpc_id(body)).encode(), b',"error":{"code":',
                     str(REFUSED).encode(), b',"message":', json.dumps(message).encode(), b',"data":', answer.body,
                     b"}}"))


def _jsonrpc_id(body: bytes) -> str | int | None:
    try:
        message = json.loads(body) if body else None
    except (ValueError, RecursionError):
        return None
    found = message.get("id") if isinstance(message, dict) else None
    return found if isinstance(found, (str, int)) and not isinstance(found, bool) else None
