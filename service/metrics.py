"""Prometheus metrics, in a registry of their own per app (no process-wide globals)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

PoolStats = Callable[[], dict[str, tuple[int, int, int]]]  # actor id -> (busy, idle, queued)
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class _PoolCollector(Collector):
    """Sandbox and queue gauges, read from the runtime's pools at scrape time."""

    def __init__(self, pool_stats: PoolStats) -> None:
        self._pool_stats = pool_stats

    def collect(self) -> Iterator[Metric]:
        busy = GaugeMetricFamily("service_sandboxes_busy", "Sandboxes running a call.",
                                 labels=["actor"])
        idle = GaugeMetricFamily("service_sandboxes_idle", "Booted sandboxes waiting for a call.",
                                 labels=["actor"])
        queued = GaugeMetricFamily("service_queue_depth", "Calls waiting for a sandbox.",
                                   labels=["actor"])
        for actor_id, (n_busy, n_idle, n_queued) in sorted(self._pool_stats().items()):
            busy.add_metric([actor_id], n_busy)
            idle.add_metric([actor_id], n_idle)
            queued.add_metric([actor_id], n_queued)
        yield from (busy, idle, queued)


class Metrics:
    """Call counters and durations, plus pool gauges when ``pool_stats`` is given."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, pool_stats: PoolStats | None = None) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter("service_calls", "process calls by actor and outcome.",
                             ["actor", "outcome"], registry=self.registry)
        self.duration = Histogram("service_call_duration_seconds",
                                  "Wall time of process calls.", ["actor"],
                                  buckets=DURATION_BUCKETS_S, registry=self.registry)
        if pool_stats is not None:
            self.registry.register(_PoolCollector(pool_stats))

    def observe_call(self, actor: str, outcome: str, duration_s: float) -> None:
        """Record one finished process call."""
        self.calls.labels(actor=actor, outcome=outcome).inc()
        self.duration.labels(actor=actor).observe(duration_s)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
