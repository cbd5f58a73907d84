"""`agentgate usage`: requests, rows, bytes and source time per agent, dataset and unit of work,
from the data requests in the trail (admin acts are not usage), with optional prices from `[cost]`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditRecord, record_once
from gateway.common.clock import now
from gateway.common.errors import ConfigError
from gateway.config import load_settings
from gateway.store import create_tables, make_store_engine
from tests.conftest import bearer, client_for, write_workspace
from tests.test_cli import agentgate, agentgate_many, one_line_reason, output

pytestmark = pytest.mark.system

PRICES = "\n[cost]\nper_request = 0.001\nper_1k_rows = 0.5\nper_source_second = 2\n"


def _traffic(cfg: Path) -> None:
    """Served, refused and listing requests with and without work units, an admin act, and a
    SQL-mode record naming two datasets."""
    with client_for(cfg) as c:
        answers = [
            c.post("/v1/datasets/customers/query", json={"limit": 5},
                   headers=bearer("support-bot") | {"X-Work-Unit": "T-1"}),
            c.post("/v1/datasets/customers/query", json={"limit": 3},
                   headers=bearer("support-bot") | {"X-Work-Unit": "T-1"}),
            c.post("/v1/datasets/orders/query", json={}, headers=bearer("support-bot") | {"X-Work-Unit": "T-2"}),
            c.post("/v1/datasets/orders/query", json={"limit": 4},
                   headers=bearer("analyst-bot") | {"X-Work-Unit": "T-2"}),
            c.get("/v1/datasets", headers=bearer("analyst-bot")),
            c.get("/v1/datasets"),  # unauthenticated: no agent
            c.get("/admin/v1/audit", headers=bearer("alice")),  # an admin act, not usage
        ]
    assert [a.status_code for a in answers] == [200, 200, 403, 200, 200, 401, 200]

    async def sql_mode_record() -> None:
        engine = make_store_engine(load_settings(cfg).store.url)
        try:
            await create_tables(engine)
            await record_once(engine, AuditRecord(
                time=now(), request_id=uuid.uuid4().hex, action="read", decision="allow", status=200,
                agent="analyst-bot", dataset="customers,orders", work_unit="T-3", rows=2, bytes=100,
                source_ms=1000.0, transport="http"))
        finally:
            await engine.dispose()

    asyncio.run(sql_mode_record())


@dataclass(frozen=True)
class Traffic:
    config: Path
    priced: Path
    records: list[dict[str, Any]]  # the store's data requests, to compare with


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory, sqlite_source: str) -> Traffic:
    root = tmp_path_factory.mktemp("usage")
    cfg = write_workspace(root, source_url=sqlite_source)
    _traffic(cfg)
    priced = root / "priced.toml"
    priced.write_text(cfg.read_text() + PRICES)
    with sqlite3.connect(root / "store.db") as db:
        db.row_factory = sqlite3.Row
        records = [dict(r) for r in db.execute("SELECT * FROM audit WHERE action IN ('read', 'list', 'describe')")]
    return Traffic(cfg, priced, records)


def _expected(records: list[dict[str, Any]], field: str) -> dict[str | None, dict[str, Any]]:
    out: dict[str | None, dict[str, Any]] = {}
    for r in records:
        if r["agent"] is None or r["status"] == 401:  # no valid token: not usage
            continue
        keys = r[field].split(",") if field == "dataset" and r[field] else [r[field]]
        for key in keys:
            u = out.setdefault(key, {"requests": 0, "rows": 0, "bytes": 0, "source_ms": 0.0})
            u["requests"] += 1
            u["rows"] += r["rows"] or 0
            u["bytes"] += r["bytes"] or 0
            u["source_ms"] += r["source_ms"] or 0.0
    return out


def _by_key(units: list[dict[str, Any]], key: str) -> dict[str | None, dict[str, Any]]:
    out = {}
    for u in units:
        assert set(u) == {key, "requests", "rows", "bytes", "source_ms"}, u
        out[u[key]] = {k: v for k, v in u.items() if k != key}
    return out


def _same(got: dict[str | None, dict[str, Any]], want: dict[str | None, dict[str, Any]]) -> None:
    assert set(got) == set(want)
    for key, values in want.items():
        assert {k: got[key][k] for k in ("requests", "rows", "bytes")} == \
            {k: values[k] for k in ("requests", "rows", "bytes")}, key
        assert got[key]["source_ms"] == pytest.approx(values["source_ms"], abs=0.01)


def test_usage_json_by_agent_dataset_and_work_unit(traffic: Traffic) -> None:
    agents, datasets, units, future, recent = agentgate_many([
        ("usage", "--by", "agent", "--json", "--config", traffic.config),
        ("usage", "--by", "dataset", "--json", "--config", traffic.config),
        ("usage", "--by", "work-unit", "--json", "--config", traffic.config),
        ("usage", "--by", "agent", "--json", "--since", "2999-01-01T00:00:00Z", "--config", traffic.config),
        ("usage", "--by", "agent", "--json", "--since", "1h", "--config", traffic.config),
    ])
    for proc in (agents, datasets, units, future, recent):
        assert proc.returncode == 0, output(proc)
    by_agent = _by_key(json.loads(agents.stdout), "agent")
    _same(by_agent, _expected(traffic.records, "agent"))
    # Served and refused requests count; the admin act does not.
    assert by_agent["support-bot"]["requests"] == 3 and by_agent["support-bot"]["rows"] == 8
    # analyst-bot: 4 rows read, 2 through SQL mode, and its listing's rows are the datasets it names.
    assert by_agent["analyst-bot"]["requests"] == 3 and by_agent["analyst-bot"]["rows"] == 4 + 2 + 2
    assert None not in by_agent  # the request without a token is nobody's usage
    assert "alice" not in by_agent

    by_dataset = _by_key(json.loads(datasets.stdout), "dataset")
    _same(by_dataset, _expected(traffic.records, "dataset"))
    # The SQL-mode record counts under each dataset it touched.
    assert by_dataset["customers"]["requests"] == 3 and by_dataset["customers"]["rows"] == 10
    assert by_dataset["orders"]["requests"] == 3 and by_dataset["orders"]["rows"] == 6
    assert by_dataset[None]["requests"] == 1  # the listing (the one without a token does not count)

    by_unit = _by_key(json.loads(units.stdout), "work_unit")
    _same(by_unit, _expected(traffic.records, "work_unit"))
    assert {k: v["requests"] for k, v in by_unit.items()} == {"T-1": 2, "T-2": 2, "T-3": 1, None: 1}
    assert by_unit["T-3"]["source_ms"] == pytest.approx(1000.0)
    assert by_unit["T-1"]["bytes"] > 0

    assert json.loads(future.stdout) == []
    assert _by_key(json.loads(recent.stdout), "agent") == by_agent


def test_usage_text_and_cost(traffic: Traffic) -> None:
    text, priced_text, priced_json, bad_since, no_by, bad_by = agentgate_many([
        ("usage", "--by", "work-unit", "--config", traffic.config),
        ("usage", "--by", "work-unit", "--config", traffic.priced),
        ("usage", "--by", "work-unit", "--json", "--config", traffic.priced),
        ("usage", "--by", "agent", "--since", "last tuesday", "--config", traffic.config),
        ("usage", "--config", traffic.config),
        ("usage", "--by", "team", "--config", traffic.config),
    ])
    assert text.returncode == 0, output(text)
    head, *rows = text.stdout.strip().splitlines()
    assert head.split() == ["work_unit", "requests", "rows", "bytes", "source_ms"]
    assert {r.split()[0]: int(r.split()[1]) for r in rows} == {"T-1": 2, "T-2": 2, "T-3": 1, "(none)": 1}

    assert priced_text.returncode == 0, output(priced_text)
    assert priced_text.stdout.splitlines()[0].split()[-1] == "cost"
    units = {u["work_unit"]: u for u in json.loads(priced_json.stdout)}
    for u in units.values():
        want = round(u["requests"] * 0.001 + u["rows"] / 1000 * 0.5 + u["source_ms"] / 1000 * 2, 6)
        assert u["cost"] == pytest.approx(want, abs=2e-6)
    assert units["T-3"]["cost"] == pytest.approx(0.001 + 0.001 + 2.0)
    t3 = next(r for r in priced_text.stdout.splitlines() if r.startswith("T-3"))
    assert t3.split()[-1] == "2.002000"

    for proc in (bad_since, no_by, bad_by):
        assert proc.returncode == 2, output(proc)
        one_line_reason(proc)


@pytest.mark.unit
def test_cost_settings(tmp_path: Path, sqlite_source: str) -> None:
    cfg = write_workspace(tmp_path, source_url=sqlite_source)
    base = cfg.read_text()
    assert not load_settings(cfg).cost.priced
    cfg.write_text(base + "\n[cost]\nper_1k_rows = 0.25\n")
    cost = load_settings(cfg).cost
    assert cost.priced and (cost.per_request, cost.per_1k_rows, cost.per_source_second) == (0.0, 0.25, 0.0)
    assert cost.cost(3, 2000, 5000.0) == 0.5
    for bad, needle in (("per_row = 1", "cost.per_row"), ("per_request = -1", "cost.per_request"),
                        ('per_source_second = "1"', "cost.per_source_second")):
        cfg.write_text(base + f"\n[cost]\n{bad}\n")
        with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
            load_settings(cfg)


def test_usage_on_a_postgresql_store(tmp_path: Path, sqlite_source: str, pg_store: str) -> None:
    cfg = write_workspace(tmp_path, source_url=sqlite_source, store_url=pg_store)
    _traffic(cfg)
    started = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    datasets, agents = agentgate_many([
        ("usage", "--by", "dataset", "--json", "--since", started.isoformat(), "--config", cfg),
        ("usage", "--by", "agent", "--config", cfg),
    ])
    assert datasets.returncode == 0, output(datasets)
    by_dataset = _by_key(json.loads(datasets.stdout), "dataset")
    assert {k: v["requests"] for k, v in by_dataset.items()} == {"customers": 3, "orders": 3, None: 1}
    assert by_dataset["customers"]["rows"] == 10 and by_dataset["orders"]["rows"] == 6
    assert by_dataset["customers"]["bytes"] > 100
    assert agents.returncode == 0, output(agents)
    assert {r.split()[0]: int(r.split()[1]) for r in agents.stdout.strip().splitlines()[1:]} == {
        "support-bot": 3, "analyst-bot": 3}  # the request without a token is nobody's usage


def test_usage_on_an_empty_trail(tmp_path: Path, sqlite_source: str) -> None:
    proc = agentgate("usage", "--by", "dataset", "--config", write_workspace(tmp_path, source_url=sqlite_source))
    assert proc.returncode == 0, output(proc)
    assert proc.stdout.strip() == "no data requests"
