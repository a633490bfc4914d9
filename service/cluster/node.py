"""One process of a cluster: a front, a worker, or both, per ``cluster.role``.

The server calls :func:`open_node` when ``cluster.redis_url`` is set; ``service worker``
calls :func:`serve_worker`, which also serves ``/healthz`` and ``/metrics`` over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from service.cluster.front import ClusterFront
from service.cluster.metrics import ClusterGauges, ClusterMetrics
from service.cluster.worker import ClusterWorker
from service.heap import settled
from service.metrics import Metrics
from service.runtime import Runtime, open_runtime
from service.settings import Settings, check_exposure

log = logging.getLogger(__name__)


@dataclass
class ClusterNode:
    """The roles this process plays; ``host`` is what the protocol's methods run on."""

    role: str
    front: ClusterFront | None = None
    worker: ClusterWorker | None = None

    @property
    def host(self) -> Any:
        return self.front

    def gauges(self) -> ClusterGauges:
        if self.front is not None:
            return self.front.gauges()
        return self.worker.gauges() if self.worker is not None else ClusterGauges()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(serving?, the /healthz body): a node without Redis is not serving."""
        roles = [r for r in (self.front, self.worker) if r is not None]
        up = all(r.broker_up for r in roles)
        stopped = [name for r in roles for name in r.stopped_loops()]
        body: dict[str, Any] = {"status": "ok" if up and not stopped else "unavailable",
                                "role": self.role, "broker": "up" if up else "unavailable"}
        if stopped:  # a loop that ended (it should not) leaves this node unable to serve
            body["stopped_loops"] = stopped
        if self.front is not None:
            body["live_workers"] = self.front.live_workers
            body["actors"] = self.front.actor_count
        if self.worker is not None:
            body["worker_id"] = self.worker.id
            body["actors_served"] = len(self.worker.runtime.actors())
        return up and not stopped, body


def needs_runtime(settings: Settings) -> bool:
    """A pure front runs no sandboxes; every other process does."""
    return not (settings.cluster.enabled and settings.cluster.role == "front")


@contextlib.asynccontextmanager
async def open_node(settings: Settings, runtime: Runtime | None,
                    registry: CollectorRegistry, role: str | None = None,
                    grace_s: float = 0) -> AsyncIterator[ClusterNode]:
    """Start the roles of ``role`` (default: the settings'); stop them on exit."""
    node = ClusterNode(role or settings.cluster.role)
    metrics = ClusterMetrics(registry, node.role, node.gauges)
    if node.role in ("front", "both"):
        node.front = ClusterFront(settings, metrics)
    if node.role in ("worker", "both"):
        if runtime is None:
            raise ValueError("a worker needs a runtime")
        node.worker = ClusterWorker(settings, runtime, metrics)
    for part in (node.front, node.worker):
        if part is not None:
            await part.start()
    try:
        yield node
    finally:
        if node.worker is not None:
            await node.worker.aclose(grace_s)
        if node.front is not None:
            await node.front.aclose()


# --- the `service worker` process -----------------------------------------------------


async def serve_worker(settings: Settings, extra_actors: Sequence[Path | str] = ()) -> None:
    """Run a worker until SIGINT/SIGTERM; /healthz and /metrics on settings.host:port."""
    check_exposure(settings)
    async with open_runtime(settings, extra_actors) as runtime:
        metrics = Metrics(runtime.pool_stats)
        async with open_node(settings, runtime, metrics.registry, role="worker",
                             grace_s=settings.shutdown_grace_s) as node:
            app = _health_app(node, metrics, settings.auth.tokens)
            runner = web.AppRunner(app, access_log=None,
                                   handle_signals=False)
            await runner.setup()
            try:
                await web.TCPSite(runner, settings.host, settings.port).start()
                log.info("worker health on http://%s:%d/healthz", settings.host, settings.port)
                async with settled():
                    await _until_signalled()
                log.info("shutting down: running calls get up to %ss",
                         settings.shutdown_grace_s)
                asyncio.get_running_loop().call_later(
                    settings.shutdown_grace_s + STOP_SLACK_S, _exit_stuck)
            finally:
                await runner.cleanup()


def _health_app(node: ClusterNode, metrics: Metrics,
                tokens: Sequence[str]) -> web.Application:
    from service.server import _unauthorized as unauthorized
    from service.server import authorized


    async def healthz(request: web.Request) -> web.Response:
        ok, body = node.health()
        return web.json_response(body, status=200 if ok else 503)

    async def metrics_handler(request: web.Request) -> web.Response:
        if not authorized(request, tokens):
            raise unauthorized()
        return web.Response(body=metrics.render(),
                            headers={"Content-Type": metrics.content_type})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    return app


STOP_SLACK_S = 5.0  # past shutdown_grace_s, the longest the worker's cleanup may take


def _exit_stuck() -> None:
    """A worker told to stop stops: if its cleanup hangs, say where, and exit."""
    for task in asyncio.all_tasks():
        stack = io.StringIO()
        task.print_stack(limit=8, file=stack)
        log.error("shutdown is stuck; a task still waits: %s", stack.getvalue())
    log.error("forced exit: the shutdown took more than shutdown_grace_s + %ss",
              STOP_SLACK_S)
    logging.shutdown()
    os._exit(1)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
