"""Human approvals: a read of a dataset with ``approval = "required"`` waits for a person.

A read without ``X-Approval-Id`` opens a pending approval (202 with its id), or
answers with the id of one already pending for the same request. An approval is
bound to the request as submitted: the agent (and its ``on_behalf_of``), the
dataset and the body (``binding``: JSON canonicalised, so key order and spacing
do not make another request; an HTTP dataset's path and query string as sent).
A person other than the one who asked decides it (``agentgate approve|deny ID
--by WHO``, which also records the operating-system user, or the admin API); it
serves that request from the decision until ``[approvals] ttl_seconds`` later.
Approvals live in the store, so every replica and the command line share them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.common.clock import format_time, now
from gateway.common.errors import BudgetExceeded, Forbidden, Unavailable
from gateway.store import approvals as table
from gateway.store import backend_for, reading

STATUSES = ("pending", "approved", "denied")
# What an agent at its cap of pending approvals is told to wait before asking again: pending approvals do not
# expire, a person has to decide some, so this is a pace, not a promise.
CAP_RETRY_AFTER = 60


def binding(submitted: str | None) -> str:
    """What an approval is bound to, from the request as submitted. A JSON body (a query) is canonicalised the
    way the gateway reads it (json's parser: the last of duplicate keys wins, escapes decoded), with keys sorted
    and no spacing, so that key order or whitespace does not make another request while every difference the
    gateway acts on (a column, a filter, the limit, the cursor of a next page) does. Anything else (an HTTP
    dataset's path and query string, whose order the source may read) is bound as it is."""
    if submitted is None or not submitted.strip():
        return "{}"
    try:
        data = json.loads(submitted)
    except (ValueError, RecursionError):
        return submitted
    out = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        out.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \\ud800 escape: keep it escaped, storable everywhere
        out = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return out


def digest(bound: str) -> str:
    return hashlib.sha256(bound.encode("utf-8", errors="surrogatepass")).hexdigest()


def same_person(a: str | None, b: str | None) -> bool:
    """Whether two names are one subject, leniently (case and surrounding spaces ignored): used only to refuse."""
    return a is not None and b is not None and a.strip().casefold() == b.strip().casefold()


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
    query: str | None  # the body as bound (see binding), what the person deciding reads
    body_sha256: str | None = None  # None: made before approvals were bound to bodies (then from `query`)
    on_behalf_of: str | None = None
    decided_os_user: str | None = None  # who ran `agentgate approve|deny` (decided_by holds it too)

    def covers(self, body_sha256: str) -> bool:
        """Whether this approval was asked for a request with this body."""
        return (self.body_sha256 or digest(binding(self.query))) == body_sha256

    def asked_by(self, name: str | None) -> bool:
        """Whether `name` is the agent that asked, or the person it asked on behalf of."""
        return same_person(name, self.agent) or same_person(name, self.on_behalf_of)

    def expired(self, moment: dt.datetime | None = None) -> bool:
        return self.expires_at is not None and (moment or now()) >= self.expires_at

    def to_dict(self) -> dict[str, Any]:
        def t(v: dt.datetime | None) -> str | None:
            return format_time(v) if v is not None else None

        status = "expired" if self.status == "approved" and self.expired() else self.status
        return {"id": self.id, "agent": self.agent, "dataset": self.dataset, "owner": self.owner,
                "requested_at": t(self.requested_at), "status": status, "decided_by": self.decided_by,
                "decided_at": t(self.decided_at), "expires_at": t(self.expires_at), "query": self.query,
                "on_behalf_of": self.on_behalf_of, "body_sha256": self.body_sha256,
                "decided_os_user": self.decided_os_user}


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
                    expires_at=_utc(r.expires_at), query=r.query, body_sha256=r.body_sha256,
                    on_behalf_of=r.on_behalf_of, decided_os_user=r.decided_os_user)


def _unavailable(exc: Exception) -> Unavailable:
    return Unavailable("the gateway cannot reach its store to check approvals; refusing until it is back",
                       reason=f"approval store failed: {type(exc).__name__}")


def _agent_lock(agent: str) -> int:
    """The advisory lock key under which one agent's approvals are opened (PostgreSQL)."""
    seed = hashlib.sha256(b"agentgate approvals\x00" + agent.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(seed[:8], "big", signed=True)


async def open_request(engine: AsyncEngine, agent: str, dataset: str, owner: str | None, query: str | None,
                       request_id: str | None = None, *, on_behalf_of: str | None = None,
                       max_pending: int | None = None) -> tuple[str, bool]:
    """A pending approval for this request: (its id, True) when one was already open for the same agent, person
    on whose behalf, dataset and body; else a new one, (id, False). `query` is the body as submitted; it is
    stored as bound (see binding), so the person deciding reads exactly what the approval covers. An agent
    with `max_pending` approvals pending already opens no more: BudgetExceeded (429), until some are decided."""
    bound = binding(query)
    sha = digest(bound)
    aid = uuid.uuid4().hex
    same = ((table.c.status == "pending") & (table.c.agent == agent) & (table.c.dataset == dataset)
            & (table.c.body_sha256 == sha)
            & ((table.c.on_behalf_of == on_behalf_of) if on_behalf_of is not None else table.c.on_behalf_of.is_(None)))
    try:
        async with engine.begin() as conn:
            # One request at a time per agent, so two replicas asked at once neither open two approvals for one
            # request nor both take an agent's last place under the cap (SQLite: the store engine's BEGIN
            # IMMEDIATE already serialises writers).
            await backend_for(engine).lock_hashed(conn, _agent_lock(agent))
            found = (await conn.execute(select(table.c.id).where(same).order_by(table.c.requested_at)
                                        .limit(1))).scalar_one_or_none()
            if found is not None:
                return str(found), True
            if max_pending is not None:
                waiting = (await conn.execute(select(func.count()).select_from(table).where(
                    (table.c.status == "pending") & (table.c.agent == agent)))).scalar_one()
                if waiting >= max_pending:
                    raise BudgetExceeded(
                        f"this agent has {waiting} approvals waiting for a person, the most it may have open; "
                        "ask again once some are decided", headers={"Retry-After": str(CAP_RETRY_AFTER)},
                        reason=f"approvals pending at the cap ({waiting} of max_pending_per_agent {max_pending}); "
                               "none opened")
            await conn.execute(table.insert().values(id=aid, agent=agent, dataset=dataset, owner=owner,
                                                     requested_at=now(), status="pending", query=bound,
                                                     request_id=request_id, body_sha256=sha,
                                                     on_behalf_of=on_behalf_of))
    except (SQLAlchemyError, OSError) as exc:
        raise _unavailable(exc) from exc
    return aid, False


async def get(engine: AsyncEngine, aid: str) -> Approval | None:
    try:
        async with reading(engine).connect() as conn:
            found = (await conn.execute(select(table).where(table.c.id == aid))).one_or_none()
    except (SQLAlchemyError, OSError) as exc:
        raise _unavailable(exc) from exc
    return _row(found) if found is not None else None


async def listing(engine: AsyncEngine, status: str | None = "pending", limit: int | None = 1000,
                  before: str | None = None) -> list[Approval]:
    """Approvals, newest first, so a new request is never hidden behind old ones; `status` None for all of
    them; `limit` None for no limit; `before` an approval's id: only those after it in this order (the next
    page; an unknown id gives none)."""
    stmt = select(table).order_by(table.c.requested_at.desc(), table.c.id.desc())
    if limit is not None:
        stmt = stmt.limit(limit)
    if status is not None:
        stmt = stmt.where(table.c.status == status)
    if before is not None:
        asked = select(table.c.requested_at).where(table.c.id == before).scalar_subquery()
        stmt = stmt.where((table.c.requested_at < asked) | ((table.c.requested_at == asked) & (table.c.id < before)))
    try:
        async with reading(engine).connect() as conn:
            return [_row(r) for r in (await conn.execute(stmt)).fetchall()]
    except (SQLAlchemyError, OSError) as exc:
        raise _unavailable(exc) from exc


async def decide(engine: AsyncEngine, aid: str, approve: bool, by: str, ttl_seconds: int, *,
                 os_user: str | None = None) -> Approval | None:
    """Approve or deny a pending approval; None when there is no pending approval with that id. `by` is who
    decides (an admin token's subject, or the name given to the command line, whose operating-system user comes
    as `os_user` and is recorded beside it: "alice (os: root)"). Forbidden when either names the agent that
    asked or the person it asked on behalf of: an approval needs a second person."""
    decided = now()
    shown = by if os_user is None else f"{by} (os: {os_user})"
    values: dict[str, Any] = {"status": "approved" if approve else "denied", "decided_by": shown,
                              "decided_at": decided, "decided_os_user": os_user}
    if approve:
        values["expires_at"] = decided + dt.timedelta(seconds=ttl_seconds)
    try:
        async with engine.begin() as conn:
            asked = (await conn.execute(select(table).where(table.c.id == aid))).one_or_none()
            if asked is None or asked.status != "pending":
                return None
            # Who asked never changes after the insert, so reading it here, then updating only a row that is
            # still pending, cannot be raced into a self-approval.
            mine = _row(asked)
            if mine.asked_by(by) or mine.asked_by(os_user):
                raise Forbidden("the agent that asked (or the person it asked for) may not decide its own "
                                "approval; another person must",
                                reason=f"self-approval refused: {shown[:100]!r} decided on approval {aid[:64]!r} "
                                       f"asked by {mine.agent[:100]!r}")
            done = await conn.execute(update(table).where((table.c.id == aid) & (table.c.status == "pending"))
                                      .values(**values))
            if done.rowcount != 1:
                return None
            return _row((await conn.execute(select(table).where(table.c.id == aid))).one())
    except (SQLAlchemyError, OSError) as exc:
        raise _unavailable(exc) from exc
