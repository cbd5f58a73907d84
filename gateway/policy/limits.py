"""The budget limits of ``policies/budgets.toml``: part of the policy snapshot, parsed and validated with it.

Kept apart from the meter (gateway/services/meter.py), which counts spend in the store: loading a policy needs no
store (an import rule, pyproject.toml's import-linter contracts)."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.common.errors import ConfigError

LIMIT_KEYS = ("requests_per_minute", "rows_per_day")


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int | None = None
    rows_per_day: int | None = None

    @property
    def empty(self) -> bool:
        return self.requests_per_minute is None and self.rows_per_day is None


@dataclass(frozen=True)
class Budgets:
    """budgets.toml: a default and per-agent limits (an agent's keys override the default's)."""

    default: Limits = Limits()
    agents: Mapping[str, Limits] = field(default_factory=dict)

    def for_agent(self, agent: str) -> Limits:
        own = self.agents.get(agent)
        if own is None:
            return self.default
        return Limits(
            requests_per_minute=(own.requests_per_minute if own.requests_per_minute is not None
                                 else self.default.requests_per_minute),
            rows_per_day=own.rows_per_day if own.rows_per_day is not None else self.default.rows_per_day)


NO_BUDGETS = Budgets()


def load_budgets(path: Path) -> Budgets:
    """Parse and validate budgets.toml; no file means no limits."""
    if not path.exists():
        return NO_BUDGETS
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    for key in raw:
        if key not in ("default", "agents"):
            raise ConfigError(path, key, "unknown key (expected [default] and [agents.NAME])")
    default = _limits(path, "default", raw.get("default", {}))
    agents_raw = raw.get("agents", {})
    if not isinstance(agents_raw, dict):
        raise ConfigError(path, "agents", "must be a table of [agents.NAME] tables")
    agents = {name: _limits(path, f"agents.{name}", body) for name, body in agents_raw.items()}
    return Budgets(default=default, agents=agents)


def _limits(path: Path, where: str, body: Any) -> Limits:
    if not isinstance(body, dict):
        raise ConfigError(path, where, "must be a table")
    values: dict[str, int] = {}
    for key, value in body.items():
        if key not in LIMIT_KEYS:
            raise ConfigError(path, f"{where}.{key}", f"unknown key (expected {' or '.join(LIMIT_KEYS)})")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(path, f"{where}.{key}", "must be a whole number, 0 or more")
        values[key] = value
    return Limits(**values)
