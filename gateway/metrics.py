"""Prometheus metrics, on a registry of the app's own (no global state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("agentgate_requests", "Data API requests by decision and dataset",
                                ["decision", "dataset"], registry=self.registry)
        self.latency = Histogram("agentgate_request_duration_seconds", "Data API request latency, audit included",
                                 ["operation"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.audit_write = Histogram("agentgate_audit_write_duration_seconds",
                                     "Time to commit one group of audit records", buckets=_LATENCY_BUCKETS,
                                     registry=self.registry)
        self.audit_batch = Histogram("agentgate_audit_batch_records", "Audit records per group commit",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=self.registry)
        self.audit_failures = Counter("agentgate_audit_write_failures", "Audit groups that could not be written",
                                      registry=self.registry)
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def answered(self, operation: str, decision: str, dataset: str, seconds: float) -> None:
        """One request done. The labelled children are kept: labels() costs more than the increment itself."""
        key = (operation, decision, dataset)
        children = self._children.get(key)
        if children is None:
            if len(self._children) > 10_000:  # datasets are bounded by the catalog; stay bounded regardless
                self._children.clear()
            children = self._children[key] = (self.requests.labels(decision, dataset),
                                              self.latency.labels(operation))
        children[0].inc()
        children[1].observe(seconds)

    def observe_audit(self, seconds: float, records: int) -> None:
        self.audit_write.observe(seconds)
        self.audit_batch.observe(records)

    def watch_chain(self, read: Callable[[], ChainGauges | None]) -> None:
        """Gauges of the last check of the audit chain, read at each scrape (none before the first check)."""
        self.registry.register(_ChainCollector(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ChainGauges(NamedTuple):
    ok: bool
    finished: float  # Unix time
    seconds: float
    records: int
    bad_id: int | None


class _ChainCollector(Collector):
    def __init__(self, read: Callable[[], ChainGauges | None]):
        self._read = read

    def collect(self) -> Iterator[Metric]:
        last = self._read()
        if last is None:
            return
        yield GaugeMetricFamily("agentgate_audit_verify_ok", "1 if the last check of the audit chain found it "
                                "intact, 0 if it found a break", value=1.0 if last.ok else 0.0)
        yield GaugeMetricFamily("agentgate_audit_verify_last_seconds",
                                "Unix time the last check of the audit chain ended", value=last.finished)
        yield GaugeMetricFamily("agentgate_audit_verify_duration_seconds",
                                "How long the last check of the audit chain took", value=last.seconds)
        yield GaugeMetricFamily("agentgate_audit_verified_records", "Records the last check of the audit chain "
                                "found intact (before the break, if it found one)", value=float(last.records))
        yield GaugeMetricFamily("agentgate_audit_verify_bad_record", "The first bad record the last check of the "
                                "audit chain found (0: none)", value=float(last.bad_id or 0))

    def describe(self) -> Iterator[Metric]:
        return iter(())
