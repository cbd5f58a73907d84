"""Requests refused before any token verified: limited per client, and folded into summary records.

Without a limit, a client with no valid token costs the gateway one audit record per request, as fast as it
can send them (one such client grew the store by 46 MB/s). Here, per client (the address the record's `client`
carries: the TCP peer, or a trusted proxy's X-Forwarded-For; an IPv6 address counts by its /64, which one host
usually holds whole):

- answers: a token bucket of ``[limits] failed_auth_per_minute``, ``failed_auth_burst`` at once. Within it a
  refusal is answered as ever (401, or 413 for a body over the limit before its token was read); beyond it,
  429 ``budget_exceeded`` with ``Retry-After`` (the seconds until the bucket holds a token again).
- records: a refusal within the client's bucket has its own record while all clients together stay within
  ``failed_auth_records_per_minute``; every other one (every 429, and 401s beyond that) is counted into its
  client's summary record, written once its interval (``summary_seconds``, from its first refusal) ends, and
  at shutdown: action ``refused_summary``, ``rows`` the number of requests it stands for, ``query`` a JSON
  object with the count by status, the first and last time and a sample of the first request folded. The
  trail stays complete in count (records + summaries' rows = requests) and bounded in size.
- pace: a 429 of this limit is answered after ``refusal_delay_seconds`` (at most a quarter of
  ``[server] max_connections`` held at once), so that a client that ignores Retry-After cannot keep the event
  loop busy refusing it (every agent's reads would wait behind its refusals).
- memory: at most ``failed_auth_clients`` buckets and as many summaries. A client the table has no room for
  (every entry still refilling: someone rotating addresses) shares the bucket and summary of key ``*``.

Authenticated requests never reach this module: it is asked only once a request has been refused with no
verified token. The counts are the process's: with N workers or replicas, a client gets N times the limits.
A crash (not a shutdown) loses the summaries not yet written: at most one interval's count per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import ipaddress
import json
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.audit import AuditRecord
from gateway.common import randomness
from gateway.common.clock import format_time
from gateway.common.errors import BudgetExceeded, GatewayError
from gateway.common.textsafe import cap
from gateway.config import LimitSettings

log = logging.getLogger("agentgate.ratelimit")

ACTION = "refused_summary"
OVERFLOW = "*"  # the key of the clients the table has no room for
SAMPLE_MAX = 512  # characters of each text of a summary's sample
OVERFLOW_ADDRESSES = 8  # addresses an overflow summary names, of those it counts


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """What the limiter made of one refusal."""

    key: str  # whose bucket and summary: the client, its IPv6 /64, or OVERFLOW
    retry_after: int  # 0: within the client's limit, answered as ever; else a 429 with this Retry-After
    record: bool  # its own audit record; else folded into its key's summary


@dataclasses.dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float  # monotonic time `tokens` was counted

    def take(self, now: float, rate: float, burst: float) -> float:
        """0.0 if a token was taken, else the seconds until one is there."""
        tokens = min(burst, self.tokens + (now - self.at) * rate)
        self.at = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / rate

    def full(self, now: float, rate: float, burst: float) -> bool:
        """Refilled: forgetting it changes nothing."""
        return self.tokens + (now - self.at) * rate >= burst


@dataclasses.dataclass(slots=True)
class Summary:
    key: str
    due: float  # monotonic time it is written
    first: dt.datetime
    last: dt.datetime
    count: int = 0
    statuses: dict[int, int] = dataclasses.field(default_factory=dict)
    sample: dict[str, Any] | None = None
    addresses: list[str] = dataclasses.field(default_factory=list)  # OVERFLOW: some of the clients it counts

    def merge(self, other: Summary) -> None:
        self.first, self.last = min(self.first, other.first), max(self.last, other.last)
        self.count += other.count
        for status, n in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n
        self.sample = self.sample or other.sample
        for address in other.addresses:
            self.note(address)

    def note(self, address: str) -> None:
        """One of the clients an OVERFLOW summary counts (a few are kept, for the record)."""
        if len(self.addresses) < OVERFLOW_ADDRESSES and address not in self.addresses:
            self.addresses.append(address)

    def record(self) -> AuditRecord:
        status = max(self.statuses, key=lambda s: (self.statuses[s], s))
        content: dict[str, Any] = {
            "count": self.count, "first": format_time(self.first), "last": format_time(self.last),
            "statuses": {str(s): n for s, n in sorted(self.statuses.items())}, "sample": self.sample}
        if self.key == OVERFLOW:
            content["addresses"] = self.addresses
        statuses = ", ".join(f"{n} answered {s}" for s, n in sorted(self.statuses.items()))
        who = "clients the limiter had no room for" if self.key == OVERFLOW else self.key
        sample = self.sample or {}
        return AuditRecord(
            time=dt.datetime.now(dt.UTC), request_id=randomness.request_id(), action=ACTION, decision="deny",
            status=status, rows=self.count, client=self.key, query=json.dumps(content, ensure_ascii=False),
            reason=f"{self.count} requests refused without a valid token from {who} ({statuses}), from "
                   f"{format_time(self.first)} to {format_time(self.last)}: over the limit of failed requests, "
                   "counted here instead of one record each", transport=sample.get("transport"),
            user_agent=sample.get("user_agent"))


Sample = Callable[[], dict[str, Any]]
Write = Callable[[AuditRecord], Awaitable[object]]


class RefusalLimiter:
    def __init__(self, limits: LimitSettings, write: Write, *, hold_max: int = 256,
                 clock: Callable[[], float] = time.monotonic):
        self._write = write
        self._delay = limits.refusal_delay_seconds
        self._hold_max = hold_max  # 429s held back at once, at most
        self._held = 0
        self._clock = clock
        self._rate = limits.failed_auth_per_minute / 60.0
        self._burst = float(limits.failed_auth_burst)
        self._records_rate = limits.failed_auth_records_per_minute / 60.0
        self._records_burst = float(limits.failed_auth_records_per_minute)
        self._capacity = limits.failed_auth_clients
        self._interval = limits.summary_seconds
        now = clock()
        self._clients: OrderedDict[str, _Bucket] = OrderedDict()  # least recently refused first
        self._overflow = _Bucket(self._burst, now)
        self._records = _Bucket(self._records_burst, now)
        self._summaries: dict[str, Summary] = {}
        self._due: deque[Summary] = deque()  # by due time: each is due one interval after it began
        self._unwritten: dict[str, Summary] = {}  # summaries the store did not take; tried again
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def judge(self, client: str | None) -> Verdict:
        """A request from `client` was refused before any token verified: answer it as ever, or 429?"""
        now = self._clock()
        key, bucket = self._bucket(_key(client), now)
        wait = bucket.take(now, self._rate, self._burst)
        if wait:
            return Verdict(key, max(1, math.ceil(wait)), record=self._closed)
        own = self._closed or not self._records.take(now, self._records_rate, self._records_burst)
        return Verdict(key, 0, record=own)

    def _bucket(self, key: str, now: float) -> tuple[str, _Bucket]:
        bucket = self._clients.get(key)
        if bucket is not None:
            self._clients.move_to_end(key)
            return key, bucket
        if len(self._clients) >= self._capacity:
            # Room only by forgetting the least recently refused client, once its bucket has refilled (then
            # forgetting it changes nothing). Else the newcomer shares the overflow bucket: rotating addresses
            # buys no fresh burst.
            oldest, was = next(iter(self._clients.items()))
            if not was.full(now, self._rate, self._burst):
                return OVERFLOW, self._overflow
            del self._clients[oldest]
        bucket = self._clients[key] = _Bucket(self._burst, now)
        return key, bucket

    def fold(self, verdict: Verdict, status: int, client: str | None, sample: Sample) -> None:
        """Count a refusal without a record of its own into its key's summary (`sample` is asked for the first)."""
        when = dt.datetime.now(dt.UTC)
        summary = self._summaries.get(verdict.key)
        if summary is None:
            key = verdict.key if len(self._summaries) < self._capacity else OVERFLOW
            summary = self._summaries.get(key)
            if summary is None:
                summary = self._summaries[key] = Summary(key, self._clock() + self._interval, when, when)
                self._due.append(summary)
        summary.count += 1
        summary.last = when
        summary.statuses[status] = summary.statuses.get(status, 0) + 1
        if summary.sample is None:
            summary.sample = {k: cap(v, SAMPLE_MAX) if isinstance(v, str) else v for k, v in sample().items()}
        if summary.key == OVERFLOW and client:
            summary.note(client)

    async def hold(self) -> None:
        """Hold back a 429 of this limit for refusal_delay_seconds before it is answered: a client that ignores
        Retry-After then sends no faster than its connections allow (one request each a delay), and cannot
        keep the event loop busy refusing it, which would slow every agent's reads. At most `hold_max` are held
        at once (each holds its connection: the connection cap must keep room for agents); beyond, and during
        shutdown, they are answered at once."""
        if self._delay <= 0 or self._held >= self._hold_max or self._closed:
            return
        self._held += 1
        try:
            await asyncio.sleep(self._delay)
        finally:
            self._held -= 1

    @property
    def tracked(self) -> tuple[int, int]:
        """(client buckets, summaries being counted): each at most failed_auth_clients (+1 for "*")."""
        return len(self._clients), len(self._summaries)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="refusal-summaries")

    async def close(self) -> None:
        """Write every summary, due or not: a shutdown loses no count. From now on each refusal is recorded on
        its own (the answers keep their limit)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._closed = True
        left = await self.flush(everything=True)
        if left:
            log.error("%d refused requests could not be recorded in their summary records at shutdown (the store "
                      "did not take them): %s", sum(s.count for s in left),
                      "; ".join(f"{s.key}: {s.count} from {format_time(s.first)} to {format_time(s.last)}"
                                for s in left[:20]))

    async def flush(self, *, everything: bool = False) -> list[Summary]:
        """Write the summaries that are due (all of them with `everything`); those the store does not take are
        kept to try again (merged per key: bounded), and returned."""
        now = self._clock()
        ready: list[Summary] = []
        while self._due and (everything or self._due[0].due <= now):
            summary = self._due.popleft()
            del self._summaries[summary.key]
            ready.append(summary)
        if self._unwritten:
            ready = [*self._unwritten.values(), *ready]
            self._unwritten = {}
        failed: list[Summary] = []
        for summary in ready:
            try:
                await self._write(summary.record())
            except GatewayError as exc:  # the store is down: keep the count, try again
                log.warning("a summary of %d refused requests could not be written (%s); trying again",
                            summary.count, exc.reason)
                failed.append(summary)
        for summary in failed:
            # Kept per key, as many keys as the table holds; beyond, into one OVERFLOW summary (a long outage
            # meets new clients every interval: what is kept for it stays bounded).
            key = summary.key if summary.key in self._unwritten or len(self._unwritten) < self._capacity else OVERFLOW
            kept = self._unwritten.get(key)
            if kept is None:
                kept = self._unwritten[key] = summary if key == summary.key else Summary(
                    OVERFLOW, summary.due, summary.first, summary.last)
                if kept is summary:
                    continue
            kept.merge(summary)
            if key != summary.key:
                kept.note(summary.key)
        return failed

    async def _run(self) -> None:
        tick = min(1.0, self._interval / 4)
        while True:
            await asyncio.sleep(tick)
            try:
                await self.flush()
            except Exception:  # a bug: say so, keep the schedule
                log.exception("writing refusal summaries failed")


def too_many(verdict: Verdict, refused: GatewayError) -> BudgetExceeded:
    """The 429 a refusal over its client's limit gets instead of its own answer."""
    return BudgetExceeded(
        f"too many failed requests from this client; try again in {verdict.retry_after} s",
        reason=f"too many failed requests from this client (this one: {refused.reason})",
        headers={"Retry-After": str(verdict.retry_after)})


def _key(client: str | None) -> str:
    """The bucket of a client: its address, or for an IPv6 address its /64."""
    if not client:
        return "(unknown)"
    if ":" not in client:
        return client
    try:
        address = ipaddress.IPv6Address(client)
    except ValueError:
        return client
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
