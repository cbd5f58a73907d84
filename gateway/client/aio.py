"""`AsyncClient`: `Client` for asyncio — the same calls, awaited; pages and rows as async iterators."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
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


class AsyncClient(ClientBase):
    """An agent's connection to agentgate, for asyncio. See `Client` for every call.

        async with AsyncClient("http://127.0.0.1:8080", token) as gate:
            async for row in gate.query_all("customers", columns=["id", "name"], limit=100):
                ..."""

    def __init__(self, url: str, token: Token, *, work_unit: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 headers: Mapping[str, str] | None = None, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(token, work_unit)
        self._http = httpx.AsyncClient(transport=transport, **http_settings(url, timeout, headers))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def datasets(self) -> list[Dataset]:
        return cast(list[Dataset], expected(await self._send(calls.listing()))["datasets"])

    async def describe(self, name: str) -> Dataset:
        return cast(Dataset, expected(await self._send(calls.describing(name))))

    async def query(self, name: str, *, columns: Sequence[str] | None = None, where: Where | None = None,
                    order_by: Sequence[str] | None = None, limit: int | None = None, cursor: str | None = None,
                    work_unit: str | None = None, approval_id: str | None = None,
                    wait_for_approval: float | None = None, poll_interval: float = 1.0) -> Page:
        body = calls.query_body(columns, where, order_by, limit, cursor)
        unit = self._unit(work_unit)
        return await self._read(lambda aid: calls.querying(name, body, unit, aid), page_of, approval_id,
                                wait_for_approval, poll_interval)

    async def pages(self, name: str, *, columns: Sequence[str] | None = None, where: Where | None = None,
                    order_by: Sequence[str] | None = None, limit: int | None = None, cursor: str | None = None,
                    work_unit: str | None = None, max_pages: int = 1000,
                    max_rows: int = 100_000) -> AsyncIterator[Page]:
        paging = Paging(limit, max_pages, max_rows)
        while True:
            page = await self.query(name, columns=columns, where=where, order_by=order_by,
                                    limit=paging.next_limit(), cursor=cursor, work_unit=work_unit)
            yield page
            cursor = paging.cursor_after(page)
            if cursor is None:
                return

    async def query_all(self, name: str, **options: Any) -> AsyncIterator[dict[str, Any]]:
        async for page in self.pages(name, **options):
            for row in page.rows:
                yield row

    async def sql(self, text: str, *, work_unit: str | None = None) -> Page:
        return page_of(await self._send(calls.sql(text, self._unit(work_unit))))

    async def proxy(self, name: str, path: str = "", *, query: Params = None, accept: str | None = None,
                    work_unit: str | None = None, approval_id: str | None = None,
                    wait_for_approval: float | None = None, poll_interval: float = 1.0) -> ProxyAnswer:
        unit = self._unit(work_unit)
        return await self._read(lambda aid: calls.proxying(name, path, query, accept, unit, aid), proxied,
                                approval_id, wait_for_approval, poll_interval)

    async def tools(self, style: str = "openai") -> list[dict[str, Any]]:
        return self._tools_of(await self.datasets(), style)

    async def call_tool(self, name: str, arguments: Mapping[str, Any] | str, *, work_unit: str | None = None,
                        approval_id: str | None = None) -> Page:
        dataset, keywords = self._tool_call(name, arguments)
        return await self.query(dataset, **keywords, work_unit=work_unit, approval_id=approval_id)

    async def _read(self, call_for: Callable[[str | None], Call], decode: Callable[[httpx.Response], T],
                    approval_id: str | None, wait: float | None, poll_interval: float) -> T:
        waiting = ApprovalWait(wait, poll_interval) if wait is not None else None
        while True:
            try:
                return settled(decode, await self._send(call_for(approval_id)), approval_id)
            except ApprovalPending as pending:
                if waiting is None:
                    raise
                approval_id = pending.approval_id
                await asyncio.sleep(waiting.pause(pending))
            except BudgetExceeded as spent:
                if waiting is None or approval_id is None:
                    raise
                await asyncio.sleep(waiting.pause(spent))

    async def _send(self, call: Call) -> httpx.Response:
        try:
            return await self._http.send(calls.request_of(self._http, call, self._authorization()))
        except httpx.TransportError as exc:
            raise Unreachable(f"no answer from {self._http.base_url}: {type(exc).__name__}: {exc}") from exc
