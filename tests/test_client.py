"""gateway.client against a real `agentgate serve` (one for the module): a SQLite source, an HTTP source on
loopback, a dataset that needs approval, a budget, a small body limit. Every refusal raises its own class, whose
request id is that of the refusal's audit record (read through the admin API)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.client import (
    AgentgateError,
    ApprovalPending,
    ApprovalRefused,
    ApprovalTimeout,
    AsyncClient,
    BadRequest,
    BudgetExceeded,
    Client,
    Forbidden,
    NotFound,
    ReadLimitReached,
    SourceError,
    SourceTimeout,
    TooLarge,
    Unauthenticated,
    Unreachable,
)
from gateway.client.tools import NAME
from tests.conftest import DATASETS, N_CUSTOMERS, POLICY, bearer, loopback_http, token, write_workspace
from tests.serving import free_port, serving
from tests.test_http_sources import Upstream

pytestmark = pytest.mark.system

LONG = "long_" + "x" * 70
CATALOG = DATASETS + f"""
[datasets.tickets]
source = "tix"
path = "/tickets"
owner = "support-leads@example.com"

[datasets.held]
source = "main"
table = "customers"
owner = "maria.keller@example.com"
approval = "required"

[datasets.held_http]
source = "tix"
path = "/held"
owner = "support-leads@example.com"
approval = "required"

[datasets."sales.eu"]
source = "main"
table = "orders"
owner = "sales-ops@example.com"

[datasets.sales_eu]
source = "main"
table = "orders"
owner = "sales-ops@example.com"

[datasets.{LONG}]
source = "main"
table = "orders"
owner = "sales-ops@example.com"
"""
GRANTS = POLICY + f"""
p, support, tickets, read, allow
p, support, held, read, allow
p, support, held_http, read, allow
p, support, sales*, read, allow
p, support, {LONG}, read, allow
g, budget-bot, support
"""


@dataclass
class Gate:
    base: str

    def client(self, agent: str = "support-bot", **options: Any) -> Client:
        return Client(self.base, token(agent), **options)

    def record(self, request_id: str | None) -> dict[str, Any]:
        """The audit record of a request, through the admin API."""
        got = httpx.get(f"{self.base}/admin/v1/audit", params={"limit": 200}, headers=bearer("alice"), timeout=10)
        assert got.status_code == 200, got.text
        found = [r for r in got.json()["records"] if r["request_id"] == request_id]
        assert len(found) == 1, f"no single record with request_id {request_id}"
        return found[0]

    def admin(self, method: str, path: str) -> httpx.Response:
        return httpx.request(method, f"{self.base}/admin/v1/{path}", headers=bearer("alice"), timeout=10)


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory, sqlite_source: str) -> Iterator[Gate]:
    root = tmp_path_factory.mktemp("client")
    with loopback_http(type("Handler", (Upstream,), {"seen": []})) as upstream:
        config = write_workspace(root, source_url=sqlite_source, datasets=CATALOG, policy=GRANTS, extra=f"""
[sources.tix]
url = "{upstream}"
timeout_seconds = 1

[server]
max_body_bytes = 2048
""")
        (root / "policies" / "budgets.toml").write_text("[agents.budget-bot]\nrequests_per_minute = 1\n")
        with serving(config, root / "serve.log") as base:
            yield Gate(base)


def test_datasets_and_describe(gate: Gate) -> None:
    # The token may be what returns the current one: a long-running agent's refresher.
    with Client(gate.base, lambda: token("support-bot")) as client:
        names = [d["name"] for d in client.datasets()]
        assert names == ["customers", "tickets", "held", "held_http", "sales.eu", "sales_eu", LONG]  # catalog order
        described = client.describe("customers")
    assert described["owner"] == "maria.keller@example.com" and described["max_rows"] == 25
    assert {c["name"]: c["class"] for c in described["columns"]}["email"] == "pii"


def test_a_query_answers_one_page_masked_as_the_api_gives_it(gate: Gate) -> None:
    with gate.client("analyst-bot", work_unit="TICKET-1") as client:
        page = client.query("customers", columns=["id", "name", "email"], where=[["country", "=", "DE"]],
                            order_by=["id"], limit=3)
        other = client.query("customers", columns=["id"], limit=1, work_unit="TICKET-2")
    assert [r["id"] for r in page.rows] == [4, 8, 12] and all(r["email"] is None for r in page.rows)
    assert (page.dataset, page.columns, page.masked) == ("customers", ["id", "name", "email"], ["email"])
    assert page.next_cursor is not None
    record = gate.record(page.request_id)
    assert (record["decision"], record["rows"], record["work_unit"]) == ("allow", 3, "TICKET-1")
    assert gate.record(other.request_id)["work_unit"] == "TICKET-2"
    assert record["user_agent"].startswith("agentgate-client")


def test_query_all_follows_every_cursor_and_stops_at_its_bounds(gate: Gate) -> None:
    with gate.client() as client:
        ids = [r["id"] for r in client.query_all("customers", columns=["id"], order_by=["id"], limit=7)]
        assert ids == list(range(1, N_CUSTOMERS + 1))
        pages = list(client.pages("customers", columns=["id"], order_by=["id"], limit=25))
        assert [len(p.rows) for p in pages] == [25, 25, 10]  # max_rows 25 caps a page
        read: list[int] = []
        with pytest.raises(ReadLimitReached) as stopped:
            read.extend(r["id"] for r in client.query_all("customers", columns=["id"], order_by=["id"], limit=7,
                                                          max_rows=10))
        assert read == list(range(1, 11)) and stopped.value.rows == 10
        rest = client.query_all("customers", columns=["id"], order_by=["id"], cursor=stopped.value.next_cursor)
        assert [r["id"] for r in rest] == list(range(11, N_CUSTOMERS + 1))  # no row skipped
        with pytest.raises(ReadLimitReached) as paged:
            list(client.pages("customers", columns=["id"], limit=5, max_pages=2))
        assert paged.value.pages == 2


def test_sql(gate: Gate) -> None:
    with gate.client("analyst-bot") as client:
        page = client.sql("SELECT country, count(*) AS n FROM customers GROUP BY country ORDER BY country")
    assert page.rows == [{"country": c, "n": N_CUSTOMERS // 4} for c in ("DE", "FR", "GB", "US")]
    assert page.next_cursor is None and gate.record(page.request_id)["dataset"] == "customers"


def test_proxy_passes_the_sources_answer_through(gate: Gate) -> None:
    with gate.client() as client:
        echoed = client.proxy("tickets", "42/comments", query={"limit": "5"})
        text = client.proxy("tickets", "text")
        missing = client.proxy("tickets", "status/404")  # the source's 404 is the agent's, not an error
    assert echoed.status == 200 and echoed.content_type.startswith("application/json")
    assert (echoed.json()["path"], echoed.json()["query"]) == ("/api/tickets/42/comments", "limit=5")
    assert (text.text, text.content_type) == ("héllo, tickets", "text/plain; charset=utf-8")
    assert missing.status == 404 and missing.json()["upstream"] == 404
    assert gate.record(missing.request_id)["status"] == 404


def _spend_budget(client: Client) -> None:
    for _ in range(5):  # a minute's window may turn between two requests: ask until it is spent
        client.datasets()


# Each refusal: its class, the record's decision, the agent asking (None: a token that is no JWT), the call.
REFUSALS: dict[str, tuple[type[AgentgateError], str, str | None, Callable[[Client], Any]]] = {
    "unauthenticated": (Unauthenticated, "deny", None, lambda c: c.datasets()),
    "forbidden": (Forbidden, "deny", "support-bot", lambda c: c.query("orders")),
    "bad_request": (BadRequest, "error", "support-bot", lambda c: c.query("customers", columns=["nope"])),
    "not_found": (NotFound, "error", "support-bot", lambda c: c.describe("no/such")),
    "too_large": (TooLarge, "error", "support-bot",
                  lambda c: c.query("customers", where=[["name", "in", ["x" * 40] * 100]])),
    "budget_exceeded": (BudgetExceeded, "deny", "budget-bot", _spend_budget),
    "approval_pending": (ApprovalPending, "pending", "support-bot",
                         lambda c: c.query("held", columns=["id"], limit=1)),
    "source_error": (SourceError, "error", "support-bot", lambda c: c.proxy("tickets", "status/500")),
    "source_timeout": (SourceTimeout, "error", "support-bot", lambda c: c.proxy("tickets", "slow")),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_each_refusal_raises_its_class_naming_its_audit_record(gate: Gate, case: str) -> None:
    cls, decision, agent, call = REFUSALS[case]
    with Client(gate.base, token(agent) if agent else "not-a-jwt") as client, pytest.raises(cls) as refused:
        call(client)
    exc = refused.value
    assert type(exc) is cls and exc.code == case and exc.message
    record = gate.record(exc.request_id)
    assert (record["status"], record["decision"]) == (exc.status, decision)
    if case == "budget_exceeded":
        assert exc.retry_after is not None and 0 < exc.retry_after <= 60
    if case == "approval_pending":
        assert len(exc.approval_id) == 32 and exc.approval_id in record["reason"]


def test_no_answer_is_unreachable() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", "t", timeout=2) as client, pytest.raises(Unreachable) as exc:
        client.datasets()
    assert (exc.value.status, exc.value.request_id) == (0, None)


def _decide_when_asked(gate: Gate, marker: int | str, verdict: str, dataset: str = "held") -> threading.Thread:
    """A person, elsewhere: finds the pending approval of the read that names `marker` (a query: filtering on
    id > marker; a proxied read: its path) and decides it."""
    asked = f'"id",">",{marker}]' if isinstance(marker, int) else marker

    def decide() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            listed = gate.admin("GET", "approvals").json()["approvals"]
            mine = [a for a in listed if a["dataset"] == dataset and asked in a["query"]]
            if mine:
                assert gate.admin("POST", f"approvals/{mine[0]['id']}/{verdict}").status_code == 200
                return
            time.sleep(0.1)

    thread = threading.Thread(target=decide, daemon=True)
    thread.start()
    return thread


def test_a_read_waits_for_its_approval_then_returns_the_rows(gate: Gate) -> None:
    person = _decide_when_asked(gate, 50, "approve")
    with gate.client() as client:
        page = client.query("held", columns=["id"], where=[["id", ">", 50]], order_by=["id"], limit=3,
                            wait_for_approval=20, poll_interval=0.2)
    person.join(5)
    assert [r["id"] for r in page.rows] == [51, 52, 53]
    assert gate.record(page.request_id)["approved_by"] == "alice"


def test_a_denied_approval_ends_the_wait(gate: Gate) -> None:
    person = _decide_when_asked(gate, 51, "deny")
    with gate.client() as client, pytest.raises(ApprovalRefused) as refused:
        client.query("held", columns=["id"], where=[["id", ">", 51]], wait_for_approval=20, poll_interval=0.2)
    person.join(5)
    assert isinstance(refused.value, Forbidden) and "denied" in refused.value.message
    assert len(refused.value.approval_id) == 32
    assert gate.record(refused.value.request_id)["status"] == 403


def test_the_wait_is_bounded_and_its_approval_still_serves_later(gate: Gate) -> None:
    with gate.client() as client:
        started = time.monotonic()
        with pytest.raises(ApprovalTimeout) as waited:
            client.query("held", columns=["id"], where=[["id", ">", 52]], wait_for_approval=0.8, poll_interval=0.2)
        assert time.monotonic() - started < 5
        approval_id = waited.value.approval_id
        assert gate.record(waited.value.request_id)["decision"] == "pending"
        assert gate.admin("POST", f"approvals/{approval_id}/approve").status_code == 200
        page = client.query("held", columns=["id"], where=[["id", ">", 52]], approval_id=approval_id)
    assert page.rows and all(r["id"] > 52 for r in page.rows)


def test_a_proxied_read_waits_for_its_approval_too(gate: Gate) -> None:
    person = _decide_when_asked(gate, "/reports/7", "approve", dataset="held_http")
    with gate.client() as client:
        answer = client.proxy("held_http", "reports/7", query={"page": "2"}, wait_for_approval=20, poll_interval=0.2)
    person.join(5)
    assert answer.status == 200 and answer.json()["path"] == "/api/held/reports/7"
    assert gate.record(answer.request_id)["approved_by"] == "alice"


def test_tools_describe_the_readable_datasets_and_their_calls_run(gate: Gate) -> None:
    with gate.client() as client:
        tools = client.tools()
        names = [t["function"]["name"] for t in tools]
        assert sorted(names) == sorted(["query_customers", "query_held", "query_sales_eu", "query_sales_eu_2",
                                        ("query_" + LONG)[:64]])  # tickets (HTTP) has no tool
        assert all(NAME.match(n) for n in names)
        customers = next(t for t in tools if t["function"]["name"] == "query_customers")["function"]
        schema = customers["parameters"]
        assert schema["properties"]["columns"]["items"]["enum"][:3] == ["id", "name", "email"]
        assert schema["properties"]["limit"]["maximum"] == 25
        arguments = {"columns": ["id", "email"], "where": [{"column": "country", "operator": "=", "value": "FR"}],
                     "order_by": ["-id"], "limit": 2}
        jsonschema = pytest.importorskip("jsonschema")
        for tool in tools:
            jsonschema.Draft202012Validator.check_schema(tool["function"]["parameters"])
        jsonschema.validate(arguments, schema)
        page = client.call_tool("query_customers", arguments)
        assert [r["id"] for r in page.rows] == [57, 53] and page.rows[0]["email"] == "c57@example.com"
        assert client.call_tool("query_sales_eu_2", '{"limit": 1}').dataset == "sales_eu"
        with pytest.raises(ValueError):
            client.call_tool("query_tickets", {})  # no tool of that name was handed out
        anthropic = client.tools(style="anthropic")
    assert {t["name"] for t in anthropic} == set(names)


async def test_the_async_client_reads_pages_sql_and_proxy(gate: Gate) -> None:
    async with AsyncClient(gate.base, token("support-bot"), work_unit="ASYNC-1") as client:
        assert "customers" in [d["name"] for d in await client.datasets()]
        assert (await client.describe("customers"))["name"] == "customers"
        page = await client.query("customers", columns=["id"], order_by=["id"], limit=2)
        assert [r["id"] for r in page.rows] == [1, 2]
        ids = [r["id"] async for r in client.query_all("customers", columns=["id"], order_by=["id"], limit=9)]
        assert ids == list(range(1, N_CUSTOMERS + 1))
        proxied = await client.proxy("tickets", "7")
        assert proxied.json()["path"] == "/api/tickets/7"
        with pytest.raises(Forbidden) as refused:
            await client.sql("SELECT count(*) FROM orders")
        assert len([t async for t in _tool_names(client)]) == 5
    assert gate.record(page.request_id)["work_unit"] == "ASYNC-1"
    assert gate.record(refused.value.request_id)["decision"] == "deny"


async def _tool_names(client: AsyncClient) -> Any:
    for tool in await client.tools():
        yield tool["function"]["name"]


async def test_the_async_client_waits_for_an_approval(gate: Gate) -> None:
    person = _decide_when_asked(gate, 54, "approve")
    async with AsyncClient(gate.base, token("support-bot")) as client:
        page = await client.query("held", columns=["id"], where=[["id", ">", 54]], order_by=["id"], limit=2,
                                  wait_for_approval=20, poll_interval=0.2)
    person.join(5)
    assert [r["id"] for r in page.rows] == [55, 56]
