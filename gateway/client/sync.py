"""`Client`: the agents' API from Python, one blocking call per request (httpx underneath)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, cast

import httpx

from gateway.client import calls
from gateway.client.answers import Dataset, Page, ProxyAnswer, expected, page_of, proxied, settled
from gateway.client.base import DEFAULT_TIMEOUT, ClientBase, Token, http_settings
from gateway.client.bounds import ApprovalWait, Paging
from gateway.client.calls import Call, Params, Where
from gateway.client.errors import ApprovalPending, BudgetExceeded, Unreachable

T = TypeVar("T")


class Client(ClientBase):
    """An agent's connection to agentgate.

        with Client("http://127.0.0.1:8080", token) as gate:
            page = gate.query("customers", columns=["id", "name"], where=[["country", "=", "DE"]], limit=10)

    `work_unit`: the X-Work-Unit every read is counted against (a call's `work_unit=` overrides it). Every refusal
    raises its own AgentgateError subclass carrying the request id of its audit record."""

    def __init__(self, url: str, token: Token, *, work_unit: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 headers: Mapping[str, str] | None = None, transport: httpx.BaseTransport | None = None):
        super().__init__(token, work_unit)
        self._http = httpx.Client(transport=transport, **http_settings(url, timeout, headers))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def datasets(self) -> list[Dataset]:
        """The datasets this agent may read, with their columns and classes."""
        return cast(list[Dataset], expected(self._send(calls.listing()))["datasets"])

    def describe(self, name: str) -> Dataset:
        return cast(Dataset, expected(self._send(calls.describing(name))))

    def query(self, name: str, *, columns: Sequence[str] | None = None, where: Where | None = None,
              order_by: Sequence[str] | None = None, limit: int | None = None, cursor: str | None = None,
              work_unit: str | None = None, approval_id: str | None = None, wait_for_approval: float | None = None,
              poll_interval: float = 1.0) -> Page:
        """One page of rows. A dataset that needs a person's approval raises ApprovalPending (its `approval_id`
        serves the same call once approved); with `wait_for_approval=seconds` the call asks again with the id,
        polls bounded, until approved (returns the rows), refused (ApprovalRefused) or the time is up
        (ApprovalTimeout)."""
        body = calls.query_body(columns, where, order_by, limit, cursor)
        unit = self._unit(work_unit)
        return self._read(lambda aid: calls.querying(name, body, unit, aid), page_of, approval_id,
                          wait_for_approval, poll_interval)

    def pages(self, name: str, *, columns: Sequence[str] | None = None, where: Where | None = None,
              order_by: Sequence[str] | None = None, limit: int | None = None, cursor: str | None = None,
              work_unit: str | None = None, max_pages: int = 1000, max_rows: int = 100_000) -> Iterator[Page]:
        """Every page, following the cursors; ReadLimitReached once `max_pages` or `max_rows` is reached with rows
        left (its `next_cursor` resumes). Each page is a read of its own (and its own approval, where one is
        needed: read such datasets with query())."""
        paging = Paging(limit, max_pages, max_rows)
        while True:
            page = self.query(name, columns=columns, where=where, order_by=order_by, limit=paging.next_limit(),
                              cursor=cursor, work_unit=work_unit)
            yield page
            cursor = paging.cursor_after(page)
            if cursor is None:
                return

    def query_all(self, name: str, **options: Any) -> Iterator[dict[str, Any]]:
        """Every row, page after page: pages()'s arguments and bounds."""
        for page in self.pages(name, **options):
            yield from page.rows

    def sql(self, text: str, *, work_unit: str | None = None) -> Page:
        """One SELECT over datasets (SQL mode): one page, no cursor."""
        return page_of(self._send(calls.sql(text, self._unit(work_unit))))

    def proxy(self, name: str, path: str = "", *, query: Params = None, accept: str | None = None,
              work_unit: str | None = None, approval_id: str | None = None, wait_for_approval: float | None = None,
              poll_interval: float = 1.0) -> ProxyAnswer:
        """GET `path` (and `query`) under an HTTP dataset: the source's answer, its status included. Approvals
        as in query()."""
        unit = self._unit(work_unit)
        return self._read(lambda aid: calls.proxying(name, path, query, accept, unit, aid), proxied, approval_id,
                          wait_for_approval, poll_interval)

    def tools(self, style: str = "openai") -> list[dict[str, Any]]:
        """The datasets this agent may read as function-calling tool definitions (see gateway.client.tools)."""
        return self._tools_of(self.datasets(), style)

    def call_tool(self, name: str, arguments: Mapping[str, Any] | str, *, work_unit: str | None = None,
                  approval_id: str | None = None) -> Page:
        """Run a model's call of a tool from tools(): its arguments as the model gave them (JSON text or object)."""
        dataset, keywords = self._tool_call(name, arguments)
        return self.query(dataset, **keywords, work_unit=work_unit, approval_id=approval_id)

    def _read(self, call_for: Callable[[str | None], Call], decode: Callable[[httpx.Response], T],
              approval_id: str | None, wait: float | None, poll_interval: float) -> T:
        waiting = ApprovalWait(wait, poll_interval) if wait is not None else None
        while True:
            try:
                return settled(decode, self._send(call_for(approval_id)), approval_id)
            except ApprovalPending as pending:
                if waiting is None:
                    raise
                approval_id = pending.approval_id
                time.sleep(waiting.pause(pending))
            except BudgetExceeded as spent:
                if waiting is None or approval_id is None:
                    raise
                time.sleep(waiting.pause(spent))

    def _send(self, call: Call) -> httpx.Response:
        try:
            return self._http.send(calls.request_of(self._http, call, self._authorization()))
        except httpx.TransportError as exc:
            raise Unreachable(f"no answer from {self._http.base_url}: {type(exc).__name__}: {exc}") from exc
