"""Human approvals: a read of a dataset with ``approval = "required"`` waits for a person.

A read without ``X-Approval-Id`` opens a pending approval (202 with its id). A
person decides it (``agentgate approve|deny ID --by WHO`` or the admin API);
an approval serves the agent and the dataset it was asked for, from the
decision until ``[approvals] ttl_seconds`` later. Approvals live in the store,
so every replica and the command line share them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.audit import format_time, now
from gateway.errors import Unavailable
from gateway.store import approvals as table

STATUSES = ("pending", "approved", "denied")


@dataclass(frozen=True)
class Approval:
    id: str
    agent: str
    dataset: str
    owner: str | None
    requested_at: dt.datetime
    status: str
    decided_by: str | None
    decided_at: dt.datetime | None
    expires_at: dt.datetime | None
    query: str | None

    def expired(self, moment: dt.datetime | None = None) -> bool:
        return self.expires_at is not None and (moment or now()) >= self.expires_at

    def to_dict(self) -> dict[str, Any]:
        def t(v: dt.datetime | None) -> str | None:
            return format_time(v) if v is not None else None

        status = "expired" if self.status == "approved" and self.expired() else self.status
        return {"id": self.id, "agent": self.agent, "dataset": self.dataset, "owner": self.owner,
                "requested_at": t(self.requested_at), "status": status, "decided_by": self.decided_by,
                "decided_at": t(self.decided_at), "expires_at": t(self.expires_at), "query": self.query}


def _utc(v: Any) -> dt.datetime | None:
    if v is None:
        return None
    if isinstance(v, str):
        v = dt.datetime.fromisoformat(v)
    assert isinstance(v, dt.datetime)
    return v if v.tzinfo else v.replace(tzinfo=dt.UTC)


def _row(r: Any) -> Approval:
    requested = _utc(r.requested_at)
    assert requested is not None
    return Approval(id=r.id, agent=r.agent, dataset=r.dataset, owner=r.owner, requested_at=requested,
                    status=r.status, decided_by=r.decided_by, decided_at=_utc(r.decided_at),
                    expires_at=_utc(r.expires_at), query=r.query)


def _unavailable(exc: Exception) -> Unavailable:
    return Unavailable("the gateway cannot reach its store to check approvals; refusing until it is back",
                       reason=f"approval store failed: {type(exc).__name__}")


async def open_request(engine: AsyncEngine, agent: str, dataset: str, owner: str | None, query: str | None,
                       request_id: str | None = None) -> str:
    aid = uuid.uuid4().hex
    try:
        async with engine.begin() as conn:
            await conn.execute(table.insert().values(id=aid, agent=agent, dataset=dataset, owner=owner,
                                                     requested_at=now(), status="pending", query=query,
                                                     request_id=request_id))
    except (SQLAlchemyError, OSError) as exc:
        raise _unavailable(exc) from exc
    return aid


async def get(engine: AsyncEngine, aid: str) -> Approval | None:
    try:
        async with engine.connect() as conn:
            found = (await conn.execute(select(table).where(table.c.id == aid))).one_or_none()
    except (SQLAlchemyError, OSError) as exc:
        raise _unavailable(exc) from exc
    return _row(found) if found is not None else None


async def listing(engine: AsyncEngine, status: str | None = "pending", limit: int = 1000) -> list[Approval]:
    """Approvals, oldest first; `status` None for all of them."""
    stmt = select(table).order_by(table.c.requested_at, table.c.id).limit(limit)
    if status is not None:
        stmt = stmt.where(table.c.status == status)
    try:
        async with engine.connect() as conn:
            return [_row(r) for r in (await conn.execute(stmt)).fetchall()]
    except (SQLAlchemyError, OSError) as exc:
        raise _unavailable(exc) from exc


async def decide(engine: AsyncEngine, aid: str, approve: bool, by: str, ttl_seconds: int) -> Approval | None:
    """Approve or deny a pending approval; None when there is no pending approval with that id."""
    decided = now()
    values: dict[str, Any] = {"status": "approved" if approve else "denied", "decided_by": by,
                              "decided_at": decided}
    if approve:
        values["expires_at"] = decided + dt.timedelta(seconds=ttl_seconds)
    try:
        async with engine.begin() as conn:
            done = await conn.execute(update(table).where((table.c.id == aid) & (table.c.status == "pending"))
                                      .values(**values))
            if done.rowcount != 1:
                return None
            return _row((await conn.execute(select(table).where(table.c.id == aid))).one())
    except (SQLAlchemyError, OSError) as exc:
        raise _unavailable(exc) from exc
