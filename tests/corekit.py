"""A Gateway wired in-process for unit tests of the core: no server, no HTTP app, no PostgreSQL.

`open_core` builds what gateway/app.py `_start` builds — the store's tables, the cursor key, the audit trail, the
store's change feed and the revocations it keeps current, the policy (loaded from files written to a temporary
folder, its tests run and its tables checked against the sources, as at start), the authenticator, the refusal
limiter — on a temporary SQLite store, with `connectors.memory.MemorySource` in place of the SQL connector. Tests
call `Gateway.handle` through `Core.ask` with real HS256 tokens, and read back the audit records written.

    async with open_core(tmp_path, {"customers": customer_rows()}) as core:
        reply = await core.query("support-bot", "customers", {"limit": 2})
        assert reply.status == 200 and (await core.last()).rows == 2
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from connectors.base import ConnectorError
from connectors.memory import MemorySource
from gateway.audit import AuditRecord, AuditTrail, ChainWatch, iter_records
from gateway.auth import Authenticator
from gateway.common.errors import ConfigError
from gateway.common.metrics import Metrics
from gateway.config import AuthSettings, LimitSettings, Secret, SourceSettings
from gateway.core.operations import SERVED
from gateway.core.pipeline import Gateway
from gateway.core.query import CursorCodec
from gateway.core.types import Answer, ReadRequest
from gateway.policy import Policy, PolicyHolder, failing_cases, load_policy
from gateway.services.ratelimit import RefusalLimiter
from gateway.services.revocations import Registry
from gateway.sources.opening import check_tables
from gateway.store import StoreSync, create_tables, make_store_engine, reading, shared_secret, usage_counters
from tests.conftest import AUDIENCE, DATASETS, MODEL, N_CUSTOMERS, POLICY, SECRET, customer_rows, token

SOURCE = "main"
AUTH = AuthSettings(algorithms=("HS256",), secret=Secret(SECRET), audience=AUDIENCE)
# The one answer for a dataset that does not exist and one the agent may not read (tests/test_api.py's).
FORBIDDEN_MSG = "not allowed: the dataset does not exist or this agent may not read it"
_UNSET: Any = object()


@dataclass(frozen=True)
class Reply:
    """What Gateway.handle answered, with the request id the test gave it (its record's request_id)."""

    answer: Answer
    request_id: str

    @property
    def status(self) -> int:
        return self.answer.status

    @property
    def json(self) -> Any:
        return orjson.loads(self.answer.body)

    @property
    def error(self) -> dict[str, Any]:
        """The error of a refusal, checked to have the one error shape (SPEC: Errors), with this request's id."""
        body = self.json
        assert set(body) - {"approval_id"} == {"error"}, body
        err: dict[str, Any] = body["error"]
        assert err["request_id"] == self.request_id and isinstance(err["message"], str) and err["message"]
        return err

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.answer.body).hexdigest()


@dataclass
class Core:
    gateway: Gateway
    store: AsyncEngine
    source: MemorySource  # set its `failure` to make the source fail (or None to bring it back)

    async def ask(self, operation: str, agent: str | None = "support-bot", *, dataset: str | None = None,
                  body: Any = None, authorization: str | None = _UNSET, claims: Mapping[str, Any] | None = None,
                  **fields: Any) -> Reply:
        """One request through the core: `body` a dict or list (sent as JSON) or bytes (as they are);
        `authorization` the header as sent (by default a fresh token of `agent` with `claims`); `fields` any
        other ReadRequest field (approval_id, params, work_unit, transport, client, ...)."""
        if authorization is _UNSET:
            authorization = f"Bearer {token(agent, **(claims or {}))}"
        raw = body if body is None or isinstance(body, bytes) else orjson.dumps(body)
        request_id = secrets.token_hex(8)
        answer = await self.gateway.handle(ReadRequest(request_id=request_id, operation=operation,
                                                       authorization=authorization, dataset=dataset, body=raw,
                                                       **fields))
        return Reply(answer, request_id)

    async def query(self, agent: str | None = "support-bot", dataset: str = "customers",
                    body: Any = _UNSET, **fields: Any) -> Reply:
        """POST /v1/datasets/{dataset}/query; `claims=` for the token's claims."""
        return await self.ask("query", agent, dataset=dataset, body={} if body is _UNSET else body, **fields)

    async def records(self) -> list[AuditRecord]:
        """Every audit record written, oldest first."""
        return [r async for r in iter_records(self.store)]

    async def last(self) -> AuditRecord:
        return (await self.records())[-1]

    async def record_of(self, reply: Reply) -> AuditRecord:
        """The one record of the request `reply` answered."""
        mine = [r for r in await self.records() if r.request_id == reply.request_id]
        assert len(mine) == 1, mine
        return mine[0]

    async def usage(self, agent: str) -> list[tuple[str, str, int, int, int]]:
        """The agent's budget counters: (kind, window_start, requests, rows, rows set aside), oldest first."""
        t = usage_counters
        stmt = (select(t.c.kind, t.c.window_start, t.c.requests, t.c.rows, t.c.reserved)
                .where(t.c.agent == agent).order_by(t.c.window_start, t.c.kind))
        async with reading(self.store).connect() as conn:
            return [(k, w, int(q), int(r), int(s or 0)) for k, w, q, r, s in (await conn.execute(stmt)).all()]


def people() -> dict[str, list[dict[str, Any]]]:
    """The tables every SQL source of the tests holds (conftest's seed), fresh: customers and orders."""
    orders = [{"id": i, "customer_id": 1 + i % N_CUSTOMERS, "amount": Decimal(f"{i}.50")} for i in range(1, 31)]
    return {"customers": customer_rows(), "orders": orders}


def write_policy(root: Path, *, datasets: str = DATASETS, policy: str = POLICY, budgets: str | None = None,
                 tests: str | None = None) -> Path:
    """A policy directory (model.conf, policy.csv, datasets.toml; budgets.toml and tests.toml when given)."""
    pol = root / "policies"
    pol.mkdir(parents=True, exist_ok=True)
    files = {"model.conf": MODEL, "policy.csv": policy, "datasets.toml": datasets, "budgets.toml": budgets,
             "tests.toml": tests}
    for name, text in files.items():
        if text is not None:
            (pol / name).write_text(text)
    return pol


async def load_checked(policy_dir: Path, source: MemorySource) -> Policy:
    """The policy as the gateway takes it at start (services/reloader.load_checked_policy): loaded, its tests
    passing, its tables, classed columns and row filters checked against the source."""
    policy = load_policy(policy_dir, {SOURCE: SourceSettings(name=SOURCE, kind="sql", url="memory://main")})
    failures = await failing_cases(policy)
    if failures:
        raise ConfigError(policy_dir / "tests.toml", None, f"{len(failures)} policy test(s) fail: {failures[0]}")
    await check_tables(policy.catalog, {SOURCE: source}, policy_dir / "datasets.toml", strict_reachability=False)
    return policy


@contextlib.asynccontextmanager
async def open_core(root: Path, tables: Mapping[str, list[dict[str, Any]]], *, datasets: str = DATASETS,
                    policy: str = POLICY, budgets: str | None = None, tests: str | None = None,
                    failure: ConnectorError | None = None, approval_ttl: int = 3600) -> AsyncIterator[Core]:
    """A Gateway over a MemorySource named "main" holding `tables`, on a SQLite store in `root`, with the policy
    files given (conftest's datasets and policy by default); everything closed afterwards, in the app's order."""
    source = MemorySource(SOURCE, tables, failure=failure)
    loaded = await load_checked(write_policy(root, datasets=datasets, policy=policy, budgets=budgets,
                                             tests=tests), source)
    metrics = Metrics(operations=[*SERVED, "unknown"], sources=[SOURCE])
    store = make_store_engine(f"sqlite+aiosqlite:///{root}/store.db", wait_seconds=2.0)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(metrics.close)
        stack.push_async_callback(store.dispose)
        await create_tables(store)
        cursors = CursorCodec(await shared_secret(store, "cursor_key"))
        trail = AuditTrail(store, write_timeout=2.0, observe=metrics.observe_audit)
        await trail.start()
        stack.push_async_callback(trail.close)
        sync = StoreSync(store)
        revocations = Registry(store, sync, observe=metrics.revocations_in_force)
        await sync.start()
        stack.push_async_callback(sync.close)
        authenticator = Authenticator(AUTH)
        stack.push_async_callback(authenticator.aclose)
        refusals = RefusalLimiter(LimitSettings(), trail.record)
        await refusals.start()
        stack.push_async_callback(refusals.close)
        gateway = Gateway(authenticator=authenticator, policies=PolicyHolder(loaded), audit=trail,
                          sources={SOURCE: source}, cursors=cursors, metrics=metrics, revocations=revocations,
                          store=store, chain=ChainWatch(store, None), approval_ttl=approval_ttl, refusals=refusals)
        yield Core(gateway, store, source)
