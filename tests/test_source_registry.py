"""The registry of source kinds (gateway/sources/registry.py): every URL agentgate.toml accepts opens as the kind
it names, a scheme no kind takes is refused in the config's words, and the two loops open their own kind only."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from connectors.http import HttpConnector
from connectors.sql import SqlConnector
from gateway.common.errors import ConfigError
from gateway.config import Secret, SourceSettings, load_settings
from gateway.sources.opening import open_http_sources, open_sources
from gateway.sources.registry import SCHEMES, opener_for
from tests.conftest import write_workspace

pytestmark = pytest.mark.unit

# Every form of URL the config takes for a source, and whether it is a table source (else an HTTP one).
ACCEPTED = {
    "postgres://u@db/x": True,
    "postgresql://u@db/x": True,
    "postgresql+psycopg2://u@db/x": True,
    "postgresql+asyncpg://u@db/x": True,
    "mysql://u@db/x": True,
    "mysql+pymysql://u@db/x": True,
    "mariadb://u@db/x": True,
    "sqlite:///source.db": True,
    "sqlite+aiosqlite:///source.db": True,
    "http://api.example.com/v1": False,
    "https://api.example.com": False,
    "file:.": False,  # a directory (relative to the config's folder) whose files answer GETs
}


def test_the_schemes_are_the_sql_backends_http_and_files() -> None:
    assert sorted(SCHEMES) == ["file", "http", "https", "mariadb", "mysql", "postgresql", "sqlite"]
    for scheme, opener in SCHEMES.items():
        assert (opener.tables is None) != (opener.http is None), scheme


@pytest.mark.parametrize("url", list(ACCEPTED))
def test_every_url_the_config_accepts_opens_as_its_kind(url: str, tmp_path: Path) -> None:
    settings = load_settings(write_workspace(tmp_path, source_url=url))
    src = settings.sources["main"]
    opener = opener_for("main", src)
    assert (opener.tables is not None) is ACCEPTED[url]
    assert src.kind == ("sql" if ACCEPTED[url] else "http")  # the catalog's view of the kind agrees


def test_a_scheme_no_kind_takes_is_refused_in_the_configs_words() -> None:
    with pytest.raises(ConfigError) as caught:
        opener_for("crm", SourceSettings(name="crm", kind="sql", url="oracle+oracledb://u@db/x"))
    assert str(caught.value) == ("agentgate.toml: sources.crm.url: unsupported database 'oracle+oracledb' "
                                 "(use postgresql://, mysql+pymysql:// or sqlite:///)")
    with pytest.raises(ConfigError, match=r"sources\.crm\.url: not a database URL: 'db\.example\.com'"):
        opener_for("crm", SourceSettings(name="crm", kind="sql", url="db.example.com"))
    with pytest.raises(ConfigError, match="unsupported database 'ftp'"):
        open_http_sources({"crm": SourceSettings(name="crm", kind="http", url="ftp://files.example.com")})


async def test_each_loop_opens_its_own_kind(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    seed = tmp_path / "seed.sql"
    seed.write_text("CREATE TABLE t (id INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);")
    settings = {
        "db": SourceSettings(name="db", kind="sql", url=f"sqlite+aiosqlite:///{tmp_path}/db.sqlite", seed=seed),
        "api": SourceSettings(name="api", kind="http", url="https://api.example.com",
                              headers={"Authorization": Secret("Bearer s3cret")}),
    }
    with caplog.at_level(logging.INFO, logger="agentgate.sources"):
        tables = open_sources(settings)
    https = open_http_sources(settings)
    try:
        assert list(tables) == ["db"] and isinstance(tables["db"], SqlConnector)
        assert list(https) == ["api"] and isinstance(https["api"], HttpConnector)
        assert caplog.messages == [f"created source 'db' from its seed {seed}"]
        assert [c.name for c in await tables["db"].columns("t")] == ["id"]
    finally:
        for source in [*tables.values(), *https.values()]:
            await source.close()
