"""The typed settings agentgate.toml becomes: one frozen dataclass per table, with its defaults.

gateway/config/loader.py reads the file into these; everything else only reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url


class Secret:
    """A string that never shows itself in a repr or a log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1_048_576
    # Proxies whose X-Forwarded-For names the caller (addresses or networks; "*" for every peer). Empty: the
    # header is never trusted, the peer's own address is the caller.
    forwarded_allow_ips: tuple[str, ...] = ()
    # Connections (gateway/runtime/connections.py): a request's line and headers must arrive within
    # header_timeout_seconds, its body within body_timeout_seconds after them; an idle keep-alive connection is
    # closed after keep_alive_seconds; at most max_connections per process; headers over max_header_bytes: 431.
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    keep_alive_seconds: float = 5.0
    max_connections: int = 1024
    max_header_bytes: int = 65_536
    # The gateway's URL as clients reach it (scheme://host[:port]): the protected resource OAuth metadata
    # names (transports/wellknown.py). None: taken from each request's scheme and Host header.
    public_url: str | None = None


@dataclass(frozen=True)
class LimitSettings:
    """Requests refused before any token verified, per client (gateway/services/ratelimit.py)."""

    # Generous enough for a client that retries a bad token, or a security team probing its own gateway with a
    # few dozen forged tokens; a flood meets the rate at once.
    failed_auth_per_minute: float = 120.0  # answered as ever (401, 413) and recorded one by one; beyond: 429
    failed_auth_burst: int = 100  # of them at once
    failed_auth_records_per_minute: int = 600  # all clients together: recorded one by one; beyond, folded
    failed_auth_clients: int = 4096  # clients tracked at once; beyond, new ones share one bucket and summary
    summary_seconds: float = 60.0  # the interval of each client's summary record
    refusal_delay_seconds: float = 0.25  # a 429 of this limit is answered after this (0: at once)


@dataclass(frozen=True)
class SqlModeSettings:
    enabled: bool = True


@dataclass(frozen=True)
class ApprovalSettings:
    ttl_seconds: int = 3600
    max_pending_per_agent: int = 20  # pending approvals one agent may have open; beyond, 429


@dataclass(frozen=True)
class AuthSettings:
    algorithms: tuple[str, ...] = ("HS256",)
    secret: Secret | None = None
    public_key_file: Path | None = None
    jwks_url: str | None = None
    audience: str | None = None
    issuer: str | None = None
    leeway_seconds: float = 10.0
    jwks_cache_seconds: float = 300.0


@dataclass(frozen=True)
class StoreSettings:
    url: str = "sqlite+aiosqlite:///agentgate.db"

    @property
    def dialect(self) -> str:
        return make_url(self.url).get_backend_name()


@dataclass(frozen=True)
class AuditSettings:
    checkpoint_key: Secret | None = None  # HMAC key for signed checkpoints and the prune anchor
    checkpoint_seconds: float = 60.0
    verify_seconds: float = 300.0  # a full check of the chain in the background this often; 0: never
    min_retention_days: int = 30  # `audit prune` keeps at least this many days of records
    # The longest a request waits for its audit record to be stored before it is answered 503 (and the longest
    # the store's pool, connects and, on SQLite, the write lock are waited for): a store silently cut off
    # costs an agent this much, not the TCP timeouts'.
    write_timeout_seconds: float = 2.0
    # GET /admin/v1/audit/stream (gateway/audit/follow.py: Streams): open at once per process, the longest one
    # lasts (then it ends cleanly; its client resumes with after=), and the empty line sent while nothing is.
    stream_max: int = 16
    stream_max_seconds: float = 3600.0
    stream_heartbeat_seconds: float = 15.0


@dataclass(frozen=True)
class CostSettings:
    """Prices for `agentgate usage`: money per request, per 1,000 rows, per second of source time."""

    per_request: float = 0.0
    per_1k_rows: float = 0.0
    per_source_second: float = 0.0
    priced: bool = False  # a [cost] price is set: usage shows cost per unit

    def cost(self, requests: int, rows: int, source_ms: float) -> float:
        return round(requests * self.per_request + rows / 1000 * self.per_1k_rows
                     + source_ms / 1000 * self.per_source_second, 6)


@dataclass(frozen=True)
class LogSettings:
    """How `serve` writes its log to stderr (gateway/cli/logs.py): one entry a line, for a person or a collector."""

    format: str = "text"  # "text": a person reads it; "json": one object a line (common/logformat.py)
    level: str | None = None  # "debug", "info", "warning" or "error"; None: serve --log-level's (info)
    access: bool = True  # one line per HTTP request (logger agentgate.access, transports/accesslog.py)


@dataclass(frozen=True)
class PolicySettings:
    dir: Path = Path("policies")


@dataclass(frozen=True)
class SourceSettings:
    name: str
    kind: str  # "sql" or "http"
    url: str  # async SQLAlchemy URL, http(s) base URL, or file:// and a directory (an HTTP source too)
    headers: Mapping[str, Secret] = field(default_factory=dict)
    seed: Path | None = None  # SQLite only: SQL script that creates the file on first run
    timeout_seconds: float = 10.0
    pool_size: int = 10
    read_only: bool = True


@dataclass(frozen=True)
class Settings:
    path: Path
    server: ServerSettings
    sql: SqlModeSettings
    approvals: ApprovalSettings
    auth: AuthSettings
    store: StoreSettings
    policy: PolicySettings
    sources: Mapping[str, SourceSettings]
    audit: AuditSettings = field(default_factory=AuditSettings)
    cost: CostSettings = field(default_factory=CostSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    log: LogSettings = field(default_factory=LogSettings)
