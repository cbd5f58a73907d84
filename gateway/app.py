"""create_app(settings): wiring only. Every object is built here and handed on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette

from gateway.api import data, ops
from gateway.audit import AuditTrail
from gateway.auth import Authenticator
from gateway.config import Settings, find_config, load_settings
from gateway.core import Gateway, PolicyHolder
from gateway.errors import ConfigError
from gateway.metrics import Metrics
from gateway.policy import failing_cases, load_policy
from gateway.query import CursorCodec
from gateway.sources import check_tables, open_sources
from gateway.store import create_tables, make_store_engine, shared_secret

log = logging.getLogger("agentgate")


async def load_checked_policy(settings: Settings):  # type: ignore[no-untyped-def]
    """Load the policy directory off the event loop and refuse it if a policy test fails."""
    policy = await asyncio.to_thread(load_policy, settings.policy.dir, settings.sources)
    failures = await failing_cases(policy)
    if failures:
        raise ConfigError(settings.policy.dir / "tests.toml", None,
                          f"{len(failures)} policy test(s) fail; first: {failures[0]}")
    return policy


def create_app(settings: Settings) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state = app.state
        state.settings = settings
        state.metrics = metrics = Metrics()
        state.store = store = make_store_engine(settings.store.url)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(store.dispose)
            await create_tables(store)
            cursors = CursorCodec(await shared_secret(store, "cursor_key"))
            trail = AuditTrail(store, observe=metrics.observe_audit)
            await trail.start()
            stack.push_async_callback(trail.close)
            state.policies = holder = PolicyHolder(await load_checked_policy(settings))
            sources = await asyncio.to_thread(open_sources, settings.sources)
            for source in sources.values():
                stack.push_async_callback(source.close)
            assert holder.current is not None
            for warning in await check_tables(holder.current.catalog, sources, settings.policy.dir / "datasets.toml",
                                              strict_reachability=False):
                log.warning("%s (reads from it answer 502 until it is back)", warning)
            authenticator = Authenticator(settings.auth)
            stack.push_async_callback(authenticator.aclose)
            state.gateway = Gateway(authenticator=authenticator, policies=holder, audit=trail, sources=sources,
                                    cursors=cursors, metrics=metrics)
            log.info("agentgate ready: %d datasets, %d policy lines, store %s",
                     len(holder.current.catalog.datasets), len(holder.current.rules), settings.store.dialect)
            yield

    return Starlette(routes=[*data.routes, *ops.routes], lifespan=lifespan)


def app_from_env() -> Starlette:
    """Factory for `uvicorn --factory` and for worker processes: the config named by $AGENTGATE_CONFIG."""
    return create_app(load_settings(find_config(None, os.environ)))
