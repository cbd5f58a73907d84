"""An agent builder finds its own requests in the trail by trace id (issue 15): the trace id of the `traceparent`
it sent, or of the one its answer carried.

- The admin API's `trace_id` filter (`GET /admin/v1/audit`, its export), on a SQLite and a PostgreSQL store:
  the trace's records only, paged as every filter is, combined with the others; a malformed value is a 400.
- The review page's filter, and a record's link to the rest of its trace.
- `agentgate audit list / export --trace-id` and the admin API on a live `agentgate serve`; a malformed value is
  exit 2 with a one-line reason.
- The OpenAPI document lists the parameter with the shape the gateway mints.
- A 405 names in `Allow` every method its path takes (RFC 9110), from the registry.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from gateway.common import tracing
from gateway.core import operations
from gateway.transports.openapi import document
from tests.conftest import bearer, client_for, records, write_workspace
from tests.serving import serving
from tests.test_cli import agentgate_many, one_line_reason, output
from tests.test_review_page import sign_in, trail_rows

pytestmark = pytest.mark.integration

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"  # W3C Trace Context's own example
OTHER = "0af7651916cd43dd8448eb211c80319c"
ABSENT = "0123456789abcdef0123456789abcdef"  # well formed, in no record
MALFORMED = [
    TRACE.upper(),  # W3C: lowercase only, and the gateway never keeps another
    TRACE[:-1],
    TRACE + "0",
    "g" * 32,
    f"00-{TRACE}-00f067aa0ba902b7-01",  # a whole traceparent, not its trace id
    f" {TRACE}",
    "\uff10" * 32,  # full-width digits
    "\x00" * 32,
]
REASON = "32 lowercase hex digits"


def parent(trace: str) -> dict[str, str]:
    return {"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}


def trace_of(answer: httpx.Response) -> str:
    """The trace id an answer's traceparent names."""
    version, trace, _span, _flags = answer.headers["traceparent"].split("-")
    assert version == "00"
    return trace


@dataclass(frozen=True)
class Traced:
    client: TestClient
    config: Path
    ids: list[str]  # request ids of the requests in TRACE, oldest first
    fresh: httpx.Response  # a request that sent no traceparent


def _requests(client: TestClient) -> tuple[list[str], httpx.Response]:
    """Requests in TRACE (served and denied), one in another trace, one that sent none."""
    joined = [
        client.post("/v1/datasets/customers/query", json={"limit": 2}, headers={**bearer(), **parent(TRACE)}),
        client.post("/v1/datasets/orders/query", json={}, headers={**bearer(), **parent(TRACE)}),  # denied
    ]
    client.get("/v1/datasets", headers={**bearer(), **parent(OTHER)})
    fresh = client.get("/v1/datasets", headers=bearer())
    joined.append(client.get("/v1/datasets/customers", headers={**bearer("analyst-bot"), **parent(TRACE)}))
    assert [a.status_code for a in joined] == [200, 403, 200] and fresh.status_code == 200
    assert all(trace_of(a) == TRACE for a in joined) and trace_of(fresh) not in (TRACE, OTHER)
    return [a.headers["x-request-id"] for a in joined], fresh


@pytest.fixture
def traced(tmp_path: Path, sqlite_source: str, store_url: str) -> Iterator[Traced]:
    config = write_workspace(tmp_path, source_url=sqlite_source, store_url=store_url)
    with client_for(config) as client:
        ids, fresh = _requests(client)
        yield Traced(client, config, ids, fresh)


@pytest.fixture
def sqlite_traced(tmp_path: Path, sqlite_source: str) -> Iterator[Traced]:
    config = write_workspace(tmp_path, source_url=sqlite_source)
    with client_for(config) as client:
        ids, fresh = _requests(client)
        yield Traced(client, config, ids, fresh)


def audit(client: TestClient, path: str = "/admin/v1/audit", **params: str) -> httpx.Response:
    return client.get(path, params=params, headers=bearer("alice"))


# --- the admin API ---------------------------------------------------------------------------------------------

def test_the_trail_filtered_by_trace_id_holds_that_trace_s_records(traced: Traced) -> None:
    page = audit(traced.client, trace_id=TRACE).json()
    assert [r["request_id"] for r in page["records"]] == traced.ids[::-1]  # newest first
    assert {r["trace_id"] for r in page["records"]} == {TRACE} and page["next_cursor"] is None
    assert [r["decision"] for r in page["records"]] == ["allow", "deny", "allow"]
    # A request that sent no traceparent is found by the trace id its answer named.
    (rec,) = audit(traced.client, trace_id=trace_of(traced.fresh)).json()["records"]
    assert rec["request_id"] == traced.fresh.headers["x-request-id"]
    assert [r["trace_id"] for r in audit(traced.client, trace_id=OTHER).json()["records"]] == [OTHER]
    assert audit(traced.client, trace_id=ABSENT).json() == {"records": [], "next_cursor": None}
    # With the other filters (all must hold), and empty: no filter.
    (denied,) = audit(traced.client, trace_id=TRACE, decision="deny").json()["records"]
    assert denied["request_id"] == traced.ids[1]
    assert audit(traced.client, trace_id=TRACE, agent="analyst-bot").json()["records"][0]["request_id"] == \
        traced.ids[2]
    assert len(audit(traced.client, trace_id="").json()["records"]) >= 5


def test_a_trace_s_records_page_as_every_filter_does(traced: Traced) -> None:
    first = audit(traced.client, trace_id=TRACE, limit="2").json()
    assert [r["request_id"] for r in first["records"]] == traced.ids[:0:-1] and first["next_cursor"]
    rest = audit(traced.client, trace_id=TRACE, limit="2", cursor=first["next_cursor"]).json()
    assert [r["request_id"] for r in rest["records"]] == traced.ids[:1] and rest["next_cursor"] is None


def test_the_export_of_a_trace(traced: Traced) -> None:
    jsonl = audit(traced.client, "/admin/v1/audit/export", format="jsonl", trace_id=TRACE)
    assert jsonl.status_code == 200, jsonl.text
    assert [json.loads(line)["request_id"] for line in jsonl.text.splitlines()] == traced.ids  # oldest first
    as_csv = audit(traced.client, "/admin/v1/audit/export", format="csv", trace_id=TRACE)
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [(r["request_id"], r["trace_id"]) for r in rows] == [(i, TRACE) for i in traced.ids]


@pytest.mark.parametrize("value", MALFORMED, ids=range(len(MALFORMED)))
def test_a_malformed_trace_id_is_a_400_naming_it(sqlite_traced: Traced, value: str) -> None:
    for path, extra in (("/admin/v1/audit", {}), ("/admin/v1/audit/export", {"format": "jsonl"})):
        r = audit(sqlite_traced.client, path, trace_id=value, **extra)
        assert r.status_code == 400, (path, r.text)
        err = r.json()["error"]
        assert err["code"] == "bad_request" and "'trace_id'" in err["message"] and REASON in err["message"]
        assert err["request_id"] == r.headers["x-request-id"]
        assert value not in err["message"]  # what was sent is not echoed
    refused = [rec for rec in records(sqlite_traced.config) if rec["status"] == 400]
    assert [rec["action"] for rec in refused] == ["read_audit", "export_audit"]  # each refusal recorded


# --- the review page -------------------------------------------------------------------------------------------

def test_the_review_page_filters_by_trace_id_and_links_a_record_to_its_trace(sqlite_traced: Traced) -> None:
    client = sqlite_traced.client
    sign_in(client)
    html = client.get("/admin/", params={"trace_id": TRACE}).text
    ids = [int(cells[0]) for _, cells in trail_rows(html)]
    mine = [r for r in records(sqlite_traced.config) if r["trace_id"] == TRACE]
    assert ids == [r["id"] for r in mine][::-1]
    assert f'name="trace_id" value="{TRACE}"' in html
    assert f'href="/admin/export?format=csv&amp;trace_id={TRACE}"' in html
    export = client.get("/admin/export", params={"format": "jsonl", "trace_id": TRACE})
    assert [json.loads(line)["id"] for line in export.text.splitlines()] == [r["id"] for r in mine]
    page = client.get(f"/admin/records/{mine[0]['id']}").text
    assert f'<a class="mono" href="/admin/?trace_id={TRACE}"' in page
    bad = client.get("/admin/", params={"trace_id": "not-a-trace"})
    assert bad.status_code == 400 and REASON in bad.text


# --- a live serve and the command line -------------------------------------------------------------------------

@pytest.mark.system
def test_a_builder_finds_its_requests_on_a_live_serve_and_with_the_cli(tmp_path: Path, sqlite_source: str) -> None:
    config = write_workspace(tmp_path, source_url=sqlite_source)
    with serving(config, tmp_path / "serve.log") as base:
        sent = httpx.post(f"{base}/v1/datasets/customers/query", json={"limit": 1},
                          headers={**bearer(), **parent(TRACE)}, timeout=10)
        fresh = httpx.get(f"{base}/v1/datasets", headers=bearer(), timeout=10)
        assert sent.status_code == fresh.status_code == 200 and trace_of(sent) == TRACE
        page = httpx.get(f"{base}/admin/v1/audit", params={"trace_id": trace_of(fresh)}, headers=bearer("alice"),
                         timeout=10).json()
        assert [r["request_id"] for r in page["records"]] == [fresh.headers["x-request-id"]]
        bad = httpx.get(f"{base}/admin/v1/audit", params={"trace_id": TRACE.upper()}, headers=bearer("alice"),
                        timeout=10)
        assert bad.status_code == 400 and REASON in bad.json()["error"]["message"]
    listed, table, exported, none, *refused = agentgate_many([
        ("audit", "list", "--json", "--trace-id", TRACE, "--config", config),
        ("audit", "list", "--trace-id", trace_of(fresh), "--config", config),
        ("audit", "export", "--format", "jsonl", "--trace-id", TRACE, "--config", config),
        ("audit", "list", "--json", "--trace-id", ABSENT, "--config", config),
        ("audit", "list", "--trace-id", TRACE.upper(), "--config", config),
        ("audit", "export", "--format", "csv", "--trace-id", f"00-{TRACE}-00f067aa0ba902b7-01", "--config", config),
    ])
    for proc in (listed, table, exported, none):
        assert proc.returncode == 0, output(proc)
    assert [r["request_id"] for r in json.loads(listed.stdout)] == [sent.headers["x-request-id"]]
    head, *rows = table.stdout.strip().splitlines()
    assert head.split()[:2] == ["id", "time"] and len(rows) == 1 and "list" in rows[0].split()
    assert [json.loads(line)["request_id"] for line in exported.stdout.splitlines()] == [sent.headers["x-request-id"]]
    assert json.loads(none.stdout) == []
    for proc in refused:
        assert proc.returncode == 2 and proc.stdout == "", output(proc)
        assert "--trace-id" in (reason := one_line_reason(proc)) and REASON in reason


# --- the document, the ids, 405s -------------------------------------------------------------------------------

@pytest.mark.unit
def test_the_document_lists_trace_id_where_the_trail_is_read() -> None:
    doc = document(sql=True)
    validate(doc)
    for path in ("/admin/v1/audit", "/admin/v1/audit/export"):
        (param,) = [p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == "trace_id"]
        assert param["in"] == "query" and param["required"] is False and "traceparent" in param["description"]
        jsonschema.validate(TRACE, param["schema"])
        for value in MALFORMED[:5]:
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(value, param["schema"])


@pytest.mark.unit
def test_every_trace_id_the_gateway_mints_is_one_the_filter_takes() -> None:
    for _ in range(200):
        assert tracing.is_trace_id(tracing.begin("query", None, None, None).trace_id)
    assert tracing.is_trace_id(tracing.begin("query", TRACE, "00f067aa0ba902b7", "01").trace_id)
    assert not any(tracing.is_trace_id(value) for value in MALFORMED)


def test_a_405_names_every_method_its_path_takes(client: TestClient) -> None:
    takes: dict[str, list[str]] = {}
    for op in operations.ALL:
        if op.handler is not None and op.http is not None:
            takes.setdefault(op.http.path, []).append(op.http.method)
    assert takes["/admin/v1/revocations"] == ["GET", "POST"]
    for method, path, allow in (("PUT", "/admin/v1/revocations", "GET, POST"),
                                ("DELETE", "/admin/v1/revocations", "GET, POST"),
                                ("POST", "/admin/v1/audit", "GET"),
                                ("GET", "/admin/v1/revocations/1", "DELETE"),
                                ("GET", "/admin/v1/approvals/x/approve", "POST"),
                                ("GET", "/v1/datasets/customers/query", "POST")):
        r = client.request(method, path, headers=bearer("alice"))
        assert r.status_code == 405 and r.headers["allow"] == allow, (method, path, r.headers.get("allow"))
        assert r.json()["error"]["code"] == "method_not_allowed"
    put = client.put("/admin/v1/revocations", headers=bearer("alice"))
    assert put.json()["error"]["message"] == "PUT is not allowed here; use GET or POST"
