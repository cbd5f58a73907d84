"""What an operation's handler is handed: the services it reads and writes through, built once by the Gateway.

Handlers receive this, never the Gateway: they cannot reach the pipeline (authentication, the audit writer,
metrics), and the pipeline imports them without a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from connectors.base import HttpSource, TableSource
from gateway.audit import ChainWatch, Streams
from gateway.core.query import CursorCodec
from gateway.policy import PolicyHolder
from gateway.services.meter import Meter
from gateway.services.revocations import Registry


@dataclass(frozen=True, slots=True)
class Services:
    store: AsyncEngine  # the gateway's own tables: approvals, the trail as read back
    revocations: Registry  # in force (checked, guarded reads) and changed (revoke, restore)
    meter: Meter  # budgets: rows set aside before a read, settled after it
    chain: ChainWatch  # the audit chain's checks and their last verdict
    sources: Mapping[str, TableSource]
    http_sources: Mapping[str, HttpSource]
    cursors: CursorCodec
    approval_ttl: int  # seconds an approval holds once given
    approval_max_pending: int | None  # pending approvals an agent may have open at once
    # The policy in force now, for what outlives its request (a stream of the trail asks again while it runs).
    policies: PolicyHolder
    streams: Streams  # the streams of the trail open in this process, and their bounds
