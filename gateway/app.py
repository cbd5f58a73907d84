"""create_app(settings): wiring only. Every object is built here and handed on."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator, Mapping

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.requests import ClientDisconnect
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from connectors.base import HttpSource, TableSource
from gateway.audit import AuditTrail, ChainWatch, Checkpointer, Streams
from gateway.auth import Authenticator
from gateway.common import tracing
from gateway.common.metrics import Metrics
from gateway.config import Settings, find_config, load_settings
from gateway.core.operations import SERVED
from gateway.core.pipeline import Gateway
from gateway.core.query import CursorCodec
from gateway.policy import PolicyHolder
from gateway.runtime.connections import capacity
from gateway.runtime.storewait import Waiting
from gateway.services.ratelimit import RefusalLimiter
from gateway.services.reloader import PolicyReloader, load_checked_policy
from gateway.services.revocations import Registry
from gateway.sources.opening import check_tables, open_http_sources, open_sources
from gateway.store import StoreSync, create_tables, make_store_engine, shared_secret
from gateway.transports import accesslog, admin, data, openapi, ops, wellknown
from gateway.transports import mcp as mcp_server
from gateway.transports.caller import TrustedProxies
from gateway.transports.http import stamped
from gateway.transports.review import routes as web_routes

__all__ = ["app_from_env", "create_app", "load_checked_policy"]

log = logging.getLogger("agentgate")


class GatewayApp(Starlette):
    """Starlette, with the agents' hot path (POST /v1/datasets/{name}/query) dispatched before the middleware
    stack and router: the same handler code, less plumbing per read. Everything else takes the usual way.
    Until the gateway has started whole (`serving`), a gateway waiting for its store answers for itself."""

    serving = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":  # one access line each, and its request named in every line logged meanwhile
            await accesslog.logged(self._serve, self.state, scope, receive, send)
        else:
            await self._serve(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = data.query_route(scope)
        if scope["type"] == "http":  # a 401 says where to sign in (transports/wellknown.py)
            send = wellknown.challenging(scope, self.state, send)
        try:
            # Not while starting (no gateway yet), nor if middleware was ever added: it must see every request.
            if name is not None and self.serving and not self.user_middleware:
                scope["app"] = self
                await data.query_asgi(self.state, name, scope, receive, send)
                return
            if scope["type"] == "http":  # every answer carries X-Request-Id (and the core's traceparent)
                send = stamped(scope, send)
            waiting = None if self.serving else getattr(self.state, "waiting", None)
            if waiting is not None and scope["type"] == "http" and await waiting.answer(scope, receive, send):
                return
            await super().__call__(scope, receive, send)
        except ClientDisconnect:
            # The client left, or was cut off (gateway/runtime/connections.py: a body too slow), before its request was
            # read whole: there is no request to answer or record, and nothing for the log (a traceback each).
            pass


def create_app(settings: Settings, *, watch_policy: bool = True, wait_for_store: float | None = None) -> Starlette:
    """`wait_for_store`: seconds to wait for a store not there at start (serve --wait-for-store), answering
    503 meanwhile (gateway/runtime/storewait.py); None: the store is there, or the start fails."""
    tracing.configure(os.environ)  # spans exported when agentgate[otel] is installed and OTEL_* ask for them

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state = app.state
        state.settings = settings
        state.metrics = metrics = Metrics(operations=[*SERVED, "unknown"], sources=settings.sources)
        # The pool's checkout, a connect and SQLite's write lock are waited for no longer than an audit record.
        write_timeout = settings.audit.write_timeout_seconds
        state.store = store = make_store_engine(settings.store.url, wait_seconds=write_timeout)

        async def start(stack: contextlib.AsyncExitStack) -> None:
            await _start(state, settings, stack, watch_policy=watch_policy)

        def ready() -> None:
            app.serving = True  # type: ignore[attr-defined]  # GatewayApp's
            # What start-up made lives as long as the process: out of the collector's sight, so that a full
            # collection (a large read makes several) walks only what requests made (~0.4 s less each, held with
            # the GIL: no request, /healthz included, is served meanwhile). Given back when the app stops.
            gc.freeze()

        async with contextlib.AsyncExitStack() as stack:
            stack.callback(accesslog.flush)  # the access lines still pending, last: after every request
            stack.callback(metrics.close)
            stack.push_async_callback(store.dispose)
            stack.callback(gc.unfreeze)
            if wait_for_store is None:
                await start(stack)
                ready()
            else:
                state.waiting = waiting = Waiting(settings.store.url, store, wait_for_store, write_timeout, start,
                                                  ready)
                stack.push_async_callback(waiting.close)
                waiting.begin()
            yield

    mcp_route = Route("/mcp", mcp_server.McpEndpoint())
    return GatewayApp(routes=[mcp_route, *data.routes, *admin.routes, *ops.routes, *wellknown.routes,
                              *openapi.routes(sql=settings.sql.enabled), *web_routes.routes],
                     lifespan=lifespan)


async def _start(state: State, settings: Settings, stack: contextlib.AsyncExitStack, *, watch_policy: bool) -> None:
    """Everything that needs the store (state.store), in this order; what it opens entered into `stack`, so
    that it closes in the reverse order."""
    store, metrics = state.store, state.metrics
    await create_tables(store)
    cursors = CursorCodec(await shared_secret(store, "cursor_key"))
    trail = AuditTrail(store, write_timeout=settings.audit.write_timeout_seconds, observe=metrics.observe_audit)
    await trail.start()
    stack.push_async_callback(trail.close)
    sources, http_sources = await _open_sources(settings, stack)
    policy = await load_checked_policy(settings)
    for warning in await check_tables(policy.catalog, sources, settings.policy.dir / "datasets.toml",
                                      strict_reachability=False):
        log.warning("%s (reads from it answer 502 until it is back)", warning)
    state.policies = holder = PolicyHolder(policy)
    revocations = await _follow_store(state, settings, stack, trail, sources, watch_policy=watch_policy)
    authenticator = Authenticator(settings.auth)
    stack.push_async_callback(authenticator.aclose)
    key, chain = await _watch_chain(settings, store, metrics, stack)
    state.proxies = TrustedProxies(settings.server.forwarded_allow_ips)
    state.capacity = capacity(settings)  # the open-file limit and connection cap, for /readyz
    # Refusals with no token verified, limited per client; their summaries written before the trail closes
    # (pushed after it: closed before it), so a shutdown loses no count.
    state.refusals = refusals = RefusalLimiter(settings.limits, trail.record,
                                               hold_max=max(1, state.capacity.max_connections // 4))
    await refusals.start()
    stack.push_async_callback(refusals.close)
    state.gateway = Gateway(authenticator=authenticator, policies=holder, audit=trail, sources=sources,
                            http_sources=http_sources, cursors=cursors, metrics=metrics, revocations=revocations,
                            store=store, checkpoint_key=key, approval_ttl=settings.approvals.ttl_seconds,
                            chain=chain, approval_max_pending=settings.approvals.max_pending_per_agent,
                            refusals=refusals, streams=Streams(settings.audit.stream_max,
                                                               settings.audit.stream_max_seconds,
                                                               settings.audit.stream_heartbeat_seconds))
    # The MCP session manager: one per app start, run for as long as the app is.
    state.mcp = mcp_manager = mcp_server.session_manager(
        state.gateway, settings.server.max_body_bytes, sql_enabled=settings.sql.enabled)
    await stack.enter_async_context(mcp_manager.run())
    log.info("agentgate ready: %d datasets, %d policy lines, store %s",
             len(policy.catalog.datasets), len(policy.rules), settings.store.dialect)


async def _open_sources(settings: Settings, stack: contextlib.AsyncExitStack
                        ) -> tuple[dict[str, TableSource], dict[str, HttpSource]]:
    """The table sources (opened off the loop: SQLite seeds, pool set-up) and the HTTP sources."""
    sources = await asyncio.to_thread(open_sources, settings.sources)
    for source in sources.values():
        stack.push_async_callback(source.close)
    http_sources = open_http_sources(settings.sources)
    for http_source in http_sources.values():
        stack.push_async_callback(http_source.close)
    return sources, http_sources


async def _follow_store(state: State, settings: Settings, stack: contextlib.AsyncExitStack, trail: AuditTrail,
                        sources: Mapping[str, TableSource], *, watch_policy: bool) -> Registry:
    """What every replica follows through the store's change feed: revocations, and policy reloads (the
    policy directory watched too, unless watch_policy is False)."""
    state.sync = sync = StoreSync(state.store)
    revocations = Registry(state.store, sync, observe=state.metrics.revocations_in_force)
    reloader = PolicyReloader(settings, state.policies, trail, sources, observe=state.metrics.policy_reloaded)
    sync.subscribe(reloader.on_store)
    await sync.start()
    stack.push_async_callback(sync.close)
    if watch_policy:
        await reloader.start()
        stack.push_async_callback(reloader.close)
    state.reloader = reloader
    return revocations


async def _watch_chain(settings: Settings, store: AsyncEngine, metrics: Metrics, stack: contextlib.AsyncExitStack
                       ) -> tuple[str | None, ChainWatch]:
    """The audit chain's signed checkpoints (with a checkpoint key) and its checks: in full in the background,
    every [audit] verify_seconds (off the loop)."""
    key = settings.audit.checkpoint_key.reveal() if settings.audit.checkpoint_key else None
    if key is not None:
        checkpointer = Checkpointer(store, key, settings.audit.checkpoint_seconds)
        await checkpointer.start()
        stack.push_async_callback(checkpointer.close)
    chain = ChainWatch(store, key, settings.audit.verify_seconds)
    chain.watch(metrics.chain_checked)
    await chain.start()
    stack.push_async_callback(chain.close)
    return key, chain


# serve --workers N --wait-for-store SECONDS: the seconds, for the workers.
WAIT_FOR_STORE_VARIABLE = "AGENTGATE_WAIT_FOR_STORE"


def app_from_env() -> Starlette:
    """Factory for `uvicorn --factory` and for worker processes: the config named by $AGENTGATE_CONFIG (and
    --wait-for-store's seconds by $AGENTGATE_WAIT_FOR_STORE)."""
    wait = os.environ.get(WAIT_FOR_STORE_VARIABLE)
    return create_app(load_settings(find_config(None, os.environ)), wait_for_store=float(wait) if wait else None)
