"""The Prometheus instruments every room records into, on one registry per process (no global state).

`open_engine` makes one `Metrics` and hands it to the worker, the executor, the
scheduler and the downstream pool; `/metrics` (HTTP transports) and
`--metrics-port` (`pao worker`, stdio `pao serve`) expose `Metrics.registry`.
Gauges that describe the database (queue depth, the oldest due run) are read
from Postgres when scraped, so every replica reports the same queue.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE_LATEST
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Fire lateness and claims are milliseconds when healthy and seconds when not.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """One process's instruments. Label values are bounded: statuses, triggers, the servers of mcp.json
    and their tools, table names."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[Any, ...], Any] = {}
        r = self.registry
        self.runs = Counter(
            "pao_runs", "Runs this process finished, by final status and trigger.", ["status", "trigger"], registry=r
        )
        self.retries = Counter("pao_run_retries", "Failed attempts this process sent back to the queue.", registry=r)
        self.queue_depth = Gauge("pao_queue_depth", "Queued runs that are due (claimable now).", registry=r)
        self.running = Gauge("pao_runs_running", "Runs executing on any worker.", registry=r)
        self.oldest_due_age = Gauge(
            "pao_queue_oldest_due_age_seconds", "How long the oldest due queued run has waited (0: none).", registry=r
        )
        self.claim_latency = Histogram(
            "pao_claim_latency_seconds", "Duration of one claim statement.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.fire_lateness = Histogram(
            "pao_fire_lateness_seconds",
            "Claim time minus scheduled time of a run's first attempt, by trigger.",
            ["trigger"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.step_duration = Histogram(
            "pao_step_duration_seconds",
            "Duration of one pipeline step, by the tool it uses and its status.",
            ["uses", "status"],
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.downstream_up = Gauge(
            "pao_downstream_up", "1 when this process holds a working session to the server.", ["server"], registry=r
        )
        self.downstream_restarts = Counter(
            "pao_downstream_restarts", "Sessions re-opened after a server exited or hung.", ["server"], registry=r
        )
        self.scheduler_pass = Histogram(
            "pao_scheduler_pass_seconds", "Duration of one scheduler pass.", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.scheduler_failed_passes = Counter(
            "pao_scheduler_failed_passes", "Scheduler passes that failed and were retried.", registry=r
        )
        self.relay_lag = Gauge(
            "pao_relay_lag_seconds", "Age of the oldest event the Redis relay has not mirrored yet.", registry=r
        )
        self.retention_deleted = Counter(
            "pao_retention_deleted", "Rows deleted by the retention pruner, by table.", ["table"], registry=r
        )

    # The hot path (every run, every step, every fire) records through these: prometheus_client's
    # `labels()` takes a lock and rebuilds the label tuple on every call, which cost a fifth of a worker's
    # CPU on a no-op drain; a labelled child is looked up once per label set and kept.

    def run_finished(self, status: str, trigger: str) -> None:
        self._child(self.runs, status, trigger).inc()

    def step_finished(self, uses: str, status: str, seconds: float) -> None:
        self._child(self.step_duration, uses, status).observe(seconds)

    def fired(self, trigger: str, lateness: float) -> None:
        self._child(self.fire_lateness, trigger).observe(lateness)

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
