"""agentgate.toml and datasets.toml: every fault is one line naming the file, the key and the fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.common.errors import ConfigError
from gateway.config import SourceSettings, find_config, load_settings
from gateway.policy import load_catalog

pytestmark = pytest.mark.unit

SECRET = "s" * 40
BASE = f"""
[auth]
secret = "{SECRET}"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agentgate.toml"
    path.write_text(text)
    return path


def test_defaults_env_expansion_and_relative_paths(tmp_path: Path) -> None:
    cfg = write(tmp_path, """
[auth]
secret = "${MY_SECRET}"
audience = "${AUD:-agentgate}"

[store]
url = "sqlite:///var/store.db"

[sources.crm]
url = "postgresql://app@db.internal/crm"

[sources.shop]
url = "mysql+pymysql://root@127.0.0.1/shop"

[sources.local]
url = "sqlite:///data/local.db"

[sources.tickets]
url = "https://tickets.internal/api/"
headers = { Authorization = "Bearer ${TOKEN}" }
""")
    s = load_settings(cfg, {"MY_SECRET": SECRET, "TOKEN": "t0ken"})
    assert s.auth.secret is not None and s.auth.secret.reveal() == SECRET
    assert SECRET not in repr(s.auth)
    assert s.auth.audience == "agentgate" and s.auth.algorithms == ("HS256",)
    assert s.server.port == 8080 and s.server.max_body_bytes == 1_048_576
    assert s.store.url == f"sqlite+aiosqlite:///{tmp_path}/var/store.db"
    assert s.policy.dir == tmp_path / "policies"
    assert s.sources["crm"].url == "postgresql+asyncpg://app@db.internal/crm"
    assert s.sources["shop"].url == "mysql+aiomysql://root@127.0.0.1/shop"
    assert s.sources["local"].url == f"sqlite+aiosqlite:///{tmp_path}/data/local.db"
    tickets = s.sources["tickets"]
    assert tickets.kind == "http" and tickets.url == "https://tickets.internal/api"
    assert tickets.headers["Authorization"].reveal() == "Bearer t0ken"


@pytest.mark.parametrize(("text", "key", "fault"), [
    ("[server\n", None, "invalid TOML"),
    (BASE + "[server]\nprot = 1\n", "server.prot", "unknown key"),
    (BASE + "[servers]\n", "servers", "unknown key"),
    (BASE + "[server]\nport = \"80\"\n", "server.port", "must be an integer, not a string"),
    (BASE + "[server]\nmax_body_bytes = 0\n", "server.max_body_bytes", "greater than 0"),
    ("[auth]\nsecret = \"${NOPE_NOT_SET}\"\n", "auth.secret", "environment variable NOPE_NOT_SET is not set"),
    ("[auth]\nsecret = \"short\"\n", "auth.secret", "at least 32 bytes"),
    ("[auth]\nalgorithms = [\"none\"]\n", "auth.algorithms", "'none' is not allowed"),
    ("[auth]\nalgorithms = [\"RS256\"]\n", "auth.algorithms", "need auth.public_key_file or auth.jwks_url"),
    ("[auth]\nalgorithms = [\"RS256\"]\npublic_key_file = \"nope.pem\"\n", "auth.public_key_file", "does not exist"),
    ("[auth]\nalgorithms = [\"HS512\"]\nsecret = \"" + "s" * 40 + "\"\n", "auth.secret", "at least 64 bytes"),
    (BASE + "[auth.x]\n", "auth.x", "unknown key"),
    (BASE + "[auth]\n", None, "invalid TOML"),
    (BASE.replace("[auth]", "[auth]\nleeway_seconds = 120"), "auth.leeway_seconds", "between 0 and 30"),
    (BASE + "[store]\nurl = \"oracle://x\"\n", "store.url", "unsupported database"),
    (BASE + "[store]\nurl = \"sqlite:///:memory:\"\n", "store.url", "in-memory"),
    (BASE + "[sources.a]\n", "sources.a.url", "is required"),
    (BASE + "[sources.a]\nurl = \"sqlite:///a.db\"\nheaders = {X = \"1\"}\n", "sources.a.headers", "only HTTP"),
    (BASE + "[sources.a]\nurl = \"sqlite:///a.db\"\nseed = \"none.sql\"\n", "sources.a.seed", "does not exist"),
    (BASE + "[sources.a]\nurl = \"postgresql://x/y\"\nseed = \"s.sql\"\n", "sources.a.seed", "only SQLite"),
    (BASE + "[sources.a]\nurl = \"sqlite:///a.db\"\npoolsize = 3\n", "sources.a.poolsize", "unknown key"),
])
def test_invalid_config_is_one_clear_line(tmp_path: Path, text: str, key: str | None, fault: str) -> None:
    cfg = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg, {})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(str(cfg))
    if key is not None:
        assert f": {key}: " in message
    assert fault in message


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.toml", {})


def test_config_lookup_order(tmp_path: Path) -> None:
    assert find_config("x.toml", {"AGENTGATE_CONFIG": "y.toml"}) == Path("x.toml")
    assert find_config(None, {"AGENTGATE_CONFIG": "y.toml"}) == Path("y.toml")
    assert find_config(None, {}) == Path("agentgate.toml")


SOURCES = {
    "crm": SourceSettings(name="crm", kind="sql", url="sqlite+aiosqlite:///x.db"),
    "tickets": SourceSettings(name="tickets", kind="http", url="https://t"),
}


@pytest.mark.parametrize(("text", "key", "fault"), [
    ('[datasets.c]\nsource = "crm"\ntable = "c"\n', "datasets.c.owner", "every dataset names an owner"),
    ('[datasets.c]\nsource = "crm"\ntable = "c"\nowner = "  "\n', "datasets.c.owner", "names an owner"),
    ('[datasets.c]\nsource = "erp"\ntable = "c"\nowner = "o"\n', "datasets.c.source", "unknown source 'erp'"),
    ('[datasets.c]\nsource = "crm"\nowner = "o"\n', "datasets.c.table", "is required"),
    ('[datasets.c]\nsource = "tickets"\nowner = "o"\n', "datasets.c.path", "is required"),
    ('[datasets.c]\nsource = "tickets"\npath = "/../x"\nowner = "o"\n', "datasets.c.path", "absolute path"),
    ('[datasets.c]\nsource = "crm"\ntable = "a.b.c"\nowner = "o"\n', "datasets.c.table", "schema.table"),
    ('[datasets.c]\nsource = "crm"\ntable = "c"\nowner = "o"\nmax_rows = 0\n', "datasets.c.max_rows", "1 to"),
    ('[datasets.c]\nsource = "crm"\ntable = "c"\nowner = "o"\napproval = "maybe"\n', "datasets.c.approval",
     '"none" or "required"'),
    ('[datasets.c]\nsource = "crm"\ntable = "c"\nowner = "o"\ncolour = 1\n', "datasets.c.colour", "unknown key"),
    ('[datasets.c]\nsource = "crm"\ntable = "c"\nowner = "o"\n[datasets.c.columns.e]\nclass = ""\n',
     "datasets.c.columns.e.class", "class name"),
    ('[datasets."bad name"]\nsource = "crm"\ntable = "c"\nowner = "o"\n', 'datasets.bad name', "dataset name"),
    ("[tables]\n", "tables", "unknown key"),
])
def test_invalid_catalog_is_one_clear_line(tmp_path: Path, text: str, key: str, fault: str) -> None:
    path = tmp_path / "datasets.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_catalog(path, SOURCES)
    assert f"{path}: {key}: " in str(err.value) and fault in str(err.value)
