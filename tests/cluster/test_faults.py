"""Cluster mode under faults: bad entries in Redis, a worker cut from Redis mid-call, a
draining worker, an answer that is not JSON, a front giving up. Real redis-server and real
processes; each test takes seconds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cluster_support import Cluster, RedisServer, connected, free_port, wait_for
from redis.asyncio import Redis
from test_cluster import _true, health, live_workers, metrics, running_first, ws_url

pytestmark = pytest.mark.timeout(120)
FAULTY = Path(__file__).parent / "faulty"
PREFIX = "actors"
BOGUS_REGISTRATION = {"worker_id": "evil", "actors": {"zzz": {
    "descriptor": {"id": "zzz", "inports": {"a": {"schema": {"$schema": "urn:bogus"}}}},
    "max_workers": 1, "max_queue": 1}}}


@contextlib.asynccontextmanager
async def redis_client(server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


def entry(**message: Any) -> dict[str, str]:
    return {"m": json.dumps(message)}


async def fake_front(r: Redis, name: str) -> str:
    """An events stream for a front that is not there: what workers send to it stays."""
    stream = f"{PREFIX}:events:{name}"
    await r.xadd(stream, {"hello": name})
    return stream


async def errors_on(r: Redis, stream: str) -> dict[str, dict[str, Any]]:
    events = [json.loads(f["m"]) for _, f in await r.xrange(stream) if "m" in f]
    return {e["call_id"]: e["error"] for e in events if e.get("kind") == "error"}


async def front_and_worker(cluster: Cluster) -> tuple[Any, Any]:
    """A front, and one worker it sees live."""
    front = await cluster.front()
    worker, = await cluster.workers(1)
    await live_workers(front, 1)
    return front, worker


async def napper_answers(front: Any) -> None:
    """The front sees its one worker and gets a call of it answered."""
    await live_workers(front, 1)
    async with connected(ws_url(front)) as client:
        reply = await client.call("process", {"actor_id": "napper", "payload": {"ms": 1}},
                                  timeout_s=10)
    assert reply["result"]["return"] == {"slept_ms": 1}


async def test_malformed_call_entries_are_dropped_and_answered(cluster: Cluster) -> None:
    """Taken or reclaimed, a bad entry is acked, its caller told, the worker unharmed."""
    front, worker = await front_and_worker(cluster)
    calls = f"{PREFIX}:calls:napper"
    async with redis_client(cluster.redis) as r:
        events = await fake_front(r, "nobody")
        good = {"front": "nobody", "payload": {"ms": 1}, "quiet": True, "timestamp": 1}
        # Pending at a consumer that never answers: reclaimed after worker_timeout_s.
        await r.xadd(calls, entry(call_id="stale", attempt="x", **good))
        await r.xreadgroup("workers", "ghost", {calls: ">"}, count=1)
        for n in (1, 2):  # as many as the worker has slots for napper
            await r.xadd(calls, entry(call_id=f"poison{n}", attempt="x", **good))
        await r.xadd(calls, {"m": "not json"})

        async def answered() -> dict[str, Any] | None:
            found = await errors_on(r, events)
            return found if len(found) == 3 and await r.xlen(calls) == 0 else None

        errors = await wait_for(answered, timeout_s=15)
    assert set(errors) == {"stale", "poison1", "poison2"}
    assert all(e["code"] == -32603 and "malformed" in e["message"] for e in errors.values())
    await asyncio.sleep(1)  # a dead heartbeat would let the registration expire by now
    assert (await health(worker))[0] == 200
    await napper_answers(front)
    assert 'service_cluster_malformed_total{kind="call",role="worker"} 4.0' in \
        await metrics(worker)
    assert "dropping malformed call entry" in worker.log_tail()


async def test_bytes_that_are_not_utf8_are_malformed_entries(cluster: Cluster) -> None:
    """The Redis client failed to decode its own reply, before any check: the front read
    the same event again and again and answered no call; a front started meanwhile never
    became ready; every worker retried the call entry forever."""
    front, worker = await front_and_worker(cluster)
    async with redis_client(cluster.redis) as r:
        (events,) = await r.keys(f"{PREFIX}:events:*")
        calls = f"{PREFIX}:calls:napper"
        await r.xadd(events, {"m": b"\xff\xfe"})
        await r.xadd(calls, {"m": b"\xff\xfe"})
        await r.set(f"{PREFIX}:worker:evil", b"\xff\xfe", px=30000)
        await r.zadd(f"{PREFIX}:workers", {"evil": 1})
        late = await cluster.front()
        await wait_for(lambda: _xlen_is(r, calls, 0), timeout_s=10)
    for service in (front, late):
        await napper_answers(service)
    assert 'service_cluster_malformed_total{kind="call",role="worker"} 1.0' in \
        await metrics(worker)


async def test_unusable_registration_is_skipped(cluster: Cluster) -> None:
    front = await cluster.front()
    await cluster.workers(1)
    await live_workers(front, 1)
    async with redis_client(cluster.redis) as r:
        await r.set(f"{PREFIX}:worker:evil", json.dumps(BOGUS_REGISTRATION), px=30000)
        await r.zadd(f"{PREFIX}:workers", {"evil": 1})
        late = await cluster.front()  # starts (and becomes ready) while the key exists
        await cluster.workers(1)  # the running front's view still follows the cluster
        await live_workers(front, 2)
        await live_workers(late, 2)
    for service in (front, late):
        status, body = await health(service)
        assert status == 200 and body["actors"] == 1  # napper; not zzz
        assert "ignoring the registration of worker evil: inport a: unknown $schema" in \
            service.log_tail()


class CuttableProxy:
    """TCP between a worker and Redis; ``cut()`` drops every connection and refuses new
    ones until ``heal()``: a network partition of that worker alone."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.is_cut = False
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def cut(self) -> None:
        self.is_cut = True
        for client, upstream in list(self._pairs):
            client.transport.abort()
            upstream.transport.abort()

    def heal(self) -> None:
        self.is_cut = False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_cut:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._pairs.discard(pair)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


async def test_worker_cut_from_redis_mid_call_loses_no_output(cluster: Cluster) -> None:
    """The worker retries what it could not send: every seq reaches the caller, in order."""
    cluster.actors = (FAULTY,)
    front = await cluster.front()
    async with CuttableProxy(cluster.redis.port) as proxy:
        await cluster.workers(1, redis_url=f"redis://127.0.0.1:{proxy.port}/0")
        await live_workers(front, 1)
        async with connected(ws_url(front)) as client:
            request_id = await client.send("process", {"actor_id": "drip",
                                                       "payload": {"n": 30, "ms": 50}})
            await wait_for(lambda: _true(len(client.notes.get(request_id, [])) >= 5), 20)
            proxy.cut()
            await asyncio.sleep(1.0)  # shorter than worker_timeout_s: no re-run
            proxy.heal()
            answer = await client.response(request_id, timeout_s=30)
    seqs = [n["params"]["seq"] for n in client.notes[request_id]]
    assert seqs == list(range(30)), seqs
    assert len(answer["result"]["emitted"]) == 30


async def test_front_never_answers_success_past_a_gap_in_outputs(cluster: Cluster) -> None:
    """A gap in a call's output seqs (or a result emitting more than arrived) fails the
    call with -32009, and the worker is told to stop it."""
    front, worker = await front_and_worker(cluster)
    calls = f"{PREFIX}:calls:napper"
    async with redis_client(cluster.redis) as r, connected(ws_url(front)) as client:
        for forged in ({"kind": "output", "params": {"seq": 3, "port": "tick", "data": 3}},
                       {"kind": "result", "result": {"emitted": [{"seq": 0}], "outputs": {}}}):
            request_id = await client.send("process", {"actor_id": "napper",
                                                       "payload": {"ms": 20000}})
            listed = await wait_for(lambda: r.xrange(calls), timeout_s=10)
            message = json.loads(listed[-1][1]["m"])
            await r.xadd(f"{PREFIX}:events:{message['front']}", entry(
                call_id=message["call_id"], attempt=1, **forged))
            answer = await client.response(request_id, timeout_s=10)
            assert answer["error"]["code"] == -32009
            assert answer["error"]["data"]["reason"].startswith("outputs were lost")
            await wait_for(lambda: _xlen_is(r, calls, 0), timeout_s=10)
    assert "cancelling call" in worker.log_tail()
    # the operator hears of it too (once: a second one within 10 s is counted in the next)
    assert front.log_tail().count("of napper failed: outputs were lost: seq 3 came after -1") == 1


async def _xlen_is(r: Redis, stream: str, length: int) -> bool:
    return bool(await r.xlen(stream) == length)


async def test_draining_worker_keeps_its_calls(cluster: Cluster) -> None:
    """SIGTERM mid-call (shutdown_grace_s 2 > worker_timeout_s 1.5): the call finishes on
    its worker and runs nowhere else."""
    front = await cluster.front()
    workers = await cluster.workers(2)
    await live_workers(front, 2)
    async with connected(ws_url(front)) as client:
        request_id = await client.send("process", {"actor_id": "napper",
                                                   "payload": {"ms": 1900, "ticks": 1}})
        await wait_for(lambda: _true(client.notes.get(request_id)), 20)
        draining, other = await running_first(workers)
        assert draining.proc is not None
        draining.proc.send_signal(signal.SIGTERM)
        answer = await client.response(request_id, timeout_s=20)
    assert answer["result"]["return"] == {"slept_ms": 1900}
    assert draining.proc is not None and await draining.proc.wait() == 0
    await asyncio.sleep(2)  # the call's entry would look abandoned by now
    text = await metrics(other)
    assert 'service_cluster_taken_total{actor="napper"' not in text
    assert 'service_cluster_reclaimed_total{actor="napper"' not in text


async def test_unencodable_result_is_answered_once(cluster: Cluster) -> None:
    """A forged NaN result: the error one machine gives (the channel refuses it: -32004),
    after one run, not a re-run and -32009 (the worker could not encode its answer)."""
    cluster.actors = (FAULTY,)
    front, worker = await front_and_worker(cluster)
    async with connected(ws_url(front)) as client:
        reply = await client.call("process", {"actor_id": "nan_result", "payload": {}},
                                  timeout_s=30)
    assert reply["error"]["code"] == -32004
    assert reply["error"]["data"]["type"] == "ProtocolError"
    text = await metrics(worker)  # answered by its one run, not after a reclaim
    assert 'service_cluster_taken_total{actor="nan_result",role="worker"} 1.0' in text
    assert 'service_cluster_reclaimed_total{actor="nan_result"' not in text
    async with redis_client(cluster.redis) as r:
        assert await r.xlen(f"{PREFIX}:calls:nan_result") == 0


async def test_front_giving_up_removes_the_call(cluster: Cluster) -> None:
    """Past its deadline the front deletes the call's entry: no worker can start it."""
    front = await cluster.front(max_attempts=1, queue_timeout_s=0.5)
    async with redis_client(cluster.redis) as r:
        ghost = {"worker_id": "ghost", "actors": {"ghostly": {
            "descriptor": {"id": "ghostly", "inports": {}, "limits": {"timeout_s": 0.5}},
            "max_workers": 1, "max_queue": 1}}}
        await r.set(f"{PREFIX}:worker:ghost", json.dumps(ghost), px=30000)
        await r.zadd(f"{PREFIX}:workers", {"ghost": 1})
        await live_workers(front, 1)
        async with connected(ws_url(front)) as client:
            request_id = await client.send("process", {"actor_id": "ghostly", "payload": {}})
            await wait_for(lambda: r.xlen(f"{PREFIX}:calls:ghostly"), timeout_s=5)
            [(_, fields)] = await r.xrange(f"{PREFIX}:calls:ghostly")
            # how long the front waits: each attempt's time limit, the worker timeout and a
            # heartbeat, after the queue timeout (0.5 + 1.5 + 0.2 + 0.5 s)
            assert json.loads(fields["m"])["wait_ms"] == 2700
            reply = await client.response(request_id, timeout_s=30)
        assert reply["error"]["code"] == -32009
        assert reply["error"]["data"]["reason"] == "no worker answered in time"
        assert await r.xlen(f"{PREFIX}:calls:ghostly") == 0
        control = [json.loads(f["m"]) for _, f in await r.xrange(f"{PREFIX}:control")]
        assert [c["op"] for c in control] == ["cancel"]


async def test_a_call_its_front_gave_up_on_is_never_started(cluster: Cluster) -> None:
    """A front that gives up while Redis is away cannot delete the entry or broadcast a
    cancel: the entry carries how long the front waits (``wait_ms``, from the first
    attempt's entry id, in Redis's clock), and past that no worker starts it, nor queues
    it again when its worker died; calls still waited for run as before."""
    _, worker = await front_and_worker(cluster)
    calls = f"{PREFIX}:calls:napper"
    async with redis_client(cluster.redis) as r:
        events = await fake_front(r, "gone")
        seconds, _ = await r.time()
        long_ago = (seconds - 60) * 1000
        call = {"front": "gone", "payload": {"ms": 1}, "timestamp": 1}
        # pending at a worker that died: reclaimed after worker_timeout_s, not queued again
        # (one transaction: the blocked worker is served only after the ghost took it)
        async with r.pipeline(transaction=True) as both:
            both.xadd(calls, entry(call_id="dead", attempt=1, wait_ms=5000,
                                   origin_ms=long_ago, **call))
            both.xreadgroup("workers", "ghost", {calls: ">"}, count=1)
            await both.execute()
        await r.xadd(calls, entry(call_id="late", attempt=2, wait_ms=5000,
                                  origin_ms=long_ago, **call))
        await r.xadd(calls, entry(call_id="waited", attempt=1, wait_ms=60000, **call))

        async def settled() -> list[dict[str, Any]] | None:
            found = [json.loads(f["m"]) for _, f in await r.xrange(events) if "m" in f]
            done = await r.xlen(calls) == 0 and any(e["kind"] == "result" for e in found)
            return found if done and worker.log.read_text().count("stopped waiting") == 2 \
                else None

        answered = await wait_for(settled, timeout_s=20)
    assert [(e["kind"], e["call_id"]) for e in answered] == [("result", "waited")]
    assert 'service_cluster_expired_total{actor="napper",role="worker"} 2.0' in \
        await metrics(worker)
    log = worker.log.read_text()
    assert "call late of napper: its front stopped waiting" in log
    assert "call dead of napper: its worker stopped; its front stopped waiting" in log


async def test_a_stopped_loop_makes_healthz_fail(redis: RedisServer) -> None:
    from prometheus_client import CollectorRegistry

    from service.cluster.node import open_node
    from service.settings import ClusterSettings, Settings

    settings = Settings(cluster=ClusterSettings(redis_url=redis.url, heartbeat_s=0.1))
    async with open_node(settings, None, CollectorRegistry(), role="front") as node:
        assert node.front is not None
        await wait_for(lambda: _true(node.health()[0]), timeout_s=10)
        node.front._loops["view"].cancel()  # as if it had died
        await asyncio.sleep(0)
        ok, body = node.health()
    assert not ok and body["status"] == "unavailable" and body["stopped_loops"] == ["view"]


async def test_a_redis_user_without_time_leaves_the_heartbeat_running(tmp_path: Path) -> None:
    """An ACL user that may not run TIME: the worker says once that calls have no expiry
    then, and goes on heartbeating (its registration and reclaims), serving calls."""
    redis = RedisServer(tmp_path, extra_args=(
        "--user", "cluster", "on", ">pw", "~*", "&*", "+@all", "-time"))
    await redis.start()
    cluster = Cluster(redis, tmp_path)
    try:
        cluster.redis_url = f"redis://cluster:pw@127.0.0.1:{redis.port}/0"
        front = await cluster.front()
        worker, = await cluster.workers(1)
        await asyncio.sleep(2)  # past worker_timeout_s: a registration not renewed is gone
        await napper_answers(front)
        assert worker.log.read_text().count("cannot read Redis's clock") == 1
    finally:
        await cluster.aclose()
        await redis.stop()


async def test_an_event_its_worker_sent_twice_is_forwarded_once() -> None:
    """A worker whose XADD reply was lost sends the event again: a log line reached the
    caller twice (outputs were kept apart by their seq). Each run numbers its events."""
    from service.cluster.front import ClusterFront, _Pending

    call = _Pending("c", "a")
    sent: list[tuple[str, Any]] = []

    async def emit(kind: str, params: dict[str, Any]) -> None:
        sent.append((kind, params.get("seq", params.get("message"))))

    def log_line(attempt: int, n: int, message: str) -> dict[str, Any]:
        return {"kind": "log", "attempt": attempt, "n": n, "params": {"message": message}}

    def output(attempt: int, n: int, seq: int) -> dict[str, Any]:
        return {"kind": "output", "attempt": attempt, "n": n, "params": {"seq": seq}}

    for event in (log_line(1, 1, "a"), log_line(1, 1, "a"), output(1, 2, 0), output(1, 2, 0),
                  log_line(1, 3, "b"),
                  output(2, 1, 0), log_line(2, 2, "c"), log_line(2, 2, "c"),  # a re-run
                  output(1, 4, 1),  # the first run goes on: its new seq still counts
                  {"kind": "log", "attempt": 1, "params": {"message": "d"}},  # no number
                  {"kind": "log", "attempt": 1, "params": {"message": "d"}}):
        await ClusterFront._forward(call, event, emit)
    assert sent == [("log", "a"), ("output", 0), ("log", "b"), ("log", "c"), ("output", 1),
                    ("log", "d"), ("log", "d")]


def test_parsers_refuse_what_they_cannot_use() -> None:
    from service.cluster.messages import (
        Malformed,
        parse_call,
        parse_control,
        parse_event,
        parse_registration,
    )

    good = {"call_id": "c", "front": "f", "attempt": 2, "payload": {}}
    assert parse_call("a", entry(**good)).attempt == 2
    # how long the front waits: from the first attempt's entry id unless the entry says
    timed = parse_call("a", entry(**good, wait_ms=500))
    assert timed.expires_ms("1000-7") == 1500
    assert parse_call("a", entry(**good, wait_ms=500, origin_ms=10)).expires_ms("1000-7") == 510
    assert timed.message(3, origin_ms=1000)["origin_ms"] == 1000
    assert parse_call("a", entry(**good)).expires_ms("1000-7") is None
    for bad, reply_to in (({**good, "attempt": "x"}, ("f", "c")),
                          ({**good, "attempt": True}, ("f", "c")),
                          ({**good, "front": 3}, None), ({**good, "quiet": "no"}, ("f", "c")),
                          ({**good, "wait_ms": "1"}, ("f", "c")),
                          ({**good, "origin_ms": -1}, ("f", "c"))):
        with pytest.raises(Malformed) as caught:
            parse_call("a", entry(**bad))
        assert caught.value.reply_to == reply_to
    for fields in ({}, {"m": "[1]"}, {"m": "{"}, {"m": "1" * 5000}):
        with pytest.raises(Malformed):
            parse_call("a", fields)
    for event in ({"kind": "output", "call_id": "c", "params": {"seq": "1"}},
                  {"kind": "log", "call_id": "c", "n": "2", "params": {}},
                  {"kind": "error", "call_id": "c", "error": {"code": "x"}},
                  {"kind": "result", "call_id": "c", "result": {}},
                  {"kind": "retry", "call_id": "c", "attempt": None},
                  {"kind": "load", "token": "t", "worker_id": ["w"], "actor": {}},
                  {"kind": "boom", "call_id": "c"}):
        with pytest.raises(Malformed):
            parse_event(entry(**event))
    with pytest.raises(Malformed):
        parse_control(entry(op="cancel", call_id=None))
    for registration in ({"actors": []}, {"actors": {"a": {"descriptor": {"id": "b"}}}},
                         {"actors": {"a": {"descriptor": {"id": "a"}, "max_workers": "2",
                                           "max_queue": 1}}},
                         {"actors": {"a": {"descriptor": {"id": "a", "limits": []},
                                           "max_workers": 2, "max_queue": 1}}}):
        with pytest.raises(Malformed):
            parse_registration("w", json.dumps(registration))
