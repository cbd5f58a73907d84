"""Reading one parsed agentgate.toml: ``${ENV}`` expansion and typed accessors that turn every fault into a
ConfigError naming the file and the key."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.common.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
               dict: "a table"}


class Reader:
    """Small typed accessors that turn every fault into a ConfigError."""

    def __init__(self, path: Path, environ: Mapping[str, str]):
        self.path, self.environ = path, environ

    def expand(self, value: Any, key: str) -> Any:
        if isinstance(value, str):
            def sub(m: re.Match[str]) -> str:
                name, default = m.group(1), m.group(2)
                if name in self.environ:
                    return self.environ[name]
                if default is not None:
                    return default
                raise ConfigError(self.path, key or None, f"environment variable {name} is not set")
            return _ENV_REF.sub(sub, value)
        if isinstance(value, dict):
            return {k: self.expand(v, f"{key}.{k}" if key else k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.expand(v, key) for v in value]
        return value

    def only(self, table: dict[str, Any], key: str, allowed: set[str]) -> None:
        for k in table:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                raise ConfigError(self.path, where, f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def table(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(self.path, key, "must be a table")
        return value

    def get(self, table: dict[str, Any], key: str, kind: Any, default: Any) -> Any:
        name = key.rsplit(".", 1)[-1]
        if name not in table:
            return default
        value = table[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            expected = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            raise ConfigError(self.path, key, f"must be {expected}, not {_KIND_NAMES.get(type(value), 'that')}")
        return value

    def positive(self, table: dict[str, Any], key: str, default: Any) -> Any:
        value = self.get(table, key, (int, float) if isinstance(default, float) else int, default)
        if value <= 0:
            raise ConfigError(self.path, key, "must be greater than 0")
        return value
