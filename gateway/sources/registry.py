"""The kinds of source, by the scheme of their URL: how each configured source is opened.

A scheme maps to an Opener that makes either a TableSource (its datasets name a `table`) or an HttpSource (its
datasets name a `path`). The scheme of a SQL source is its SQLAlchemy URL's backend (`postgresql+asyncpg://` is
`postgresql`), as gateway/config leaves it after accepting the URL; an HTTP source's is `http` or `https`, or
`file` (a directory whose files answer GETs).

A new kind of source is one class offering TableSource or HttpSource (connectors/base.py) and one entry in
SCHEMES here (and, for a URL agentgate.toml does not take yet, its acceptance in gateway/config). The core never
names a connector class.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from connectors.base import HttpSource, TableSource
from connectors.files import FileSource
from connectors.http import HttpConnector
from connectors.sql import SqlConnector, make_engine, seed_sqlite
from gateway.common.errors import ConfigError
from gateway.config import SourceSettings

log = logging.getLogger("agentgate.sources")

# Where a fault in a source's settings is reported: they come from agentgate.toml, which checks every URL first.
CONFIG = "agentgate.toml"


@dataclass(frozen=True, slots=True)
class Opener:
    """How the sources of one URL scheme are opened: as table sources, or as HTTP sources (one of the two)."""

    tables: Callable[[str, SourceSettings], TableSource] | None = None
    http: Callable[[str, SourceSettings], HttpSource] | None = None


def open_sql(name: str, src: SourceSettings) -> SqlConnector:
    """One pooled engine, its pool (`pool_size`) the only one every read of the source uses; a SQLite source with
    a seed is created on first run (blocking: called off the event loop)."""
    if src.seed is not None and seed_sqlite(src.url, src.seed):
        log.info("created source %r from its seed %s", name, src.seed)
    engine = make_engine(src.url, timeout_seconds=src.timeout_seconds, pool_size=src.pool_size,
                         read_only=src.read_only)
    return SqlConnector(name, engine, timeout_seconds=src.timeout_seconds)


def open_http(name: str, src: SourceSettings) -> HttpConnector:
    """One pooled HTTP client, its configured headers (credentials) sent on every request."""
    return HttpConnector(name, src.url, headers={k: v.reveal() for k, v in src.headers.items()},
                         timeout_seconds=src.timeout_seconds, pool_size=src.pool_size)


def open_files(name: str, src: SourceSettings) -> FileSource:
    """A directory whose files answer GETs; gateway/config made the URL `file://` and the absolute directory."""
    return FileSource(name, Path(src.url.removeprefix("file://")), timeout_seconds=src.timeout_seconds,
                      pool_size=src.pool_size)


_SQL = Opener(tables=open_sql)
_HTTP = Opener(http=open_http)

SCHEMES: Mapping[str, Opener] = {
    "postgresql": _SQL,
    "mysql": _SQL,
    "mariadb": _SQL,
    "sqlite": _SQL,
    "http": _HTTP,
    "https": _HTTP,
    "file": Opener(http=open_files),
}


def opener_for(name: str, src: SourceSettings) -> Opener:
    """The Opener of source `name`'s URL scheme; ConfigError, in agentgate.toml's words, for a scheme no kind
    takes."""
    head, sep, _ = src.url.partition("://")
    opener = SCHEMES.get(head.split("+", 1)[0]) if sep else None
    if opener is not None:
        return opener
    key = f"sources.{name}.url"
    if not sep:
        raise ConfigError(CONFIG, key, f"not a database URL: {src.url!r}")
    raise ConfigError(CONFIG, key, f"unsupported database {head!r} (use postgresql://, mysql+pymysql:// or sqlite:///)")
