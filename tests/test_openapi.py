"""The OpenAPI document (GET /openapi.json, GET /docs), and that it says what the gateway does.

- It is valid OpenAPI 3.1 (openapi-spec-validator), and holds every operation of the registry that HTTP serves,
  with its method, operation id and parameters; it names no dataset or agent of a policy.
- Its request bodies are the parsers' own schemas: every body a schema allows, its parser takes (hypothesis,
  hypothesis-jsonschema), but for the two rules the descriptions state in words; bodies a schema refuses are
  answered 400; MCP's tools take the same bodies.
- It is served with no token, outside the read path (no audit record), as /healthz is.
- A live `agentgate serve` on the shipped demo answers as it says (schemathesis, bounded: a few examples per
  operation): no 5xx, only documented statuses, content types and headers, bodies that match their schemas,
  authentication enforced, other methods refused.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.core import NotSet
from starlette.testclient import TestClient

import tests.serving
from gateway import sqlmode
from gateway.common.errors import BadRequest
from gateway.core import operations, query
from gateway.core.admin import revocations
from gateway.transports.mcp import TOOLS
from gateway.transports.openapi import document
from tests.conftest import IN_CI, POLICY, bearer, client_for, records, write_workspace
from tests.serving import env, serving

REPO = Path(__file__).parent.parent
EXAMPLES = 20 if IN_CI else 50
BODIES = settings(max_examples=EXAMPLES, deadline=None, derandomize=IN_CI, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.function_scoped_fixture])


def served_operations() -> list[operations.Operation]:
    return [op for op in operations.ALL if op.handler is not None and op.http is not None]


def template(path: str) -> str:
    """A route's path as the document writes it: {path:anypath} is {path}."""
    return path.replace(":anypath}", "}")


# --- the document -----------------------------------------------------------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("sql", [True, False], ids=["sql-on", "sql-off"])
def test_the_document_is_valid_openapi_3_1(sql: bool) -> None:
    doc = document(sql=sql)
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    assert ("/v1/sql" in doc["paths"]) == sql


@pytest.mark.unit
def test_every_operation_served_over_http_is_in_it_with_its_method() -> None:
    doc = document(sql=True)
    seen = {(path, method.upper()): op["operationId"] for path, methods in doc["paths"].items()
            for method, op in methods.items()}
    expected = {(template(op.http.path), op.http.method): op.name for op in served_operations() if op.http}
    assert seen == expected


@pytest.mark.unit
def test_parameters_are_the_routes() -> None:
    doc = document(sql=True)
    for op in served_operations():
        assert op.http is not None
        declared = doc["paths"][template(op.http.path)][op.http.method.lower()]["parameters"]
        path = [p["name"] for p in declared if p["in"] == "path"]
        assert path == [part.strip("{}").split(":")[0] for part in op.http.path.split("/") if part.startswith("{")]
        assert [p["name"] for p in declared if p["in"] == "query"] == [p.name for p in op.http.params
                                                                       if p.at == "query"]
    audit = doc["paths"]["/admin/v1/audit"]["get"]["parameters"]
    limit = next(p for p in audit if p["name"] == "limit")["schema"]
    assert (limit["minimum"], limit["maximum"]) == (1, 1000)


@pytest.mark.unit
def test_request_bodies_are_the_parsers_schemas() -> None:
    doc = document(sql=True)
    components = doc["components"]["schemas"]
    bodies = {op.name: doc["paths"][template(op.http.path)][op.http.method.lower()].get("requestBody")
              for op in served_operations() if op.http}
    assert {name for name, body in bodies.items() if body} == {"query", "sql", "revoke"}
    for name, schema, required in (("query", query.BODY_SCHEMA, False), ("sql", sqlmode.BODY_SCHEMA, True),
                                   ("revoke", revocations.BODY_SCHEMA, True)):
        body = bodies[name]
        assert body is not None and body["required"] is required
        ref = body["content"]["application/json"]["schema"]["$ref"]
        assert components[ref.rsplit("/", 1)[1]] == schema
    where = query.BODY_SCHEMA["properties"]["where"]
    assert where["maxItems"] == query.MAX_TERMS


def _policy_names(policy_dir: Path, policy_csv: str) -> set[str]:
    datasets = set(tomllib.loads((policy_dir / "datasets.toml").read_text())["datasets"])
    agents = {line.split(",")[1].strip() for line in policy_csv.splitlines() if line.startswith("g,")}
    return datasets | agents


@pytest.mark.unit
def test_it_names_no_dataset_or_agent_of_a_policy() -> None:
    names = _policy_names(REPO / "policies", (REPO / "policies" / "policy.csv").read_text())
    names |= {line.split(",")[1].strip() for line in POLICY.splitlines() if line.startswith("g,")}
    assert {"customers", "orders", "support-bot"} <= names
    text = json.dumps(document(sql=True))
    assert [name for name in sorted(names) if name in text] == []


# --- request bodies: the schemas and the parsers agree ------------------------------------------------------------

DOCUMENT = schemathesis.openapi.from_dict(document(sql=True))


def bodies(path: str) -> st.SearchStrategy[Any]:
    """Bodies the document allows for the POST at `path`, drawn as schemathesis draws them against a live serve
    (None: no body sent)."""
    cases = DOCUMENT[path]["POST"].as_strategy(generation_mode=GenerationMode.POSITIVE)
    return cases.map(lambda case: None if isinstance(case.body, NotSet) else case.body)


@pytest.mark.unit
@BODIES
@given(bodies("/v1/datasets/{name}/query"))
def test_every_query_body_the_document_allows_parses(body: Any) -> None:
    try:
        query.parse_body(None if body is None else json.dumps(body).encode())
    except BadRequest as exc:
        # What JSON Schema cannot state, and the schema's descriptions say in words: values bound in all, a column
        # ordered twice ("id" and "-id"). And a whole number written with a fraction: `5.0` is an integer to JSON
        # Schema, a float to the parser (a 400).
        fraction = isinstance(body, dict) and isinstance(body.get("limit"), float)
        assert ("binds" in exc.message or "names a column twice" in exc.message
                or (fraction and "'limit'" in exc.message)), (body, exc.message)


@pytest.mark.unit
@BODIES
@given(bodies("/v1/sql"), bodies("/admin/v1/revocations"))
def test_every_sql_and_revocation_body_the_document_allows_parses(sql: Any, revoke: Any) -> None:
    assert sqlmode.parse_body(json.dumps(sql).encode()) == sql["sql"]
    key, subject, reason = revocations._target(json.dumps(revoke).encode())
    assert (revoke[key], revoke.get("reason")) == (subject, reason)


@pytest.mark.unit
@BODIES
@given(bodies("/v1/datasets/{name}/query"))
def test_mcp_query_tool_takes_the_same_body(body: Any) -> None:
    tool = TOOLS["query_dataset"].input_schema
    jsonschema.validate({"name": "a_dataset", **(body or {})}, tool)
    assert set(tool["properties"]) - set(query.BODY_SCHEMA["properties"]) == {"name", "work_unit", "approval_id"}


_SCALARS = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False)
_JSON = st.recursive(_SCALARS | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                  max_size=3), max_leaves=12)
# Bodies near the query's: its keys (and a stranger), each with any JSON value; most break the schema somewhere.
_NEAR_QUERY = st.dictionaries(st.sampled_from(["columns", "where", "order_by", "limit", "cursor", "colums"]),
                              _JSON | st.lists(st.lists(_JSON, max_size=4), max_size=3), max_size=4)
_REFUSES = jsonschema.Draft202012Validator


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, sqlite_source: str) -> Iterator[tuple[TestClient, Path]]:
    config = write_workspace(tmp_path_factory.mktemp("openapi"), source_url=sqlite_source)
    with client_for(config) as client:
        yield client, config


@pytest.mark.integration
@BODIES
@given(_NEAR_QUERY)
def test_query_bodies_the_schema_refuses_are_400s(app: tuple[TestClient, Path], body: dict[str, Any]) -> None:
    client, _ = app
    refused = not _REFUSES(query.BODY_SCHEMA).is_valid(body)
    r = client.post("/v1/datasets/customers/query", json=body, headers=bearer("support-bot"))
    if refused:
        assert (r.status_code, r.json()["error"]["code"]) == (400, "bad_request"), (body, r.text)
    else:
        assert r.status_code in (200, 400), (body, r.text)  # allowed: a 400 only for names the table lacks


@pytest.mark.integration
@BODIES
@given(st.dictionaries(st.sampled_from(["agent", "jti", "reason", "subject"]), _JSON, max_size=3),
       st.dictionaries(st.sampled_from(["sql", "query"]), _JSON, max_size=2))
def test_revocation_and_sql_bodies_the_schemas_refuse_are_400s(app: tuple[TestClient, Path], revoke: dict[str, Any],
                                                               sql: dict[str, Any]) -> None:
    client, _ = app
    if not _REFUSES(revocations.BODY_SCHEMA).is_valid(revoke):
        r = client.post("/admin/v1/revocations", json=revoke, headers=bearer("alice"))
        assert r.status_code == 400, (revoke, r.text)
    if not _REFUSES(sqlmode.BODY_SCHEMA).is_valid(sql):
        r = client.post("/v1/sql", json=sql, headers=bearer("support-bot"))
        assert r.status_code == 400, (sql, r.text)


# --- served --------------------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_served_with_no_token_and_no_record(app: tuple[TestClient, Path]) -> None:
    client, config = app
    before = len(records(config))
    r = client.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == json.loads(json.dumps(document(sql=True)))
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for op in served_operations():
        assert op.http is not None and template(op.http.path) in page.text and op.name in page.text
    # Self-contained: nothing fetched from elsewhere (offline machines), no script.
    assert 'href="openapi.json"' in page.text and "<script" not in page.text and "://" not in page.text
    assert len(records(config)) == before  # outside the read path, as /healthz
    source = tomllib.loads(config.read_text())["sources"]["main"]["url"]
    off = write_workspace(config.parent / "sql-off", source_url=source, extra="[sql]\nenabled = false\n")
    with client_for(off) as sql_off:
        assert "/v1/sql" not in sql_off.get("/openapi.json").json()["paths"]


# --- a live serve, checked by schemathesis -------------------------------------------------------------------------

# What each answer is held to. Not `positive_data_acceptance` / `negative_data_rejection`: a body the schema allows
# may still name a column the table lacks (400), and an empty query parameter is read as absent.
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
          "response_schema_conformance,ignored_auth,unsupported_method")


def shipped(root: Path) -> Path:
    """The embedded default as the Quickstart runs it: agentgate.toml, policies/, demo/."""
    shutil.copy(REPO / "agentgate.toml", root / "agentgate.toml")
    shutil.copytree(REPO / "policies", root / "policies")
    shutil.copytree(REPO / "demo", root / "demo")
    return root / "agentgate.toml"


def mint(config: Path, agent: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "token", "issue", "--agent", agent, "--config",
                           str(config)], capture_output=True, text=True, env=env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def schemathesis(base: str, token: str, paths: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    seed = ["--seed", "15"] if IN_CI else []
    return subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", f"{base}/openapi.json", "--checks", CHECKS,
         "--header", f"Authorization: Bearer {token}", "--include-path-regex", paths, "--max-examples", "8",
         "--request-timeout", "10", "--no-color", *seed,
         # The trail's stream answers for as long as it is read (its own tests: tests/test_audit_follow.py).
         "--exclude-path", "/admin/v1/audit/stream"],
        capture_output=True, text=True, timeout=120, cwd=cwd, env=env())


@pytest.mark.system
def test_a_live_serve_answers_as_its_document_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTGATE_JWT_SECRET", raising=False)
    monkeypatch.setattr(tests.serving, "START_TIMEOUT", 60.0)  # a first start seeds the demo database
    config = shipped(tmp_path)
    with serving(config, tmp_path / "serve.log") as base:
        assert httpx.get(f"{base}/openapi.json", timeout=10).json()["paths"]
        started = time.monotonic()
        # The agents' API as the support agent, then the admin API as the security reviewer (whose run revokes
        # agents the generator makes up, and never the support agent: its name is in no example).
        for agent, paths in (("support-bot", "^/v1/"), ("alice@example.com", "^/admin/v1/")):
            run = schemathesis(base, mint(config, agent), paths, tmp_path)
            assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
            assert " passed" in run.stdout, run.stdout[-3000:]
        assert time.monotonic() - started < 50, "the schemathesis runs are meant to stay well under a minute"
