"""Cluster mode end to end: a real redis-server, fronts and workers as real processes."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cluster_support import (
    ACTORS,
    FAST_CLUSTER,
    REPO,
    Cluster,
    RedisServer,
    Service,
    connected,
    free_port,
    slow,
    wait_for,
)

from service.cluster.front import LOAD_TIMEOUT_S
from service.cluster.streams import (
    COMMAND_TIMEOUT_S,
    DISPATCH_LUA,
    FIELD,
    POOL_CONNECTIONS,
    connect,
)
from service.settings import ClusterSettings

# Process start-up is most of each test; a busy machine makes it slow, never wrong.
pytestmark = pytest.mark.timeout(180)


def ws_url(front: Service) -> str:
    return f"ws://127.0.0.1:{front.port}/"


async def health(service: Service) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"{service.url}/healthz") as response:
        return response.status, await response.json()


async def metrics(service: Service) -> str:
    async with aiohttp.ClientSession() as session, \
            session.get(f"{service.url}/metrics") as response:
        return await response.text()


async def live_workers(front: Service, count: int) -> None:
    async def enough() -> bool:
        status, body = await health(front)
        return status == 200 and body.get("live_workers") == count

    await wait_for(enough, timeout_s=30)


def outputs_seqs(response: dict[str, Any]) -> list[int]:
    return [n["params"]["seq"] for n in response["notes"] if n["method"] == "output"]


async def test_protocol_unchanged_through_two_fronts(cluster: Cluster) -> None:
    cluster.with_examples()
    fronts = [await cluster.front(), await cluster.front()]
    worker, = await cluster.workers(1)
    for front in fronts:
        await live_workers(front, 1)
    async with connected(ws_url(fronts[0])) as a, connected(ws_url(fronts[1])) as b:
        listed = (await a.call("list", {}))["result"]["actors"]
        assert [d["id"] for d in listed] == sorted(d["id"] for d in listed)
        assert {"doubler", "napper", "ticker"} <= {d["id"] for d in listed}
        described = (await b.call("describe", {"actor_id": "napper"}))["result"]
        assert described == next(d for d in listed if d["id"] == "napper")

        # Both fronts at once: each gets its own answers and outputs, and nothing else.
        ra, rb = await asyncio.gather(
            a.call("process", {"actor_id": "ticker", "payload": {"count": 3}}),
            b.call("process", {"actor_id": "doubler", "payload": {"input": 21}}))
        assert ra["result"]["outputs"] == {"tick": 3}
        assert [n["params"]["data"] for n in ra["notes"]] == [1, 2, 3]
        assert outputs_seqs(ra) == [0, 1, 2]
        assert rb["result"]["outputs"] == {"output": 42}
        assert rb["result"]["emitted"] == [{"port": "output", "data": 42, "seq": 0}]
        assert rb["notes"][0]["params"]["request_id"] == rb["id"]

        # Errors keep their codes and data, whether the front or the worker finds them.
        bad = await a.call("process", {"actor_id": "napper", "payload": {"ms": "x"}})
        assert bad["error"]["code"] == -32002 and bad["error"]["data"]["port"] == "ms"
        missing = await a.call("process", {"actor_id": "nobody", "payload": {}})
        assert missing["error"] == {"code": -32001, "message": "Actor not found: nobody",
                                    "data": {"actor_id": "nobody"}}
        config = await a.call("process", {"actor_id": "counter", "payload": {"value": 1},
                                          "config": {"factor": "x"}})
        assert config["error"]["code"] == -32602 and config["error"]["data"]["errors"]
        state = await a.call("process", {"actor_id": "counter", "payload": {"value": 2},
                                         "state": {"count": 4}})
        assert state["result"]["state"] != {"count": 4}  # the state after the run came back
    assert a.notes.get("_unexpected") is None and b.notes.get("_unexpected") is None
    text = await metrics(fronts[0])
    assert 'service_cluster_dispatched_total{actor="ticker",role="front"} 1.0' in text
    assert 'service_cluster_live_workers{role="front"} 1.0' in text
    assert 'service_cluster_taken_total{actor="ticker",role="worker"} 1.0' in await metrics(worker)


async def test_cancel_reaches_the_worker_and_load_is_broadcast(cluster: Cluster,
                                                              tmp_path: Path) -> None:
    front = await cluster.front()
    workers = await cluster.workers(2)
    await live_workers(front, 2)
    async with connected(ws_url(front)) as client:
        request_id = await client.send("process", {"actor_id": "napper",
                                                   "payload": {"ms": 20000, "ticks": 1}})
        await wait_for(lambda: _true(client.notes.get(request_id)), timeout_s=20)
        assert (await client.call("cancel", {"request_id": request_id}))["result"] == {
            "cancelled": True}
        cancelled = await client.response(request_id)
        assert cancelled["error"] == {"code": -32010, "message": "Cancelled", "data": {}}
        # The worker killed its sandbox (the call would sleep 20 s): nothing runs anywhere.
        async def idle() -> bool:
            texts = await asyncio.gather(*(metrics(w) for w in workers))
            return all('service_sandboxes_busy{actor="napper"} 0.0' in t for t in texts)

        await wait_for(idle, timeout_s=5)
        quick = await asyncio.gather(*(client.call(
            "process", {"actor_id": "napper", "payload": {"ms": 1}}) for _ in range(4)))
        assert all("result" in r for r in quick)

        folder = tmp_path / "extra"
        folder.mkdir()
        for name in ("napper.py", "napper.yaml"):
            text = (ACTORS / name).read_text().replace("id: napper", "id: napper2")
            (folder / name).write_text(text)
        loaded = await client.call("load", {"file_path": str(folder / "napper.yaml")})
        assert loaded["result"]["success"] is True and loaded["result"]["replaced"] is False
        assert loaded["result"]["actor"]["id"] == "napper2"
        listed = (await client.call("list", {}))["result"]["actors"]
        assert "napper2" in {d["id"] for d in listed}
        ran = await client.call("process", {"actor_id": "napper2", "payload": {"ms": 1}})
        assert ran["result"]["return"] == {"slept_ms": 1}
        again = await client.call("load", {"file_path": str(folder / "napper.yaml")})
        assert again["result"]["replaced"] is True
        refused = await client.call("load", {"file_path": "/etc/passwd"})
        assert refused["error"]["code"] == -32011
        assert refused["error"]["data"] == {"path": "/etc/passwd"}


async def test_a_registration_is_written_and_fetched_once_per_change(
        cluster: Cluster, redis: RedisServer, tmp_path: Path) -> None:
    """Every heartbeat renews a worker's registration; only a change writes it again, as a
    new generation: with megabytes of schemas, it went to Redis at every heartbeat. One
    that is not the worker's latest (a failover) is written again."""
    front = await cluster.front()
    await cluster.workers(1)
    await live_workers(front, 1)
    client = connect(ClusterSettings(redis_url=redis.url))
    try:
        [generation_key] = await client.keys("*:worker:*:generation")
        registration_key = generation_key.removesuffix(":generation")
        text = await client.get(registration_key)
        assert await client.get(generation_key) == "1"
        await client.config_resetstat()
        await asyncio.sleep(5 * FAST_CLUSTER["heartbeat_s"])
        stats = await client.info("commandstats")
        assert "cmdstat_set" not in stats  # renewed (PEXPIRE), never written again
        assert stats["cmdstat_pexpire"]["calls"] >= 2 * 3
        assert await client.get(generation_key) == "1" and await client.get(
            registration_key) == text
        # A failover to a replica that lagged: an older registration is back, as it was.
        await client.set(generation_key, "0")
        await wait_for(lambda: _equal(client.get(generation_key), "2"), timeout_s=10)
        assert await client.get(registration_key) == text
        folder = tmp_path / "extra"
        folder.mkdir()
        for name in ("napper.py", "napper.yaml"):
            source = (ACTORS / name).read_text().replace("id: napper", "id: napper3")
            (folder / name).write_text(source)
        async with connected(ws_url(front)) as ws:
            loaded = await ws.call("load", {"file_path": str(folder / "napper.yaml")})
            assert loaded["result"]["success"] is True
            assert await client.get(generation_key) == "3"
            assert "napper3" in (await client.get(registration_key))
            listed = (await ws.call("list", {}))["result"]["actors"]
            assert "napper3" in {d["id"] for d in listed}
    finally:
        await client.aclose()


async def test_a_front_fetches_a_registration_once_per_generation(redis: RedisServer) -> None:
    """A front reads the workers' generations at each refresh, and a registration only when
    its generation is new to it; a worker keeping none (an older one) is read every time."""
    from service.cluster.front import ClusterFront
    from service.settings import Settings

    front = ClusterFront(Settings(cluster=ClusterSettings(redis_url=redis.url)))
    keys, redis_client = front.keys, front.redis
    fetched: list[str] = []
    mget = redis_client.mget

    async def spied(names: list[str]) -> Any:
        fetched.extend(name for name in names if not name.endswith(":generation"))
        return await mget(names)

    redis_client.mget = spied  # type: ignore[method-assign]
    try:
        await redis_client.zadd(keys.workers, {"new": 1, "old": 1})
        await redis_client.set(keys.worker("new"), "text 1")
        await redis_client.set(keys.generation("new"), "1")
        await redis_client.set(keys.worker("old"), "old text")
        for _ in range(3):
            assert await front._live_registrations() == {"new": "text 1", "old": "old text"}
        assert fetched == [keys.worker("new"), keys.worker("old"), keys.worker("old"),
                           keys.worker("old")]
        fetched.clear()
        await redis_client.set(keys.worker("new"), "text 2")
        await redis_client.set(keys.generation("new"), "2")
        await redis_client.delete(keys.worker("old"))  # expired: a dead worker
        assert await front._live_registrations() == {"new": "text 2"}
        assert fetched == [keys.worker("new"), keys.worker("old")]
        assert await redis_client.zrange(keys.workers, 0, -1) == ["new"]
    finally:
        await front.aclose()


async def test_load_does_not_wait_for_a_worker_that_died(cluster: Cluster,
                                                        tmp_path: Path) -> None:
    """A worker killed just before a `load` never replies: the front stops waiting for it
    once its registration expires (worker_timeout_s), not after LOAD_TIMEOUT_S (30 s)."""
    front = await cluster.front()
    alive, dead = await cluster.workers(2)
    await live_workers(front, 2)
    await dead.kill()
    folder = tmp_path / "extra"
    folder.mkdir()
    for name in ("napper.py", "napper.yaml"):
        (folder / name).write_text((ACTORS / name).read_text().replace("id: napper",
                                                                       "id: napper3"))
    async with connected(ws_url(front)) as client:
        started = time.monotonic()
        loaded = await client.call("load", {"file_path": str(folder / "napper.yaml")},
                                   timeout_s=40)
        waited = time.monotonic() - started
        assert loaded["result"]["success"] is True, loaded
        assert waited < LOAD_TIMEOUT_S / 2, waited
        empty = await client.call("load", {"file_path": ""})
        assert empty["error"] == {"code": -32011, "message": "Path not allowed: file_path is "
                                  "empty", "data": {"path": ""}}
    assert alive.proc is not None and alive.proc.returncode is None


async def running_first(workers: list[Service]) -> list[Service]:
    """The workers, the one running a napper call first."""
    texts = await asyncio.gather(*(metrics(w) for w in workers))
    busy = ['service_sandboxes_busy{actor="napper"} 1.0' in t for t in texts]
    assert busy.count(True) == 1, busy
    return sorted(workers, key=lambda w: not busy[workers.index(w)])


async def _true(value: Any) -> bool:
    return bool(value)


async def _equal(value: Any, expected: Any) -> bool:
    return await value == expected


async def test_backpressure_is_cluster_wide(cluster: Cluster, tmp_path: Path) -> None:
    folder = tmp_path / "small"
    folder.mkdir()
    for name in ("napper.py", "napper.yaml"):
        (folder / name).write_text((ACTORS / name).read_text().replace(
            "max_queue: 64", "max_queue: 1").replace("min_warm: 2", "min_warm: 0"))
    cluster.actors = (folder,)
    front = await cluster.front()
    await cluster.workers(2)
    await live_workers(front, 2)
    async with connected(ws_url(front)) as client:
        # 2 workers x (2 slots + 1 queued) = 6 calls fit; the rest is refused at once.
        responses = await asyncio.gather(*(client.call(
            "process", {"actor_id": "napper", "payload": {"ms": 800}}) for _ in range(12)))
    done = [r for r in responses if "result" in r]
    busy = [r["error"] for r in responses if "error" in r]
    assert len(done) == 6, responses
    assert len(busy) == 6 and all(e["code"] == -32008 for e in busy)
    delays = [e["data"]["retry_after_ms"] for e in busy]
    assert all(isinstance(d, int) and d > 0 for d in delays)
    assert len(set(delays)) > 1, "retry_after_ms carries no jitter"


async def test_worker_killed_mid_call_is_rerun_elsewhere(cluster: Cluster) -> None:
    front = await cluster.front()
    workers = await cluster.workers(2)
    await live_workers(front, 2)
    async with connected(ws_url(front)) as client:
        request_id = await client.send("process", {"actor_id": "napper",
                                                   "payload": {"ms": 1500, "ticks": 2}})
        await wait_for(lambda: _true(len(client.notes.get(request_id, [])) == 2), 20)
        first, second = await running_first(workers)
        await first.kill()  # with its sandboxes: the call dies with it
        answer = await client.response(request_id, timeout_s=60)
        assert answer["result"]["emitted"] == [{"port": "tick", "data": 0, "seq": 0},
                                               {"port": "tick", "data": 1, "seq": 1}]
        notes = client.notes.pop(request_id)
        assert [n["params"]["seq"] for n in notes] == [0, 1], "an output was forwarded twice"
    assert 'service_cluster_reclaimed_total{actor="napper",role="worker"} 1.0' in \
        await metrics(second)


async def test_max_attempts_then_32009(cluster: Cluster) -> None:
    front = await cluster.front(max_attempts=1)
    workers = await cluster.workers(2, max_attempts=1)
    await live_workers(front, 2)
    async with connected(ws_url(front)) as client:
        request_id = await client.send("process", {"actor_id": "napper",
                                                   "payload": {"ms": 1500, "ticks": 1}})
        await wait_for(lambda: _true(client.notes.get(request_id)), 20)
        first, _ = await running_first(workers)
        await first.kill()
        answer = await client.response(request_id, timeout_s=60)
    error = answer["error"]
    assert error["code"] == -32009
    assert error["data"]["backend"] == "cluster"
    assert "max_attempts is 1" in error["data"]["reason"]


async def test_redis_down_fails_fast_and_service_resumes(cluster: Cluster) -> None:
    front = await cluster.front()
    worker, = await cluster.workers(1)
    await live_workers(front, 1)
    stop = asyncio.Event()
    loads = [asyncio.create_task(load_until(ws_url(front), stop)) for _ in range(4)]
    async with connected(ws_url(front)) as client:
        ok = await client.call("process", {"actor_id": "napper", "payload": {"ms": 1}})
        assert ok["result"]["return"] == {"slept_ms": 1}
        in_flight = await client.send("process", {"actor_id": "napper",
                                                  "payload": {"ms": 5000}})
        await asyncio.sleep(0.5)
        await cluster.redis.stop()
        lost = await client.response(in_flight, timeout_s=10)
        assert lost["error"]["code"] == -32009
        assert lost["error"]["data"] == {"backend": "cluster", "reason": "broker unavailable"}
        for _ in range(5):
            down = await client.call("process", {"actor_id": "napper",
                                                 "payload": {"ms": 1}}, timeout_s=2)
            assert down["error"]["code"] == -32009
            assert down["error"]["data"]["reason"] == "broker unavailable"
        status, body = await health(front)
        assert status == 503 and body["broker"] == "unavailable"

        await cluster.redis.start()  # same port, empty: groups and streams are gone

        async def served() -> bool:
            reply = await client.call("process", {"actor_id": "napper",
                                                  "payload": {"ms": 5}}, timeout_s=5)
            return reply.get("result", {}).get("return") == {"slept_ms": 5}

        await wait_for(served, timeout_s=30, every_s=0.2)

        async def both_healthy() -> bool:  # a worker says so at its next heartbeat
            return [(await health(s))[0] for s in (front, worker)] == [200, 200]

        await wait_for(both_healthy, timeout_s=10, every_s=0.1)
    stop.set()
    outcomes = [o for load in await asyncio.gather(*loads) for o in load]
    assert set(outcomes) <= {"ok", "broker unavailable"}, outcomes  # nothing else, no hang
    assert {"ok", "broker unavailable"} <= set(outcomes)
    assert front.proc is not None and front.proc.returncode is None
    assert worker.proc is not None and worker.proc.returncode is None


async def test_a_silent_redis_fails_calls_within_the_command_timeout(cluster: Cluster) -> None:
    """A stopped (SIGSTOP) Redis answers nothing, as behind a dropped link: calls fail
    -32009 after one COMMAND_TIMEOUT_S, not twice that, and /healthz says 503."""
    front = await cluster.front()
    await cluster.workers(1)
    await live_workers(front, 1)
    assert cluster.redis.proc is not None
    async with connected(ws_url(front)) as client:
        cluster.redis.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            reply = await client.call("process", {"actor_id": "napper", "payload": {"ms": 1}},
                                      timeout_s=15)
            waited = time.monotonic() - started
            assert reply["error"]["code"] == -32009, reply
            assert waited < 2 * COMMAND_TIMEOUT_S, waited
            status, body = await health(front)
            assert status == 503 and body["broker"] == "unavailable"
        finally:
            cluster.redis.proc.send_signal(signal.SIGCONT)

        async def served() -> bool:
            reply = await client.call("process", {"actor_id": "napper",
                                                  "payload": {"ms": 5}}, timeout_s=5)
            return reply.get("result", {}).get("return") == {"slept_ms": 5}

        await wait_for(served, timeout_s=30, every_s=0.2)


async def test_a_burst_past_the_connection_pool_is_served_not_refused(cluster: Cluster) -> None:
    """More calls at once than the front's Redis connections: they wait for a connection.
    Before, the 101st failed every call in flight with -32009 "broker unavailable"."""
    front = await cluster.front()
    await cluster.workers(1)
    await live_workers(front, 1)
    calls = POOL_CONNECTIONS + 100

    async def share(count: int) -> list[dict[str, Any]]:
        async with connected(ws_url(front)) as client:
            return list(await asyncio.gather(*(client.call(
                "process", {"actor_id": "napper", "payload": {"ms": 1}}, timeout_s=60)
                for _ in range(count))))

    answers = [a for part in await asyncio.gather(*(share(calls // 10) for _ in range(10)))
               for a in part]
    codes = sorted({a["error"]["code"] for a in answers if "error" in a})
    assert set(codes) <= {-32008}, codes  # busy past the backlog limit, never -32009
    assert sum("result" in a for a in answers) >= 60


async def test_an_accepted_call_is_never_trimmed_from_its_stream(redis: RedisServer) -> None:
    """A calls stream is bounded by the backlog limit, not by stream_maxlen: with a limit
    above stream_maxlen, trimming used to drop queued calls that then never ran."""
    client = connect(ClusterSettings(redis_url=redis.url))
    try:
        await client.config_set("stream-node-max-entries", 10)  # trims in small steps
        dispatch = client.register_script(DISPATCH_LUA)
        for i in range(80):
            assert await dispatch(keys=["t:calls:a"], args=[100, FIELD, f"call {i}"]) is not None
        assert await client.xlen("t:calls:a") == 80
        assert await dispatch(keys=["t:calls:b"], args=[3, FIELD, "x"]) is not None
        await dispatch(keys=["t:calls:b"], args=[3, FIELD, "x"])
        await dispatch(keys=["t:calls:b"], args=[3, FIELD, "x"])
        assert await dispatch(keys=["t:calls:b"], args=[3, FIELD, "x"]) is None  # the limit
    finally:
        await client.aclose()


async def load_until(url: str, stop: asyncio.Event) -> list[str]:
    """Calls one after another until ``stop``: "ok", or the -32009 reason, for each."""
    outcomes = []
    async with connected(url) as client:
        while not stop.is_set():
            reply = await client.call("process", {"actor_id": "napper", "payload": {"ms": 20}},
                                      timeout_s=10)
            if "result" in reply:
                outcomes.append("ok")
            else:
                error = reply["error"]
                outcomes.append(error["data"]["reason"] if error["code"] == -32009
                                else str(error))
                await asyncio.sleep(0.05)
    return outcomes


async def test_worker_needs_redis_url(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *_python(), "-m", "service", "worker", "--config", str(REPO / "config/settings.toml"),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"cluster.redis_url" in err


def _python() -> list[str]:
    import sys

    return [sys.executable]


def test_settings_render(tmp_path: Path) -> None:
    from service.errors import SettingsError
    from service.settings import load_settings

    path = tmp_path / "s.toml"
    path.write_text('[default.cluster]\nredis_url = "redis://h:1/0"\n'
                    'role = "both"\nmax_attempts = 3\n')
    settings = load_settings(path)
    assert settings.cluster.enabled and settings.cluster.role == "both"
    assert settings.cluster.max_attempts == 3 and settings.cluster.heartbeat_s == 1.0
    path.write_text('[default.cluster]\nrole = "boss"\n')
    with pytest.raises(SettingsError, match=r"cluster\.role"):
        load_settings(path)


@slow  # the same code paths as a front and a worker, in one process
async def test_role_both_serves_alone(cluster: Cluster) -> None:
    cluster.with_examples()
    config = cluster._config("both", "both")
    both = Service("both", ["--config", str(config)], free_port(), cluster.tmp / "both.log")
    await cluster._started(both)
    await live_workers(both, 1)
    async with connected(ws_url(both)) as client:
        # A notification (no id) runs but sends nothing back; the next call still answers.
        await client.ws.send_str('{"jsonrpc": "2.0", "method": "process", "params": '
                                 '{"actor_id": "ticker", "payload": {"count": 2}}}')
        reply = await client.call("process", {"actor_id": "doubler", "payload": {"input": 4}})
        assert reply["result"]["outputs"] == {"output": 8}
        await asyncio.sleep(0.5)
        assert dict(client.notes) == {}
    status, body = await health(both)
    assert status == 200 and body["role"] == "both" and body["broker"] == "up"


def test_remote_errors_keep_class_code_and_data() -> None:
    from service.cluster.streams import error_message, remote_error
    from service.errors import Busy, PayloadInvalid, RpcError

    for error in (PayloadInvalid("x", [{"path": "", "message": "bad"}]), Busy(12)):
        rebuilt = remote_error(json.loads(json.dumps(error_message(error))))
        assert type(rebuilt) is type(error)
        assert rebuilt.to_json() == error.to_json()
    unknown = remote_error({"code": -1, "message": "?", "data": None})
    assert type(unknown) is RpcError and unknown.CODE == -32603


async def test_front_validates_payloads_as_the_runtime_does() -> None:
    """A front checks payloads with schemas rebuilt from descriptors ($refs bundled)."""
    from service.cluster.front import ClusterFront
    from service.errors import PayloadInvalid
    from service.manifest.loader import load_manifest
    from service.runtime import check_payload
    from service.settings import ClusterSettings, Settings

    settings = Settings(cluster=ClusterSettings(redis_url="redis://127.0.0.1:1/0"))
    actor = load_manifest(REPO / "manifests/order_total/order_total.yaml", settings)
    remote = ClusterFront(settings)._remote_actor(actor.descriptor())
    line = {"sku": "x", "quantity": 1, "unit_price": 2.5}
    payloads = [{"order": {"id": "a", "lines": [line]}},
                {"order": {"id": "a", "lines": [{**line, "quantity": 0}]}},
                {"order": {"id": "", "lines": []}}, {}, {"order": {}, "extra": 1}]
    for payload in payloads:
        errors = []
        for subject in (actor, remote):
            try:
                await check_payload(subject, payload)
                errors.append(None)
            except PayloadInvalid as exc:
                errors.append(exc.to_json())
        assert errors[0] == errors[1], payload


async def test_a_registration_is_read_once_per_text_off_the_event_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker sends the same registration every heartbeat: with megabytes of schemas,
    parsing and compiling it on the front's event loop held the loop for seconds, each time."""
    from service.cluster.front import ClusterFront
    from service.manifest.loader import load_manifest
    from service.settings import ClusterSettings, Settings

    settings = Settings(cluster=ClusterSettings(redis_url="redis://127.0.0.1:1/0"))
    actor = load_manifest(REPO / "manifests/order_total/order_total.yaml", settings)
    front = ClusterFront(settings)
    threads: list[str] = []
    usable = front._usable

    def recorded(worker_id: str, value: str) -> Any:
        threads.append(threading.current_thread().name)
        return usable(worker_id, value)

    monkeypatch.setattr(front, "_usable", recorded)
    text = json.dumps({"worker_id": "w", "actors": {"order_total": {
        "descriptor": actor.descriptor(), "max_workers": 1, "max_queue": 0}}})
    served = await front._served("w", text)
    assert served is not None and served["order_total"][0].id == "order_total"
    assert await front._served("w", text) is served  # the next heartbeat's
    changed = await front._served("w", text.replace('"max_queue": 0', '"max_queue": 2'))
    assert changed is not None and changed["order_total"][1].max_queue == 2
    assert len(threads) == 2 and threading.main_thread().name not in threads


def _registration(description: str, inports: dict[str, Any] | None = None) -> str:
    descriptor = {"id": "a", "language": "python", "description": description,
                  "inports": inports or {}, "outports": {}, "limits": {"timeout_s": 10}}
    return json.dumps({"worker_id": "w", "actors": {"a": {
        "descriptor": descriptor, "max_workers": 1, "max_queue": 0}}})


class _NoRedisPipeline:
    def __init__(self) -> None:
        self.lengths = 0

    def xlen(self, key: str) -> None:
        self.lengths += 1

    async def execute(self) -> list[int]:
        return [0] * self.lengths


def _front_on(registrations: dict[str, str]) -> Any:
    """A front whose view comes from ``registrations`` (worker id -> text), not Redis."""
    from service.cluster.front import ClusterFront
    from service.settings import ClusterSettings, Settings

    front = ClusterFront(Settings(cluster=ClusterSettings(redis_url="redis://127.0.0.1:1/0")))
    front.redis.pipeline = lambda transaction=False: _NoRedisPipeline()

    async def live() -> dict[str, str]:
        return dict(registrations)

    front._live_registrations = live
    return front


async def test_an_older_view_never_replaces_a_newer_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refresh that read the registrations before a `load`, and compiles them for longer,
    used to end after the `load`'s own refresh and put the older actors back."""
    old, new = _registration("old"), _registration("new")
    registrations = {"w": old}
    front = _front_on(registrations)
    usable = front._usable

    def slow_for_the_old(worker_id: str, value: str) -> Any:
        time.sleep(0.3 if value == old else 0.01)
        return usable(worker_id, value)

    monkeypatch.setattr(front, "_usable", slow_for_the_old)
    heartbeat = asyncio.create_task(front._refresh_view())
    await asyncio.sleep(0.05)
    registrations["w"] = new  # the worker loaded something
    await front._refresh_view()  # the load's
    await heartbeat
    assert front._actors["a"].descriptor()["description"] == "new"


async def test_a_registration_that_failed_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what was read is kept: a failure (memory, say) may not happen again."""
    from service.cluster import front as front_module

    text = _registration("", {"in": {"schema": {"type": "integer"}}})
    front = _front_on({"w": text})
    port = front_module._port
    failures = iter([MemoryError()])

    def failing_once(*args: Any) -> Any:
        if (failure := next(failures, None)) is not None:
            raise failure
        return port(*args)

    monkeypatch.setattr(front_module, "_port", failing_once)
    assert await front._served("w", text) is None
    served = await front._served("w", text)
    assert served is not None and served["a"][0].id == "a"


def make_tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1: (ca, cert, key)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "1", "-subj", "/CN=cluster-test-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.ext")
    return folder / "ca.crt", folder / "server.crt", folder / "server.key"


@slow  # three more processes to start; the netns test covers the password already
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl for certificates")
async def test_tls_and_password_from_the_url(tmp_path: Path) -> None:
    ca, cert, key = make_tls_files(tmp_path)
    port = free_port()
    redis = RedisServer(tmp_path, port=port, password="s3cret", extra_args=(
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
        "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"))
    await redis.start()
    cluster = Cluster(redis, tmp_path)
    try:
        # The URL carries everything: TLS, the CA to check the server with, the password.
        redis_url = (f"rediss://:s3cret@127.0.0.1:{port}/0?ssl_cert_reqs=required"
                     f"&ssl_ca_certs={ca}")
        cluster.redis_url = redis_url
        front = await cluster.front()
        await cluster.workers(1)
        await live_workers(front, 1)
        async with connected(ws_url(front)) as client:
            reply = await client.call("process", {"actor_id": "napper", "payload": {"ms": 1}})
        assert reply["result"]["return"] == {"slept_ms": 1}
        wrong = await cluster.front(redis_url=redis_url.replace("s3cret", "nope"),
                                    healthy=False)
        status, body = await health(wrong)
        assert status == 503 and body["broker"] == "unavailable"
    finally:
        await cluster.aclose()
        await redis.stop()
