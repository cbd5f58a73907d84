"""Live policy: a change to the policy directory is validated whole and swapped in atomically.

Triggers: the files changing (watchfiles), SIGHUP, and `agentgate reload`
(through the store, so it reaches every replica). An invalid change is
refused: the last good policy stays in force, /readyz and the log say what was
refused and why. Every accepted or refused reload is an audit record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import watchfiles
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from connectors.base import TableSource
from gateway.audit import AuditRecord, AuditTrail
from gateway.common.clock import format_time, now
from gateway.common.errors import ConfigError, Unavailable
from gateway.config import Settings
from gateway.policy import POLICY_FILES, Policy, PolicyHolder, failing_cases, load_policy
from gateway.sources.opening import check_tables
from gateway.store import meta, notify

log = logging.getLogger("agentgate.policy")

GENERATION_KEY = "policy_generation"
# A Kubernetes ConfigMap volume changes no file in place: each file is a symlink through `..data`, and the
# kubelet swaps every file at once by renaming a new symlink over `..data`. That rename is the only event.
KUBELET_DATA = "..data"


async def load_checked_policy(settings: Settings, sources: Mapping[str, TableSource] | None = None) -> Policy:
    """Load the policy directory off the event loop; refuse it if a policy test fails or,
    when sources are given, if the catalog names a table a reachable source lacks."""
    policy = await asyncio.to_thread(load_policy, settings.policy.dir, settings.sources)
    failures = await failing_cases(policy)
    if failures:
        raise ConfigError(settings.policy.dir / "tests.toml", None,
                          f"{len(failures)} policy test(s) fail; first: {failures[0]}")
    if sources is not None:
        await check_tables(policy.catalog, sources, settings.policy.dir / "datasets.toml", strict_reachability=False)
    return policy


async def request_reload(engine: AsyncEngine, actor: str) -> None:
    """`agentgate reload`: bump the generation in the store; every replica reloads (and validates)."""
    value = f"{uuid.uuid4().hex} {actor}"
    async with engine.begin() as conn:
        done = await conn.execute(update(meta).where(meta.c.key == GENERATION_KEY).values(value=value))
        if done.rowcount == 0:
            await conn.execute(insert(meta).values(key=GENERATION_KEY, value=value))
        await notify(conn, "policy")


class PolicyReloader:
    def __init__(self, settings: Settings, holder: PolicyHolder, trail: AuditTrail,
                 sources: Mapping[str, TableSource], observe: Callable[[bool], None] | None = None):
        self._settings = settings
        self._observe = observe  # told each reload's outcome, True: accepted (metrics)
        self._holder = holder
        self._trail = trail
        self._sources = sources
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._generation: str | None = None
        self._seen = False  # the generation in the store when we started is not a request
        self._signal = False

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._watch(), name="policy-watch"))
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            # Only possible in the main thread (as under `agentgate serve`).
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._signal = True

    async def close(self) -> None:
        self._stop.set()
        if self._signal:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _on_sighup(self) -> None:
        self._tasks.append(asyncio.create_task(self.reload("signal:SIGHUP", list(POLICY_FILES))))

    async def _watch(self) -> None:
        folder = self._settings.policy.dir
        async for changes in watchfiles.awatch(folder, stop_event=self._stop, debounce=200, step=50,
                                               recursive=False, rust_timeout=1000):
            names = {Path(p).name for _, p in changes}
            files = list(POLICY_FILES) if KUBELET_DATA in names else sorted(names.intersection(POLICY_FILES))
            if files:
                await self.reload("system:watch", files)

    async def on_store(self, conn: AsyncConnection) -> None:
        """StoreSync subscriber: `agentgate reload` bumps a generation in the store."""
        value = (await conn.execute(select(meta.c.value).where(meta.c.key == GENERATION_KEY))).scalar_one_or_none()
        if self._seen and value == self._generation:
            return
        first = not self._seen
        self._seen, self._generation = True, value
        if not first and value:
            actor = value.split(" ", 1)[1] if " " in value else "cli"
            self._tasks.append(asyncio.create_task(self.reload(actor, list(POLICY_FILES))))

    async def reload(self, actor: str, files: list[str]) -> bool:
        async with self._lock:
            try:
                policy = await load_checked_policy(self._settings, self._sources)
            except ConfigError as exc:
                self._holder.refused = {"files": files, "reason": str(exc), "at": format_time(now())}
                log.error("policy change refused, the last good policy stays in force: %s", exc)
                if self._observe is not None:
                    self._observe(False)
                await self._record(actor, files, accepted=False, reason=str(exc))
                return False
            self._holder.current, self._holder.refused = policy, None
            if self._observe is not None:
                self._observe(True)
            log.info("policy reloaded (%s): %d rules, %d datasets", ", ".join(files), len(policy.rules),
                     len(policy.catalog.datasets))
            await self._record(actor, files, accepted=True, reason=None)
            return True

    async def _record(self, actor: str, files: list[str], *, accepted: bool, reason: str | None) -> None:
        record = AuditRecord(time=now(), request_id=uuid.uuid4().hex, action="reload", agent=actor,
                             decision="allow" if accepted else "error", status=200 if accepted else 400,
                             query=json.dumps({"files": files, "dir": str(self._settings.policy.dir)}),
                             reason=reason or "accepted", transport="policy")
        try:
            await self._trail.record(record)
        except Unavailable:
            log.error("the audit record of a policy reload could not be written")
