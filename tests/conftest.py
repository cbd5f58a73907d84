"""Shared test fixtures: real PostgreSQL and MariaDB databases made for this run,
workspaces (agentgate.toml + policy directory) in tmp folders, signed JWTs,
and the gateway in-process through Starlette's TestClient.

Under CI (CI=true) a missing PostgreSQL or MariaDB server fails the run; on a
developer's machine the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import jwt
import pytest
from sqlalchemy import Boolean, Column, DateTime, Integer, MetaData, Numeric, String, Table, Text, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import load_settings
from gateway.store import create_tables, make_store_engine

SECRET = "test-secret-" + "x" * 40
AUDIENCE = "agentgate-test"
PG_ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
MARIADB_ADMIN = "mysql+aiomysql://root@127.0.0.1:3306/"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

MODEL = (Path(__file__).parent.parent / "policies" / "model.conf").read_text()

# --- test tiers (pyproject.toml's markers; the README's Development section runs each) ------------------------

TIERS = ("unit", "integration", "system")
# Fixtures that reach a server: a unit test asking for one is misfiled.
SERVER_FIXTURES = {"pg_source", "mariadb_source", "pg_store", "store_url", "own_pg_cluster"}


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: `-m unit` sees each test's one tier only
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test belongs to exactly one tier. The closest tier marker wins (a test's own over its module's
    pytestmark); a test with none, with two on one level, or a unit test asking for a server fails the
    collection, naming each. The winning tier is then the only one the test carries."""
    chosen: dict[pytest.Item, str] = {}
    faults: list[str] = []
    for item in items:
        for node in item.iter_parents():
            tiers = sorted({m.name for m in node.own_markers if m.name in TIERS})
            if tiers:
                if len(tiers) > 1:
                    faults.append(f"{item.nodeid}: two tiers on one level ({', '.join(tiers)})")
                chosen[item] = tiers[0]
                break
        else:
            faults.append(f"{item.nodeid}: no tier marker")
        servers = SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if chosen.get(item) == "unit" and servers:
            faults.append(f"{item.nodeid}: marked unit but uses {', '.join(sorted(servers))}")
    if faults:
        raise pytest.UsageError(
            "every test needs exactly one tier marker (pytest.mark.unit, .integration or .system; see the markers "
            "in pyproject.toml), as its own or its module's pytestmark:\n  " + "\n  ".join(faults))
    for item, tier in chosen.items():
        for node in item.iter_parents():
            if node is not item:
                node.own_markers[:] = [m for m in node.own_markers if m.name not in TIERS]
        if not any(m.name == tier for m in item.own_markers):
            item.add_marker(tier)


def token(agent: str | None = "support-bot", ttl: int = 600, secret: str = SECRET, **claims: Any) -> str:
    now = int(time.time())
    body: dict[str, Any] = {"iat": now, "exp": now + ttl, "aud": AUDIENCE, "jti": secrets.token_hex(8)}
    if agent is not None:
        body["sub"] = agent
    body.update(claims)
    return jwt.encode(body, secret, algorithm="HS256")


def bearer(agent: str = "support-bot", **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(agent, **claims)}"}


# --- the rows every SQL source in the tests holds -------------------------------------------------

people = MetaData()
customers = Table(
    "customers", people,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(100), nullable=False),
    Column("email", String(200)),
    Column("country", String(2), nullable=False),
    Column("balance", Numeric(12, 2), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("note", Text),
)
orders = Table(
    "orders", people,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("customer_id", Integer, nullable=False),
    Column("amount", Numeric(12, 2), nullable=False),
)
COUNTRIES = ["DE", "FR", "GB", "US"]
N_CUSTOMERS = 60


def customer_rows() -> list[dict[str, Any]]:
    base = dt.datetime(2026, 1, 1, 9, 30)
    return [{
        "id": i, "name": f"Customer {i:02d}", "email": None if i % 10 == 0 else f"c{i}@example.com",
        "country": COUNTRIES[i % 4], "balance": Decimal(f"{i * 10}.{i % 100:02d}"),
        "created_at": base + dt.timedelta(days=i), "active": i % 3 != 0,
        "note": None if i % 2 else f"note {i % 5}",
    } for i in range(1, N_CUSTOMERS + 1)]


async def _seed(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(people.drop_all)
            await conn.run_sync(people.create_all)
            await conn.execute(customers.insert(), customer_rows())
            await conn.execute(orders.insert(), [{"id": i, "customer_id": 1 + i % N_CUSTOMERS,
                                                  "amount": Decimal(f"{i}.50")} for i in range(1, 31)])
    finally:
        await engine.dispose()


def seed(url: str) -> None:
    asyncio.run(_seed(url))


def _server_or_skip(name: str, url: str) -> None:
    async def probe() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    try:
        asyncio.run(asyncio.wait_for(probe(), 10))
    except Exception as exc:
        msg = f"{name} is not reachable ({type(exc).__name__}: {exc})"
        if IN_CI:
            pytest.fail(f"{msg}; CI requires it", pytrace=False)
        pytest.skip(msg)


def _create_database(admin_url: str, name: str, drop: bool = False) -> None:
    async def run() -> None:
        engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                if admin_url.startswith("postgresql"):
                    stmt = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' if drop else f'CREATE DATABASE "{name}"'
                else:
                    stmt = f"DROP DATABASE IF EXISTS `{name}`" if drop else f"CREATE DATABASE `{name}`"
                await conn.execute(text(stmt))
        finally:
            await engine.dispose()

    asyncio.run(run())


def _database(admin_url: str, label: str, server: str) -> Iterator[str]:
    _server_or_skip(server, admin_url)
    name = f"agentgate_{label}_{os.getpid()}_{secrets.token_hex(3)}"
    _create_database(admin_url, name)
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        _create_database(admin_url, name, drop=True)


def terminate_backends(database_url: str) -> None:
    """Cut every connection to a PostgreSQL database of this run, as a failover or a DBA would."""
    async def run() -> None:
        engine = create_async_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                        "WHERE datname = :db AND pid <> pg_backend_pid()"),
                                   {"db": database_url.rsplit("/", 1)[1]})
        finally:
            await engine.dispose()

    asyncio.run(run())


@pytest.fixture(scope="session")
def pg_source() -> Iterator[str]:
    """A PostgreSQL database of this run, seeded with customers and orders (async URL)."""
    for url in _database(PG_ADMIN, "src", "PostgreSQL"):
        seed(url)
        yield url


@pytest.fixture(scope="session")
def mariadb_source() -> Iterator[str]:
    for url in _database(MARIADB_ADMIN, "src", "MariaDB"):
        seed(url)
        yield url


@pytest.fixture
def pg_store() -> Iterator[str]:
    """An empty PostgreSQL database for one test's store."""
    yield from _database(PG_ADMIN, "store", "PostgreSQL")


@contextlib.contextmanager
def loopback_http(handler: type[BaseHTTPRequestHandler], prefix: str = "/api") -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 (an HTTP source for the gateway), its base URL, stopped afterwards."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{prefix}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store for one test, the test run once on a SQLite store and once on a PostgreSQL one."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/store.db"
    return str(request.getfixturevalue("pg_store"))


@pytest.fixture(scope="session")
def sqlite_source(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sqlite-src") / "source.db"
    url = f"sqlite+aiosqlite:///{path}"
    seed(url)
    return url


# --- workspaces ----------------------------------------------------------------------------------

DATASETS = """
[datasets.customers]
source = "main"
table = "customers"
owner = "maria.keller@example.com"
description = "Customer master data"
max_rows = 25

[datasets.customers.columns.email]
class = "pii"

[datasets.customers.columns.note]
class = "internal"

[datasets.orders]
source = "main"
table = "orders"
owner = "sales-ops@example.com"
"""

POLICY = """
p, support, customers, read, allow
p, support, customers, read:pii, allow
p, analyst, customers, read, allow
p, analyst, orders, read, allow
p, analyst, customers, read:pii, deny
p, security-admin, admin:*, *, allow
g, support-bot, support
g, analyst-bot, analyst
g, alice, security-admin
"""


def write_workspace(root: Path, *, source_url: str, store_url: str | None = None, policy: str = POLICY,
                    datasets: str = DATASETS, tests: str | None = None, extra: str = "",
                    model: str = MODEL) -> Path:
    """agentgate.toml plus a policy directory under root; returns the config path."""
    pol = root / "policies"
    pol.mkdir(parents=True, exist_ok=True)
    (pol / "model.conf").write_text(model)
    (pol / "policy.csv").write_text(policy)
    (pol / "datasets.toml").write_text(datasets)
    if tests is not None:
        (pol / "tests.toml").write_text(tests)
    config = root / "agentgate.toml"
    config.write_text(f"""
[auth]
algorithms = ["HS256"]
secret = "{SECRET}"
audience = "{AUDIENCE}"

[store]
url = "{store_url or 'sqlite:///store.db'}"

[policy]
dir = "policies"

[sources.main]
url = "{source_url}"
timeout_seconds = 5
{extra}
""")
    return config


@pytest.fixture
def workspace(tmp_path: Path, sqlite_source: str) -> Path:
    return write_workspace(tmp_path, source_url=sqlite_source)


def client_for(config: Path) -> TestClient:
    return TestClient(create_app(load_settings(config)), raise_server_exceptions=True)


@pytest.fixture
def client(workspace: Path) -> Iterator[TestClient]:
    with client_for(workspace) as c:
        yield c


@asynccontextmanager
async def opened_store(url: str) -> AsyncIterator[AsyncEngine]:
    """A store engine with the gateway's tables made, disposed of afterwards."""
    engine = make_store_engine(url)
    await create_tables(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


def records(config: Path) -> list[dict[str, Any]]:
    """Every audit record of a workspace's SQLite store (store.db beside its agentgate.toml), oldest first."""
    conn = sqlite3.connect(config.parent / "store.db")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM audit ORDER BY id")]
    finally:
        conn.close()


G = TypeVar("G", covariant=True)


class _MakeGateway(Protocol[G]):
    def __call__(self, dialect: str, url: str, client: TestClient, config: Path) -> G: ...


class PerDialect(Generic[G]):
    """One gateway per source dialect for a test module, started on first use (a missing server skips the
    test, or fails it under CI) and closed with the module."""

    def __init__(self, factory: pytest.TempPathFactory, workspace: Callable[[Path, str], Path],
                 gateway: _MakeGateway[G]):
        self._factory, self._workspace, self._gateway = factory, workspace, gateway
        self._stack = contextlib.ExitStack()
        self._open: dict[str, G] = {}

    def get(self, dialect: str, request: pytest.FixtureRequest) -> G:
        if dialect not in self._open:
            url = request.getfixturevalue(dialect)
            config = self._workspace(self._factory.mktemp(f"gw-{dialect}"), url)
            client = self._stack.enter_context(client_for(config))
            self._open[dialect] = self._gateway(dialect, url, client, config)
        return self._open[dialect]

    def close(self) -> None:
        self._stack.close()


DIALECTS = ("sqlite_source", "pg_source", "mariadb_source")


def dialect_fixtures(workspace: Callable[[Path, str], Path], gateway: _MakeGateway[G]) -> tuple[Any, Any]:
    """A test module's `gateways` (the module's PerDialect pool) and `gw` (one gateway per dialect, the test run
    on each) fixtures: `gateways, gw = dialect_fixtures(...)` at module level."""

    @pytest.fixture(scope="module")
    def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PerDialect[G]]:
        pool = PerDialect(tmp_path_factory, workspace, gateway)
        try:
            yield pool
        finally:
            pool.close()

    @pytest.fixture(params=DIALECTS)
    def gw(request: pytest.FixtureRequest, gateways: PerDialect[G]) -> G:
        return gateways.get(request.param, request)

    return gateways, gw


# --- a PostgreSQL cluster of a test's own ----------------------------------------------------------

PG_BIN = Path("/usr/local/bin")


class PgCluster:
    """A PostgreSQL cluster made for one test (initdb) in a temporary folder, served (pg_ctl) on its own port
    and socket folder: a test may stop and start it as it likes, never touching the shared server. PostgreSQL
    refuses to run as root: as root, its commands run as the user the machine's own server runs as."""

    def __init__(self) -> None:
        import pwd
        import shutil
        import socket
        import tempfile

        if not (PG_BIN / "initdb").exists():
            msg = f"{PG_BIN}/initdb is not installed"
            if IN_CI:
                pytest.fail(f"{msg}; CI requires it", pytrace=False)
            pytest.skip(msg)
        self.root = Path(tempfile.mkdtemp(prefix="agentgate-pg-"))
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            shutil.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", owner.pw_name, "--"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.data = self.root / "data"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w",
                  "-t", "60", "start")
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")
            self.running = False

    def remove(self) -> None:
        import shutil

        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        import subprocess

        done = subprocess.run([*self._as, str(PG_BIN / program), *args], capture_output=True, timeout=120,
                              cwd=self.root, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")


@pytest.fixture
def own_pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL cluster of this test's own, made but not started (`.start()`, `.stop()`, `.url`, `.port`);
    stopped and removed afterwards."""
    cluster = PgCluster()
    try:
        yield cluster
    finally:
        cluster.remove()
