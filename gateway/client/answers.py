"""What the gateway answers, as the client hands it on: datasets as the API gives them (typed dicts), a page of
rows, an HTTP dataset's answer; and the one rule that turns any other answer into its exception."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict, TypeVar

import httpx

from gateway.client.errors import AgentgateError, ApprovalRefused, Forbidden, error_from

T = TypeVar("T")

# "class" is a keyword: the functional form keeps the API's own key.
Column = TypedDict("Column", {"name": str, "class": str | None, "type": NotRequired[str | None]})


class Dataset(TypedDict):
    """One entry of GET /v1/datasets, or the answer of GET /v1/datasets/{name}."""

    name: str
    description: str | None
    owner: str
    columns: list[Column]
    max_rows: NotRequired[int]
    approval: NotRequired[str]  # "none" or "required"


@dataclass(frozen=True, slots=True)
class Page:
    """One answer of a query or a SQL read. `masked`: the columns whose values this agent may not see (they come
    back null); `next_cursor`: pass it as `cursor=` with the same arguments for the next page (None: no more)."""

    dataset: str
    columns: list[str]
    rows: list[dict[str, Any]]
    masked: list[str]
    next_cursor: str | None
    request_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The answer as the API sent it (what a tool call hands back to a model)."""
        return {"dataset": self.dataset, "columns": self.columns, "rows": self.rows, "masked": self.masked,
                "next_cursor": self.next_cursor}


@dataclass(frozen=True, slots=True)
class ProxyAnswer:
    """An HTTP dataset's answer, passed through by the gateway: the source's status (a 404 of the source is
    yours), its bytes and content type."""

    status: int
    content: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    request_id: str | None = None

    @property
    def text(self) -> str:
        return httpx.Response(self.status, content=self.content, headers={"content-type": self.content_type}).text

    def json(self) -> Any:
        return json.loads(self.content)


def body_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def expected(response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a 200 answer; the answer's exception otherwise."""
    body = body_of(response)
    if response.status_code != 200:
        raise error_from(response.status_code, body, response.headers)
    if not isinstance(body, dict):
        raise AgentgateError("the gateway's answer is not a JSON object", status=200, code="bad_answer",
                             request_id=response.headers.get("x-request-id"))
    return body


def page_of(response: httpx.Response) -> Page:
    body = expected(response)
    return Page(dataset=str(body.get("dataset", "")), columns=list(body.get("columns") or []),
                rows=list(body.get("rows") or []), masked=list(body.get("masked") or []),
                next_cursor=body.get("next_cursor"), request_id=response.headers.get("x-request-id"))


def proxied(response: httpx.Response) -> ProxyAnswer:
    """The source's answer, or the gateway's own refusal raised. A refusal is told from a source's answer by
    its error body naming this answer's request id, which no source can know."""
    request_id = response.headers.get("x-request-id")
    if response.status_code != 200 and "json" in response.headers.get("content-type", ""):
        body = body_of(response)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and request_id and error.get("request_id") == request_id:
            raise error_from(response.status_code, body, response.headers)
    passed = {k: v for k, v in response.headers.items() if k not in ("content-type", "content-length")}
    return ProxyAnswer(status=response.status_code, content=response.content,
                       content_type=response.headers.get("content-type", "application/octet-stream"),
                       headers=passed, request_id=request_id)


def settled(decode: Callable[[httpx.Response], T], response: httpx.Response, approval_id: str | None) -> T:
    """`decode(response)`; a 403 to a read that carried an approval id is that approval refused."""
    try:
        return decode(response)
    except Forbidden as exc:
        if approval_id is None or isinstance(exc, ApprovalRefused):
            raise
        raise ApprovalRefused(exc.message, approval_id=approval_id, status=exc.status, code=exc.code,
                              request_id=exc.request_id, retry_after=exc.retry_after, body=exc.body) from exc
