"""Prometheus metrics, in a registry of their own per app (no process-wide globals).

Besides calls and pools: the process (RSS, CPU, open fds), open connections, sandbox boots
and boot failures, and ``service_build_info``. No ``_created`` series: they double the
series count and no dashboard reads them.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

PoolStats = Callable[[], dict[str, tuple[int, int, int]]]  # actor id -> (busy, idle, queued)
BootStats = Callable[[], dict[str, tuple[int, int]]]  # actor id -> (boots, failed boots)
Count = Callable[[], int]
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


class _ServerCollector(Collector):
    """Read at scrape time: open connections, sandbox boots, and the build."""

    def __init__(self, connections: Count | None, boot_stats: BootStats | None) -> None:
        self._connections = connections
        self._boot_stats = boot_stats

    def collect(self) -> Iterator[Metric]:
        yield _build_info()
        if self._connections is not None:
            yield GaugeMetricFamily("service_connections", "Open WebSocket connections.",
                                    value=self._connections())
        if self._boot_stats is not None:
            boots = CounterMetricFamily("service_sandbox_boots", "Sandboxes started.",
                                        labels=["actor"])
            failed = CounterMetricFamily("service_sandbox_boot_failures",
                                         "Sandboxes that failed to start.", labels=["actor"])
            for actor_id, (n_boots, n_failed) in sorted(self._boot_stats().items()):
                boots.add_metric([actor_id], n_boots)
                failed.add_metric([actor_id], n_failed)
            yield from (boots, failed)


def _build_info() -> GaugeMetricFamily:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("actor-sandbox-service")
    except PackageNotFoundError:
        ours = "unknown"
    info = GaugeMetricFamily("service_build_info", "The running build; always 1.",
                             labels=["version", "python"])
    info.add_metric([ours, platform.python_version()], 1)
    return info


class Metrics:
    """Call counters and durations, the process, plus pool, connection and boot figures for
    the callbacks given."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, pool_stats: PoolStats | None = None, *, connections: Count | None = None,
                 boot_stats: BootStats | None = None) -> None:
        disable_created_metrics()  # the library's own switch is process-wide; idempotent
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.registry.register(_ServerCollector(connections, boot_stats))
        self.calls = Counter("service_calls", "process calls by actor and outcome.",
                             ["actor", "outcome"], registry=self.registry)
        self.duration = Histogram("service_call_duration_seconds",
                                  "Wall time of process calls.", ["actor"],
                                  buckets=DURATION_BUCKETS_S, registry=self.registry)
        if pool_stats is not None:
            self.registry.register(_PoolCollector(pool_stats))
        # The children of each label set, looked up once: labels() costs more than the
        # update itself. Bounded like the series: actor ids are loaded ones (or "_unknown").
        self._call_children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}

    def observe_call(self, actor: str, outcome: str, duration_s: float) -> None:
        """Record one finished process call."""
        children = self._call_children.get((actor, outcome))
        if children is None:
            children = (self.calls.labels(actor=actor, outcome=outcome),
                        self.duration.labels(actor=actor))
            self._call_children[actor, outcome] = children
        calls, duration = children
        calls.inc()
        duration.observe(duration_s)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)
