"""The worker role: takes calls from Redis when it has a free sandbox slot, runs them on the
shared :class:`~service.runtime.Runtime`, and sends outputs, logs and answers to the front
that asked (see ``streams`` for the layout).

Loops, each surviving a Redis outage by reconnecting with backoff:

- one *take* loop per actor: it reads a call (XREADGROUP) only while fewer than the actor's
  ``pool.max_workers`` calls run here, so a call never waits in a busy worker's queue;
- the *heartbeat*: the registration (actors served, TTL ``worker_timeout_s``), a refresh of
  the idle time of each running call's entry (XCLAIM JUSTID), so that only calls of silent
  workers look abandoned, then the reclaim of abandoned calls (XAUTOCLAIM): queued again
  with ``attempt + 1``, or failed with -32009 once ``max_attempts`` runs died;
- the *control* reader: ``cancel`` kills the call's sandbox, ``load`` loads a manifest from
  this worker's own checkout and replies to the front.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors

from service.cluster.metrics import ClusterGauges, ClusterMetrics
from service.cluster.streams import (
    BACKEND,
    BLOCK_MS,
    BROKER_ERRORS,
    GROUP,
    Backoff,
    Keys,
    connect,
    decode,
    encode,
    ensure_group,
    error_message,
)
from service.errors import InternalError, RpcError, SandboxUnavailable
from service.manifest.model import ActorDef
from service.runtime import Emit, Runtime
from service.settings import Settings

log = logging.getLogger(__name__)

RECLAIM_BATCH = 100
CANCEL_MEMORY_S = 300.0  # a cancel broadcast is remembered this long (the call may be queued)
CONTROL_MAXLEN = 1000


def new_id(role: str) -> str:
    """A process id unique across restarts: host, pid and a random part."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass
class _Job:
    """One call running here."""

    message: dict[str, Any]
    stream: str
    entry_id: str
    task: asyncio.Task[None] | None = None

    @property
    def call_id(self) -> str:
        return str(self.message["call_id"])

    @property
    def attempt(self) -> int:
        return int(self.message.get("attempt", 1))


class ClusterWorker:
    """A worker on a started runtime; ``start()`` then ``aclose()``."""

    def __init__(self, settings: Settings, runtime: Runtime,
                 metrics: ClusterMetrics | None = None) -> None:
        self.settings = settings
        self.cfg = settings.cluster
        self.runtime = runtime
        self.metrics = metrics
        self.id = new_id("worker")
        self.keys = Keys(self.cfg.key_prefix)
        self.redis = connect(self.cfg)
        self.blocking = connect(self.cfg, blocking=True)
        self.broker_up = False
        self.backlog: dict[str, int] = {}
        self._jobs: dict[str, _Job] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._loops: set[asyncio.Task[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancelled: dict[str, float] = {}
        self._changed = asyncio.Event()
        self._stopping = False

    def gauges(self) -> ClusterGauges:
        return ClusterGauges(broker_up=self.broker_up, backlog=dict(self.backlog))

    async def start(self) -> None:
        """Start the loops; returns at once (Redis may still be unreachable)."""
        for loop in (self._heartbeat_loop(), self._control_loop()):
            self._loops.add(asyncio.create_task(loop))
        log.info("cluster worker %s started", self.id)

    async def aclose(self, grace_s: float = 0) -> None:
        """Take no more calls, let running ones finish for ``grace_s``, then stop.

        Calls still running are cancelled without an answer: their entries stay pending
        and another worker re-runs them once this one's heartbeat is gone.
        """
        self._stopping = True
        for task in [*self._loops, *self._readers.values()]:
            task.cancel()
        running = {job.task for job in self._jobs.values() if job.task is not None}
        if running and grace_s > 0:
            await asyncio.wait(running, timeout=grace_s)
        for task in running:
            task.cancel()
        await asyncio.gather(*self._loops, *self._readers.values(), *running, *self._tasks,
                             return_exceptions=True)
        await self._deregister()
        await self.redis.aclose()
        await self.blocking.aclose()
        log.info("cluster worker %s stopped", self.id)

    # --- heartbeat, registration, reclaim ---------------------------------------------

    async def _heartbeat_loop(self) -> None:
        backoff = Backoff(self.cfg.reconnect_max_s)
        while True:
            try:
                await self._beat()
            except BROKER_ERRORS as exc:
                self._broker_lost(exc)
                await backoff.wait()
                continue
            backoff.reset()
            await asyncio.sleep(self.cfg.heartbeat_s)

    def _broker_lost(self, exc: BaseException) -> None:
        if self.broker_up:
            log.warning("cluster worker %s lost Redis: %s; reconnecting", self.id, exc)
        self.broker_up = False

    async def _beat(self) -> None:
        actors = self.runtime.actors()
        await self._register(actors)
        if not self.broker_up:
            log.info("cluster worker %s connected to Redis", self.id)
        self.broker_up = True
        await self._reclaim(actors)

    async def _register(self, actors: list[ActorDef]) -> None:
        """Registration, idle-time refresh of running calls, backlog sizes: one round trip."""
        self._sync_readers(actors)
        registration = {
            "worker_id": self.id, "host": socket.gethostname(), "pid": os.getpid(),
            "actors": {a.id: {"descriptor": a.descriptor(), "max_workers": a.pool.max_workers,
                              "max_queue": a.pool.max_queue} for a in actors},
        }
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.worker(self.id), json.dumps(registration),
                 px=int(self.cfg.worker_timeout_s * 1000))
        pipe.zadd(self.keys.workers, {self.id: time.time()})
        for job in list(self._jobs.values()):
            pipe.xclaim(job.stream, GROUP, self.id, 0, [job.entry_id], justid=True)
        for actor in actors:
            pipe.xlen(self.keys.calls(actor.id))
        replies = await pipe.execute(raise_on_error=False)
        for reply in replies:  # a lost group (Redis restarted) fails XCLAIM: the readers fix it
            if isinstance(reply, BROKER_ERRORS):
                raise reply
        lengths = replies[len(replies) - len(actors):]
        self.backlog = {a.id: n for a, n in zip(actors, lengths, strict=True)
                        if isinstance(n, int)}

    async def _reclaim(self, actors: list[ActorDef]) -> None:
        idle_ms = int(self.cfg.worker_timeout_s * 1000)
        for actor in actors:
            stream = self.keys.calls(actor.id)
            try:
                reply = await self.redis.xautoclaim(stream, GROUP, self.id, idle_ms, "0-0",
                                                    count=RECLAIM_BATCH)
            except redis_errors.ResponseError:  # no group yet: nothing to reclaim
                continue
            for entry_id, fields in reply[1]:
                await self._requeue(actor.id, stream, entry_id, fields)

    async def _requeue(self, actor_id: str, stream: str, entry_id: str,
                       fields: dict[str, str] | None) -> None:
        """Queue an abandoned call again (attempt + 1), or fail it after max_attempts."""
        message = decode(fields or {})
        pipe = self.redis.pipeline(transaction=True)
        if message is not None and "call_id" in message:
            attempt = int(message.get("attempt", 1))
            front = self.keys.events(str(message.get("front")))
            if attempt < self.cfg.max_attempts:
                pipe.xadd(stream, encode({**message, "attempt": attempt + 1}),
                          maxlen=self.cfg.stream_maxlen, approximate=True)
                self._add_event(pipe, front, {"kind": "retry", "call_id": message["call_id"],
                                              "attempt": attempt + 1})
                log.warning("call %s of %s: its worker stopped during attempt %d; queued again",
                            message["call_id"], actor_id, attempt)
            else:
                reason = (f"the worker running the call stopped, {attempt} time(s); "
                          f"max_attempts is {self.cfg.max_attempts}")
                error = error_message(SandboxUnavailable(BACKEND, reason))
                self._add_event(pipe, front, {"kind": "error", "call_id": message["call_id"],
                                              "attempt": attempt, "error": error})
                log.warning("call %s of %s: %s; failing it", message["call_id"], actor_id,
                            reason)
        pipe.xack(stream, GROUP, entry_id)
        pipe.xdel(stream, entry_id)
        await pipe.execute()
        self._count("reclaimed", actor_id)
        if message is not None and "call_id" in message:
            done = int(message.get("attempt", 1)) >= self.cfg.max_attempts
            self._count("exhausted" if done else "retried", actor_id)

    def _add_event(self, pipe: Any, front_stream: str, event: dict[str, Any]) -> None:
        # NOMKSTREAM: the events of a front that is gone must not bring its stream back.
        pipe.xadd(front_stream, encode(event), maxlen=self.cfg.stream_maxlen, approximate=True,
                  nomkstream=True)

    async def _deregister(self) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(self.keys.worker(self.id))
            pipe.zrem(self.keys.workers, self.id)
            await pipe.execute()
        except BROKER_ERRORS as exc:
            log.info("could not deregister worker %s: %s", self.id, exc)

    # --- taking calls -----------------------------------------------------------------

    def _sync_readers(self, actors: list[ActorDef]) -> None:
        """One take loop per actor served (a loaded actor gets one at once)."""
        if self._stopping:
            return
        for actor in actors:
            reader = self._readers.get(actor.id)
            if reader is None or reader.done():
                self._readers[actor.id] = asyncio.create_task(self._take_loop(actor.id))

    def _free_slots(self, actor_id: str) -> int:
        running = sum(1 for job in self._jobs.values() if job.message["actor_id"] == actor_id)
        return self.runtime.get(actor_id).pool.max_workers - running

    async def _take_loop(self, actor_id: str) -> None:
        stream = self.keys.calls(actor_id)
        backoff = Backoff(self.cfg.reconnect_max_s)
        while not self._stopping:
            while (free := self._free_slots(actor_id)) <= 0:
                await self._changed.wait()
            try:
                reply = await self.blocking.xreadgroup(GROUP, self.id, {stream: ">"},
                                                       count=free, block=BLOCK_MS)
            except redis_errors.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._retry_on_broker_error(ensure_group(self.redis, stream), backoff)
                continue
            except BROKER_ERRORS as exc:
                self._broker_lost(exc)
                await backoff.wait()
                continue
            backoff.reset()
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    self._take(actor_id, stream, entry_id, fields)

    async def _retry_on_broker_error(self, step: Coroutine[Any, Any, None],
                                     backoff: Backoff) -> None:
        try:
            await step
        except BROKER_ERRORS as exc:
            self._broker_lost(exc)
            await backoff.wait()

    def _take(self, actor_id: str, stream: str, entry_id: str,
              fields: dict[str, str] | None) -> None:
        message = decode(fields or {})
        if message is None or "call_id" not in message:
            log.warning("dropping a malformed call entry %s of %s", entry_id, stream)
            self._spawn(self._finish(_Job({"call_id": ""}, stream, entry_id), None))
            return
        job = _Job({**message, "actor_id": actor_id}, stream, entry_id)
        if job.call_id in self._cancelled:  # cancelled while it was queued
            self._spawn(self._finish(job, None))
            return
        self._count("taken", actor_id)
        self._jobs[job.call_id] = job
        job.task = asyncio.create_task(self._run(job))

    async def _run(self, job: _Job) -> None:
        message = job.message
        front = self.keys.events(str(message.get("front")))
        emit = None if message.get("quiet") else self._emitter(job, front)
        answer: dict[str, Any] | None
        try:
            result = await self.runtime.process(
                message["actor_id"], message.get("payload"), message.get("config"),
                message.get("state"), message.get("timestamp"), emit=emit)
            answer = {"kind": "result", "result": result}
        except asyncio.CancelledError:
            if self._stopping:  # no answer and no ack: another worker runs it again
                self._end(job)
                raise
            answer = None  # cancelled by its front, which has answered already
        except RpcError as exc:
            answer = {"kind": "error", "error": error_message(exc)}
        except Exception:
            log.exception("call %s of %s failed inside the worker", job.call_id,
                          message["actor_id"])
            answer = {"kind": "error", "error": error_message(InternalError())}
        if answer is not None:
            answer.update(call_id=job.call_id, attempt=job.attempt)
        try:
            await self._finish(job, answer, front)
        finally:
            self._end(job)

    def _end(self, job: _Job) -> None:
        if self._jobs.get(job.call_id) is job:
            del self._jobs[job.call_id]
        self._changed.set()
        self._changed = asyncio.Event()

    def _emitter(self, job: _Job, front: str) -> Emit:
        async def emit(kind: str, params: dict[str, Any]) -> None:
            event = {"kind": kind, "call_id": job.call_id, "attempt": job.attempt,
                     "params": params}
            try:
                await self.redis.xadd(front, encode(event), maxlen=self.cfg.stream_maxlen,
                                      approximate=True, nomkstream=True)
            except BROKER_ERRORS as exc:  # the front fails the call: it lost Redis too
                log.debug("event of call %s lost: %s", job.call_id, exc)

        return emit

    async def _finish(self, job: _Job, answer: dict[str, Any] | None,
                      front: str = "") -> None:
        """Send the answer, ack and delete the entry: one transaction, retried while Redis
        is away for up to ``worker_timeout_s`` (after that the call is re-run elsewhere)."""
        deadline = time.monotonic() + self.cfg.worker_timeout_s
        backoff = Backoff(self.cfg.reconnect_max_s)
        while True:
            pipe = self.redis.pipeline(transaction=True)
            if answer is not None:
                self._add_event(pipe, front, answer)
            pipe.xack(job.stream, GROUP, job.entry_id)
            pipe.xdel(job.stream, job.entry_id)
            try:
                await pipe.execute()
                return
            except redis_errors.ResponseError as exc:  # Redis restarted: no group, no entry
                log.info("call %s answered after its entry was lost: %s", job.call_id, exc)
                return
            except BROKER_ERRORS as exc:
                if time.monotonic() > deadline:
                    log.warning("answer of call %s lost: %s", job.call_id, exc)
                    return
                await backoff.wait()

    # --- control: cancel and load -----------------------------------------------------

    async def _control_loop(self) -> None:
        backoff = Backoff(self.cfg.reconnect_max_s)
        last: str | None = None
        while True:
            try:
                if last is None:
                    newest = await self.redis.xrevrange(self.keys.control, count=1)
                    last = newest[0][0] if newest else "0-0"
                reply = await self.blocking.xread({self.keys.control: last}, count=100,
                                                  block=BLOCK_MS)
            except BROKER_ERRORS as exc:
                self._broker_lost(exc)
                await backoff.wait()
                continue
            backoff.reset()
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    self._control(decode(fields) or {})

    def _control(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "cancel":
            self._cancel(str(message.get("call_id")))
        elif op == "load":
            self._spawn(self._load(message))

    def _cancel(self, call_id: str) -> None:
        now = time.monotonic()
        self._cancelled = {k: t for k, t in self._cancelled.items() if now - t < CANCEL_MEMORY_S}
        self._cancelled[call_id] = now
        job = self._jobs.get(call_id)
        if job is not None and job.task is not None:
            log.info("cancelling call %s at its front's request", call_id)
            job.task.cancel()

    async def _load(self, message: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"kind": "load", "token": message.get("token"),
                                 "worker_id": self.id}
        try:
            actor, replaced = await self.runtime.load(message.get("file_path"))
            reply.update(actor=actor.descriptor(), replaced=replaced)
            await self._register(self.runtime.actors())  # serve it before saying so
        except RpcError as exc:
            log.info("load of %r refused here: %s", message.get("file_path"), exc.message)
            reply["error"] = error_message(exc)
        except BROKER_ERRORS as exc:
            log.warning("load reply lost: %s", exc)
            return
        try:
            await self.redis.xadd(self.keys.events(str(message.get("front"))), encode(reply),
                                  maxlen=self.cfg.stream_maxlen, approximate=True,
                                  nomkstream=True)
        except BROKER_ERRORS as exc:
            log.warning("load reply lost: %s", exc)

    # --- helpers ----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count(self, what: str, actor_id: str) -> None:
        if self.metrics is not None:
            counter: Callable[[str], None] = getattr(self.metrics, what)
            counter(actor_id)
