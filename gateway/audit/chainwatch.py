"""The audit chain's checks, and what the last one found.

Each check is ``integrity.verify_all`` (the chain from its anchor, and the signed checkpoints), either full
(every record) or incremental (only the records added since the last check that passed; an edit to an older
record is left to the next full check). A full check runs in the background every ``[audit]
verify_seconds``, and whenever someone asks for one. Every walk runs in a thread of its own, with an event
loop and a store connection of its own: a million records hash for some 45 s, which must not stall the
loop that serves requests. At most one full and one incremental walk run at a time in a process; whoever
asks meanwhile waits for the running one.

What ``last`` holds is the last verdict on the whole chain: the last full check, or a later incremental one
that found a break (a break in the new records is a break of the chain). An incremental check that passes
vouches only for what it read and leaves it as it is. The review page (every view), ``/readyz`` and
``/metrics`` show it (metrics through ``watch``, told each new verdict: under ``--workers N`` the most recent
verdict of any worker). Each process (worker, replica) keeps its own: each runs its own schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.audit import integrity
from gateway.common.clock import format_time, now
from gateway.common.metrics import ChainGauges
from gateway.store import make_store_engine

log = logging.getLogger("agentgate.audit")

STOP_POLL_SECONDS = 0.1  # how soon a walk in its thread notices the gateway stopping


class Stopped(Exception):
    """The gateway stopped while a walk ran."""


@dataclass(frozen=True)
class Check:
    """One check of the chain: what it read, when, and what it found."""

    kind: str  # "full" (from the anchor) or "incremental" (only records added since the last check)
    trigger: str  # "schedule" or "request"
    ok: bool
    started_at: dt.datetime
    finished_at: dt.datetime
    first_id: int | None  # the first record this check read
    last_id: int | None  # the last record it found intact (None: it read none, or it found a break)
    records: int  # records it found intact
    count: int  # records from the anchor known intact through it (for a break: those before the bad one)
    checkpoints: int
    bad_id: int | None = None
    problem: str | None = None

    @property
    def seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "trigger": self.trigger, "ok": self.ok,
                "started_at": format_time(self.started_at), "finished_at": format_time(self.finished_at),
                "seconds": round(self.seconds, 3), "first_id": self.first_id, "last_id": self.last_id,
                "records": self.records, "count": self.count, "checkpoints": self.checkpoints,
                "bad_id": self.bad_id, "problem": self.problem}


class ChainWatch:
    def __init__(self, engine: AsyncEngine, key: str | None, every: float = 0.0):
        self._url = engine.url.render_as_string(hide_password=False)
        self._key = key
        self.every = every  # seconds between background full checks; 0: none
        self.last: Check | None = None  # the last verdict on the whole chain (see the module's docstring)
        self.last_full: Check | None = None
        self.error: tuple[dt.datetime, str] | None = None  # the last check that could not run, and why
        self.next_at: dt.datetime | None = None
        self._resume: integrity.Verified | None = None  # how far the chain was last found intact
        self._running: dict[str, asyncio.Task[Check]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="audit-verify")
        self._watchers: list[Callable[[ChainGauges], None]] = []

    def watch(self, watcher: Callable[[ChainGauges], None]) -> None:
        """Tell `watcher` each new verdict on the whole chain (``last``), as it is made."""
        self._watchers.append(watcher)

    async def start(self) -> None:
        if self.every > 0 and self._task is None:
            self._task = asyncio.create_task(self._schedule(), name="audit-verify")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._stop.set()  # a walk in its thread ends within STOP_POLL_SECONDS
        for task in list(self._running.values()):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        self._threads.shutdown(wait=False)

    @property
    def running(self) -> bool:
        return "full" in self._running

    async def check(self, *, incremental: bool, trigger: str = "request") -> Check:
        """A check of the chain; incremental when an earlier one left a point to resume from, else full."""
        kind = "incremental" if incremental and self._resume is not None else "full"
        task = self._running.get(kind)
        if task is None:
            task = self._running[kind] = asyncio.create_task(self._walk(kind, trigger), name=f"audit-verify-{kind}")

            def ended(done: asyncio.Task[Check]) -> None:
                if self._running.get(kind) is done:
                    del self._running[kind]
                if not done.cancelled():
                    done.exception()  # retrieved here, so that nobody waiting is no "never retrieved" warning

            task.add_done_callback(ended)
        # Shielded: a caller that goes away (a closed page) does not stop a walk others may be waiting for.
        return await asyncio.shield(task)

    async def _walk(self, kind: str, trigger: str) -> Check:
        resume = self._resume if kind == "incremental" else None
        started = now()
        loop = asyncio.get_running_loop()
        try:
            report, anchor_first = await loop.run_in_executor(self._threads, _walk_in_thread, self._url,
                                                              self._key, resume, self._stop)
        except Exception as exc:
            self.error = (now(), f"{type(exc).__name__}: {str(exc)[:200]}")
            raise
        done = _check(report, resume, anchor_first, trigger, started, now())
        self.error = None
        self._remember(done, report)
        return done

    def _remember(self, done: Check, report: integrity.Report) -> None:
        if not report.ok:
            self._resume = None  # nothing to resume from: every later check walks the whole chain again
        elif report.verified is not None and (
                done.kind == "incremental" or self._resume is None or report.verified.start != self._resume.start
                or _through(report.verified) >= _through(self._resume)):
            self._resume = report.verified
        if done.kind == "full" and (self.last_full is None or done.started_at >= self.last_full.started_at):
            self.last_full = done
        if (done.kind == "full" or not done.ok) and (self.last is None or done.started_at >= self.last.started_at):
            was = self.last
            self.last = done
            for watcher in self._watchers:
                watcher(_gauges(done))
            if not done.ok and (was is None or was.ok or (was.bad_id, was.problem) != (done.bad_id, done.problem)):
                # Once per break found (not at every later check finding the same one): /readyz, /metrics
                # and the page keep saying it.
                log.error("audit chain broken at record %s: %s (found by a %s check of %s)", done.bad_id,
                          done.problem, done.kind, format_time(done.finished_at))
            elif was is None or not was.ok:
                log.info("audit chain intact: %d records (full check, %.1f s)", done.count, done.seconds)

    async def _schedule(self) -> None:
        delay = 0.0  # the first check at start; then every `every` seconds (±10 %, so replicas spread out)
        while True:
            self.next_at = now() + dt.timedelta(seconds=delay)
            await asyncio.sleep(delay)
            try:
                await self.check(incremental=False, trigger="schedule")
            except Exception as exc:  # the store is down, say: the next round tries again
                log.warning("the background check of the audit chain could not run: %s", exc)
            delay = self.every * random.uniform(0.9, 1.1)

    def status(self) -> dict[str, Any]:
        """The last verdict and the schedule, JSON-ready (the page, /readyz, the admin API)."""
        return {"last": self.last.to_dict() if self.last else None,
                "last_full": self.last_full.to_dict() if self.last_full else None,
                "every_seconds": self.every or None, "running": self.running,
                "next_at": format_time(self.next_at) if self.next_at and self.every else None,
                "error": {"at": format_time(self.error[0]), "reason": self.error[1]} if self.error else None}

    def summary(self) -> dict[str, Any]:
        """The last verdict in brief (/readyz): ok is null until a check has ended."""
        last = self.last
        return {"ok": last.ok if last else None, "checked_at": format_time(last.finished_at) if last else None,
                "kind": last.kind if last else None, "records": last.count if last else None,
                "bad_id": last.bad_id if last else None, "problem": last.problem if last else None,
                "every_seconds": self.every or None, "running": self.running,
                "error": self.error[1] if self.error else None}


def _gauges(last: Check) -> ChainGauges:
    return ChainGauges(ok=last.ok, finished=last.finished_at.timestamp(), seconds=last.seconds, records=last.count,
                       bad_id=last.bad_id)


def _through(verified: integrity.Verified) -> int:
    return verified.through[0] if verified.through is not None else 0


def _check(report: integrity.Report, resume: integrity.Verified | None, anchor_first: int, trigger: str,
           started: dt.datetime, finished: dt.datetime) -> Check:
    if report.incremental and resume is not None and resume.through is not None:
        kind, first, before = "incremental", resume.through[0] + 1, resume.count
    else:
        kind, first, before = "full", anchor_first, 0
    last = report.verified.through[0] if report.ok and report.verified and report.verified.through else None
    return Check(kind=kind, trigger=trigger, ok=report.ok, started_at=started, finished_at=finished, first_id=first,
                 last_id=last, records=max(report.count - before, 0), count=report.count,
                 checkpoints=report.checkpoints, bad_id=report.bad_id, problem=report.problem)


def _walk_in_thread(url: str, key: str | None, resume: integrity.Verified | None,
                    stop: threading.Event) -> tuple[integrity.Report, int]:
    return asyncio.run(_walk(url, key, resume, stop))


async def _walk(url: str, key: str | None, resume: integrity.Verified | None,
                stop: threading.Event) -> tuple[integrity.Report, int]:
    engine = _reading_engine(url)
    try:
        task = asyncio.ensure_future(_verify(engine, key, resume))
        while not task.done():
            if stop.is_set():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise Stopped("the gateway stopped")
            await asyncio.wait({task}, timeout=STOP_POLL_SECONDS)
        return task.result()
    finally:
        await engine.dispose()


async def _verify(engine: AsyncEngine, key: str | None,
                  resume: integrity.Verified | None) -> tuple[integrity.Report, int]:
    started = time.perf_counter()
    anchor = await integrity.load_anchor(engine)
    report = await integrity.verify_all(engine, key, resume=resume)
    if not report.ok and await integrity.load_anchor(engine) != anchor:
        # A prune moved the chain's start while the walk read it (records it was about to read are gone): not
        # a break. Walk again from the new anchor (a second prune within one walk is not waited out).
        anchor = await integrity.load_anchor(engine)
        report = await integrity.verify_all(engine, key)
    log.debug("audit chain walk: %d records in %.3f s", report.count, time.perf_counter() - started)
    return report, anchor.first_id if anchor is not None else 1


def _reading_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        # Plain reads, not the store engine's BEGIN IMMEDIATE, which would hold the audit writers off while
        # each chunk is read (WAL lets a reader and a writer go on side by side). Opened without create
        # (mode=rw): a walk after the store's file was deleted fails, rather than make an empty store at its
        # path (gateway/store/files.py).
        uri = f"file:{urllib.parse.quote(parsed.database, safe='/')}?mode=rw"
        return create_async_engine(parsed.set(database=uri, query={"uri": "true"}), connect_args={"timeout": 10})
    return make_store_engine(url)
