"""The review page in a real browser at 1366x768: `agentgate serve` and headless Chromium (Debian's
/usr/bin/chromium driven by Playwright). The page fits the screen (no sideways scrolling, long names cut with
the whole value in their title), the chart draws allowed and refused reads apart, the filters change the chart
as they change the table, and the paging links lead older and back. Screenshots go to ARTIFACTS
(tests/test_review_page.py: $AGENTGATE_ARTIFACTS/review, else test-artifacts/review).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from gateway.transports.review import chart
from tests.conftest import POLICY, bearer, token, write_workspace
from tests.serving import serving
from tests.test_review_page import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, SCREEN, _browser_or_skip

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.system

DENY_RULE = "p, support, orders, read, deny"
LONG_AGENT = "agent-with-a-name-far-longer-than-any-column-" + "x" * 150
DENY_COLOUR = next(colour for decision, _, colour in chart.REFUSED if decision == "deny")


def _reads(base: str) -> None:
    with httpx.Client(base_url=base) as http:
        def read(agent: str, dataset: str, body: dict[str, object], status: int) -> None:
            r = http.post(f"/v1/datasets/{dataset}/query", json=body, headers=bearer(agent))
            assert r.status_code == status, r.text

        for _ in range(60):
            read("support-bot", "customers", {"columns": ["id", "name"], "limit": 2}, 200)
        for _ in range(12):
            read("support-bot", "orders", {}, 403)  # the policy's deny line
        for _ in range(8):
            read("analyst-bot", "orders", {"limit": 3}, 200)
        read("analyst-bot", "customers", {"columns": ["nope"]}, 400)
        read(LONG_AGENT, "customers", {}, 403)
        r = http.post("/v1/sql", headers=bearer("analyst-bot"), json={
            "sql": "SELECT c.country, count(*) AS n FROM customers c JOIN orders o ON o.customer_id = c.id "
                   "GROUP BY c.country"})
        assert r.status_code == 200, r.text


def _fits(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= SCREEN[0], f"the page is {width} px wide at {SCREEN[0]} px"


def _ids(page: Page) -> list[int]:
    return [int(t) for t in page.locator("table.trail tbody th a").all_inner_texts()]


def _bars(page: Page, colour: str) -> int:
    return page.locator(f'svg.timeline rect[fill="{colour}"]').count()


def _apply(page: Page, **fields: str) -> None:
    page.goto(page.url.split("?")[0])
    for label, value in fields.items():
        if label == "Decision":
            page.get_by_label("Decision").select_option(value)
        else:
            page.get_by_label(label, exact=True).fill(value)
    page.get_by_role("button", name="Apply filters").click()


@pytest.mark.system
def test_the_page_fits_1366_and_its_chart_filters_and_pages_work(tmp_path: Path, sqlite_source: str) -> None:
    _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    config = write_workspace(tmp_path, source_url=sqlite_source, policy=POLICY + DENY_RULE + "\n")
    with serving(config, tmp_path / "serve.log") as base, sync_playwright() as pw:
        _reads(base)
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": SCREEN[0], "height": SCREEN[1]})
            page.set_default_timeout(10_000)
            page.goto(f"{base}/admin/")
            page.get_by_label("Reviewer token").fill(token("alice"))
            page.get_by_role("button", name="Sign in").click()
            expect(page.locator("#chain-status")).to_be_visible()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "trail-1366x768.png"))
            page.screenshot(path=str(ARTIFACTS / "trail-full.png"), full_page=True)
            _fits(page)

            # Allowed above the line and refused below it, each in its own colour with a legend entry.
            totals = page.locator("#read-totals")
            expect(totals).to_contain_text("83 reads: 69 allowed, 14 refused (13 denied, 1 failed")
            assert _bars(page, chart.ALLOWED_COLOUR) >= 1 and _bars(page, DENY_COLOUR) >= 1
            expect(page.locator(".legend")).to_contain_text("allowed (69)")
            expect(page.locator(".legend")).to_contain_text("denied (13)")
            first = page.locator("#by-agent tbody tr").first
            expect(first.locator("th")).to_have_text("support-bot")  # the most allowed reads
            expect(first.locator("td.num")).to_have_text(["60", "12", "0", "0"])
            # A name too long for its column is cut, whole in its title; the page still fits.
            cell = page.locator("table.trail tbody td", has_text="agent-with-a-name").first
            expect(cell).to_have_attribute("title", LONG_AGENT)

            # The filters change the chart as they change the table: only support-bot's denials are left.
            _apply(page, Agent="support-bot", Decision="deny")
            expect(page.locator("#read-totals")).to_contain_text("12 reads: 0 allowed, 12 refused (12 denied")
            assert _bars(page, chart.ALLOWED_COLOUR) == 0 and _bars(page, DENY_COLOUR) >= 1
            expect(page.locator("#by-agent tbody tr")).to_have_count(1)
            expect(page.locator("table.trail tbody tr:not(.decision-deny)")).to_have_count(0)
            expect(page.locator("table.trail tbody tr .why").first).to_contain_text(DENY_RULE)
            _fits(page)
            page.screenshot(path=str(ARTIFACTS / "trail-filtered.png"), full_page=True)

            # Paging by id, the filter kept: 72 of support-bot's records, 50 a page.
            _apply(page, Agent="support-bot")
            newest = _ids(page)
            assert len(newest) == 50 and newest == sorted(newest, reverse=True)
            page.locator("#page-older").click()
            assert re.search(r"[?&]agent=support-bot(&|$)", page.url) and f"before={newest[-1]}" in page.url
            older = _ids(page)
            assert older and max(older) < min(newest) and len(newest) + len(older) == 72
            expect(page.locator("#page-older")).to_have_count(0)  # the oldest page
            _fits(page)
            page.screenshot(path=str(ARTIFACTS / "trail-older-page.png"), full_page=True)
            page.locator("#page-newer").click()
            assert _ids(page) == newest
            page.go_back()
            page.locator("#page-newest").click()
            assert _ids(page) == newest and "before=" not in page.url

            # A denial's page names the rule that denied it.
            page.locator("table.trail tbody tr.decision-deny th a").first.click()
            expect(page.locator("#decided-by")).to_contain_text(DENY_RULE)
            _fits(page)
            page.screenshot(path=str(ARTIFACTS / "record-denied.png"), full_page=True)
        finally:
            browser.close()
