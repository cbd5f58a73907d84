"""The agents' API end to end, in-process: shapes, errors, masking and the audit record of every request."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from starlette.testclient import TestClient

from gateway.audit import Verification, verify
from gateway.store import make_store_engine
from tests.conftest import AUDIENCE, DATASETS, bearer, client_for, records, token, write_workspace

pytestmark = pytest.mark.integration

FORBIDDEN_MSG = "not allowed: the dataset does not exist or this agent may not read it"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    assert err["request_id"] == response.headers["x-request-id"]
    return err  # type: ignore[no-any-return]


def test_list_datasets_shows_only_what_the_agent_may_read(client: TestClient) -> None:
    r = client.get("/v1/datasets", headers=bearer("support-bot"))
    assert r.status_code == 200
    (ds,) = r.json()["datasets"]
    assert ds["name"] == "customers" and ds["owner"] == "maria.keller@example.com"
    assert ds["description"] == "Customer master data"
    classes = {c["name"]: c["class"] for c in ds["columns"]}
    assert classes["email"] == "pii" and classes["note"] == "internal" and classes["id"] is None
    assert [d["name"] for d in client.get("/v1/datasets", headers=bearer("analyst-bot")).json()["datasets"]] == [
        "customers", "orders"]
    assert client.get("/v1/datasets", headers=bearer("stranger")).json() == {"datasets": []}


def test_describe_and_unknown_datasets_answer_like_denied_ones(client: TestClient) -> None:
    r = client.get("/v1/datasets/orders", headers=bearer("analyst-bot"))
    assert r.status_code == 200 and r.json()["owner"] == "sales-ops@example.com"
    denied = assert_error(client.get("/v1/datasets/orders", headers=bearer("support-bot")), 403, "forbidden")
    unknown = assert_error(client.get("/v1/datasets/nope", headers=bearer("support-bot")), 403, "forbidden")
    assert denied["message"] == unknown["message"] == FORBIDDEN_MSG
    q_denied = client.post("/v1/datasets/orders/query", headers=bearer("support-bot"), json={})
    q_unknown = client.post("/v1/datasets/nope/query", headers=bearer("support-bot"), json={})
    assert q_denied.json()["error"]["message"] == q_unknown.json()["error"]["message"]


def test_query_answer_shape_and_masking(client: TestClient) -> None:
    body = {"columns": ["id", "name", "email", "note"], "where": [["id", "<=", 4]], "order_by": ["id"]}
    r = client.post("/v1/datasets/customers/query", headers=bearer("support-bot"), json=body)
    assert r.status_code == 200
    out = r.json()
    assert set(out) == {"dataset", "columns", "rows", "masked", "next_cursor"}
    assert out["dataset"] == "customers" and out["columns"] == ["id", "name", "email", "note"]
    assert out["masked"] == ["note"] and out["next_cursor"] is None
    assert out["rows"][0] == {"id": 1, "name": "Customer 01", "email": "c1@example.com", "note": None}
    analyst = client.post("/v1/datasets/customers/query", headers=bearer("analyst-bot"), json=body).json()
    assert analyst["masked"] == ["email", "note"]
    assert all(row["email"] is None for row in analyst["rows"])


@pytest.mark.parametrize(("headers", "why"), [
    ({}, "missing"),
    ({"Authorization": "Bearer"}, "empty"),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, "scheme"),
    ({"Authorization": "Bearer not.a.jwt"}, "garbage"),
    ({"Authorization": f"Bearer {token('support-bot', secret='another-secret-' + 'y' * 40)}"}, "signature"),
    ({"Authorization": f"Bearer {token('support-bot', ttl=-120)}"}, "expired"),
    ({"Authorization": f"Bearer {token('support-bot', aud='someone-else')}"}, "audience"),
    ({"Authorization": f"Bearer {token(None)}"}, "no sub"),
])
def test_unauthenticated_requests_are_refused_and_audited(
        client: TestClient, workspace: Path, headers: dict[str, str], why: str) -> None:
    before = len(records(workspace))
    r = client.get("/v1/datasets", headers=headers)
    assert_error(r, 401, "unauthenticated")
    assert r.headers["www-authenticate"].startswith("Bearer")
    recs = records(workspace)
    assert len(recs) == before + 1
    assert recs[-1]["agent"] is None and recs[-1]["decision"] == "deny" and recs[-1]["status"] == 401


def test_every_error_has_the_one_shape(tmp_path: Path, sqlite_source: str) -> None:
    cfg = write_workspace(tmp_path, source_url=sqlite_source, extra="""
[sources.down]
url = "postgresql://nobody@127.0.0.1:1/none"
timeout_seconds = 2
""", datasets=DATASETS + """
[datasets.gone]
source = "down"
table = "t"
owner = "o@example.com"
""", policy="p, r, *, read, allow\ng, bot, r\n")
    (tmp_path / "agentgate.toml").write_text("[server]\nmax_body_bytes = 200\n" + cfg.read_text())
    with client_for(cfg) as c:
        h = bearer("bot")
        assert_error(c.post("/v1/datasets/customers/query", headers=h, content=b"{not json"), 400, "bad_request")
        assert_error(c.post("/v1/datasets/customers/query", headers=h, json={"colums": ["id"]}), 400, "bad_request")
        assert_error(c.post("/v1/datasets/customers/query", headers=h, json={"columns": ["nope"]}), 400,
                     "bad_request")
        assert_error(c.post("/v1/datasets/customers/query", headers=h, json={"where": [["id", "~", 1]]}), 400,
                     "bad_request")
        assert_error(c.post("/v1/datasets/customers/query", headers=h, json={"columns": ["x" * 30] * 10}), 413,
                     "too_large")
        assert_error(c.get("/v1/nothing/here", headers=h), 404, "not_found")
        assert_error(c.get("/v1/datasets/customers/query", headers=h), 405, "method_not_allowed")
        assert_error(c.post("/v1/datasets/gone/query", headers=h, json={}), 502, "source_error")
        assert_error(c.get("/v1/datasets"), 401, "unauthenticated")
        assert_error(c.get("/v1/datasets/orders", headers=bearer("stranger")), 403, "forbidden")
    recs = records(cfg)
    assert [r["status"] for r in recs] == [400, 400, 400, 400, 413, 404, 405, 502, 401, 403]
    assert {r["decision"] for r in recs[:8]} == {"error"} and recs[8]["decision"] == recs[9]["decision"] == "deny"


def test_the_audit_record_describes_what_left(client: TestClient, workspace: Path) -> None:
    body = {"columns": ["id", "email"], "where": [["country", "=", "DE"]], "limit": 3}
    r = client.post("/v1/datasets/customers/query", json=body,
                    headers={**bearer("analyst-bot", on_behalf_of="jane@example.com"), "X-Work-Unit": "TICKET-7"})
    assert r.status_code == 200
    rec = records(workspace)[-1]
    assert rec["request_id"] == r.headers["x-request-id"]
    assert rec["agent"] == "analyst-bot" and rec["on_behalf_of"] == "jane@example.com"
    assert rec["work_unit"] == "TICKET-7" and rec["action"] == "read" and rec["dataset"] == "customers"
    assert json.loads(rec["query"]) == body
    assert rec["decision"] == "allow" and rec["status"] == 200 and rec["rows"] == 3
    assert rec["bytes"] == len(r.content)
    assert rec["response_sha256"] == hashlib.sha256(r.content).hexdigest()
    assert rec["rule"] == "p, analyst, customers, read, allow"
    assert json.loads(rec["columns"]) == ["id"] and json.loads(rec["masked"]) == ["email"]
    assert rec["duration_ms"] >= rec["source_ms"] >= 0
    denied = client.post("/v1/datasets/orders/query", json={}, headers=bearer("support-bot"))
    rec = records(workspace)[-1]
    assert denied.status_code == 403 and rec["decision"] == "deny" and rec["reason"] == "no policy line grants this"
    assert rec["rows"] is None


def test_no_data_without_an_audit_record_and_recovery(client: TestClient, workspace: Path) -> None:
    store = sqlite3.connect(workspace.parent / "store.db")
    try:
        store.execute("ALTER TABLE audit RENAME TO audit_elsewhere")
        store.commit()
        r = client.post("/v1/datasets/customers/query", headers=bearer("support-bot"), json={"limit": 5})
        assert_error(r, 503, "unavailable")
        assert "rows" not in r.text and "c1@example.com" not in r.text
        store.execute("ALTER TABLE audit_elsewhere RENAME TO audit")
        store.commit()
    finally:
        store.close()
    r = client.post("/v1/datasets/customers/query", headers=bearer("support-bot"), json={"limit": 5})
    assert r.status_code == 200 and len(r.json()["rows"]) == 5


def test_readiness_health_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    client.get("/v1/datasets", headers=bearer("support-bot"))
    text = client.get("/metrics").text
    assert 'agentgate_requests_total{dataset="",decision="allow"}' in text
    assert "agentgate_request_duration_seconds_bucket" in text and "agentgate_audit_write_duration_seconds" in text


def test_readiness_fails_when_the_store_is_gone(tmp_path: Path, sqlite_source: str, pg_store: str) -> None:
    cfg = write_workspace(tmp_path, source_url=sqlite_source, store_url=pg_store)
    with client_for(cfg) as c:
        assert c.get("/readyz").status_code == 200

        async def kill() -> None:
            from sqlalchemy import text
            from sqlalchemy.ext.asyncio import create_async_engine

            admin = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
                                        isolation_level="AUTOCOMMIT")
            async with admin.connect() as conn:
                name = pg_store.rsplit("/", 1)[1]
                await conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                await conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"))
            await admin.dispose()

        asyncio.run(kill())
        r = c.get("/readyz")
        assert r.status_code == 503 and "store unreachable" in r.json()["reason"]
        assert_error(c.post("/v1/datasets/customers/query", headers=bearer("support-bot"), json={}), 503,
                     "unavailable")

        async def revive() -> None:
            from sqlalchemy import text
            from sqlalchemy.ext.asyncio import create_async_engine

            admin = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
                                        isolation_level="AUTOCOMMIT")
            async with admin.connect() as conn:
                await conn.execute(text(f'ALTER DATABASE "{pg_store.rsplit("/", 1)[1]}" ALLOW_CONNECTIONS true'))
            await admin.dispose()

        asyncio.run(revive())
        # It recovers by itself, without a restart, once it has resynchronised.
        deadline = time.monotonic() + 10
        while True:
            r = c.post("/v1/datasets/customers/query", headers=bearer("support-bot"), json={"limit": 2})
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert r.status_code == 200
        assert c.get("/readyz").status_code == 200


@pytest.fixture
def pg_client(tmp_path: Path, sqlite_source: str, pg_store: str) -> Iterator[tuple[TestClient, str]]:
    with client_for(write_workspace(tmp_path, source_url=sqlite_source, store_url=pg_store)) as c:
        yield c, pg_store


def test_concurrent_requests_form_one_verified_chain_in_postgres(pg_client: tuple[TestClient, str]) -> None:
    client, store_url = pg_client
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> int:
        agent = "support-bot" if i % 3 else "stranger"
        return client.post("/v1/datasets/customers/query", headers=bearer(agent), json={"limit": 2}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(60)))
    assert statuses.count(200) == 40 and statuses.count(403) == 20

    async def check() -> Verification:
        engine = make_store_engine(store_url)
        try:
            return await verify(engine)
        finally:
            await engine.dispose()

    result = asyncio.run(check())
    assert result.ok and result.count == 60


def test_tokens_for_another_audience_or_algorithm_are_refused(client: TestClient) -> None:
    import jwt

    # Signed with a key long enough for HS512: it is refused for its algorithm alone.
    hs512 = jwt.encode({"sub": "support-bot", "exp": 2**31, "aud": AUDIENCE}, "k" * 64, algorithm="HS512")
    assert_error(client.get("/v1/datasets", headers={"Authorization": f"Bearer {hs512}"}), 401, "unauthenticated")


def test_records_and_review_on_a_postgres_store(pg_client: tuple[TestClient, str]) -> None:
    client, _ = pg_client
    body = {"columns": ["id", "email"], "where": [["country", "=", "DE"]], "limit": 3}
    r = client.post("/v1/datasets/customers/query", json=body,
                    headers={**bearer("analyst-bot", on_behalf_of="jane@example.com"), "X-Work-Unit": "T-9"})
    assert r.status_code == 200
    client.post("/v1/datasets/orders/query", json={}, headers=bearer("support-bot"))
    page = client.get("/admin/v1/audit?work_unit=T-9", headers=bearer("alice")).json()
    (rec,) = page["records"]
    assert rec["request_id"] == r.headers["x-request-id"] and rec["on_behalf_of"] == "jane@example.com"
    assert rec["response_sha256"] == hashlib.sha256(r.content).hexdigest() and rec["bytes"] == len(r.content)
    assert rec["rows"] == 3 and json.loads(rec["masked"]) == ["email"] and json.loads(rec["query"]) == body
    assert rec["rule"] == "p, analyst, customers, read, allow" and rec["time"].endswith("Z")
    denied = client.get("/admin/v1/audit?decision=deny&dataset=orders", headers=bearer("alice")).json()
    assert [x["agent"] for x in denied["records"]] == ["support-bot"]
    one = client.get(f"/admin/v1/audit/{rec['id']}", headers=bearer("alice")).json()["record"]
    assert one == rec
    assert client.get("/admin/v1/audit/verify", headers=bearer("alice")).json()["ok"] is True
    export = client.get("/admin/v1/audit/export?format=jsonl&agent=analyst-bot", headers=bearer("alice"))
    assert [json.loads(line)["request_id"] for line in export.text.splitlines()] == [rec["request_id"]]


def test_cursors_from_before_the_switch_to_aes_gcm_siv_still_page(client: TestClient, workspace: Path) -> None:
    """Cursors were Fernet tokens before; one issued then (same key material, kept in the store) still works."""
    body = {"columns": ["id"], "order_by": ["id"], "limit": 4}
    first = client.post("/v1/datasets/customers/query", headers=bearer(), json=body).json()
    cursor = first["next_cursor"]
    assert cursor.startswith("v2.")
    with sqlite3.connect(workspace.parent / "store.db") as db:
        (secret,) = db.execute("SELECT value FROM agentgate_meta WHERE key = 'cursor_key'").fetchone()
    digest = hashlib.sha256(("agentgate-cursor:" + secret).encode()).digest()
    raw = base64.urlsafe_b64decode(cursor[3:])
    plain = AESGCMSIV(hashlib.sha256(b"agentgate-cursor-siv:" + digest).digest()).decrypt(raw[:12], raw[12:], None)
    old = Fernet(base64.urlsafe_b64encode(digest)).encrypt(plain).decode()
    for given in (cursor, old):
        page = client.post("/v1/datasets/customers/query", headers=bearer(), json={**body, "cursor": given})
        assert page.status_code == 200, page.text
        assert [r["id"] for r in page.json()["rows"]] == [5, 6, 7, 8]
