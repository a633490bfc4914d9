"""Prometheus metrics of the cluster roles, added to the app's own registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass
class ClusterGauges:
    """What a role knows of the cluster right now (read at scrape time)."""

    broker_up: bool = False
    live_workers: int | None = None  # fronts know it; a worker alone does not
    backlog: dict[str, int] = field(default_factory=dict)  # actor id -> calls queued or running


class _GaugeCollector(Collector):
    def __init__(self, role: str, gauges: Callable[[], ClusterGauges]) -> None:
        self._role = role
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        now = self._gauges()
        up = GaugeMetricFamily("service_cluster_broker_up", "1 while Redis answers.",
                               labels=["role"])
        up.add_metric([self._role], 1 if now.broker_up else 0)
        yield up
        backlog = GaugeMetricFamily("service_cluster_backlog",
                                    "Calls of an actor in Redis, queued or running.",
                                    labels=["role", "actor"])
        for actor_id, depth in sorted(now.backlog.items()):
            backlog.add_metric([self._role, actor_id], depth)
        yield backlog
        if now.live_workers is not None:
            live = GaugeMetricFamily("service_cluster_live_workers",
                                     "Workers whose heartbeat is current.", labels=["role"])
            live.add_metric([self._role], now.live_workers)
            yield live


class ClusterMetrics:
    """Counters of one role (front or worker); ``role`` is a label on each."""

    def __init__(self, registry: CollectorRegistry, role: str,
                 gauges: Callable[[], ClusterGauges]) -> None:
        self.role = role
        labels = ["role", "actor"]
        self._dispatched = Counter("service_cluster_dispatched", "Calls a front sent to Redis.",
                                   labels, registry=registry)
        self._refused = Counter("service_cluster_busy",
                                "Calls a front refused with -32008 (cluster-wide backlog full).",
                                labels, registry=registry)
        self._taken = Counter("service_cluster_taken", "Calls a worker took from Redis.",
                              labels, registry=registry)
        self._reclaimed = Counter("service_cluster_reclaimed",
                                  "Calls of dead workers a worker reclaimed.", labels,
                                  registry=registry)
        self._retried = Counter("service_cluster_retried",
                                "Calls queued again after their worker died.", labels,
                                registry=registry)
        self._exhausted = Counter("service_cluster_exhausted",
                                  "Calls failed with -32009 after max_attempts runs.", labels,
                                  registry=registry)
        self._expired = Counter("service_cluster_expired",
                                "Calls a worker did not start (or queue again): their front "
                                "had stopped waiting.", labels, registry=registry)
        self._malformed = Counter("service_cluster_malformed",
                                  "Entries read from Redis that were malformed and dropped.",
                                  ["role", "kind"], registry=registry)
        registry.register(_GaugeCollector(role, gauges))

    def dispatched(self, actor: str) -> None:
        self._dispatched.labels(self.role, actor).inc()

    def refused(self, actor: str) -> None:
        self._refused.labels(self.role, actor).inc()

    def taken(self, actor: str) -> None:
        self._taken.labels(self.role, actor).inc()

    def reclaimed(self, actor: str) -> None:
        self._reclaimed.labels(self.role, actor).inc()

    def retried(self, actor: str) -> None:
        self._retried.labels(self.role, actor).inc()

    def exhausted(self, actor: str) -> None:
        self._exhausted.labels(self.role, actor).inc()

    def expired(self, actor: str) -> None:
        self._expired.labels(self.role, actor).inc()

    def malformed(self, kind: str) -> None:
        """``kind``: call, event, control or registration."""
        self._malformed.labels(self.role, kind).inc()
