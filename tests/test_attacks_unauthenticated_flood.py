"""A client flooding the gateway without a valid token: it must not grow the store, nor memory, without bound,
and the trail must stay complete in count.

The attacks: requests with no token, a junk token, an expired one, a body over the limit, on REST (the fast
path and the router) and MCP, as fast as the client can; the same from addresses a trusted proxy forwards,
from an untrusted peer writing X-Forwarded-For, and from ever new addresses (rotating, IPv4 and within an
IPv6 /64). The properties (gateway/services/ratelimit.py): beyond `[limits] failed_auth_burst` at once and
`failed_auth_per_minute`, such a client gets 429 `budget_exceeded` with Retry-After; the requests recorded one
by one plus the `rows` of the `refused_summary` records equal the requests sent, exactly, also across a
shutdown; the per-client table is bounded; an authenticated agent at the same address is served as ever.
SQLite and PostgreSQL stores.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.cli import main as cli
from gateway.common.errors import ConfigError
from gateway.config import load_settings
from tests.conftest import bearer, opened_store, token, write_workspace
from tests.serving import serving

pytestmark = pytest.mark.integration

MCP = {"Accept": "application/json, text/event-stream"}
CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "query_dataset", "arguments": {"name": "customers", "limit": 1}}}
EXPIRED = token("support-bot", ttl=-3600)
PROXY = ("10.1.2.3", 40000)
STRANGER = ("203.0.113.7", 40000)


def limits(**values: Any) -> str:
    """A [limits] table; 429s answered at once unless a test says otherwise (the pace has its own test)."""
    values.setdefault("refusal_delay_seconds", 0)
    return "\n[limits]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())


def workspace(tmp_path: Path, source: str, store: str, extra: str = "") -> Path:
    return write_workspace(tmp_path, source_url=source, store_url=store, extra=extra)


def gateway(config: Path, peer: tuple[str, int] = ("testclient", 50000)) -> TestClient:
    return TestClient(create_app(load_settings(config)), client=peer)


def trail(config: Path) -> list[dict[str, Any]]:
    """Every audit record of the workspace's store (SQLite or PostgreSQL), oldest first."""
    async def read() -> list[dict[str, Any]]:
        async with opened_store(load_settings(config).store.url) as engine, engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(text("SELECT * FROM audit ORDER BY id"))]
    return asyncio.run(read())


# One failed request, each way in. They all count against the same client.
def no_token(c: TestClient) -> httpx.Response:
    return c.get("/v1/datasets")


def junk_token_fast_path(c: TestClient) -> httpx.Response:
    return c.post("/v1/datasets/customers/query", json={"limit": 1}, headers={"Authorization": "Bearer junk"})


def expired_token(c: TestClient) -> httpx.Response:
    return c.get("/v1/datasets/customers", headers={"Authorization": f"Bearer {EXPIRED}"})


def unknown_route(c: TestClient) -> httpx.Response:
    return c.get("/v1/nothing/here")


def mcp_no_token(c: TestClient) -> httpx.Response:
    return c.post("/mcp", json=CALL, headers=MCP)


def body_over_limit(c: TestClient) -> httpx.Response:
    return c.post("/v1/datasets/customers/query", content=b"x" * 2048, headers={"Authorization": "Bearer junk"})


WAYS: list[Callable[[TestClient], httpx.Response]] = [no_token, junk_token_fast_path, expired_token, unknown_route,
                                                      mcp_no_token, body_over_limit]
FIRST_STATUS = {body_over_limit: 413}


def accounted(records: list[dict[str, Any]], client: str | None = None) -> tuple[int, int, int]:
    """(requests recorded one by one, requests counted in summaries, summaries) of refusals without a token."""
    mine = [r for r in records if r["agent"] is None and (client is None or r["client"] == client)]
    own = [r for r in mine if r["action"] != "refused_summary"]
    summaries = [r for r in mine if r["action"] == "refused_summary"]
    return len(own), sum(r["rows"] for r in summaries), len(summaries)


@pytest.mark.parametrize("way", WAYS, ids=lambda w: w.__name__)
def test_beyond_the_limit_a_client_gets_429_with_retry_after(tmp_path: Path, sqlite_source: str,
                                                            way: Callable[[TestClient], httpx.Response]) -> None:
    config = workspace(tmp_path, sqlite_source, "sqlite:///store.db",
                       "\n[server]\nmax_body_bytes = 1024\n" + limits(failed_auth_burst=5, failed_auth_per_minute=60))
    with gateway(config) as client:
        first = [way(client) for _ in range(5)]
        assert {r.status_code for r in first} == {FIRST_STATUS.get(way, 401)}, first[0].text
        over = [way(client) for _ in range(3)]
        for r in over:
            assert r.status_code == 429, r.text
            error = r.json()["error"] if way is not mcp_no_token else r.json()["error"]["data"]["error"]
            assert error["code"] == "budget_exceeded"
            assert "too many failed requests" in error["message"]
            assert 1 <= int(r.headers["Retry-After"]) <= 1  # one token a second comes back
        # An agent with a valid token, from the same address, is served meanwhile.
        served = client.post("/v1/datasets/customers/query", json={"limit": 1}, headers=bearer("support-bot"))
        assert served.status_code == 200, served.text
    records = trail(config)
    assert [r["status"] for r in records if r["agent"] is None and r["action"] != "refused_summary"] == \
        [FIRST_STATUS.get(way, 401)] * 5
    (summary,) = [r for r in records if r["action"] == "refused_summary"]
    assert summary["rows"] == 3 and summary["status"] == 429 and summary["client"] == "testclient"
    assert summary["decision"] == "deny" and summary["agent"] is None
    content = json.loads(summary["query"])
    assert content["count"] == 3 and content["statuses"] == {"429": 3}
    assert content["sample"]["client"] == "testclient"
    assert "too many failed requests" in content["sample"]["reason"]
    assert next(r for r in records if r["agent"] == "support-bot")["status"] == 200
    assert cli(["audit", "verify", "--config", str(config)]) == 0


def test_the_bucket_refills_at_its_rate(tmp_path: Path, sqlite_source: str) -> None:
    config = workspace(tmp_path, sqlite_source, "sqlite:///store.db",
                       limits(failed_auth_burst=2, failed_auth_per_minute=120))  # a token every 0.5 s
    with gateway(config) as client:
        assert [no_token(client).status_code for _ in range(3)] == [401, 401, 429]
        time.sleep(1.0)
        assert [no_token(client).status_code for _ in range(3)] == [401, 401, 429]


def test_counts_add_up_exactly_over_intervals_and_shutdown(tmp_path: Path, sqlite_source: str,
                                                          store_url: str) -> None:
    """Summaries written when their interval ends and at shutdown; every request accounted for once."""
    config = workspace(tmp_path, sqlite_source, store_url,
                       limits(failed_auth_burst=10, failed_auth_per_minute=60, summary_seconds=0.5))
    sent: Counter[int] = Counter()
    started = time.monotonic()
    with gateway(config) as client:
        for n in range(240):
            sent[WAYS[n % 5](client).status_code] += 1  # the five ways that answer 401
            if n == 120:
                time.sleep(1.2)  # the first interval's summary is written meanwhile (while the app runs)
        written_while_running = accounted(trail(config))[2]
    assert written_while_running >= 1
    own, folded, summaries = accounted(trail(config))
    assert own + folded == 240 == sum(sent.values())
    assert summaries >= 2
    # Recorded one by one: the burst, plus what the bucket gave back (one a second) while the test ran.
    assert own <= 10 + math.ceil(time.monotonic() - started)
    statuses: Counter[int] = Counter()
    for rec in trail(config):
        if rec["action"] == "refused_summary":
            statuses.update({int(s): n for s, n in json.loads(rec["query"])["statuses"].items()})
        elif rec["agent"] is None:
            statuses[rec["status"]] += 1
    assert statuses == sent
    assert cli(["audit", "verify", "--config", str(config)]) == 0


@pytest.mark.system
def test_nothing_is_lost_when_a_real_serve_stops(tmp_path: Path, sqlite_source: str, pg_store: str) -> None:
    """SIGTERM to `agentgate serve` (PostgreSQL store) while summaries are pending: they are written first."""
    config = workspace(tmp_path, sqlite_source, pg_store,
                       limits(failed_auth_burst=20, failed_auth_per_minute=60, summary_seconds=3600))
    with serving(config, tmp_path / "serve.log") as base, httpx.Client(base_url=base, timeout=10) as http:
        answers = Counter(http.get("/v1/datasets").status_code for _ in range(150))
        assert answers[429] >= 100
        agent = http.get("/v1/datasets", headers=bearer("support-bot"))
        assert agent.status_code == 200
    own, folded, summaries = accounted(trail(config))
    assert (own, own + folded, summaries) == (answers[401], 150, 1)


def test_forwarded_clients_are_limited_each_and_spoofers_by_their_peer(tmp_path: Path, sqlite_source: str,
                                                                      store_url: str) -> None:
    config = workspace(tmp_path, sqlite_source, store_url,
                       '\n[server]\nforwarded_allow_ips = ["10.0.0.0/8"]\n' + limits(failed_auth_burst=3))
    with gateway(config, PROXY) as proxy:
        one = [proxy.get("/v1/datasets", headers={"X-Forwarded-For": "198.51.100.1"}).status_code for _ in range(5)]
        two = [proxy.get("/v1/datasets", headers={"X-Forwarded-For": "198.51.100.2"}).status_code for _ in range(2)]
        assert one == [401, 401, 401, 429, 429] and two == [401, 401]
    with gateway(config, STRANGER) as stranger:  # rotating a header it is not believed for buys nothing
        rotated = [stranger.get("/v1/datasets", headers={"X-Forwarded-For": f"198.51.100.{n}"}).status_code
                   for n in range(10, 20)]
        assert rotated == [401] * 3 + [429] * 7
    records = trail(config)
    assert accounted(records, "198.51.100.1")[:2] == (3, 2)
    assert accounted(records, "198.51.100.2")[:2] == (2, 0)
    assert accounted(records, STRANGER[0])[:2] == (3, 7)
    assert {r["client"] for r in records if r["action"] == "refused_summary"} == {"198.51.100.1", STRANGER[0]}


def test_rotating_addresses_cannot_grow_the_table_nor_the_trail(tmp_path: Path, sqlite_source: str,
                                                                store_url: str) -> None:
    """A trusted proxy forwarding for ever new addresses: the table holds failed_auth_clients of them; the rest
    share one bucket (key "*") and one summary; all clients together get failed_auth_records_per_minute
    records of their own. IPv6 addresses count by /64."""
    config = workspace(tmp_path, sqlite_source, store_url, '\n[server]\nforwarded_allow_ips = "*"\n' + limits(
        failed_auth_burst=2, failed_auth_per_minute=0.6, failed_auth_clients=8, summary_seconds=3600))
    answers: Counter[int] = Counter()
    with gateway(config) as client:
        for n in range(600):
            address = f"2001:db8:0:{n % 3}::{n:x}" if n % 2 else f"198.51.{n // 250}.{n % 250}"
            answers[client.get("/v1/datasets", headers={"X-Forwarded-For": address}).status_code] += 1
        clients, summaries_pending = client.app.state.refusals.tracked  # type: ignore[attr-defined]
        assert clients <= 8 and summaries_pending <= 9
    # The table's 8: the three IPv6 /64s (each its burst of 2: every address of a /64 counts against it) and the
    # first five IPv4 addresses (one request each); then the shared bucket's burst; no token comes back in the
    # test's time. Everyone else: 429.
    assert answers[401] == 3 * 2 + 5 * 1 + 2 and answers[429] == 600 - 13
    records = trail(config)
    own, folded, summaries = accounted(records)
    assert (own, own + folded) == (13, 600)
    assert summaries <= 9
    (shared,) = [r for r in records if r["action"] == "refused_summary" and r["client"] == "*"]
    assert 0 < len(json.loads(shared["query"])["addresses"]) <= 8
    assert len(json.dumps(json.loads(shared["query"]))) < 4096  # a summary stays small, whatever it counts


def test_ipv6_addresses_of_one_64_share_a_bucket(tmp_path: Path, sqlite_source: str) -> None:
    config = workspace(tmp_path, sqlite_source, "sqlite:///store.db",
                       '\n[server]\nforwarded_allow_ips = "*"\n' + limits(failed_auth_burst=3))
    with gateway(config) as client:
        got = [client.get("/v1/datasets", headers={"X-Forwarded-For": f"2001:db8:1:2::{n:x}"}).status_code
               for n in range(1, 6)]
        other = client.get("/v1/datasets", headers={"X-Forwarded-For": "2001:db8:1:3::1"}).status_code
    assert got == [401, 401, 401, 429, 429] and other == 401
    summaries = [r for r in trail(config) if r["action"] == "refused_summary"]
    assert [(r["client"], r["rows"]) for r in summaries] == [("2001:db8:1:2::/64", 2)]


def test_refusals_within_the_client_limit_beyond_the_records_allowance_are_folded(tmp_path: Path,
                                                                                 sqlite_source: str) -> None:
    """Many clients each within its own limit: every one is answered 401, but only
    failed_auth_records_per_minute of them get records of their own; the rest are counted in summaries."""
    config = workspace(tmp_path, sqlite_source, "sqlite:///store.db", '\n[server]\nforwarded_allow_ips = "*"\n'
                       + limits(failed_auth_burst=5, failed_auth_records_per_minute=12))
    with gateway(config) as client:
        got = [client.get("/v1/datasets", headers={"X-Forwarded-For": f"192.0.2.{n % 10}"}).status_code
               for n in range(40)]
    assert got == [401] * 40
    own, folded, _ = accounted(trail(config))
    assert own <= 13 and own + folded == 40


def test_an_agent_with_a_token_is_never_limited(tmp_path: Path, sqlite_source: str, store_url: str) -> None:
    config = workspace(tmp_path, sqlite_source, store_url, limits(failed_auth_burst=1))
    with gateway(config) as client:
        assert [no_token(client).status_code for _ in range(3)] == [401, 429, 429]
        agent = bearer("support-bot")
        for _ in range(5):  # the address is over its limit; valid tokens are not counted against it, nor limited
            assert client.post("/v1/datasets/customers/query", json={"limit": 1}, headers=agent).status_code == 200
        # A token that verifies but is refused later (a revoked agent: 403) is an agent's, not this limit's.
        client.post("/admin/v1/revocations", json={"agent": "analyst-bot"}, headers=bearer("alice"))
        assert [client.get("/v1/datasets", headers=bearer("analyst-bot")).status_code for _ in range(3)] == [403] * 3
    records = trail(config)
    assert sum(1 for r in records if r["agent"] == "support-bot" and r["status"] == 200) == 5
    assert sum(1 for r in records if r["agent"] == "analyst-bot") == 3


def test_a_client_over_its_limit_is_answered_at_a_pace(tmp_path: Path, sqlite_source: str) -> None:
    """Its 429s are held back refusal_delay_seconds: a client that ignores Retry-After sends no faster than its
    connections allow. At most a quarter of max_connections are held at once; beyond, answered at once."""
    config = workspace(tmp_path, sqlite_source, "sqlite:///store.db", "\n[server]\nmax_connections = 4\n"
                       + limits(failed_auth_burst=1, failed_auth_per_minute=1, refusal_delay_seconds=0.6))
    with gateway(config) as client:
        timed = []
        for _ in range(2):
            started = time.monotonic()
            timed.append((no_token(client).status_code, time.monotonic() - started))
        assert timed[0][0] == 401 and timed[0][1] < 0.5
        assert timed[1][0] == 429 and timed[1][1] >= 0.6
        # One held (max_connections 4: one at a time): another meanwhile is answered at once.
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(no_token, client)
            time.sleep(0.2)
            started = time.monotonic()
            assert no_token(client).status_code == 429
            assert time.monotonic() - started < 0.5
            assert held.result().status_code == 429
        # An agent with a valid token is never held.
        started = time.monotonic()
        assert client.get("/v1/datasets", headers=bearer("support-bot")).status_code == 200
        assert time.monotonic() - started < 0.5


@pytest.mark.unit
@pytest.mark.parametrize(("key", "value"), [
    ("failed_auth_per_minute", "0"), ("failed_auth_per_minute", "inf"), ("failed_auth_burst", "0"),
    ("failed_auth_records_per_minute", "-1"), ("failed_auth_clients", "0"), ("summary_seconds", "nan"),
    ("failed_auth_burst", '"30"'), ("refusal_delay_seconds", "-1"), ("refusal_delay_seconds", "61"),
    ("unknown", "1")])
def test_limits_are_checked(tmp_path: Path, sqlite_source: str, key: str, value: str) -> None:
    config = workspace(tmp_path, sqlite_source, "sqlite:///store.db", f"\n[limits]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=f"limits.{key}"):
        load_settings(config)


@pytest.mark.unit
async def test_summaries_kept_through_a_store_outage_stay_bounded_and_lose_no_count() -> None:
    """While the store is down, summaries it did not take are kept to try again; a flood from ever new addresses
    over many intervals keeps at most as many as the client table holds (plus one OVERFLOW summary), and once
    the store is back every refusal is counted in what is written."""
    from gateway.common.errors import Unavailable
    from gateway.config import LimitSettings
    from gateway.services.ratelimit import OVERFLOW, RefusalLimiter

    now = [0.0]
    down = [True]
    written: list[Any] = []

    async def write(record: Any) -> None:
        if down[0]:
            raise Unavailable("the store is down", reason="test: store down")
        written.append(record)

    limiter = RefusalLimiter(LimitSettings(failed_auth_clients=8, summary_seconds=1.0), write,
                             clock=lambda: now[0])
    refused = 0
    for interval in range(20):
        for i in range(8):  # 8 new addresses an interval, 160 in all
            client = f"198.51.{interval}.{i}"
            limiter.fold(limiter.judge(client), 401, client, lambda: {"path": "/v1/datasets"})
            refused += 1
        now[0] += 1.5
        await limiter.flush()
        assert len(limiter._unwritten) <= 8 + 1  # what the outage makes the gateway keep
    down[0] = False
    await limiter.flush(everything=True)
    counts = [json.loads(r.query)["count"] if r.query else 0 for r in written]
    assert sum(counts) == refused
    assert len(written) <= 9 and any(r.client == OVERFLOW for r in written)
