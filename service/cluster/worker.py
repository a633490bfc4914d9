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
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_errors

from service.cluster.messages import Call, Malformed, parse_call, parse_control
from service.cluster.metrics import ClusterGauges, ClusterMetrics
from service.cluster.streams import (
    BACKEND,
    BLOCK_MS,
    BROKER_ERRORS,
    FIELD,
    GROUP,
    REQUEUE_LUA,
    Backoff,
    Keys,
    connect,
    encode,
    ensure_group,
    error_message,
    stop_if_cancelled,
    supervised,
)
from service.errors import InternalError, RpcError, SandboxUnavailable
from service.manifest.model import ActorDef
from service.rpc.core import encode as wire_text
from service.rpc.core import encoded
from service.rpc.methods import WrittenDescriptors
from service.runtime import Emit, Runtime
from service.settings import Settings

log = logging.getLogger(__name__)

RECLAIM_BATCH = 100
CANCEL_MEMORY_S = 300.0  # a cancel broadcast is remembered this long (the call may be queued)
# A call is not started once its front stopped waiting this long ago (clocks read apart)
EXPIRY_SLACK_MS = 1000
CONTROL_MAXLEN = 1000


def new_id(role: str) -> str:
    """A process id unique across restarts: host, pid and a random part."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass
class _Job:
    """One call running here."""

    call: Call
    stream: str
    entry_id: str
    deadline: float = 0.0  # monotonic: the call's time limit; undelivered outputs fail then
    task: asyncio.Task[None] | None = None
    undelivered: int | None = None  # seq (or -1: a log line) being retried right now
    sent: int = 0  # events (outputs and logs) of this run so far: each is numbered

    @property
    def call_id(self) -> str:
        return self.call.call_id

    @property
    def attempt(self) -> int:
        return self.call.attempt


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
        self._requeue_script = self.redis.register_script(REQUEUE_LUA)
        self.broker_up = False
        self.backlog: dict[str, int] = {}
        self._jobs: dict[str, _Job] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancelled: dict[str, float] = {}
        self._redis_ahead_ms: float | None = None  # Redis's clock - ours (each heartbeat)
        self._clock_refused = False
        self._changed = asyncio.Event()
        self._stopping = False
        self._descriptors = WrittenDescriptors()  # for the registration
        self._registered: list[tuple[Any, ...]] | None = None  # what Redis holds (_register)
        self._generation = 0

    def gauges(self) -> ClusterGauges:
        return ClusterGauges(broker_up=self.broker_up, backlog=dict(self.backlog))

    def stopped_loops(self) -> list[str]:
        """The background loops that ended (none should, before ``aclose``)."""
        return sorted(name for name, task in self._loops.items() if task.done())

    async def start(self) -> None:
        """Start the loops; returns at once (Redis may still be unreachable)."""
        for name, loop in (("heartbeat", self._heartbeat_loop()),
                           ("control", self._control_loop())):
            self._loops[name] = supervised(name, loop)
        log.info("cluster worker %s started", self.id)

    async def aclose(self, grace_s: float = 0) -> None:
        """Take no more calls, let running ones finish for ``grace_s``, then stop.

        The heartbeat goes on meanwhile, so no other worker takes a running call over.
        Calls still running at the end are cancelled without an answer and handed back
        (their entries look abandoned at once): another worker runs them again.
        """
        self._stopping = True
        for task in self._readers.values():
            task.cancel()
        running = {job.task for job in self._jobs.values() if job.task is not None}
        if running and grace_s > 0:
            await asyncio.wait(running, timeout=grace_s)
        unfinished = [job for job in self._jobs.values() if job.task in running]
        for task in running:
            task.cancel()
        await asyncio.gather(*self._readers.values(), *running, *self._tasks,
                             return_exceptions=True)
        await self._hand_back(unfinished)
        for task in self._loops.values():
            task.cancel()
        await asyncio.gather(*self._loops.values(), return_exceptions=True)
        await self._deregister()
        await self.redis.aclose()
        await self.blocking.aclose()
        log.info("cluster worker %s stopped", self.id)

    async def _hand_back(self, jobs: list[_Job]) -> None:
        """Make unfinished calls' entries look idle for ``worker_timeout_s`` already."""
        if not jobs:
            return
        idle_ms = int(self.cfg.worker_timeout_s * 1000)
        try:
            pipe = self.redis.pipeline(transaction=False)
            for job in jobs:
                pipe.xclaim(job.stream, GROUP, self.id, 0, [job.entry_id], idle=idle_ms,
                            justid=True)
            await pipe.execute(raise_on_error=False)
            log.info("handed %d unfinished call(s) back", len(jobs))
        except BROKER_ERRORS as exc:  # they are reclaimed after worker_timeout_s anyway
            log.info("could not hand back unfinished calls: %s", exc)

    # --- heartbeat, registration, reclaim ---------------------------------------------

    async def _heartbeat_loop(self) -> None:
        backoff = Backoff(self.cfg.reconnect_max_s)
        while True:
            stop_if_cancelled()
            try:
                await self._beat()
            except BROKER_ERRORS as exc:
                self._broker_lost(exc)
                await backoff.wait()
                continue
            except Exception:  # one bad round must not stop the heartbeat for good
                log.exception("cluster worker %s: heartbeat failed; going on", self.id)
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
        await self._read_clock()
        if not self._stopping:  # a draining worker only keeps its own calls alive
            await self._reclaim(actors)

    async def _read_clock(self) -> None:
        """How far Redis's clock (which stamps entry ids) is ahead of this machine's. A
        Redis user that may not run TIME (an ACL) leaves calls without expiry, and says so
        once: the heartbeat goes on."""
        before = time.time()
        try:
            seconds, micros = await self.redis.time()
        except redis_errors.ResponseError as exc:
            if not self._clock_refused:
                log.warning("cluster worker %s cannot read Redis's clock (%s): calls whose "
                            "front gave up may still run", self.id, exc)
            self._clock_refused = True
            self._redis_ahead_ms = None
            return
        self._redis_ahead_ms = seconds * 1000 + micros / 1000 - (before + time.time()) * 500

    def _late_ms(self, call: Call, entry_id: str) -> int | None:
        """How long ago (ms, past EXPIRY_SLACK_MS) the call's front stopped waiting for its
        answer: given up on while Redis was away, its entry was left (no XDEL, no cancel).
        None while it may still wait, or when the entry or the clock does not say."""
        expires = call.expires_ms(entry_id)
        if expires is None or self._redis_ahead_ms is None:
            return None
        late = time.time() * 1000 + self._redis_ahead_ms - expires
        return int(late) if late > EXPIRY_SLACK_MS else None

    async def _register(self, actors: list[ActorDef]) -> None:
        """Registration, idle-time refresh of running calls, backlog sizes: one round trip."""
        self._sync_readers(actors)
        # written once per actor: with megabytes of schemas, writing them out on every
        # heartbeat held the event loop for as long (~1 s for 16 MB)
        descriptors = await self._descriptors.of(actors, keep_only=True)
        served = [(a.id, d, a.pool.max_workers, a.pool.max_queue)
                  for a, d in zip(actors, descriptors, strict=True)]
        # Written again only when it changed (the same descriptors are the same objects):
        # else its expiry is renewed. A registration of megabytes went to Redis, and back
        # to every front, at every heartbeat.
        changed = self._registered is None or not _same(self._registered, served)
        keys = (self.keys.worker(self.id), self.keys.generation(self.id))
        ttl_ms = int(self.cfg.worker_timeout_s * 1000)
        pipe = self.redis.pipeline(transaction=False)
        if changed:
            self._generation += 1
            registration = {
                "worker_id": self.id, "host": socket.gethostname(), "pid": os.getpid(),
                "actors": {actor_id: {"descriptor": d, "max_workers": workers,
                                      "max_queue": queue}
                           for actor_id, d, workers, queue in served},
            }
            pipe.set(keys[0], wire_text(registration), px=ttl_ms)
            pipe.set(keys[1], str(self._generation), px=ttl_ms)
            expected: list[Any] = [True, True]
        else:  # a Redis that failed over to a late replica may hold an older one
            pipe.pexpire(keys[0], ttl_ms)
            pipe.pexpire(keys[1], ttl_ms)
            pipe.get(keys[1])
            expected = [True, True, str(self._generation)]
        pipe.zadd(self.keys.workers, {self.id: time.time()})
        for job in list(self._jobs.values()):
            pipe.xclaim(job.stream, GROUP, self.id, 0, [job.entry_id], justid=True)
        for actor in actors:
            pipe.xlen(self.keys.calls(actor.id))
        replies = await pipe.execute(raise_on_error=False)
        for reply in replies:  # a lost group (Redis restarted) fails XCLAIM: the readers fix it
            if isinstance(reply, BROKER_ERRORS):
                raise reply
        held = [r if isinstance(r, str) else r is True or r == 1
                for r in replies[:len(expected)]]
        if held != expected:  # gone (Redis restarted empty) or older: written again
            self._registered = None
            if not changed:
                log.info("cluster worker %s: its registration was lost; writing it again",
                         self.id)
                await self._register(actors)
            return
        self._registered = served
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
                try:
                    await self._requeue(actor.id, stream, entry_id, fields)
                except BROKER_ERRORS:
                    raise
                except Exception:  # logged; the other entries are still reclaimed
                    log.exception("could not reclaim entry %s of %s", entry_id, stream)

    async def _requeue(self, actor_id: str, stream: str, entry_id: str,
                       fields: dict[str, str] | None) -> None:
        """Queue an abandoned call again (attempt + 1), or fail it after max_attempts."""
        if fields is None:  # deleted while pending (its front gave up): forget it
            await self._ack(stream, entry_id)
            return
        try:
            call = parse_call(actor_id, fields)
        except Malformed as exc:
            await self._drop_call(stream, entry_id, exc)
            return
        if (late_ms := self._late_ms(call, entry_id)) is not None:
            await self._ack(stream, entry_id)  # its front has answered: nobody waits for it
            log.warning("call %s of %s: its worker stopped; its front stopped waiting %d ms "
                        "ago: not queued again", call.call_id, actor_id, late_ms)
            self._count("expired", actor_id)
            return
        front = self.keys.events(call.front)
        exhausted = call.attempt >= self.cfg.max_attempts
        if not exhausted:
            retry = encode({"entry": "ENTRY", "kind": "retry", "call_id": call.call_id,
                            "attempt": call.attempt + 1})[FIELD]
            again = call.message(call.attempt + 1, origin_ms=call.origin(entry_id))
            await self._requeue_script(keys=[stream, front], args=[
                self.cfg.stream_maxlen, FIELD, encode(again)[FIELD], GROUP, retry, entry_id])
            log.warning("call %s of %s: its worker stopped during attempt %d; queued again",
                        call.call_id, actor_id, call.attempt)
        else:
            reason = (f"the worker running the call stopped, {call.attempt} time(s); "
                      f"max_attempts is {self.cfg.max_attempts}")
            error = error_message(SandboxUnavailable(BACKEND, reason))
            await self._ack(stream, entry_id, (front, encode(
                {"kind": "error", "call_id": call.call_id, "attempt": call.attempt,
                 "error": error})))
            log.warning("call %s of %s: %s; failing it", call.call_id, actor_id, reason)
        self._count("reclaimed", actor_id)
        self._count("exhausted" if exhausted else "retried", actor_id)

    async def _drop_call(self, stream: str, entry_id: str, exc: Malformed) -> None:
        """Ack and delete a malformed call entry; its caller (if known) gets -32603."""
        log.warning("dropping malformed call entry %s of %s: %s", entry_id, stream, exc.reason)
        if self.metrics is not None:
            self.metrics.malformed("call")
        event = None
        if exc.reply_to is not None:
            front, call_id = exc.reply_to
            error = InternalError(f"Internal error: the call's entry in Redis is malformed "
                                  f"({exc.reason})")
            event = (self.keys.events(front), encode(
                {"kind": "error", "call_id": call_id, "error": error_message(error)}))
        await self._ack(stream, entry_id, event)

    async def _ack(self, stream: str, entry_id: str,
                   event: tuple[str, dict[str, str]] | None = None) -> None:
        """Ack and delete an entry, adding ``event`` (front stream, message) in the same
        transaction; an error of one command (a stream gone, a key of another type) is
        logged and does not stop the others."""
        pipe = self.redis.pipeline(transaction=True)
        if event is not None:
            pipe.xadd(event[0], event[1], maxlen=self.cfg.stream_maxlen, approximate=True,
                      nomkstream=True)
        pipe.xack(stream, GROUP, entry_id)
        pipe.xdel(stream, entry_id)
        self._log_errors(await pipe.execute(raise_on_error=False), stream, entry_id)

    @staticmethod
    def _log_errors(replies: list[Any], stream: str, entry_id: str) -> None:
        for reply in replies:
            if isinstance(reply, Exception):
                log.info("entry %s of %s: %s", entry_id, stream, reply)

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
                # not ``forever``: it ends when the worker drains (and is started again
                # at the next heartbeat if it ever ended otherwise)
                self._readers[actor.id] = supervised(f"take {actor.id}",
                                                     self._take_loop(actor.id), forever=False)

    def _free_slots(self, actor_id: str) -> int:
        running = sum(1 for job in self._jobs.values() if job.call.actor_id == actor_id)
        return self.runtime.get(actor_id).pool.max_workers - running

    async def _take_loop(self, actor_id: str) -> None:
        stream = self.keys.calls(actor_id)
        backoff = Backoff(self.cfg.reconnect_max_s)
        while not self._stopping:
            stop_if_cancelled()
            try:
                await self._take_some(actor_id, stream, backoff)
            except BROKER_ERRORS as exc:
                self._broker_lost(exc)
                await backoff.wait()
            except Exception:  # e.g. the actor was unloaded: the next heartbeat decides
                log.exception("cluster worker %s: taking calls of %s failed; going on",
                              self.id, actor_id)
                await backoff.wait()

    async def _take_some(self, actor_id: str, stream: str, backoff: Backoff) -> None:
        while (free := self._free_slots(actor_id)) <= 0:
            await self._changed.wait()
        try:
            reply = await self.blocking.xreadgroup(GROUP, self.id, {stream: ">"},
                                                   count=free, block=BLOCK_MS)
        except redis_errors.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await ensure_group(self.redis, stream)
            return
        backoff.reset()
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                self._take(actor_id, stream, entry_id, fields)

    def _take(self, actor_id: str, stream: str, entry_id: str,
              fields: dict[str, str] | None) -> None:
        try:
            call = parse_call(actor_id, fields)
        except Malformed as exc:
            self._spawn(self._drop_call(stream, entry_id, exc))
            return
        job = _Job(call, stream, entry_id)
        if job.call_id in self._cancelled:  # cancelled while it was queued
            self._spawn(self._finish(job, None))
            return
        if (late_ms := self._late_ms(call, entry_id)) is not None:
            log.warning("call %s of %s: its front stopped waiting %d ms ago; not started",
                        call.call_id, actor_id, late_ms)
            self._count("expired", actor_id)
            self._spawn(self._finish(job, None))
            return
        self._count("taken", actor_id)
        self._jobs[job.call_id] = job
        job.task = asyncio.create_task(self._run(job))

    async def _run(self, job: _Job) -> None:
        answer: dict[str, Any] | None
        try:
            answer = await self._answer(job)
        except asyncio.CancelledError:
            if self._stopping and job.call_id not in self._cancelled:
                self._end(job)  # no answer and no ack: another worker runs it again
                raise
            answer = None  # cancelled by its front, which has answered already
        try:
            await self._finish(job, answer)
        finally:
            self._end(job)

    async def _answer(self, job: _Job) -> dict[str, Any]:
        """The call's answer event (a result or an error)."""
        call = job.call
        emit = None if call.quiet else self._emitter(job, self.keys.events(call.front))
        try:
            actor = self.runtime.get(call.actor_id)
            job.deadline = time.monotonic() + actor.limits.timeout_s
            result = await self.runtime.process(call.actor_id, call.payload, call.config,
                                                call.state, call.timestamp, emit=emit)
            answer: dict[str, Any] = {"kind": "result", "result": result}
        except RpcError as exc:
            if job.undelivered is not None and not isinstance(exc, SandboxUnavailable):
                exc = outputs_lost(job)  # the time limit struck while an event waited
            answer = {"kind": "error", "error": error_message(exc)}
        except Exception:
            log.exception("call %s of %s failed inside the worker", job.call_id,
                          call.actor_id)
            answer = {"kind": "error", "error": _INTERNAL}
        answer.update(call_id=job.call_id, attempt=job.attempt)
        return answer

    def _end(self, job: _Job) -> None:
        if self._jobs.get(job.call_id) is job:
            del self._jobs[job.call_id]
        self._changed.set()
        self._changed = asyncio.Event()

    def _emitter(self, job: _Job, front: str) -> Emit:
        async def emit(kind: str, params: dict[str, Any]) -> None:
            job.sent += 1  # its number: the same on every try to send it (see _deliver)
            event = {"kind": kind, "call_id": job.call_id, "attempt": job.attempt,
                     "n": job.sent, "params": params}
            try:
                fields = encode(event)
            except RecursionError:  # as ``Connection.notify`` on one machine
                raise InternalError(f"Internal error: a {kind} notification is nested too "
                                    "deeply to encode as JSON") from None
            job.undelivered = params.get("seq", -1) if kind == "output" else -1
            await self._deliver(job, front, fields)
            job.undelivered = None

        return emit

    async def _deliver(self, job: _Job, front: str, fields: dict[str, str]) -> None:
        """Add one event, retried while Redis is away; an output is never dropped: past
        the call's time limit the call fails instead (and its front, which saw no answer,
        fails it too if the answer cannot get through either). A try whose reply was lost
        may have added it already: its front forwards an event number once."""
        backoff = Backoff(self.cfg.reconnect_max_s)
        while True:
            stop_if_cancelled()
            try:
                await self.redis.xadd(front, fields, maxlen=self.cfg.stream_maxlen,
                                      approximate=True, nomkstream=True)
                return
            except BROKER_ERRORS as exc:
                if time.monotonic() >= job.deadline:
                    log.warning("call %s: an event could not be sent: %s", job.call_id, exc)
                    raise outputs_lost(job) from None
                log.info("call %s: an event could not be sent yet: %s", job.call_id, exc)
                await backoff.wait()

    async def _finish(self, job: _Job, answer: dict[str, Any] | None) -> None:
        """Send the answer, ack and delete the entry: one transaction, retried while Redis
        is away for up to ``worker_timeout_s`` (after that the call is re-run elsewhere).

        Whatever the answer holds, the entry is acked: an answer that cannot be encoded
        becomes -32603, as on one machine, and so does one Redis refuses."""
        front = self.keys.events(job.call.front)
        fields = encodable(answer) if answer is not None else None
        deadline = time.monotonic() + self.cfg.worker_timeout_s
        backoff = Backoff(self.cfg.reconnect_max_s)
        while True:
            stop_if_cancelled()
            try:
                await self._ack(job.stream, job.entry_id,
                                None if fields is None else (front, fields))
                return
            except BROKER_ERRORS as exc:
                if time.monotonic() > deadline:
                    log.warning("answer of call %s lost: %s", job.call_id, exc)
                    return
                await backoff.wait()
            except Exception:  # e.g. EXECABORT: Redis refused the transaction as a whole
                log.exception("could not answer call %s", job.call_id)
                internal = None if answer is None else encode(
                    {**_answer_head(answer), "kind": "error", "error": _INTERNAL})
                if fields is None or fields == internal:
                    return
                fields = internal

    # --- control: cancel and load -----------------------------------------------------

    async def _control_loop(self) -> None:
        backoff = Backoff(self.cfg.reconnect_max_s)
        last: str | None = None
        while True:
            stop_if_cancelled()
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
            except Exception:
                log.exception("cluster worker %s: reading control failed; going on", self.id)
                await backoff.wait()
                continue
            backoff.reset()
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id
                    self._control(entry_id, fields)

    def _control(self, entry_id: str, fields: Any) -> None:
        try:
            message = parse_control(fields)
        except Malformed as exc:
            log.warning("dropping malformed entry %s of %s: %s", entry_id, self.keys.control,
                        exc.reason)
            if self.metrics is not None:
                self.metrics.malformed("control")
            return
        if message["op"] == "cancel":
            self._cancel(message["call_id"])
        else:
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
        reply: dict[str, Any] = {"kind": "load", "token": message["token"],
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
        except Exception:
            log.exception("load of %r failed", message.get("file_path"))
            reply["error"] = _INTERNAL
        try:
            await self.redis.xadd(self.keys.events(message["front"]), encodable(reply),
                                  maxlen=self.cfg.stream_maxlen, approximate=True,
                                  nomkstream=True)
        except BROKER_ERRORS as exc:
            log.warning("load reply lost: %s", exc)

    # --- helpers ----------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = supervised("task", coro, forever=False)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count(self, what: str, actor_id: str) -> None:
        if self.metrics is not None:
            counter: Callable[[str], None] = getattr(self.metrics, what)
            counter(actor_id)


_INTERNAL = error_message(InternalError())


def _answer_head(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: answer[k] for k in ("call_id", "attempt") if k in answer}


def encodable(answer: dict[str, Any]) -> dict[str, str]:
    """The fields of ``answer``'s entry; an answer JSON cannot hold (NaN, a value nested
    too deeply) becomes the -32603 the server would send on one machine."""
    fields = encoded(answer, encode, "answer of call", answer.get("call_id"))
    if not isinstance(fields, InternalError):
        return fields
    return encode({**_answer_head(answer), "kind": "error", "error": error_message(fields)})


def outputs_lost(job: _Job) -> SandboxUnavailable:
    """The error of a call whose outputs or logs could not all reach its front."""
    what = "a log line" if job.undelivered == -1 else f"output seq {job.undelivered}"
    return SandboxUnavailable(BACKEND, f"outputs were lost: {what} could not be sent to the "
                                       "front before the call's time limit")


def _same(registered: list[tuple[Any, ...]], served: list[tuple[Any, ...]]) -> bool:
    """The same actors, pool sizes and written descriptors (the very same objects)?"""
    return len(registered) == len(served) and all(
        a[0] == b[0] and a[1] is b[1] and a[2:] == b[2:]
        for a, b in zip(registered, served, strict=True))
