"""agentgate.toml -> Settings: finding the file, reading it, checking every table.

The only place where ``${ENV}`` is expanded and relative paths are resolved.
Every fault raises ``ConfigError`` naming the file, the key and the fault, so
start-up stops with one clear line.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from gateway.common.errors import ConfigError
from gateway.config.filesource import file_source
from gateway.config.logtable import LOG_KEYS, log_settings
from gateway.config.reader import Reader
from gateway.config.settings import (
    ApprovalSettings,
    AuditSettings,
    AuthSettings,
    CostSettings,
    LimitSettings,
    PolicySettings,
    Secret,
    ServerSettings,
    Settings,
    SourceSettings,
    SqlModeSettings,
    StoreSettings,
)

DEFAULT_CONFIG = "agentgate.toml"
ENV_CONFIG = "AGENTGATE_CONFIG"
MAX_LEEWAY_SECONDS = 30.0

# Every key agentgate.toml takes, by table; the README documents each (a test checks).
CONFIG_KEYS: dict[str, set[str]] = {
    "": {"server", "sql", "approvals", "auth", "store", "policy", "sources", "audit", "cost", "limits", "log"},
    "server": {"host", "port", "max_body_bytes", "forwarded_allow_ips", "header_timeout_seconds",
               "body_timeout_seconds", "keep_alive_seconds", "max_connections", "max_header_bytes",
               "public_url"},
    "limits": {"failed_auth_per_minute", "failed_auth_burst", "failed_auth_records_per_minute",
               "failed_auth_clients", "summary_seconds", "refusal_delay_seconds"},
    "sql": {"enabled"},
    "approvals": {"ttl_seconds", "max_pending_per_agent"},
    "auth": {"algorithms", "secret", "public_key_file", "jwks_url", "audience", "issuer", "leeway_seconds",
             "jwks_cache_seconds"},
    "store": {"url"},
    "audit": {"checkpoint_key", "checkpoint_seconds", "verify_seconds", "min_retention_days", "write_timeout_seconds",
              "stream_max", "stream_max_seconds", "stream_heartbeat_seconds"},
    "policy": {"dir"},
    "cost": {"per_request", "per_1k_rows", "per_source_second"},
    "log": LOG_KEYS,
    "sources.NAME": {"url", "headers", "seed", "timeout_seconds", "pool_size"},
}

# Sync driver names users write, mapped to the async driver the gateway runs.
_ASYNC_DRIVERS = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "postgresql+pg8000": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mysql+pymysql": "mysql+aiomysql",
    "mysql+mysqldb": "mysql+aiomysql",
    "mysql+aiomysql": "mysql+aiomysql",
    "mariadb": "mysql+aiomysql",
    "mariadb+pymysql": "mysql+aiomysql",
    "mariadb+aiomysql": "mysql+aiomysql",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}


def find_config(explicit: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """`--config`, else $AGENTGATE_CONFIG, else ./agentgate.toml."""
    env = os.environ if environ is None else environ
    return Path(explicit or env.get(ENV_CONFIG) or DEFAULT_CONFIG)


def load_settings(path: Path | str, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and check the whole file; its first fault raises ConfigError."""
    path = Path(path)
    reader = Reader(path, os.environ if environ is None else environ)
    data = reader.expand(_read_toml(path), "")
    base = path.resolve().parent
    reader.only(data, "", CONFIG_KEYS[""])
    server = _server(reader, reader.table(data, "server"))
    sql = _sql(reader, reader.table(data, "sql"))
    approvals = _approvals(reader, reader.table(data, "approvals"))
    auth = _auth(reader, reader.table(data, "auth"), base)
    store = _store(reader, reader.table(data, "store"), base)
    audit = _audit(reader, reader.table(data, "audit"))
    policy = _policy(reader, reader.table(data, "policy"), base)
    cost = _cost(reader, reader.table(data, "cost"))
    limits = _limits(reader, reader.table(data, "limits"))
    # Checked here, after [limits], as they always were: a file with several faults reports the same one first.
    for key in ("header_timeout_seconds", "body_timeout_seconds", "keep_alive_seconds"):
        _finite(reader, reader.table(data, "server"), f"server.{key}", 1.0)  # a timeout of inf or nan would be none
    sources = _sources(reader, reader.table(data, "sources"), base)
    return Settings(path=path.resolve(), server=server, sql=sql, approvals=approvals, auth=auth,
                    store=store, policy=policy, sources=sources, audit=audit, cost=cost, limits=limits,
                    log=log_settings(reader, reader.table(data, "log")))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, None, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"invalid TOML: {exc}") from None


def _server(reader: Reader, s: dict[str, Any]) -> ServerSettings:
    reader.only(s, "server", CONFIG_KEYS["server"])
    server = ServerSettings(
        host=reader.get(s, "server.host", str, "127.0.0.1"),
        port=reader.get(s, "server.port", int, 8080),
        max_body_bytes=reader.positive(s, "server.max_body_bytes", 1_048_576),
        forwarded_allow_ips=_proxies(reader, s),
        header_timeout_seconds=float(reader.positive(s, "server.header_timeout_seconds", 10.0)),
        body_timeout_seconds=float(reader.positive(s, "server.body_timeout_seconds", 30.0)),
        keep_alive_seconds=float(reader.positive(s, "server.keep_alive_seconds", 5.0)),
        max_connections=reader.positive(s, "server.max_connections", 1024),
        max_header_bytes=reader.positive(s, "server.max_header_bytes", 65_536),
        public_url=_public_url(reader, s),
    )
    if not 0 <= server.port <= 65535:
        raise ConfigError(reader.path, "server.port", "must be between 0 and 65535")
    return server


def _sql(reader: Reader, q: dict[str, Any]) -> SqlModeSettings:
    reader.only(q, "sql", CONFIG_KEYS["sql"])
    return SqlModeSettings(enabled=reader.get(q, "sql.enabled", bool, True))


def _approvals(reader: Reader, a: dict[str, Any]) -> ApprovalSettings:
    reader.only(a, "approvals", CONFIG_KEYS["approvals"])
    return ApprovalSettings(ttl_seconds=reader.positive(a, "approvals.ttl_seconds", 3600),
                            max_pending_per_agent=reader.positive(a, "approvals.max_pending_per_agent", 20))


def _store(reader: Reader, st: dict[str, Any], base: Path) -> StoreSettings:
    reader.only(st, "store", CONFIG_KEYS["store"])
    return StoreSettings(url=_sql_url(reader, reader.get(st, "store.url", str, "sqlite:///agentgate.db"),
                                      "store.url", base))


def _audit(reader: Reader, au: dict[str, Any]) -> AuditSettings:
    reader.only(au, "audit", CONFIG_KEYS["audit"])
    key = reader.get(au, "audit.checkpoint_key", str, None)
    if key is not None and len(key.encode()) < 32:
        raise ConfigError(reader.path, "audit.checkpoint_key", "must be at least 32 bytes long")
    verify_seconds = float(reader.get(au, "audit.verify_seconds", (int, float), 300.0))
    if not 0 <= verify_seconds < float("inf"):
        raise ConfigError(reader.path, "audit.verify_seconds", "must be 0 (no background check) or more seconds")
    return AuditSettings(checkpoint_key=Secret(key) if key else None,
                         checkpoint_seconds=float(reader.positive(au, "audit.checkpoint_seconds", 60.0)),
                         verify_seconds=verify_seconds, min_retention_days=_retention(reader, au),
                         write_timeout_seconds=_write_timeout(reader, au), **_streams(reader, au))


def _policy(reader: Reader, p: dict[str, Any], base: Path) -> PolicySettings:
    reader.only(p, "policy", CONFIG_KEYS["policy"])
    return PolicySettings(dir=base / reader.get(p, "policy.dir", str, "policies"))


def _cost(reader: Reader, co: dict[str, Any]) -> CostSettings:
    reader.only(co, "cost", CONFIG_KEYS["cost"])
    prices = {k: float(reader.get(co, f"cost.{k}", (int, float), 0.0)) for k in sorted(CONFIG_KEYS["cost"])}
    for k, v in prices.items():
        if not v >= 0 or v == float("inf"):
            raise ConfigError(reader.path, f"cost.{k}", "must be a number of 0 or more")
    return CostSettings(priced=bool(co), **prices)


def _limits(reader: Reader, li: dict[str, Any]) -> LimitSettings:
    reader.only(li, "limits", CONFIG_KEYS["limits"])
    return LimitSettings(
        failed_auth_per_minute=_finite(reader, li, "limits.failed_auth_per_minute", 120.0),
        failed_auth_burst=reader.positive(li, "limits.failed_auth_burst", 100),
        failed_auth_records_per_minute=reader.positive(li, "limits.failed_auth_records_per_minute", 600),
        failed_auth_clients=reader.positive(li, "limits.failed_auth_clients", 4096),
        summary_seconds=_finite(reader, li, "limits.summary_seconds", 60.0),
        refusal_delay_seconds=_delay(reader, li))


def _sources(reader: Reader, table: dict[str, Any], base: Path) -> dict[str, SourceSettings]:
    sources: dict[str, SourceSettings] = {}
    for name, src in table.items():
        if not isinstance(src, dict):
            raise ConfigError(reader.path, f"sources.{name}", "must be a table")
        sources[name] = _source(reader, name, src, base)
    return sources


def _delay(reader: Reader, li: dict[str, Any]) -> float:
    value = float(reader.get(li, "limits.refusal_delay_seconds", (int, float), 0.25))
    if not 0 <= value <= 60:
        raise ConfigError(reader.path, "limits.refusal_delay_seconds", "must be from 0 (answer at once) to 60")
    return value


def _finite(reader: Reader, table: dict[str, Any], key: str, default: float) -> float:
    value = float(reader.positive(table, key, default))
    if not value < float("inf"):
        raise ConfigError(reader.path, key, "must be a finite number greater than 0")
    return value


WRITE_TIMEOUT_RANGE = (0.1, 60.0)


def _write_timeout(reader: Reader, au: dict[str, Any]) -> float:
    value = float(reader.get(au, "audit.write_timeout_seconds", (int, float), 2.0))
    low, high = WRITE_TIMEOUT_RANGE
    if not low <= value <= high:  # nan and inf too
        raise ConfigError(reader.path, "audit.write_timeout_seconds", f"must be from {low:g} to {high:g} seconds")
    return value


def _streams(reader: Reader, au: dict[str, Any]) -> dict[str, Any]:
    """The admin API's streams of the trail: how many at once per process, how long each, the heartbeat."""
    out = {"stream_max": reader.positive(au, "audit.stream_max", 16)}
    for key, default in (("stream_max_seconds", 3600.0), ("stream_heartbeat_seconds", 15.0)):
        out[key] = _finite(reader, au, f"audit.{key}", default)
    return out


def _retention(reader: Reader, au: dict[str, Any]) -> int:
    days = int(reader.get(au, "audit.min_retention_days", int, 30))
    if not 0 <= days <= 36_500:
        raise ConfigError(reader.path, "audit.min_retention_days", "must be from 0 (no minimum) to 36500 days")
    return days


def _proxies(reader: Reader, s: dict[str, Any]) -> tuple[str, ...]:
    """[server] forwarded_allow_ips, as uvicorn takes it: a list of addresses or networks, or one string of them
    comma-separated, or "*"."""
    raw = reader.get(s, "server.forwarded_allow_ips", (list, str), [])
    items = [p for p in raw.split(",") if p.strip()] if isinstance(raw, str) else raw
    out: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(reader.path, "server.forwarded_allow_ips", "takes addresses or networks as strings")
        item = item.strip()
        if item != "*":
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ConfigError(reader.path, "server.forwarded_allow_ips", f"{item[:60]!r} is not an IP "
                                  'address or network (e.g. 10.0.0.0/8), nor "*"') from None
        out.append(item)
    return tuple(out)


# A host (a name, an IPv4 address or a bracketed IPv6 one) and a port: what may stand in a quoted header value.
_ORIGIN = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?", re.ASCII)


def _public_url(reader: Reader, s: dict[str, Any]) -> str | None:
    """[server] public_url: an http(s) origin (scheme, host, optional port), no path, query or credentials; the
    OAuth metadata lives at the host's root (RFC 9728), so a gateway behind a path prefix cannot be named."""
    raw = reader.get(s, "server.public_url", str, None)
    if raw is None:
        return None
    url = urlsplit(raw.strip())
    try:
        url.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        url = url._replace(netloc="")
    if url.scheme not in ("http", "https") or not url.hostname or not _ORIGIN.fullmatch(url.netloc) \
            or url.path not in ("", "/") or url.query or url.fragment:
        raise ConfigError(reader.path, "server.public_url", "must be an http(s) URL with no path, e.g. "
                          "https://agentgate.example.com")
    return f"{url.scheme}://{url.netloc.lower()}"


def _auth(reader: Reader, a: dict[str, Any], base: Path) -> AuthSettings:
    reader.only(a, "auth", CONFIG_KEYS["auth"])
    algorithms = reader.get(a, "auth.algorithms", list, ["HS256"])
    allowed = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
               "ES256", "ES384", "ES512", "EdDSA"}
    if not algorithms:
        raise ConfigError(reader.path, "auth.algorithms", "must name at least one algorithm")
    for alg in algorithms:
        if not isinstance(alg, str) or alg not in allowed:
            raise ConfigError(reader.path, "auth.algorithms",
                              f"{alg!r} is not allowed (choose from {', '.join(sorted(allowed))})")
    secret = reader.get(a, "auth.secret", str, None)
    key_file = reader.get(a, "auth.public_key_file", str, None)
    jwks_url = reader.get(a, "auth.jwks_url", str, None)
    wants_hs = any(alg.startswith("HS") for alg in algorithms)
    wants_pk = any(not alg.startswith("HS") for alg in algorithms)
    if wants_hs and not secret:
        raise ConfigError(reader.path, "auth.secret", "HS* algorithms need a secret")
    if secret is not None and wants_hs:
        # RFC 7518 3.2: an HMAC key at least as long as the hash output.
        need = max(int(alg[2:]) // 8 for alg in algorithms if alg.startswith("HS"))
        if len(secret.encode()) < need:
            raise ConfigError(reader.path, "auth.secret", f"must be at least {need} bytes long for "
                              f"{', '.join(a for a in algorithms if a.startswith('HS'))}")
    if wants_pk and not (key_file or jwks_url):
        raise ConfigError(reader.path, "auth.algorithms",
                          "RS*/ES*/PS*/EdDSA algorithms need auth.public_key_file or auth.jwks_url")
    key_path = base / key_file if key_file else None
    if key_path is not None and not key_path.is_file():
        raise ConfigError(reader.path, "auth.public_key_file", f"{key_path} does not exist")
    if jwks_url is not None and not jwks_url.startswith(("http://", "https://")):
        raise ConfigError(reader.path, "auth.jwks_url", "must be an http(s) URL")
    leeway = float(reader.get(a, "auth.leeway_seconds", (int, float), 10.0))
    if not 0 <= leeway <= MAX_LEEWAY_SECONDS:
        raise ConfigError(reader.path, "auth.leeway_seconds", f"must be between 0 and {MAX_LEEWAY_SECONDS:g}")
    return AuthSettings(
        algorithms=tuple(algorithms),
        secret=Secret(secret) if secret is not None else None,
        public_key_file=key_path,
        jwks_url=jwks_url,
        audience=reader.get(a, "auth.audience", str, None),
        issuer=reader.get(a, "auth.issuer", str, None),
        leeway_seconds=leeway,
        jwks_cache_seconds=float(reader.positive(a, "auth.jwks_cache_seconds", 300.0)),
    )


def _source(reader: Reader, name: str, src: dict[str, Any], base: Path) -> SourceSettings:
    key = f"sources.{name}"
    reader.only(src, key, CONFIG_KEYS["sources.NAME"])
    url = reader.get(src, f"{key}.url", str, None)
    if not url:
        raise ConfigError(reader.path, f"{key}.url", "is required")
    timeout = float(reader.positive(src, f"{key}.timeout_seconds", 10.0))
    pool_size = reader.positive(src, f"{key}.pool_size", 10)
    if url.startswith(("http://", "https://")):
        headers = reader.get(src, f"{key}.headers", dict, {})
        for hname, hvalue in headers.items():
            if not isinstance(hvalue, str):
                raise ConfigError(reader.path, f"{key}.headers.{hname}", "must be a string")
        if "seed" in src:
            raise ConfigError(reader.path, f"{key}.seed", "only SQLite sources take a seed")
        return SourceSettings(name=name, kind="http", url=url.rstrip("/"),
                              headers={k: Secret(v) for k, v in headers.items()},
                              timeout_seconds=timeout, pool_size=pool_size)
    if url.startswith("file:"):  # a directory whose files answer GETs (connectors/files.py)
        return file_source(reader, name, src, base, timeout, pool_size)
    if "headers" in src:
        raise ConfigError(reader.path, f"{key}.headers", "only HTTP sources take headers")
    async_url = _sql_url(reader, url, f"{key}.url", base)
    seed = reader.get(src, f"{key}.seed", str, None)
    if seed is not None and not async_url.startswith("sqlite"):
        raise ConfigError(reader.path, f"{key}.seed", "only SQLite sources take a seed")
    seed_path = base / seed if seed else None
    if seed_path is not None and not seed_path.is_file():
        raise ConfigError(reader.path, f"{key}.seed", f"{seed_path} does not exist")
    return SourceSettings(name=name, kind="sql", url=async_url, seed=seed_path,
                          timeout_seconds=timeout, pool_size=pool_size)


def _sql_url(reader: Reader, url: str, key: str, base: Path) -> str:
    try:
        parsed: URL = make_url(url)
    except ArgumentError:
        raise ConfigError(reader.path, key, f"not a database URL: {url!r}") from None
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver is None:
        raise ConfigError(reader.path, key, f"unsupported database {parsed.drivername!r} "
                          "(use postgresql://, mysql+pymysql:// or sqlite:///)")
    parsed = parsed.set(drivername=driver)
    if driver.startswith("sqlite"):
        db = parsed.database
        if not db or db == ":memory:":
            raise ConfigError(reader.path, key, "an in-memory SQLite database cannot be shared; name a file")
        if not Path(db).is_absolute():
            parsed = parsed.set(database=str(base / db))
    return parsed.render_as_string(hide_password=False)
