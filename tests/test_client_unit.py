"""gateway.client without a server: answers mapped to exceptions, the bounds of its loops, tool definitions, and
that it stands apart from the gateway server (an agent imports it alone)."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

import pytest

import gateway.client
from gateway.client import (
    AgentgateError,
    ApprovalPending,
    ApprovalTimeout,
    BadRequest,
    BudgetExceeded,
    Dataset,
    Forbidden,
    InternalError,
    MethodNotAllowed,
    NotFound,
    Page,
    ReadLimitReached,
    SourceError,
    SourceTimeout,
    TooLarge,
    Unauthenticated,
    Unavailable,
)
from gateway.client import tools as client_tools
from gateway.client.bounds import MAX_POLL_INTERVAL, ApprovalWait, Paging
from gateway.client.calls import query_body
from gateway.client.errors import error_from
from gateway.common import errors as server_errors

pytestmark = pytest.mark.unit

CLIENT = Path(gateway.client.__file__).parent

ANSWERED = {BadRequest: 400, Unauthenticated: 401, Forbidden: 403, NotFound: 404, MethodNotAllowed: 405,
            TooLarge: 413, BudgetExceeded: 429, InternalError: 500, SourceError: 502, Unavailable: 503,
            SourceTimeout: 504, ApprovalPending: 202}


def answer(code: str, message: str = "m", request_id: str = "r1", **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "request_id": request_id, **extra}, **extra}


def test_every_code_of_the_gateway_has_its_class() -> None:
    """The server's own hierarchy (gateway/common/errors.py) is the list to cover: each of its codes and
    statuses maps to the client class of that code."""
    server = {cls.code: cls.status for cls in vars(server_errors).values()
              if isinstance(cls, type) and issubclass(cls, server_errors.GatewayError)}
    for code, status in server.items():
        exc = error_from(status, answer(code, approval_id="a" * 32), {"x-request-id": "r1"})
        assert (type(exc).code, exc.status, exc.code, exc.request_id) == (code, status, code, "r1"), code
    assert {cls.code: status for cls, status in ANSWERED.items()} == server


@pytest.mark.parametrize("cls", list(ANSWERED), ids=lambda c: c.__name__)
def test_each_class_carries_status_code_message_and_request_id(cls: type[AgentgateError]) -> None:
    exc = error_from(cls.status, answer(cls.code, "what the gateway said", "req-7"), {})
    assert type(exc) is cls and isinstance(exc, AgentgateError)
    assert (exc.status, exc.code, exc.message, exc.request_id) == (cls.status, cls.code, "what the gateway said",
                                                                    "req-7")
    assert "req-7" in str(exc) and cls.code in str(exc)


def test_the_approval_id_and_retry_after_are_carried() -> None:
    pending = error_from(202, answer("approval_pending", approval_id="f" * 32), {})
    assert isinstance(pending, ApprovalPending) and pending.approval_id == "f" * 32
    spent = error_from(429, answer("budget_exceeded"), {"retry-after": "17"})
    assert isinstance(spent, BudgetExceeded) and spent.retry_after == 17.0
    for odd in ("soon", "nan", "inf", "Wed, 21 Oct 2026 07:28:00 GMT"):
        assert error_from(429, answer("budget_exceeded"), {"retry-after": odd}).retry_after is None


def test_an_unknown_code_maps_to_the_base_class() -> None:
    exc = error_from(418, answer("teapot", "short and stout"), {})
    assert type(exc) is AgentgateError
    assert (exc.status, exc.code, exc.message, exc.request_id) == (418, "teapot", "short and stout", "r1")


def test_an_answer_without_the_error_body_maps_by_status() -> None:
    """A balancer's HTML 503 in front of the gateway is still Unavailable; the request id is the header's."""
    exc = error_from(503, None, {"x-request-id": "hdr"})
    assert type(exc) is Unavailable and exc.request_id == "hdr"
    other = error_from(599, {"detail": "x"}, {})
    assert type(other) is AgentgateError and other.code == "http_599" and other.request_id is None


def test_the_approval_wait_is_bounded_and_slows_down() -> None:
    now = [0.0]
    wait = ApprovalWait(10, 0.5, clock=lambda: now[0])
    pending = ApprovalPending("still pending", approval_id="a1", request_id="r")
    pauses = []
    with pytest.raises(ApprovalTimeout) as ended:
        while True:
            pause = wait.pause(pending)
            pauses.append(pause)
            now[0] += pause
    assert pauses[:3] == [0.5, 0.75, 1.125] and max(pauses) <= MAX_POLL_INTERVAL
    assert sum(pauses) == pytest.approx(10)
    assert ended.value.approval_id == "a1" and isinstance(ended.value, ApprovalPending)
    assert ended.value.__cause__ is pending


def test_the_approval_wait_waits_out_a_budget_only_within_its_time() -> None:
    now = [0.0]
    wait = ApprovalWait(10, 1, clock=lambda: now[0])
    assert wait.pause(BudgetExceeded("spent", retry_after=4)) == 4
    with pytest.raises(BudgetExceeded):
        wait.pause(BudgetExceeded("spent", retry_after=40))
    with pytest.raises(Forbidden):
        wait.pause(Forbidden("denied"))


@pytest.mark.parametrize(("seconds", "interval"), [(0, 1), (-1, 1), (10**6, 1), (10, 0), (10, 60)])
def test_unbounded_waits_are_refused(seconds: float, interval: float) -> None:
    with pytest.raises(ValueError):
        ApprovalWait(seconds, interval)


def _page(n: int, cursor: str | None) -> Page:
    return Page(dataset="d", columns=["id"], rows=[{"id": i} for i in range(n)], masked=[], next_cursor=cursor)


def test_paging_asks_no_more_rows_than_are_left_and_stops_with_a_cursor() -> None:
    paging = Paging(limit=7, max_pages=100, max_rows=10)
    assert paging.next_limit() == 7
    assert paging.cursor_after(_page(7, "c1")) == "c1"
    assert paging.next_limit() == 3  # the last page reads exactly what is left: no row is skipped
    with pytest.raises(ReadLimitReached) as stopped:
        paging.cursor_after(_page(3, "c2"))
    assert (stopped.value.next_cursor, stopped.value.pages, stopped.value.rows) == ("c2", 2, 10)
    done = Paging(limit=None, max_pages=1, max_rows=50)
    assert done.next_limit() == 50  # under the server's default of 100
    assert done.cursor_after(_page(5, None)) is None  # complete: no error though a bound is met
    with pytest.raises(ReadLimitReached):
        Paging(limit=None, max_pages=1, max_rows=10**6).cursor_after(_page(100, "more"))
    with pytest.raises(ValueError):
        Paging(limit=None, max_pages=0, max_rows=1)


def test_a_query_body_holds_only_what_is_given() -> None:
    """An approval covers one body: the same arguments must make the same bytes on every retry."""
    assert query_body() == {}
    assert query_body(columns=("id",), where=[("id", ">", 3), ("email", "is null")], limit=5) == {
        "columns": ["id"], "where": [["id", ">", 3], ["email", "is null"]], "limit": 5}


CATALOG: list[Dataset] = [
    {"name": "sales_eu", "description": "EU sales", "owner": "o@example.com", "max_rows": 50, "approval": "none",
     "columns": [{"name": "id", "class": None, "type": "integer"}, {"name": "amount", "class": None}]},
    {"name": "sales.eu", "description": None, "owner": "o@example.com", "approval": "required",
     "columns": [{"name": "id", "class": None}, {"name": "email", "class": "pii", "type": "text"}]},
    {"name": "x" * 128, "description": "long", "owner": "o@example.com", "columns": [{"name": "id", "class": None}]},
    {"name": "y" * 128, "description": "long", "owner": "o@example.com", "columns": [{"name": "id", "class": None}]},
    {"name": "tickets", "description": "an HTTP dataset", "owner": "o@example.com", "columns": []},
]


def test_tool_names_are_what_the_apis_accept_and_never_collide() -> None:
    tools, names = client_tools.definitions(CATALOG)
    listed = [t["function"]["name"] for t in tools]
    assert all(client_tools.NAME.match(n) for n in listed)
    assert len(set(listed)) == len(listed) == 4  # tickets has no columns: no tool
    assert names["query_sales_eu"] == "sales.eu" and names["query_sales_eu_2"] == "sales_eu"
    assert names[("query_" + "x" * 128)[:64]] == "x" * 128
    assert names[("query_" + "y" * 128)[:64]] == "y" * 128  # no collision between different long names
    assert client_tools.tool_name("x" * 128, {("query_" + "x" * 128)[:64]: "other"}).endswith("_2")
    assert len(client_tools.tool_name("x" * 128, {("query_" + "x" * 128)[:64]: "other"})) == 64


def test_tool_definitions_are_valid_json_schemas_of_the_query() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    tools, _ = client_tools.definitions(CATALOG)
    for tool in tools:
        assert tool["type"] == "function" and set(tool["function"]) == {"name", "description", "parameters"}
        schema = tool["function"]["parameters"]
        jsonschema.Draft202012Validator.check_schema(schema)
        assert len(tool["function"]["description"]) <= client_tools.MAX_DESCRIPTION
    schema = tools[0]["function"]["parameters"]  # query_sales_eu: sales.eu, approval required
    assert "approval" in tools[0]["function"]["description"] and "class pii" in tools[0]["function"]["description"]
    call = {"columns": ["id"], "where": [{"column": "email", "operator": "is null"},
                                         {"column": "id", "operator": "in", "value": [1, 2]}], "order_by": ["-id"]}
    jsonschema.validate(call, schema)
    for wrong in ({"columns": ["nope"]}, {"where": [{"column": "id", "operator": "~"}]}, {"order_by": ["+id"]},
                  {"limit": 0}, {"rows": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)
    assert tools[1]["function"]["parameters"]["properties"]["limit"]["maximum"] == 50
    assert client_tools.query_arguments(json.dumps(call)) == {
        "columns": ["id"], "where": [["email", "is null"], ["id", "in", [1, 2]]], "order_by": ["-id"]}


def test_tool_definitions_in_the_anthropic_shape() -> None:
    tools, _ = client_tools.definitions(CATALOG, style="anthropic")
    assert all(set(t) == {"name", "description", "input_schema"} for t in tools)
    with pytest.raises(ValueError):
        client_tools.definitions(CATALOG, style="other")
    with pytest.raises(ValueError):
        client_tools.query_arguments({"columns": ["id"], "drop": True})


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_client_stands_on_httpx_and_the_standard_library_alone() -> None:
    """What an agent installs: no module of the gateway server, none of its dependencies (import-linter checks
    the named packages; this catches any other, a package added later included)."""
    for path in sorted(CLIENT.glob("*.py")):
        for module in _imports(path):
            top = module.split(".")[0]
            allowed = (module == "gateway.client" or module.startswith("gateway.client.") or top == "httpx"
                       or top in sys.stdlib_module_names or top == "__future__")
            assert allowed, f"{path.name} imports {module}"
    package = (CLIENT.parent / "__init__.py").read_text()
    assert "import" not in package  # importing gateway.client runs gateway/__init__.py: it must stay empty of imports


def test_the_namespace_offers_exactly_its_all() -> None:
    offered = {name for name in vars(gateway.client) if not name.startswith("_")
               and not isinstance(getattr(gateway.client, name), type(sys))}
    assert sorted(gateway.client.__all__) == sorted(offered)
