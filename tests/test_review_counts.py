"""The review page tells the truth at a glance (issue 16), through the public HTTP API on a SQLite and a
PostgreSQL store: its counts are the store's own (GROUP BY), exact on a few thousand records up to the newest one,
and bounded (the newest MAX_COUNTED records, said on the page when a window reaches past them); the chart follows
every filter the table does; pages go older and newer by record id with the filters kept; a denial shows the
rule that denied it and a read in SQL mode every rule it used; a view of the page leaves one audit record.

The truth the page is held to is the admin API's list of records (`GET /admin/v1/audit`), counted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import sqlite3
from collections import Counter
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.audit import FIELD_MAX, reading
from gateway.core.sqlread import rules_text
from gateway.store import create_tables, make_store_engine
from tests.conftest import PG_ADMIN, POLICY, _database, bearer, client_for, token, write_workspace
from tests.test_review_page import ranking_rows, trail_rows

pytestmark = pytest.mark.integration

BOTS = [f"bot-{i:02d}" for i in range(11)]  # more agents than the ranking shows: the rest are summed
DENY_RULE = "p, support, orders, read, deny"
ROLES = "".join(f"g, {b}, support\n" for b in BOTS) + "g, last-bot, analyst\n"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
READS = 1_900
JUNK = 40  # unauthenticated reads: more refused than any bot's, fewer than the per-client limit's burst


def _make_reads(client: TestClient) -> None:
    """READS reads by eleven agents (about one in seven denied by the policy's deny line), a few failed and
    unauthenticated ones, some with a work unit or a trace, and last the newest: one read by last-bot."""
    for i in range(READS):
        agent = BOTS[i % len(BOTS)]
        headers = bearer(agent)
        if i % 50 == 0:
            headers["X-Work-Unit"] = "WU-1"
        if i % 97 == 0:
            headers["traceparent"] = f"00-{TRACE}-00f067aa0ba902b7-01"
        if i % 7 == 3:
            status = client.post("/v1/datasets/orders/query", json={}, headers=headers).status_code
            assert status == 403
        elif i % 131 == 5:
            assert client.post("/v1/datasets/customers/query", json={"columns": ["nope"]},
                               headers=headers).status_code == 400
        else:
            assert client.post("/v1/datasets/customers/query", json={"columns": ["id"], "limit": 1},
                               headers=headers).status_code == 200
    for _ in range(JUNK):
        assert client.post("/v1/datasets/customers/query", json={}, headers={"Authorization": "Bearer junk"}
                           ).status_code == 401
    assert client.post("/v1/datasets/orders/query", json={"limit": 1}, headers=bearer("last-bot")).status_code == 200


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
       sqlite_source: str) -> Iterator[TestClient]:
    """A gateway with a trail of about 1,950 reads on each store kind, made once for the module."""
    root = tmp_path_factory.mktemp(f"counts-{request.param}")
    urls: Iterator[str] = (iter([f"sqlite+aiosqlite:///{root}/store.db"]) if request.param == "sqlite"
                           else _database(PG_ADMIN, "store", "PostgreSQL"))
    store = next(urls)
    config = write_workspace(root, source_url=sqlite_source, store_url=store,
                             policy=POLICY + DENY_RULE + "\n" + ROLES, extra="\n[audit]\nverify_seconds = 0\n")
    try:
        with client_for(config) as client:
            _make_reads(client)
            client.post("/admin/login", data={"token": token("alice")})
            yield client
    finally:
        for _ in urls:  # drops the PostgreSQL database
            pass


def api_records(client: TestClient, **filters: str) -> list[dict[str, Any]]:
    """Every record the filter selects, newest first, read through the admin API a page of 1,000 at a time."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "1000", **filters, **({"cursor": cursor} if cursor else {})}
        page = client.get("/admin/v1/audit", params=params, headers=bearer("alice")).json()
        found += page["records"]
        cursor = page["next_cursor"]
        if not cursor:
            return found


def reads_of(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["action"] == "read"]


def totals(html: str) -> tuple[int, int, int, int, int]:
    """The page's count of reads: (all, allowed, denied, failed, pending)."""
    text = " ".join(unescape(re.sub(r"<[^>]+>", "", html.split('id="read-totals">', 1)[1].split("</span>\n", 1)[0]))
                    .split())
    m = re.fullmatch(r"([\d,]+) reads: ([\d,]+) allowed, ([\d,]+) refused \(([\d,]+) denied, ([\d,]+) failed, "
                     r"([\d,]+) pending approval\)", text)
    assert m, text
    n = [int(g.replace(",", "")) for g in m.groups()]
    assert n[0] == n[1] + n[2] and n[2] == n[3] + n[4] + n[5]
    return n[0], n[1], n[3], n[4], n[5]


def expected(records: list[dict[str, Any]]) -> tuple[int, int, int, int, int]:
    d = Counter(r["decision"] for r in reads_of(records))
    return sum(d.values()), d["allow"], d["deny"], d["error"], d["pending"]


def bar_sums(html: str) -> Counter[str]:
    """What the timeline's bars add up to, by their titles ("12 allowed from ...")."""
    chart = html.split('<svg class="timeline"', 1)[1].split("</svg>", 1)[0] if '<svg class="timeline"' in html else ""
    sums: Counter[str] = Counter()
    for n, what in re.findall(r"<title>([\d,]+) (allowed|denied|failed|pending approval) from ", chart):
        sums[what] += int(n.replace(",", ""))
    return sums


def view(client: TestClient, **params: str) -> str:
    r = client.get("/admin/", params=params)
    assert r.status_code == 200, r.text
    return r.text


def test_the_counts_are_the_stores_exact_to_the_newest_read(gw: TestClient) -> None:
    html = view(gw)
    records = api_records(gw)
    reads = reads_of(records)
    assert len(reads) == READS + JUNK + 1 and reads[0]["agent"] == "last-bot"  # the newest read, counted below
    assert totals(html) == expected(records)
    assert bar_sums(html) == {"allowed": expected(records)[1], "denied": expected(records)[2],
                              "failed": expected(records)[3]}
    # The readers: the eight with the most allowed reads, then those most refused, each exact; the rest summed.
    by_agent = Counter((r["agent"] or "(unauthenticated)", r["decision"]) for r in reads)
    rows = ranking_rows(html, "by-agent")
    named = [(name, counts) for name, counts in rows if not name.endswith("other agents")]
    for name, counts in named:
        assert counts == [by_agent[(name, d)] for d in ("allow", "deny", "error", "pending")], name
    allowed = [row[1][0] for row in named[:8]]
    assert allowed == sorted(allowed, reverse=True) and "(unauthenticated)" in dict(named)  # most refused, apart
    others = rows[-1]
    agents = {a for a, _ in by_agent}
    assert others[0] == f"{len(agents) - len(named)} other agents"
    assert [sum(c[i] for _, c in named) + others[1][i] for i in range(4)] == list(expected(records)[1:])
    # The newest read is in them: last-bot's one read of orders.
    assert ranking_rows(view(gw, agent="last-bot"), "by-agent") == [("last-bot", [1, 0, 0, 0])]
    by_dataset = Counter((r["dataset"], r["decision"]) for r in reads)
    assert {n: c for n, c in ranking_rows(html, "by-dataset")} == {
        ds: [by_dataset[(ds, d)] for d in ("allow", "deny", "error", "pending")] for ds in ("customers", "orders")}
    # The admin API's activity answer is counted by the store too.
    activity = gw.get("/admin/v1/audit/activity", headers=bearer("alice")).json()
    assert sum(map(sum, activity["series"].values())) == len(reads) and activity["counted_from"] is None
    assert sum(activity["refused"]) == sum(1 for r in reads if r["decision"] != "allow")
    assert sum(activity["series"]["last-bot"]) == 1


FILTERS: list[dict[str, str]] = [
    {"agent": "bot-03"}, {"decision": "deny"}, {"dataset": "orders"}, {"agent": "bot-03", "decision": "allow"},
    {"work_unit": "WU-1"}, {"trace_id": TRACE}, {"decision": "error", "dataset": "customers"},
    {"agent": "(nobody)"}, {"since": "2001-01-01T00:00:00Z", "until": "2999-01-01T00:00:00Z", "agent": "bot-07"},
]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: "&".join(f"{k}={v}" for k, v in f.items()))
def test_the_chart_follows_the_filters_as_the_table_does(gw: TestClient, filters: dict[str, str]) -> None:
    html = view(gw, **filters)
    records = api_records(gw, **filters)
    assert totals(html) == expected(records)
    assert sum(bar_sums(html).values()) == expected(records)[0]
    assert [int(cells[0]) for _, cells in trail_rows(html)] == [r["id"] for r in records[:50]]
    named = ranking_rows(html, "by-agent")
    assert sum(c[0] for _, c in named) == expected(records)[1]
    for k, v in filters.items():
        assert f'name="{k}" value="{v}"' in html or f'<option value="{v}" selected>' in html


def test_a_window_is_counted_from_a_later_time_when_it_reaches_past_the_cap(
        gw: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reading, "MAX_COUNTED", 500)
    html = view(gw)
    newest = int(re.search(r"as of record ([\d,]+)", html)[1].replace(",", ""))  # type: ignore[index]
    counted = [r for r in api_records(gw) if newest - 500 < r["id"] <= newest]
    assert 'id="chart-capped"' in html and "the newest 500 records of the trail" in html
    assert totals(html) == expected(counted)  # the newest ones, exactly: never the oldest
    # A window within the newest 500 records is not cut.
    since = min(r["time"] for r in counted[:100])
    html = view(gw, since=since)
    assert 'id="chart-capped"' not in html
    assert totals(html) == expected([r for r in api_records(gw, since=since) if r["id"] <= newest])


def _walk(client: TestClient, url: str, rel: str) -> tuple[list[list[int]], str]:
    """The pages from `url` on, following the links `rel` (next: older, prev: newer), and the last one's URL."""
    pages = []
    while True:
        html = client.get(unescape(url)).text
        pages.append([int(cells[0]) for _, cells in trail_rows(html)])
        found = re.search(rf'href="([^"]+)" rel="{rel}"', html)
        if not found:
            return pages, url
        assert "agent=bot-05&amp;dataset=customers&amp;" in found[1]  # the filters kept
        url = found[1]


def test_pages_go_older_and_newer_by_id_keeping_the_filters(gw: TestClient) -> None:
    ids = [r["id"] for r in api_records(gw, agent="bot-05", dataset="customers")]
    assert len(ids) > 100
    older, oldest_url = _walk(gw, "/admin/?agent=bot-05&dataset=customers", "next")
    assert [len(p) for p in older[:-1]] == [50] * (len(older) - 1) and 0 < len(older[-1]) <= 50
    assert [i for p in older for i in p] == ids  # every record once, newest first
    # Back up towards the newest from the oldest page: the same pages, in turn.
    newer, _ = _walk(gw, oldest_url, "prev")
    assert newer == list(reversed(older))
    html = gw.get(f"/admin/?agent=bot-05&dataset=customers&after={ids[60]}").text
    assert [int(c[0]) for _, c in trail_rows(html)] == ids[10:60]
    assert 'href="/admin/?agent=bot-05&amp;dataset=customers" id="page-newest"' in html  # the filters kept
    assert re.search(r'href="/admin/\?agent=bot-05&amp;dataset=customers&amp;after=\d+" rel="prev"', html)


def test_a_denial_shows_its_rule_and_sql_mode_every_rule(gw: TestClient) -> None:
    html = view(gw, agent="bot-01", decision="deny")
    assert all(DENY_RULE in cells[11] for _, cells in trail_rows(html))
    denied = api_records(gw, agent="bot-01", decision="deny")[0]
    assert denied["rule"] == DENY_RULE and denied["reason"] == f"denied by {DENY_RULE}"
    page = gw.get(f"/admin/records/{denied['id']}").text
    assert re.search(r'id="decided-by">Denied; the policy\'s rule: <code>p, support, orders, read, deny</code>', page)
    sql = "SELECT c.country, count(*) AS n FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.country"
    assert gw.post("/v1/sql", json={"sql": sql}, headers=bearer("last-bot")).status_code == 200
    assert gw.post("/v1/sql", json={"sql": sql}, headers=bearer("bot-02")).status_code == 403
    allowed, refused = api_records(gw, agent="last-bot")[0], api_records(gw, agent="bot-02")[0]
    assert allowed["rule"] == ("customers: p, analyst, customers, read, allow; "
                               "orders: p, analyst, orders, read, allow")
    assert refused["rule"] == f"customers: p, support, customers, read, allow; orders: {DENY_RULE}"
    html = view(gw, agent="last-bot")
    assert "customers: p, analyst, customers, read, allow; orders: p, analyst, orders, read, allow" in html


def test_a_view_leaves_one_record_naming_what_was_viewed(gw: TestClient) -> None:
    def web() -> list[dict[str, Any]]:
        return [r for r in api_records(gw, agent="alice") if r["transport"] == "web"]

    before = len(web())
    view(gw, agent="bot-04", decision="deny", before="999999")
    after = web()
    assert len(after) == before + 1
    assert (after[0]["action"], json.loads(after[0]["query"])) == (
        "read_audit", {"agent": "bot-04", "decision": "deny", "before": "999999"})
    assert after[0]["rows"] == min(50, len(api_records(gw, agent="bot-04", decision="deny")))
    assert gw.get("/admin/?full_check=1").status_code == 200 and len(web()) == before + 2


@pytest.mark.unit
def test_a_store_from_an_earlier_release_gets_the_new_indexes_at_start(tmp_path: Path) -> None:
    # The trail tests/test_trail_compat.py holds, written before these indexes existed.
    store = tmp_path / "store.db"
    shutil.copyfile(Path(__file__).parent / "data" / "trail-063beaf.db", store)

    def indexes() -> set[str]:
        with contextlib.closing(sqlite3.connect(store)) as db:
            return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                             "AND tbl_name = 'audit'")}

    assert not {"ix_audit_trace_id", "ix_audit_work_unit"} & indexes()
    engine = make_store_engine(f"sqlite+aiosqlite:///{store}")
    asyncio.run(create_tables(engine))
    asyncio.run(create_tables(engine))  # and a second start finds them made
    asyncio.run(engine.dispose())
    assert {"ix_audit_time", "ix_audit_agent", "ix_audit_trace_id", "ix_audit_work_unit"} <= indexes()
    with contextlib.closing(sqlite3.connect(store)) as db:
        plan = " ".join(str(r) for r in db.execute("EXPLAIN QUERY PLAN SELECT id FROM audit WHERE work_unit = 'x' "
                                                   "ORDER BY id DESC LIMIT 51"))
    assert "ix_audit_work_unit" in plan  # the partial index serves the filter


@pytest.mark.unit
def test_sql_mode_keeps_every_rule_whole_up_to_the_records_bound() -> None:
    used = [f"dataset_{i:03d}: p, reporting, dataset_{i:03d}, read, allow" for i in range(100)]
    assert rules_text([]) is None and rules_text(used[:2]) == "; ".join(used[:2])
    text = rules_text(used)
    assert text is not None and len(text) <= FIELD_MAX["rule"]
    kept = text.rsplit("; and ", 1)[0].split("; ")
    assert kept == used[: len(kept)] and text.endswith(f"; and {len(used) - len(kept)} more")  # whole entries
    assert rules_text(["x" * 2000]) == "1 rules, too long to keep"
