"""The security reviewers' web page at /admin/.

Fast tests drive it in-process with the TestClient; one end-to-end test runs
`agentgate serve` and signs in with headless Chromium (Debian's /usr/bin/chromium
driven by Playwright) at 1366x768, then saves screenshots to ARTIFACTS (see
tests/test_review_browser.py for the charts, filters and paging in the browser).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from gateway.audit import FIELD_ORDER
from gateway.transports.review import chart
from gateway.transports.review.routes import COOKIE
from tests.conftest import IN_CI, bearer, client_for, token, write_workspace
from tests.serving import serving

pytestmark = pytest.mark.integration

# Screenshots of the browser tests: $AGENTGATE_ARTIFACTS/review, else test-artifacts/review in the repository
# (git-ignored); .ci/run prints where they are.
ARTIFACTS = Path(os.environ.get("AGENTGATE_ARTIFACTS") or Path(__file__).parent.parent / "test-artifacts") / "review"
SCREEN = (1366, 768)  # a common laptop screen: the page must fit it without scrolling sideways
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# --- helpers ---------------------------------------------------------------------------------------


class Rows(HTMLParser):
    """The body rows of the trail table: (row class, [cell texts])."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, list[str]]] = []
        self._in_body = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append((dict(attrs).get("class") or "", []))
        elif tag in ("td", "th") and self._in_body and self.rows:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._in_body = False
        elif tag in ("td", "th") and self._cell is not None:
            self.rows[-1][1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def trail_rows(html: str) -> list[tuple[str, list[str]]]:
    """Each record row: (class, cells) with cells id, time, agent, on_behalf_of, action, dataset, decision, ..."""
    parser = Rows()
    parser.feed(html.split('<table class="trail">', 1)[1])
    return [r for r in parser.rows if r[0].startswith("decision-")]


def ranking_rows(html: str, table: str) -> list[tuple[str, list[int]]]:
    """A ranking's rows: (the whole name, from its title; [allowed, denied, failed, pending])."""
    if f'<table class="ranking" id="{table}">' not in html:
        return []  # no reads: the card says so
    body = html.split(f'<table class="ranking" id="{table}">', 1)[1].split("</table>", 1)[0]
    rows = []
    for row in re.findall(r"<tr class=\"(?:named|other)\">(.*?)</tr>", body, re.S):
        name = re.search(r'<th scope="row" title="([^"]*)"', row)
        assert name, row
        counts = [int(n.replace(",", "")) for n in re.findall(r'<td class="num n[^"]*">([\d,]+)</td>', row)]
        rows.append((unescape(name.group(1)), counts))
    return rows


def make_reads(client: TestClient) -> None:
    """Allowed, denied, failed and unauthenticated reads, so the trail has something to review."""
    ok = {"columns": ["id", "name"], "limit": 2}
    assert client.post("/v1/datasets/customers/query", json=ok, headers=bearer("support-bot")).status_code == 200
    assert client.post("/v1/datasets/customers/query", json=ok,
                       headers=bearer("analyst-bot", on_behalf_of="jane@example.com")).status_code == 200
    assert client.post("/v1/datasets/orders/query", json={}, headers=bearer("support-bot")).status_code == 403
    assert client.post("/v1/datasets/customers/query", json={"columns": ["nope"]},
                       headers={**bearer("analyst-bot"), "X-Work-Unit": "TICKET-7"}).status_code == 400
    assert client.post("/v1/datasets/customers/query", json=ok,
                       headers={"Authorization": "Bearer junk"}).status_code == 401


def sign_in(client: TestClient, agent: str = "alice") -> None:
    r = client.post("/admin/login", data={"token": token(agent)}, follow_redirects=False)
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/admin/"


def trail(client: TestClient, **params: str) -> list[dict[str, object]]:
    """The trail as the JSON admin API gives it to alice (itself leaving an http record)."""
    r = client.get("/admin/v1/audit", params={"limit": "1000", **params}, headers=bearer("alice"))
    assert r.status_code == 200, r.text
    records: list[dict[str, object]] = r.json()["records"]
    return records


@pytest.fixture
def config(tmp_path: Path, sqlite_source: str) -> Path:
    return write_workspace(tmp_path, source_url=sqlite_source)


@pytest.fixture
def client(config: Path) -> Iterator[TestClient]:
    with client_for(config) as c:
        make_reads(c)
        yield c


# --- signing in ------------------------------------------------------------------------------------


def test_without_a_session_the_page_shows_the_sign_in_form(client: TestClient) -> None:
    r = client.get("/admin/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<form method="post" action="/admin/login">' in r.text
    assert '<label for="token">' in r.text and 'name="token"' in r.text
    assert "set-cookie" not in r.headers
    assert r.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert "Sign out" not in r.text
    # /admin without the slash leads there too; other pages want a session.
    assert client.get("/admin", follow_redirects=False).headers["location"] == "/admin/"
    r = client.get("/admin/records/1")
    assert r.status_code == 401 and 'name="token"' in r.text
    assert 'name="next" value="/admin/records/1"' in r.text
    assert client.get("/admin/export?format=csv").status_code == 401


def test_a_bad_token_shows_the_form_again_with_the_core_s_message(client: TestClient) -> None:
    secret_ish = "not-a-jwt-but-secret-0123456789"
    r = client.post("/admin/login", data={"token": secret_ish}, follow_redirects=False)
    assert r.status_code == 401
    assert "malformed token" in r.text and 'name="token"' in r.text
    assert secret_ish not in r.text  # never echoed
    assert "set-cookie" not in r.headers
    r = client.post("/admin/login", data={"token": token("alice", ttl=-120)}, follow_redirects=False)
    assert r.status_code == 401 and "expired" in r.text
    r = client.post("/admin/login", data={"token": "  "}, follow_redirects=False)
    assert r.status_code == 400 and "paste a reviewer token" in r.text


def test_an_agent_that_may_not_read_the_trail_is_refused(client: TestClient) -> None:
    r = client.post("/admin/login", data={"token": token("support-bot")}, follow_redirects=False)
    assert r.status_code == 403
    assert "not allowed: read on admin:audit" in r.text
    assert "set-cookie" not in r.headers
    # The refused sign-in is itself in the trail, as a denial through the web.
    refused = trail(client, agent="support-bot", decision="deny")
    assert any(rec["action"] == "read_audit" and rec["transport"] == "web" for rec in refused)


def test_a_reviewer_signs_in_with_an_httponly_strict_cookie(client: TestClient) -> None:
    tok = token("alice")
    r = client.post("/admin/login", data={"token": f"Bearer {tok}"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/admin/"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={tok};")
    attrs = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")[1:]}
    assert "httponly" in attrs
    assert attrs["samesite"].lower() == "samesite=strict"
    assert attrs["path"] == "Path=/admin"
    assert tok not in r.text
    r = client.get("/admin/")
    assert r.status_code == 200 and "Audit trail" in r.text and "Sign out" in r.text
    assert tok not in r.text


def test_signing_in_from_a_page_returns_to_it(client: TestClient) -> None:
    r = client.post("/admin/login", data={"token": token("alice"), "next": "/admin/records/3"},
                    follow_redirects=False)
    assert r.headers["location"] == "/admin/records/3"
    client.cookies.clear()
    for evil in ("https://evil.example/", "//evil.example/admin/", "/admin/..//evil", "/v1/datasets"):
        r = client.post("/admin/login", data={"token": token("alice"), "next": evil}, follow_redirects=False)
        assert r.headers["location"] == "/admin/", evil


def test_posts_from_another_site_are_refused(client: TestClient) -> None:
    r = client.post("/admin/login", data={"token": token("alice")}, headers={"Origin": "https://evil.example"},
                    follow_redirects=False)
    assert r.status_code == 403 and "set-cookie" not in r.headers
    sign_in(client)
    r = client.post("/admin/logout", headers={"Origin": "https://evil.example"}, follow_redirects=False)
    assert r.status_code == 403
    r = client.post("/admin/logout", headers={"Origin": "http://testserver"}, follow_redirects=False)
    assert r.status_code == 303


# --- the dashboard ---------------------------------------------------------------------------------


def test_the_dashboard_shows_the_chain_the_chart_and_the_records(client: TestClient) -> None:
    sign_in(client)
    html = client.get("/admin/").text
    # What was checked and when, never "verified" alone (tests/test_attacks_trail_tamper.py goes further).
    assert re.search(r"last full check: [\d-]+ [\d:]+ UTC, \d+ records \(1\u2013\d+\), intact", html)
    assert "chain verified" not in html
    assert 'class="status ok"' in html
    # The chart: an inline SVG, allowed reads above the line and refused ones below it, with a legend; the
    # readers ranked by allowed reads, their refusals apart.
    assert '<svg class="timeline"' in html and 'role="img"' in html
    legend = html.split('class="legend"', 1)[1].split("</ul>", 1)[0]
    for name in ("allowed", "denied", "failed", "pending approval"):
        assert name in legend
    assert re.search(r"<strong>5</strong> reads: <strong>2</strong> allowed", html)
    assert re.search(r"<strong>3</strong> refused</span> \(2 denied, 1 failed, 0 pending approval\)", html)
    # Ties by name; no allowed read ranks last, however many refused.
    assert ranking_rows(html, "by-agent") == [("analyst-bot", [1, 0, 1, 0]), ("support-bot", [1, 1, 0, 0]),
                                              ("(unauthenticated)", [0, 1, 0, 0])]
    assert ranking_rows(html, "by-dataset") == [("customers", [2, 1, 1, 0]), ("orders", [0, 1, 0, 0])]
    # The table: semantic, newest first, denials and errors marked by class and by a text badge.
    assert "<caption" in html and '<th scope="col">Agent</th>' in html and '<th scope="col">Work unit</th>' in html
    rows = trail_rows(html)
    ids = [int(cells[0]) for _, cells in rows]
    assert ids == sorted(ids, reverse=True)
    denied = [cells for cls, cells in rows if cls == "decision-deny" and cells[2] == "support-bot"]
    assert len(denied) == 1 and denied[0][5] == "read" and denied[0][6] == "orders"
    assert "DENIED" in denied[0][7] and "no policy line grants this" in denied[0][11]
    failed = [cells for cls, cells in rows if cls == "decision-error"]
    assert failed and "ERROR" in failed[0][7] and failed[0][2] == "analyst-bot" and failed[0][4] == "TICKET-7"
    assert [cells for cls, cells in rows if cls == "decision-deny" and cells[2] == "(unauthenticated)"]
    assert any(cells[3] == "jane@example.com" for _, cells in rows)
    assert f'<a href="/admin/records/{ids[0]}"' in html
    # Export links carry the current filters.
    assert 'href="/admin/export?format=csv"' in html and 'href="/admin/export?format=jsonl"' in html


def test_a_broken_chain_is_shown_in_red_with_the_first_bad_record(client: TestClient, config: Path) -> None:
    with contextlib.closing(sqlite3.connect(config.parent / "store.db")) as db, db:
        db.execute("UPDATE audit SET reason = 'nothing to see' WHERE id = 3")
    sign_in(client)
    html = client.get("/admin/").text
    assert 'class="status broken" role="alert"' in html
    assert re.search(r'chain broken at record <a href="/admin/records/3">3</a>: its content does not match', html)
    assert "2 records verified before it" in html


def test_views_check_what_was_added_and_a_full_check_walks_every_record(client: TestClient, config: Path) -> None:
    sign_in(client)
    # A full check asked for by the view (the one at start may have ended before it, or may still be running:
    # either way, this view's check is the last full check).
    first = client.get("/admin/?full_check=1").text
    assert re.search(r"this view:\s+that full check", first) and 'id="full-check"' in first
    client.post("/v1/datasets/customers/query", headers=bearer("support-bot"), json={"limit": 1})
    second = client.get("/admin/").text
    assert 'class="status ok"' in second
    assert re.search(r"this view:\s+records \d+\u2013\d+ checked incrementally at [\d-]+ [\d:]+ UTC", second)
    # An edit to a record an earlier check already passed is left to the full check...
    with contextlib.closing(sqlite3.connect(config.parent / "store.db")) as db, db:
        db.execute("UPDATE audit SET reason = 'nothing to see' WHERE id = 3")
    assert 'class="status ok"' in client.get("/admin/").text
    # ...which finds it, and from then on every view walks the whole trail again until it holds.
    full = client.get("/admin/?full_check=1").text
    assert re.search(r'chain broken at record <a href="/admin/records/3">3</a>', full)
    assert 'class="status broken"' in client.get("/admin/").text


@pytest.mark.unit
def test_the_timeline_draws_allowed_above_the_line_and_refused_below_on_one_scale() -> None:
    slots = [{"allow": 40, "deny": 0, "error": 0, "pending": 0}, {"allow": 0, "deny": 10, "error": 5, "pending": 1},
             {"allow": 0, "deny": 0, "error": 0, "pending": 0}]
    t = chart.timeline({"since": "2026-01-31T00:00:00.000000Z", "until": "2026-01-31T03:00:00.000000Z",
                        "bucket_seconds": 3600.0, "over_time": slots})
    assert t.bucket_label == "1 h" and [x.label for x in t.x_ticks] == ["00:00", "01:00", "02:00"]
    up = [b for b in t.bars if b.colour == chart.ALLOWED_COLOUR]
    down = [b for b in t.bars if b.colour != chart.ALLOWED_COLOUR]
    assert len(up) == 1 and up[0].y + up[0].height == pytest.approx(t.zero, abs=0.02)  # rises from the zero line
    assert [b.title.split(" from ")[0] for b in down] == ["10 denied", "5 failed", "1 pending approval"]
    assert down[0].y == pytest.approx(t.zero, abs=0.01) and all(b.y >= t.zero - 0.01 for b in down)  # hangs below it
    assert down[1].y == pytest.approx(down[0].y + down[0].height, abs=0.02)  # stacked
    # One scale: 40 allowed is four times as tall as 10 denied.
    assert up[0].height == pytest.approx(4 * down[0].height, abs=0.05)
    assert t.zero < t.bottom <= t.height and t.up_ticks[0].label == "0"
    empty = chart.timeline({"since": "2026-01-31T00:00:00Z", "until": "2026-01-31T03:00:00Z", "over_time": []})
    assert empty.bars == []


@pytest.mark.unit
def test_a_ranking_puts_refused_left_and_allowed_right_and_sums_the_rest() -> None:
    long_name = "agent-" + "x" * 100
    part = {"top": [{"name": "busy", "allow": 90, "deny": 3, "error": 0, "pending": 0},
                    {"name": None, "allow": 0, "deny": 120, "error": 0, "pending": 0},
                    {"name": long_name, "allow": 1, "deny": 0, "error": 2, "pending": 1}],
            "others": {"groups": 7, "allow": 30, "deny": 1, "error": 0, "pending": 0}}
    r = chart.ranking(part, "agents")
    assert [row.name for row in r.rows] == ["busy", "(unauthenticated)", long_name, "7 other agents"]
    assert r.rows[2].shown == long_name[: chart.NAME_CHARS - 1] + "\u2026" and r.rows[3].other
    busy, unauthenticated = r.rows[0], r.rows[1]
    assert (busy.allowed, busy.refused, unauthenticated.allowed, unauthenticated.refused) == (90, 3, 0, 120)
    right = [s for s in busy.segments if s.colour == chart.ALLOWED_COLOUR]
    left = [s for s in unauthenticated.segments if s.colour != chart.ALLOWED_COLOUR]
    assert right[0].x == r.centre and left[0].x + left[0].width == pytest.approx(r.centre)
    assert left[0].width == pytest.approx(r.centre - 2)  # the widest bar of either side fills its half
    assert right[0].width == pytest.approx(left[0].width * 90 / 120)  # one scale for both sides
    assert chart.ranking({"top": [], "others": {"groups": 0}}, "datasets").rows == []


def test_filters_narrow_the_table_and_the_exports(client: TestClient) -> None:
    sign_in(client)
    html = client.get("/admin/", params={"agent": "support-bot", "decision": "deny"}).text
    rows = trail_rows(html)
    assert rows and all(cls == "decision-deny" and cells[2] == "support-bot" for cls, cells in rows)
    assert 'value="support-bot"' in html and '<option value="deny" selected>' in html
    assert 'href="/admin/export?format=csv&amp;agent=support-bot&amp;decision=deny"' in html
    rows = trail_rows(client.get("/admin/", params={"dataset": "customers", "work_unit": "TICKET-7"}).text)
    assert len(rows) == 1 and rows[0][0] == "decision-error"
    rows = trail_rows(client.get("/admin/", params={"on_behalf_of": "jane@example.com"}).text)
    assert len(rows) == 1 and rows[0][1][2] == "analyst-bot"
    rows = trail_rows(client.get("/admin/", params={"since": "2001-01-01T00:00Z", "until": "2001-01-02T00:00Z"}).text)
    assert rows == []
    # Empty fields are no filter; a bad one is the core's 400, with its message and request id.
    assert len(trail_rows(client.get("/admin/?agent=&dataset=&decision=").text)) >= 5
    r = client.get("/admin/", params={"since": "yesterday"})
    assert r.status_code == 400
    assert "ISO 8601" in r.text and re.search(r"request id <span class=\"mono\">[0-9a-f]{32}</span>", r.text)


def test_older_pages_follow_the_cursor(client: TestClient) -> None:
    for _ in range(50):
        client.get("/v1/datasets", headers=bearer("support-bot"))
    sign_in(client)
    first = client.get("/admin/", params={"agent": "support-bot"}).text
    rows = trail_rows(first)
    assert len(rows) == 50
    older = re.search(r'href="(/admin/\?agent=support-bot&amp;before=(\d+))" rel="next"', first)
    assert older and int(older.group(2)) == int(rows[-1][1][0])
    second = client.get(older.group(1).replace("&amp;", "&")).text
    more = trail_rows(second)
    assert more and int(more[0][1][0]) < int(rows[-1][1][0])
    assert all(cells[2] == "support-bot" for _, cells in more)
    assert "« Newest" in second
    newer = re.search(r'href="(/admin/\?agent=support-bot&amp;after=(\d+))" rel="prev"', second)
    assert newer and int(newer.group(2)) == int(more[0][1][0])
    assert trail_rows(client.get(newer.group(1).replace("&amp;", "&")).text) == rows
    # A link from before keyset paging both ways (?cursor=) still leads to the same older page.
    assert trail_rows(client.get("/admin/", params={"agent": "support-bot", "cursor": older.group(2)}).text) == more


def test_text_from_the_trail_is_escaped(client: TestClient) -> None:
    client.get("/v1/datasets/customers", headers=bearer("<script>alert(1)</script>"))
    sign_in(client)
    html = client.get("/admin/").text
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


# --- a record, exports ----------------------------------------------------------------------------


def test_a_record_shows_every_field_with_its_hashes(client: TestClient) -> None:
    denied = trail(client, agent="support-bot", decision="deny", dataset="orders")[0]
    sign_in(client)
    r = client.get(f"/admin/records/{denied['id']}")
    assert r.status_code == 200
    for name in FIELD_ORDER:
        assert f'<th scope="row">{name}</th>' in r.text
    assert str(denied["hash"]) in r.text and str(denied["prev_hash"]) in r.text
    assert str(denied["request_id"]) in r.text and "DENIED" in r.text
    assert "sales-ops@example.com" in r.text  # the owner of what was asked for
    # The query pretty-printed.
    ok = trail(client, agent="support-bot", decision="allow", dataset="customers")[0]
    r = client.get(f"/admin/records/{ok['id']}")
    assert '<pre>{\n  &#34;columns&#34;: [\n    &#34;id&#34;,' in r.text
    r = client.get("/admin/records/99999")
    assert r.status_code == 404 and "no audit record 99999" in r.text and "request id" in r.text


def test_csv_export_downloads_the_filtered_trail(client: TestClient) -> None:
    sign_in(client)
    expected = [r["id"] for r in trail(client, decision="deny")]
    r = client.get("/admin/export", params={"format": "csv", "decision": "deny"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert re.fullmatch(r'attachment; filename="agentgate-audit-\d{8}T\d{6}Z\.csv"', r.headers["content-disposition"])
    records = list(csv.DictReader(io.StringIO(r.text)))
    assert list(records[0]) == list(FIELD_ORDER)
    assert {rec["decision"] for rec in records} == {"deny"}
    assert [int(rec["id"]) for rec in records] == sorted(expected)  # oldest first
    r = client.get("/admin/export", params={"format": "jsonl", "agent": "analyst-bot"})
    assert r.status_code == 200 and r.headers["content-disposition"].endswith('.jsonl"')
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines and {rec["agent"] for rec in lines} == {"analyst-bot"}
    r = client.get("/admin/export", params={"format": "xml"})
    assert r.status_code == 400 and "jsonl or csv" in r.text


def test_every_page_view_is_authorised_and_audited_as_web_once(client: TestClient) -> None:
    sign_in(client)
    client.get("/admin/")
    client.get("/admin/", params={"agent": "support-bot", "decision": "deny", "dataset": ""})
    rid = trail(client, agent="support-bot")[0]["id"]
    client.get(f"/admin/records/{rid}")
    client.get("/admin/export", params={"format": "csv"})
    web = [r for r in reversed(trail(client, agent="alice")) if r["transport"] == "web"]
    # Sign-in, two views of the trail (table, charts and the chain's check in one request each), a record, an
    # export: one record each, and each names what was viewed.
    assert [(r["action"], json.loads(str(r["query"]))) for r in web] == [
        ("read_audit", {"limit": "1"}), ("read_audit", {}),
        ("read_audit", {"agent": "support-bot", "decision": "deny"}), ("read_audit", {"id": str(rid)}),
        ("export_audit", {"format": "csv"})]
    assert all(r["decision"] == "allow" for r in web)
    assert web[2]["rows"] == 1 and web[3]["rows"] == 1


def test_a_revoked_reviewer_is_signed_out_on_the_next_page(client: TestClient) -> None:
    r = client.post("/admin/login", data={"token": token("alice", jti="page-session")}, follow_redirects=False)
    assert r.status_code == 303
    assert client.get("/admin/").status_code == 200
    # The session's token, revoked with another of alice's tokens (an admin may not revoke itself nor the token
    # it is using: tests/test_attacks_admin_footguns.py).
    r = client.post("/admin/v1/revocations", json={"jti": "page-session", "reason": "test"}, headers=bearer("alice"))
    assert r.status_code == 201
    r = client.get("/admin/")
    assert r.status_code == 403 and 'name="token"' in r.text
    assert f"{COOKIE}=" in r.headers["set-cookie"] and "Max-Age=0" in r.headers["set-cookie"]


def test_logout_clears_the_cookie(client: TestClient) -> None:
    sign_in(client)
    r = client.post("/admin/logout", follow_redirects=False)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f'{COOKIE}="";') and "Max-Age=0" in cookie and "Path=/admin" in cookie
    assert COOKIE not in client.cookies
    r = client.get(r.headers["location"])
    assert r.status_code == 200 and 'name="token"' in r.text and "You have signed out." in r.text


# --- end to end: `agentgate serve` and a real browser ----------------------------------------------


def _browser_or_skip() -> None:
    reason = None
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed (pip install playwright; no browser download is needed)"
    if reason is not None:
        if IN_CI:
            pytest.fail(f"{reason}; CI requires it", pytrace=False)
        pytest.skip(reason)


@pytest.mark.system
def test_end_to_end_in_headless_chromium(tmp_path: Path, sqlite_source: str) -> None:
    _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    config = write_workspace(tmp_path, source_url=sqlite_source)
    with serving(config, tmp_path / "serve.log") as base:
        with httpx.Client(base_url=base) as http:
            for agent, dataset, body, status in [
                ("support-bot", "customers", {"columns": ["id", "name", "email"], "limit": 3}, 200),
                ("analyst-bot", "orders", {"limit": 5}, 200),
                ("analyst-bot", "customers", {"where": [["country", "=", "DE"]], "limit": 5}, 200),
                ("support-bot", "orders", {}, 403),
                ("analyst-bot", "customers", {"columns": ["nope"]}, 400),
                ("support-bot", "customers", {"order_by": ["-id"], "limit": 2}, 200),
            ]:
                r = http.post(f"/v1/datasets/{dataset}/query", json=body, headers=bearer(agent))
                assert r.status_code == status, r.text

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": SCREEN[0], "height": SCREEN[1]})
                page.set_default_timeout(10_000)
                page.goto(f"{base}/admin/")
                expect(page.get_by_role("heading", name="Sign in to review the audit trail")).to_be_visible()
                page.get_by_label("Reviewer token").fill(token("support-bot"))
                page.get_by_role("button", name="Sign in").click()
                expect(page.get_by_role("alert")).to_contain_text("not allowed: read on admin:audit")

                page.get_by_label("Reviewer token").fill(token("alice"))
                page.get_by_role("button", name="Sign in").click()
                expect(page.locator("#chain-status")).to_contain_text(re.compile(r"last full check: .* intact"))
                cookie = next(c for c in page.context.cookies() if c["name"] == COOKIE)
                assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"
                assert page.evaluate("document.cookie") == ""  # out of reach of scripts

                denied = page.locator("table.trail tbody tr.decision-deny").filter(has_text="orders")
                expect(denied).to_have_count(1)
                expect(denied.locator(".badge")).to_have_text("✗ DENIED")
                colour = denied.evaluate("el => getComputedStyle(el).backgroundColor")
                assert colour not in ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)")
                expect(page.locator("table.trail tbody tr.decision-error")).to_have_count(1)
                expect(page.locator("svg.timeline")).to_be_visible()
                assert page.evaluate("document.documentElement.scrollWidth") <= SCREEN[0]
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "review-page.png"), full_page=True)

                page.get_by_label("Decision").select_option("deny")
                page.get_by_role("button", name="Apply filters").click()
                expect(page.locator("table.trail tbody tr:not(.decision-deny)")).to_have_count(0)

                denied.locator("th a").click()
                expect(page.get_by_role("heading", name=re.compile(r"Audit record \d+"))).to_be_visible()
                row = page.locator("table.fields tr", has=page.locator("th", has_text=re.compile("^hash$")))
                expect(row.locator("td")).to_have_text(re.compile(r"^\s*[0-9a-f]{64}\s*$"))
                expect(page.locator("table.fields")).to_contain_text("no policy line grants this")
                expect(page.locator("#decided-by")).to_contain_text("no policy rule decided it")
                assert page.evaluate("document.documentElement.scrollWidth") <= SCREEN[0]
                page.screenshot(path=str(ARTIFACTS / "review-record.png"), full_page=True)

                page.get_by_role("button", name="Sign out").click()
                expect(page.get_by_label("Reviewer token")).to_be_visible()
                assert not [c for c in page.context.cookies() if c["name"] == COOKIE]
            finally:
                browser.close()
