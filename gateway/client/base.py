"""What the sync and the async client hold alike: the token, the default work unit, the HTTP client's settings,
and the tool names handed out by the last tools() (a tool call names its tool, not its dataset)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from gateway.client import tools
from gateway.client.answers import Dataset

# A token, or what returns the current one (a long-running agent whose tokens expire hands in its refresher).
Token = str | Callable[[], str]
USER_AGENT = f"agentgate-client python-httpx/{httpx.__version__}"
DEFAULT_TIMEOUT = 30.0


class ClientBase:
    def __init__(self, token: Token, work_unit: str | None):
        self._token = token
        self.work_unit = work_unit
        self._tool_datasets: dict[str, str] = {}

    def _authorization(self) -> str:
        return f"Bearer {self._token() if callable(self._token) else self._token}"

    def _unit(self, work_unit: str | None) -> str | None:
        return work_unit if work_unit is not None else self.work_unit

    def _tools_of(self, datasets: Sequence[Dataset], style: str) -> list[dict[str, Any]]:
        definitions, self._tool_datasets = tools.definitions(datasets, style)
        return definitions

    def _tool_call(self, name: str, arguments: Mapping[str, Any] | str) -> tuple[str, dict[str, Any]]:
        """The dataset a tool reads and the query() keywords of its call."""
        dataset = self._tool_datasets.get(name)
        if dataset is None:
            raise ValueError(f"no tool {name!r}: call tools() first, and use a name it returned")
        return dataset, tools.query_arguments(arguments)


def http_settings(url: str, timeout: float, headers: Mapping[str, str] | None) -> dict[str, Any]:
    """The keywords of httpx.Client / httpx.AsyncClient. Redirects are not followed: the gateway sends none, and
    a token should not travel to wherever a redirect points."""
    return {"base_url": url, "timeout": timeout, "follow_redirects": False,
            "headers": {"User-Agent": USER_AGENT, **(headers or {})}}
