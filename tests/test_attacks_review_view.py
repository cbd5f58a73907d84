"""Attacks on the review page's view of the trail (issue 16): what it shows and what it takes are other people's
input. Agents choose their names (a token's sub, on_behalf_of), the dataset in a path, the work unit, the SQL
they send; a policy file's author writes the rule text a record keeps; a reviewer (or a link someone sent one)
chooses the filters and the page. None of it may become markup in the page (stored XSS through the table, the
charts' names and titles, a record's query and rule), a filter may not widen itself (LIKE wildcards), and a bad
filter or page value is a 400 with the core's message, never a 500 nor a page of everything.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from starlette.testclient import TestClient

from tests.conftest import POLICY, bearer, client_for, token, write_workspace
from tests.test_review_page import ranking_rows, trail_rows

pytestmark = pytest.mark.integration

IMG = "<img src=x onerror=alert(1)>"
SVG = '"><svg onload=alert(2)>'
SCRIPT = "'><script>alert(3)</script>"
EVIL_ROLE = "<i>role</i>"
# A policy author's markup, in the rule the record keeps.
EVIL_POLICY = POLICY + f"p, {EVIL_ROLE}, customers, read, allow\ng, rule-bot, {EVIL_ROLE}\n"


class Elements(HTMLParser):
    """Every element a browser would build from the page, with its attribute names."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, [name for name, _ in attrs]))


def markup_free(html: str) -> None:
    """No element the attackers wrote and no event handler anywhere in the page (the page has no script at all):
    every payload was escaped."""
    parser = Elements()
    parser.feed(html)
    tags = {tag for tag, _ in parser.found}
    assert not tags & {"script", "img", "i", "iframe", "object"}, tags
    assert not [(tag, attrs) for tag, attrs in parser.found if any(a.startswith("on") for a in attrs)]


@pytest.fixture
def client(tmp_path: Path, sqlite_source: str) -> Iterator[TestClient]:
    config = write_workspace(tmp_path, source_url=sqlite_source, policy=EVIL_POLICY)
    with client_for(config) as c:
        for name in (IMG, SVG, SCRIPT):
            c.post("/v1/datasets/customers/query", json={"limit": 1}, headers=bearer(name))
            c.post(f"/v1/datasets/{quote(name, safe='')}/query", json={}, headers=bearer("support-bot"))
            c.post("/v1/datasets/customers/query", json={"limit": 1},
                   headers={**bearer("support-bot", on_behalf_of=name), "X-Work-Unit": name})
        c.post("/v1/sql", json={"sql": f"SELECT id FROM customers WHERE name = '{SCRIPT}'"},
               headers=bearer("analyst-bot"))
        assert c.post("/v1/datasets/customers/query", json={"limit": 1}, headers=bearer("rule-bot")).status_code == 200
        r = c.post("/admin/login", data={"token": token("alice")}, follow_redirects=False)
        assert r.status_code == 303
        yield c


def test_names_datasets_work_units_and_rules_are_shown_escaped(client: TestClient) -> None:
    html = client.get("/admin/").text
    markup_free(html)
    # Shown, as text: in the table, the rankings (names and their titles) and the rule column.
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&#34;&gt;&lt;svg onload=alert(2)&gt;" in html and "&#39;&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in html
    assert f"p, {EVIL_ROLE}, customers, read, allow".replace("<", "&lt;").replace(">", "&gt;") in html
    names = [name for name, _ in ranking_rows(html, "by-agent")]
    assert IMG in names and SVG in names and SCRIPT in names
    assert {IMG, SVG} <= {name for name, _ in ranking_rows(html, "by-dataset")}  # (a path holds no "/")
    cells = [cells for _, cells in trail_rows(html)]
    assert any(c[4] == IMG for c in cells) and any(c[3] == SVG for c in cells)  # work unit, on behalf of
    # Each record's page: its query and rule, escaped too.
    for rid in [int(c[0]) for c in cells][:12]:
        markup_free(client.get(f"/admin/records/{rid}").text)


def test_filter_values_are_echoed_escaped_in_fields_captions_and_links(client: TestClient) -> None:
    for name in (IMG, SVG, SCRIPT):
        r = client.get("/admin/", params={"on_behalf_of": name, "work_unit": name})
        assert r.status_code == 200
        markup_free(r.text)
        # The links, their values encoded (the form's fields and the caption: escaped, markup_free).
        value = quote_plus(name)
        assert f"/admin/export?format=csv&amp;work_unit={value}&amp;on_behalf_of={value}" in r.text
        assert len(trail_rows(r.text)) == 1  # their own records: the filter found them, exactly


def test_a_dataset_filter_is_a_name_not_a_pattern(client: TestClient) -> None:
    # SQL mode records name several datasets ("customers,orders"), matched by LIKE: wildcards in the filter
    # must match themselves only.
    client.post("/v1/sql", headers=bearer("analyst-bot"),
                json={"sql": "SELECT o.id FROM customers c JOIN orders o ON o.customer_id = c.id"})
    both = client.get("/admin/", params={"dataset": "orders"}).text
    assert any(cells[6] == "customers,orders" for _, cells in trail_rows(both))
    for pattern in ("%", "_rders", "cust%", "%,%", "\\"):
        r = client.get("/admin/", params={"dataset": pattern})
        assert r.status_code == 200 and trail_rows(r.text) == [], pattern
        assert re.search(r"<strong>0</strong> reads", r.text), pattern
        api = client.get("/admin/v1/audit", params={"dataset": pattern}, headers=bearer("alice")).json()
        assert api["records"] == [], pattern


BAD = [
    ({"before": "abc"}, "record id"), ({"before": "-1"}, "record id"), ({"after": "9" * 30}, "record id"),
    ({"after": "\uff11\uff12"}, "record id"), ({"before": "12", "after": "10"}, "one of them"),
    ({"full_check": "yes"}, "full_check"), ({"decision": "maybe"}, "decision"), ({"since": "yesterday"}, "ISO 8601"),
    ({"since": "2026-02-01T00:00Z", "until": "2026-01-01T00:00Z"}, "before"),
    ({"until": "0001-01-01T00:00Z"}, "too early"), ({"since": "9999-12-31T23:59:59Z"}, "before"),
    ({"trace_id": "XYZ"}, "trace id"), ({"agent": "a\x00b"}, "NUL"), ({"limit": "100000"}, "unknown parameter"),
    ({"offset": "10"}, "unknown parameter"), ({"agent": "x" * 5000}, "longer than"),
    ({"since": "2026-01-31T12:00:00+25:00"}, "ISO 8601"),
]


@pytest.mark.parametrize(("params", "said"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_filter_and_page_values_answer_400_with_the_reason(client: TestClient, params: dict[str, str],
                                                               said: str) -> None:
    r = client.get("/admin/", params=params)
    assert r.status_code == 400, r.text[:300]
    assert said in r.text and re.search(r"request id <span class=\"mono\">[0-9a-f]{32}</span>", r.text)
    markup_free(r.text)


def test_paging_values_reach_no_further_than_the_filter(client: TestClient) -> None:
    # A page past either end is empty, with the way back; never another agent's records.
    for params in ({"before": "1"}, {"after": str(2**63 - 1)}, {"before": str(2**63 - 1), "agent": SCRIPT}):
        r = client.get("/admin/", params=params)
        assert r.status_code == 200
        rows = trail_rows(r.text)
        assert all(cells[2] == SCRIPT for _, cells in rows) if "agent" in params else rows == []
        assert 'id="page-newest"' in r.text
