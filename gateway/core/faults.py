"""What sources raise, mapped once into the answers agents get; and how a failed read is labelled in /metrics."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from connectors.base import InvalidQuery, MissingTable, SourceRefused, SourceTimedOut, SourceUnavailable
from gateway.common.errors import BadRequest, GatewayError, SourceError, SourceTimeout
from gateway.core.types import Trace
from gateway.policy import Policy

log = logging.getLogger("agentgate.core")

# What an agent is told when the source refuses its SQL (the source's own text goes to the record and the log).
SOURCE_REFUSED = "the source refused the statement"


@contextlib.contextmanager
def source_errors() -> Iterator[None]:
    """What connectors raise, mapped once into the answers agents get."""
    try:
        yield
    except InvalidQuery as exc:
        raise BadRequest(str(exc)) from exc
    except SourceRefused as exc:
        # One message whatever the source said: its text may quote a row's value or name its tables.
        log.info("the source refused a statement: %s", exc)
        raise BadRequest(SOURCE_REFUSED, reason=str(exc)) from exc
    except MissingTable as exc:
        raise SourceError("the source no longer has this dataset's table", reason=str(exc)) from exc
    except SourceTimedOut as exc:
        raise SourceTimeout("the source did not answer in time", reason=str(exc)) from exc
    except SourceUnavailable as exc:
        raise SourceError("the source failed", reason=str(exc)) from exc


def source_of(policy: Policy, trace: Trace) -> str | None:
    """The source a failed read went to: its dataset's (SQL mode reads one source at a time)."""
    ds = policy.catalog.get(trace.dataset.split(",")[0]) if trace.dataset else None
    return ds.source if ds is not None else None


def failure_kind(exc: GatewayError) -> str:
    if isinstance(exc, SourceTimeout):
        return "timeout"
    return "missing_table" if isinstance(exc.__cause__, MissingTable) else "unavailable"
