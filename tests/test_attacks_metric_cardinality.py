"""/metrics cannot be grown by clients: every label value comes from the code's fixed sets, the catalog or the
configured sources, never from what a request carried.

- A thousand requests with made-up dataset names, proxy paths, SQL table names, MCP tool names and endpoint
  paths, with a valid token, a bad one or none, leave the number of series where a first round of each kind
  left it, and no made-up name appears in /metrics (before: one new series per name).
- A dataset that exists but the agent may not read is counted under the same `(unknown)` as one that does not
  exist: one answer, one label, so /metrics (no token needed) tells no one which names exist. A dataset the
  agent read is counted under its name; a SQL read of several under `(several)`.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from tests.conftest import bearer, client_for, write_workspace

pytestmark = pytest.mark.integration

MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


def series(client: TestClient) -> list[str]:
    """Every series /metrics shows (its name and labels), sorted."""
    text = client.get("/metrics").text
    return sorted(line.rsplit(" ", 1)[0] for line in text.splitlines() if line.startswith("agentgate_"))


def value(client: TestClient, line: str) -> float:
    found = re.search(rf"^{re.escape(line)} (\S+)$", client.get("/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def made_up(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_lowercase + string.digits + "_", k=rng.randint(4, 24)))


def attacks(token: dict[str, str]) -> list[Callable[[TestClient, str], httpx.Response]]:
    """One request of each kind, for a made-up name."""
    bad = {"Authorization": "Bearer not.a.token"}
    return [
        lambda c, n: c.post(f"/v1/datasets/{n}/query", headers=token, json={"limit": 1}),
        lambda c, n: c.get(f"/v1/datasets/{n}", headers=token),
        lambda c, n: c.get(f"/v1/datasets/{n}", headers=bad),
        lambda c, n: c.post(f"/v1/datasets/{n}/query", json={}),
        lambda c, n: c.get(f"/v1/datasets/customers/proxy/{n}/{n}?{n}={n}", headers=token),
        lambda c, n: c.get(f"/v1/datasets/{n}/proxy/{n}", headers=token),
        lambda c, n: c.get(f"/v1/{n}/{n}", headers=token),
        lambda c, n: c.post("/v1/sql", headers=token, json={"sql": f"SELECT * FROM {n}"}),
        lambda c, n: c.post("/v1/sql", headers=token, json={"sql": f"SELECT * FROM customers JOIN {n} ON 1 = 1"}),
        lambda c, n: c.post("/mcp", headers={**token, **MCP_HEADERS}, json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": n, "arguments": {}}}),
        lambda c, n: c.post("/mcp", headers={**token, **MCP_HEADERS}, json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "query_dataset", "arguments": {"name": n}}}),
        lambda c, n: c.get(f"/admin/v1/audit?dataset={n}&agent={n}", headers=bearer("alice")),
        lambda c, n: c.get(f"/admin/v1/{n}", headers=bearer("alice")),
        lambda c, n: c.post(f"/v1/datasets/{n}/query", headers={**token, "X-Work-Unit": n}, json={}),
    ]


@pytest.fixture
def client(tmp_path: Path, sqlite_source: str) -> TestClient:
    config = write_workspace(tmp_path, source_url=sqlite_source, extra="[sql]\nenabled = true\n")
    with client_for(config) as c:
        yield c


def test_made_up_names_add_no_series(client: TestClient) -> None:
    rng = random.Random(12)
    kinds = attacks(bearer("support-bot"))
    for kind in kinds:  # a first round of each kind: the series these requests can make, made once
        assert kind(client, made_up(rng)).status_code < 500
    before = series(client)
    sent: list[str] = []

    def one(i: int) -> int:
        name = made_up(rng) + str(i)
        sent.append(name)
        return kinds[i % len(kinds)](client, name).status_code

    with ThreadPoolExecutor(16) as pool:  # concurrently: the audit trail writes them in groups
        statuses = list(pool.map(one, range(1000)))
    assert all(s < 500 for s in statuses)
    after = series(client)
    assert after == before, sorted(set(after) - set(before))[:10]
    text = client.get("/metrics").text
    assert not [name for name in sent if name in text][:5]
    assert value(client, 'agentgate_requests_total{dataset="(unknown)",decision="deny"}') > 500


def test_metrics_are_no_oracle_of_which_datasets_exist(client: TestClient) -> None:
    support = bearer("support-bot")
    # `orders` exists, and support-bot may not read it; `orderz` does not exist. One answer, one label.
    for name in ("orders", "orderz", "orders", "orderz"):
        assert client.post(f"/v1/datasets/{name}/query", headers=support, json={}).status_code == 403
    assert client.post("/v1/sql", headers=support, json={"sql": "SELECT * FROM customers JOIN orders ON 1 = 1"}
                       ).status_code == 403
    text = client.get("/metrics").text
    assert "orders" not in text and "orderz" not in text
    assert value(client, 'agentgate_requests_total{dataset="(unknown)",decision="deny"}') == 5
    # Once read, a dataset is counted under its own name; a SQL read of several, under "(several)".
    analyst = bearer("analyst-bot")
    assert client.post("/v1/datasets/orders/query", headers=analyst, json={"limit": 1}).status_code == 200
    assert client.post("/v1/sql", headers=analyst, json={
        "sql": "SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id LIMIT 1"}).status_code == 200
    assert value(client, 'agentgate_requests_total{dataset="orders",decision="allow"}') == 1
    assert value(client, 'agentgate_requests_total{dataset="(several)",decision="allow"}') == 1
    # A read refused after the policy let the agent see the dataset (here, a bad body) keeps its name.
    assert client.post("/v1/datasets/orders/query", headers=analyst, json={"limit": 0}).status_code == 400
    assert value(client, 'agentgate_requests_total{dataset="orders",decision="error"}') == 1
