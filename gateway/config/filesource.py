"""agentgate.toml's file sources: `[sources.NAME] url = "file:DIR"`, a directory whose files answer GETs as an HTTP
source's would (connectors/files.py). Beside loader.py, which calls it for a source whose URL says `file:`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.common.errors import ConfigError
from gateway.config.reader import Reader
from gateway.config.settings import SourceSettings


def file_source(reader: Reader, name: str, src: dict[str, Any], base: Path, timeout: float,
                pool_size: int) -> SourceSettings:
    """`file:DIR` (DIR relative to the config's folder) or `file:///DIR`, an existing directory other than `/`; its
    URL becomes `file://` and its absolute, resolved path (gateway/sources/registry.py opens it)."""
    key = f"sources.{name}"
    for extra in ("headers", "seed"):
        if extra in src:
            raise ConfigError(reader.path, f"{key}.{extra}", f"a file source takes no {extra}")
    raw = src["url"].removeprefix("file:")
    if raw.startswith("//") and not raw.startswith("///"):
        raise ConfigError(reader.path, f"{key}.url", "a file URL names no host: file:///DIR or file:DIR")
    folder = base / raw.removeprefix("//")  # an absolute path stays as it is
    if not raw.strip("/") or not folder.is_dir():
        raise ConfigError(reader.path, f"{key}.url", f"{folder} is not a directory")
    return SourceSettings(name=name, kind="http", url=f"file://{folder.resolve()}", timeout_seconds=timeout,
                          pool_size=pool_size)
