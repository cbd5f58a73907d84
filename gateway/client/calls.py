"""The requests of the agents' API, built once for the sync and the async client: method, path, body, headers.

A query body holds only the keys given, so the same arguments make the same body every time: an approval
covers one body, and a retry with its id must send that body again."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

# What a where term is: [column, operator, value], or [column, "is null"] / [column, "is not null"].
Where = Sequence[Sequence[Any]]
Params = Mapping[str, str | Sequence[str]] | str | None


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    path: str
    json: dict[str, Any] | None = None
    params: Params = None
    headers: dict[str, str] = field(default_factory=dict)


def dataset_path(name: str) -> str:
    # A name is one path segment: a slash in it is sent encoded, never as a separator.
    return f"/v1/datasets/{quote(name, safe='')}"


def listing() -> Call:
    return Call("GET", "/v1/datasets")


def describing(name: str) -> Call:
    return Call("GET", dataset_path(name))


def query_body(columns: Sequence[str] | None = None, where: Where | None = None,
               order_by: Sequence[str] | None = None, limit: int | None = None,
               cursor: str | None = None) -> dict[str, Any]:
    given = {"columns": None if columns is None else list(columns),
             "where": None if where is None else [list(term) for term in where],
             "order_by": None if order_by is None else list(order_by), "limit": limit, "cursor": cursor}
    return {key: value for key, value in given.items() if value is not None}


def querying(name: str, body: dict[str, Any], work_unit: str | None, approval_id: str | None) -> Call:
    return Call("POST", f"{dataset_path(name)}/query", json=body, headers=read_headers(work_unit, approval_id))


def sql(text: str, work_unit: str | None) -> Call:
    return Call("POST", "/v1/sql", json={"sql": text}, headers=read_headers(work_unit, None))


def proxying(name: str, path: str, query: Params, accept: str | None, work_unit: str | None,
             approval_id: str | None) -> Call:
    headers = read_headers(work_unit, approval_id)
    if accept:
        headers["Accept"] = accept
    return Call("GET", f"{dataset_path(name)}/proxy/{path.lstrip('/')}", params=query, headers=headers)


def read_headers(work_unit: str | None, approval_id: str | None) -> dict[str, str]:
    headers = {}
    if work_unit:
        headers["X-Work-Unit"] = work_unit
    if approval_id:
        headers["X-Approval-Id"] = approval_id
    return headers


def request_of(http: httpx.Client | httpx.AsyncClient, call: Call, authorization: str) -> httpx.Request:
    return http.build_request(call.method, call.path, json=call.json, params=call.params,
                              headers={"Authorization": authorization, **call.headers})
