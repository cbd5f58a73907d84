"""core.operations: every operation declared once, and every way in built from that one declaration."""

from __future__ import annotations

import pytest
from starlette.routing import Route

from gateway.core import operations
from gateway.core.admin import stream
from gateway.core.operations import ALL, OPERATIONS, SERVED
from gateway.transports import admin, data, mcp

pytestmark = pytest.mark.unit

# The audit record's action of each operation, as the trail has always written it (records are compared by
# action: changing one breaks every reader of the trail).
ACTIONS = {"list": "list", "describe": "describe", "query": "read", "proxy": "read", "sql": "read",
           "revoke": "revoke", "restore": "restore", "list_revocations": "list_revocations",
           "read_audit": "read_audit", "audit_record": "read_audit", "audit_verify": "verify_audit",
           "audit_activity": "read_audit", "audit_export": "export_audit", "audit_review": "read_audit",
           "audit_stream": "follow_audit",
           "list_approvals": "list_approvals",
           "approve": "approve", "deny_approval": "deny", "prune": "prune", "reload": "reload"}


def test_each_operation_is_declared_once_with_its_action() -> None:
    assert len({op.name for op in ALL}) == len(ALL)
    assert {op.name: op.action for op in ALL} == ACTIONS
    assert all(OPERATIONS[op.name] is op for op in ALL)


def test_served_operations_have_a_handler_and_the_command_lines_have_none() -> None:
    assert set(SERVED) == set(ACTIONS) - {"prune", "reload"}
    for name in ("prune", "reload"):
        assert (OPERATIONS[name].handler, OPERATIONS[name].http, OPERATIONS[name].tool) == (None, None, None)


def test_admin_operations_carry_their_permission_and_data_operations_none() -> None:
    for op in ALL:
        web_only = op.handler is not None and op.http is None and op.tool is None  # the review page's view
        if (op.http is not None and op.http.path.startswith("/admin/")) or web_only:
            assert op.permission is not None and op.permission[0].startswith("admin:"), op.name
            assert op.permission[1] in ("read", "write")
        else:
            assert op.permission is None, op.name
    assert OPERATIONS["revoke"].permission == ("admin:revocations", "write")
    assert OPERATIONS["list_revocations"].permission == ("admin:revocations", "write")
    assert OPERATIONS["audit_export"].permission == ("admin:audit", "read")
    assert OPERATIONS["audit_stream"].permission == stream.PERMISSION == ("admin:audit", "read")
    assert OPERATIONS["list_approvals"].permission == ("admin:approvals", "read")
    assert OPERATIONS["deny_approval"].permission == ("admin:approvals", "write")


def _paths(routes: list[Route]) -> list[str]:
    return [r.path for r in routes]


def test_the_http_routes_are_the_registrys_in_route_order() -> None:
    assert _paths(data.routes) == ["/v1/datasets", "/v1/datasets/{name}", "/v1/datasets/{name}/query",
                                   "/v1/datasets/{name}/proxy/{path:anypath}", "/v1/sql", "/v1/{rest:anypath}"]
    assert _paths(admin.routes) == [
        "/admin/v1/revocations", "/admin/v1/revocations/{id}", "/admin/v1/audit", "/admin/v1/audit/verify",
        "/admin/v1/audit/activity", "/admin/v1/audit/export", "/admin/v1/audit/stream", "/admin/v1/audit/{id}",
        "/admin/v1/approvals",
        "/admin/v1/approvals/{id}/approve", "/admin/v1/approvals/{id}/deny", "/admin/v1/{rest:anypath}"]
    served = {op.http.path for op in ALL if op.http is not None}
    assert served == set(_paths(data.routes) + _paths(admin.routes)) - {"/v1/{rest:anypath}",
                                                                         "/admin/v1/{rest:anypath}"}
    assert [(op.name, http.method) for op, http in operations.under("/admin/v1/revocations")] == [
        ("list_revocations", "GET"), ("revoke", "POST"), ("restore", "DELETE")]


def test_the_query_fast_path_matches_the_query_route() -> None:
    def scope(path: str, method: str = "POST") -> dict[str, object]:
        return {"type": "http", "method": method, "path": path}

    assert data.query_route(scope("/v1/datasets/orders/query")) == "orders"
    assert data.query_route(scope("/v1/datasets/orders/query", "GET")) is None
    assert data.query_route(scope("/v1/datasets/a/b/query")) is None
    assert data.query_route(scope("/v1/datasets//query")) is None


def test_each_mcp_tool_stands_for_the_operation_that_names_it() -> None:
    tools = {op.tool: op.name for op in ALL if op.tool is not None}
    assert tools == {"list_datasets": "list", "describe_dataset": "describe", "query_dataset": "query",
                     "sql": "sql"}
    assert set(mcp.TOOLS) == set(tools)
    assert mcp.CORE_HAS_SQL
    request = mcp.tool_request("describe_dataset", {"name": "orders"}, "Bearer x")
    assert (request.operation, request.dataset, request.transport) == ("describe", "orders", "mcp")
