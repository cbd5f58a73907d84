"""Prometheus metrics, on a registry of the app's own (no global state).

Bounded: every label value comes from the code's fixed sets, the catalog or the configured sources, never from
what a client sent (a dataset the policy did not let the agent read, named or made up, is "(unknown)"), so the
number of series does not grow with client input.

Whole: under `agentgate serve --workers N` each worker writes its numbers to files in a directory `serve` made
for the process group ($PROMETHEUS_MULTIPROC_DIR, prometheus-client's multiprocess mode), and a scrape, whichever
worker answers it, adds up every worker's, including those of workers gone: a counter never goes backwards. A
gauge there is the value its last setter gave, whichever worker that was (each worker sets the same ones).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, Final, Literal, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

UNKNOWN = "(unknown)"  # any label value not in its fixed set
SEVERAL = "(several)"  # a SQL-mode read of several datasets
DECISIONS = frozenset({"allow", "deny", "pending", "error"})
BUDGETS = ("requests_per_minute", "rows_per_day")
SOURCE_FAILURES = ("unavailable", "timeout", "missing_table")
# A gauge under --workers N: the most recent value any live worker set.
_LAST_SET: Final[Literal["livemostrecent"]] = "livemostrecent"


def multiprocess_dir() -> str | None:
    """The directory the process group's numbers are kept in, when this process writes there (the variable
    was set before prometheus-client was first imported: it picks where values live at import)."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        return None
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")  # noqa: SIM112


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, *, operations: Iterable[str] = (), sources: Iterable[str] = ()) -> None:
        self.registry = r = CollectorRegistry()
        self._operations = frozenset(operations)
        self._sources = frozenset(sources)
        self._dir = multiprocess_dir()
        self.requests = Counter("agentgate_requests", "Data API requests by decision and dataset",
                                ["decision", "dataset"], registry=r)
        self.latency = Histogram("agentgate_request_duration_seconds", "Data API request latency, audit included",
                                 ["operation"], buckets=_LATENCY_BUCKETS, registry=r)
        self.audit_write = Histogram("agentgate_audit_write_duration_seconds",
                                     "Time to commit one group of audit records", buckets=_LATENCY_BUCKETS,
                                     registry=r)
        self.audit_wait = Histogram("agentgate_audit_record_wait_seconds", "Time a request waited for its audit "
                                    "record to be durable (queued and written)", buckets=_LATENCY_BUCKETS,
                                    registry=r)
        self.audit_batch = Histogram("agentgate_audit_batch_records", "Audit records per group commit",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.audit_failures = Counter("agentgate_audit_write_failures",
                                      "Requests refused because their audit record could not be written", registry=r)
        self.budget_refusals = Counter("agentgate_budget_refusals", "Requests refused because a budget was spent "
                                       "(or, rows_per_day, held by reads in flight)", ["budget"], registry=r)
        self.source_errors = Counter("agentgate_source_errors", "Reads a source failed, by source and kind",
                                     ["source", "kind"], registry=r)
        self.reloads = Counter("agentgate_policy_reloads", "Policy reloads by result (each worker and replica "
                               "reloads, and counts, on its own)", ["result"], registry=r)
        self.policy_refused = Gauge("agentgate_policy_reload_refused", "1 while the last change to the policy "
                                    "was refused (the last good policy still serves), else 0", registry=r,
                                    multiprocess_mode=_LAST_SET)
        self.revocations = Gauge("agentgate_revocations_active", "Revocations in force, by kind", ["kind"],
                                 registry=r, multiprocess_mode=_LAST_SET)
        # Every series of a fixed label set is there from the start, at 0 (rate() and alerts see it begin).
        for budget in BUDGETS:
            self.budget_refusals.labels(budget)
        for source in self._sources:
            for kind in SOURCE_FAILURES:
                self.source_errors.labels(source, kind)
        for result in ("accepted", "refused"):
            self.reloads.labels(result)
        self.policy_refused.set(0)
        self._chain: tuple[Gauge, Gauge, Gauge, Gauge, Gauge] | None = None
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def answered(self, operation: str, decision: str, dataset: str, seconds: float,
                 audit_seconds: float | None = None) -> None:
        """One request done; `dataset` is a label already (core._metric_dataset). The labelled children are kept:
        labels() costs more than the increment itself."""
        key = (operation, decision, dataset)
        children = self._children.get(key)
        if children is None:
            if len(self._children) > 10_000:  # the labels are bounded; the cache stays bounded regardless
                self._children.clear()
            children = self._children[key] = (
                self.requests.labels(decision if decision in DECISIONS else UNKNOWN, dataset),
                self.latency.labels(operation if operation in self._operations else UNKNOWN))
        children[0].inc()
        children[1].observe(seconds)
        if audit_seconds is not None:
            self.audit_wait.observe(audit_seconds)

    def observe_audit(self, seconds: float, records: int) -> None:
        self.audit_write.observe(seconds)
        self.audit_batch.observe(records)

    def budget_refused(self, budget: str) -> None:
        self.budget_refusals.labels(budget if budget in BUDGETS else UNKNOWN).inc()

    def source_failed(self, source: str | None, kind: str) -> None:
        self.source_errors.labels(source if source in self._sources else UNKNOWN,
                                  kind if kind in SOURCE_FAILURES else UNKNOWN).inc()

    def policy_reloaded(self, accepted: bool) -> None:
        self.reloads.labels("accepted" if accepted else "refused").inc()
        self.policy_refused.set(0 if accepted else 1)

    def revocations_in_force(self, agents: int, tokens: int) -> None:
        self.revocations.labels("agent").set(agents)
        self.revocations.labels("token").set(tokens)

    def chain_checked(self, last: ChainGauges) -> None:
        """The last verdict on the audit chain (chainwatch.ChainWatch). Its gauges appear with the first one: a 0
        before any check would read as a break."""
        if self._chain is None:
            r, mode = self.registry, _LAST_SET
            self._chain = (
                Gauge("agentgate_audit_verify_ok", "1 if the last check of the audit chain found it intact, 0 if "
                      "it found a break", registry=r, multiprocess_mode=mode),
                Gauge("agentgate_audit_verify_last_seconds", "Unix time the last check of the audit chain ended",
                      registry=r, multiprocess_mode=mode),
                Gauge("agentgate_audit_verify_duration_seconds", "How long the last check of the audit chain took",
                      registry=r, multiprocess_mode=mode),
                Gauge("agentgate_audit_verified_records", "Records the last check of the audit chain found intact "
                      "(before the break, if it found one)", registry=r, multiprocess_mode=mode),
                Gauge("agentgate_audit_verify_bad_record", "The first bad record the last check of the audit chain "
                      "found (0: none)", registry=r, multiprocess_mode=mode))
        ok, finished, seconds, records, bad = self._chain
        ok.set(1.0 if last.ok else 0.0)
        finished.set(last.finished)
        seconds.set(last.seconds)
        records.set(float(last.records))
        bad.set(float(last.bad_id or 0))

    def render(self) -> bytes:
        if self._dir is None:
            return generate_latest(self.registry)
        group = CollectorRegistry()  # every worker's files, read at each scrape
        MultiProcessCollector(group, path=self._dir)  # type: ignore[no-untyped-call]
        return generate_latest(group)

    def close(self) -> None:
        """This worker stops: its gauges leave the process group's (its counters stay in the sums)."""
        if self._dir is not None:
            mark_process_dead(os.getpid(), self._dir)  # type: ignore[no-untyped-call]


class ChainGauges(NamedTuple):
    ok: bool
    finished: float  # Unix time
    seconds: float
    records: int
    bad_id: int | None
