"""agentgate.toml's [log] table: how `serve` writes its log (settings.LogSettings). Beside loader.py, which calls
it as it calls its own parser of each table."""

from __future__ import annotations

from typing import Any

from gateway.common.errors import ConfigError
from gateway.config.reader import Reader
from gateway.config.settings import LogSettings

LOG_KEYS = {"format", "level", "access"}
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")  # serve --log-level's choices


def log_settings(reader: Reader, table: dict[str, Any]) -> LogSettings:
    reader.only(table, "log", LOG_KEYS)
    return LogSettings(format=_one_of(reader, table, "format", LOG_FORMATS, "text"),
                       level=_one_of(reader, table, "level", LOG_LEVELS, None),
                       access=reader.get(table, "log.access", bool, True))


def _one_of(reader: Reader, table: dict[str, Any], name: str, allowed: tuple[str, ...], default: str | None
            ) -> Any:
    value = reader.get(table, f"log.{name}", str, default)
    if value is not None and value not in allowed:  # case and all: what a collector is told is exact
        raise ConfigError(reader.path, f"log.{name}", f"{value[:40]!r} is not one of: {', '.join(allowed)}")
    return value
