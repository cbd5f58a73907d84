"""/metrics as operators read it: the numbers of the whole process group under `serve --workers N`, and the
series they alert on (revocations in force, refused policy reloads, budget refusals, audit write latency)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from tests.conftest import bearer, client_for, write_workspace
from tests.serving import serving

pytestmark = pytest.mark.integration

QUERY = "/v1/datasets/customers/query"


def value(text: str, line: str) -> float | None:
    found = re.findall(rf"^{re.escape(line)} (\S+)$", text, re.M)
    assert len(found) <= 1, f"{line} shown {len(found)} times"
    return float(found[0]) if found else None


def total(text: str, name: str) -> float:
    """The sum of a metric's series, whatever their labels."""
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


@pytest.mark.system
def test_with_two_workers_counters_are_the_groups_and_never_go_back(
        tmp_path: Path, sqlite_source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # serve keeps the group's metrics in a directory of its own under $TMPDIR; one a killed serve left is removed.
    tmp = tmp_path / "tmp"
    stale = tmp / "agentgate-metrics-killed"
    stale.mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (stale / "serve.pid").write_text(gone.stdout.strip())
    (stale / "counter_1.db").write_bytes(b"\0" * 64)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(stale))  # inherited: serve takes no notice of it
    config = write_workspace(tmp_path, source_url=sqlite_source)
    sent, seen = 40, []
    with serving(config, tmp_path / "serve.log", "--workers", "2") as base:
        assert [p.name for p in tmp.glob("agentgate-metrics-*")] not in ([], ["agentgate-metrics-killed"])
        assert len(list(tmp.glob("agentgate-metrics-*"))) == 1

        def scrape() -> str:  # a fresh connection each time: either worker may answer
            return httpx.get(f"{base}/metrics", timeout=10).text

        stop = threading.Event()

        def scraping() -> None:
            while not stop.is_set():
                seen.append(total(scrape(), "agentgate_requests_total"))

        def request(i: int) -> int:
            dataset = "customers" if i % 2 else "orders"  # served, and refused
            return httpx.post(f"{base}/v1/datasets/{dataset}/query", headers=bearer(), timeout=10,
                              json={"limit": 1}).status_code

        scraper = threading.Thread(target=scraping)
        scraper.start()
        try:
            with ThreadPoolExecutor(4) as pool:
                statuses = list(pool.map(request, range(sent)))
        finally:
            stop.set()
            scraper.join(10)
        assert sorted(set(statuses)) == [200, 403]
        finals = [scrape() for _ in range(10)]
        # Gauges each worker sets show once (the last value set), not once per worker.
        deadline = time.monotonic() + 10
        while value(finals[-1], "agentgate_audit_verify_ok") is None and time.monotonic() < deadline:
            time.sleep(0.1)
            finals.append(scrape())
        last = finals[-1]
        assert value(last, "agentgate_audit_verify_ok") == 1.0
        assert value(last, 'agentgate_revocations_active{kind="agent"}') == 0.0
        assert value(last, "agentgate_policy_reload_refused") == 0.0
    assert seen == sorted(seen), "a counter went backwards between scrapes"
    assert len(seen) >= 5
    for text in finals:
        assert total(text, "agentgate_requests_total") == sent
        assert total(text, "agentgate_request_duration_seconds_count") == sent
        assert value(text, 'agentgate_requests_total{dataset="customers",decision="allow"}') == sent / 2
        assert value(text, 'agentgate_requests_total{dataset="(unknown)",decision="deny"}') == sent / 2
        assert total(text, "agentgate_audit_record_wait_seconds_count") == sent
    assert list(tmp.glob("agentgate-metrics-*")) == [], "serve left its metrics directory behind"


def test_the_series_operators_alert_on(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source)
    (config.parent / "policies" / "budgets.toml").write_text(
        "[agents.support-bot]\nrequests_per_minute = 1\n\n[agents.analyst-bot]\nrows_per_day = 1\n")
    policy = config.parent / "policies" / "policy.csv"
    with client_for(config) as client:
        def metrics() -> str:
            return client.get("/metrics").text

        text = metrics()
        # Every series of a fixed label set is there from the start, at 0.
        for budget in ("requests_per_minute", "rows_per_day"):
            assert value(text, f'agentgate_budget_refusals_total{{budget="{budget}"}}') == 0.0
        for kind in ("unavailable", "timeout", "missing_table"):
            assert value(text, f'agentgate_source_errors_total{{kind="{kind}",source="main"}}') == 0.0
        assert value(text, "agentgate_policy_reload_refused") == 0.0

        # Budget refusals, by budget.
        assert [client.post(QUERY, headers=bearer(), json={"limit": 1}).status_code for _ in range(3)] == [
            200, 429, 429]
        analyst = bearer("analyst-bot")
        assert [client.post(QUERY, headers=analyst, json={"limit": 2}).status_code for _ in range(2)] == [200, 429]
        text = metrics()
        assert value(text, 'agentgate_budget_refusals_total{budget="requests_per_minute"}') == 2.0
        assert value(text, 'agentgate_budget_refusals_total{budget="rows_per_day"}') == 1.0

        # Revocations in force, by kind.
        alice = bearer("alice")
        agent = client.post("/admin/v1/revocations", headers=alice, json={"agent": "support-bot"}).json()["id"]
        client.post("/admin/v1/revocations", headers=alice, json={"jti": "leaked-1"})
        client.post("/admin/v1/revocations", headers=alice, json={"jti": "leaked-2"})
        text = metrics()
        assert value(text, 'agentgate_revocations_active{kind="agent"}') == 1.0
        assert value(text, 'agentgate_revocations_active{kind="token"}') == 2.0
        assert client.delete(f"/admin/v1/revocations/{agent}", headers=alice).status_code == 204
        assert value(metrics(), 'agentgate_revocations_active{kind="agent"}') == 0.0

        # A refused policy change: 1 while the last good policy serves, back to 0 once a valid change lands.
        good = policy.read_text()
        policy.write_text(good + "p, only-two-fields\n")
        deadline = time.monotonic() + 10
        while value(metrics(), "agentgate_policy_reload_refused") != 1.0:
            assert time.monotonic() < deadline, "the refused reload never showed"
            time.sleep(0.05)
        assert (value(metrics(), 'agentgate_policy_reloads_total{result="refused"}') or 0) >= 1
        policy.write_text(good)
        while value(metrics(), "agentgate_policy_reload_refused") != 0.0:
            assert time.monotonic() < deadline + 10, "the accepted reload never showed"
            time.sleep(0.05)
        assert (value(metrics(), 'agentgate_policy_reloads_total{result="accepted"}') or 0) >= 1

        # Audit write latency: one observation per request recorded, and per group written.
        text = metrics()
        recorded = total(text, "agentgate_requests_total")
        assert value(text, "agentgate_audit_record_wait_seconds_count") == recorded
        assert (value(text, "agentgate_audit_write_duration_seconds_count") or 0) >= 1


def test_paths_no_route_serves_are_one_operation_label(client: TestClient) -> None:
    """The operation label is the code's: a path no route serves is `unknown`, whatever it was."""
    for path in ("/v1/x", "/v1/datasets/a/b/c/d", "/v1/" + "z" * 300):
        client.get(path, headers=bearer())
    text = client.get("/metrics").text
    assert 'agentgate_request_duration_seconds_count{operation="unknown"} 3.0' in text
    assert "zzz" not in text


def test_every_metric_is_documented(client: TestClient) -> None:
    assert client.get("/admin/v1/audit/verify", headers=bearer("alice")).status_code == 200
    text = client.get("/metrics").text
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    # (prometheus-client's own `_created` series, one per counter and histogram, aside)
    names = [n for n in re.findall(r"^# HELP (\S+) ", text, re.M) if not n.endswith("_created")]
    assert "agentgate_audit_verify_ok" in names and len(names) >= 16
    for name in names:
        assert f"`{name}" in readme, f"{name} is not documented in README.md (Operations, Metrics)"
