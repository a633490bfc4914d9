"""The protocol's methods on the core, with a fake runtime (the real one is in test_server*.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from service.errors import ActorFailed, ActorNotFound, Busy
from service.metrics import Metrics
from service.rpc import methods
from service.rpc.core import Connection, Dispatcher, encode_in_pieces
from service.rpc.methods import register_methods
from service.rpc.openrpc import load_openrpc

DESCRIPTOR = {"id": "fake", "language": "python", "description": "", "inports": {},
              "outports": {}, "limits": {"cpus": 1, "memory_mb": 128, "timeout_s": 5,
                                         "network": False, "pids": 64, "output_bytes": 1024},
              "manifest": "fake.yaml"}


class FakeActor:
    id = "fake"

    def descriptor(self) -> dict[str, Any]:
        return DESCRIPTOR


class FakeRuntime:
    """process() emits one output and one log, then waits for `release` unless told not to."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.killed: list[Any] = []

    def actors(self) -> list[FakeActor]:
        return [FakeActor()]

    def get(self, actor_id: Any) -> FakeActor:
        if actor_id != "fake":
            raise ActorNotFound(actor_id)
        return FakeActor()

    async def load(self, file_path: Any) -> tuple[FakeActor, bool]:
        return FakeActor(), True

    def pool_stats(self) -> dict[str, tuple[int, int, int]]:
        return {"fake": (1, 2, 3)}

    async def process(self, actor_id: Any, payload: Any, config: Any = None, state: Any = None,
                      timestamp: Any = None, emit: Any = None) -> dict[str, Any]:
        self.get(actor_id)
        if payload.get("fail"):
            raise ActorFailed("ZeroDivisionError", "division by zero", "tb")
        if payload.get("busy"):
            raise Busy(100)
        if emit is not None:
            await emit("output", {"actor_id": "fake", "port": "out", "data": 42, "seq": 0,
                                  "timestamp": 1})
            await emit("log", {"actor_id": "fake", "stream": "stdout", "message": "hi"})
        self.started.set()
        if payload.get("wait"):
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.killed.append(payload)
                raise
        return {"outputs": {"out": 42}, "emitted": [{"port": "out", "data": 42, "seq": 0}],
                "return": None, "state": {}, "duration_ms": 1.0}


class Client:
    def __init__(self, dispatcher: Dispatcher, admin: bool = True) -> None:
        self.dispatcher = dispatcher
        self.sent: list[Any] = []
        self.connection = Connection(self._send, admin=admin)

    async def _send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def call(self, method: str, params: Any = None, request_id: Any = 1) -> Any:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params is not None:
            message["params"] = params
        response = await self.dispatcher.handle_frame(json.dumps(message), self.connection)
        assert response is not None
        decoded = json.loads(response)
        self.sent.append(decoded)
        return decoded


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture
def metrics(runtime: FakeRuntime) -> Metrics:
    return Metrics(runtime.pool_stats)


@pytest.fixture
def dispatcher(runtime: FakeRuntime, metrics: Metrics) -> Dispatcher:
    d = Dispatcher(validate_results=True)
    register_methods(d, runtime, metrics)  # type: ignore[arg-type]
    return d


async def test_every_method_is_registered_from_the_openrpc_document(
        dispatcher: Dispatcher) -> None:
    names = sorted(m["name"] for m in load_openrpc()["methods"])
    assert dispatcher.method_names == names == [
        "cancel", "describe", "list", "load", "process", "rpc.discover"]


@pytest.mark.parametrize("params", [None, {}, []])
async def test_list_params_may_be_omitted_empty_object_or_array(dispatcher: Dispatcher,
                                                               params: Any) -> None:
    assert await Client(dispatcher).call("list", params) == {
        "jsonrpc": "2.0", "result": {"actors": [DESCRIPTOR]}, "id": 1}


async def test_describe_positional_and_named(dispatcher: Dispatcher) -> None:
    client = Client(dispatcher)
    assert (await client.call("describe", ["fake"]))["result"] == DESCRIPTOR
    assert (await client.call("describe", {"actor_id": "fake"}))["result"] == DESCRIPTOR


async def test_load_needs_an_admin_connection(dispatcher: Dispatcher,
                                              runtime: FakeRuntime) -> None:
    response = await Client(dispatcher, admin=False).call("load", {"file_path": "x.yaml"})
    assert response["error"] == {
        "code": -32011, "data": {"path": "x.yaml"},
        "message": "Path not allowed: load is an admin operation: connect with a token from "
                   "auth.admin_tokens"}


async def test_load_result(dispatcher: Dispatcher) -> None:
    assert (await Client(dispatcher).call("load", {"file_path": "x.yaml"}))["result"] == {
        "success": True, "actor": DESCRIPTOR, "replaced": True}


async def test_rpc_discover_returns_the_document(dispatcher: Dispatcher) -> None:
    assert (await Client(dispatcher).call("rpc.discover"))["result"] == load_openrpc()


@pytest.mark.parametrize("request_id", [7, "7", None, 7.5])
async def test_process_notifications_precede_the_response_with_request_id(
        dispatcher: Dispatcher, request_id: Any) -> None:
    client = Client(dispatcher)
    await client.call("process", {"actor_id": "fake", "payload": {}}, request_id)
    assert client.sent == [
        {"jsonrpc": "2.0", "method": "output", "params": {
            "request_id": request_id, "actor_id": "fake", "port": "out", "data": 42, "seq": 0,
            "timestamp": 1}},
        {"jsonrpc": "2.0", "method": "log", "params": {
            "request_id": request_id, "actor_id": "fake", "stream": "stdout", "message": "hi"}},
        {"jsonrpc": "2.0", "id": request_id, "result": {
            "outputs": {"out": 42}, "emitted": [{"port": "out", "data": 42, "seq": 0}],
            "return": None, "state": {}, "duration_ms": 1.0}},
    ]
    assert type(client.sent[0]["params"]["request_id"]) is type(request_id)


async def test_process_as_a_notification_runs_but_sends_nothing(
        dispatcher: Dispatcher, runtime: FakeRuntime) -> None:
    client = Client(dispatcher)
    frame = '{"jsonrpc":"2.0","method":"process","params":{"actor_id":"fake","payload":{}}}'
    assert await dispatcher.handle_frame(frame, client.connection) is None
    assert runtime.started.is_set()
    assert client.sent == []


async def _start_waiting_call(dispatcher: Dispatcher, client: Client, runtime: FakeRuntime,
                              request_id: Any) -> asyncio.Task[Any]:
    task = asyncio.create_task(client.call(
        "process", {"actor_id": "fake", "payload": {"wait": True}}, request_id))
    await asyncio.wait_for(runtime.started.wait(), 5)
    return task


async def test_cancel_a_running_call(dispatcher: Dispatcher, runtime: FakeRuntime) -> None:
    client = Client(dispatcher)
    task = await _start_waiting_call(dispatcher, client, runtime, "job-1")
    assert await client.call("cancel", {"request_id": "job-1"}, 2) == {
        "jsonrpc": "2.0", "result": {"cancelled": True}, "id": 2}
    assert await asyncio.wait_for(task, 5) == {
        "jsonrpc": "2.0", "id": "job-1",
        "error": {"code": -32010, "message": "Cancelled", "data": {}}}
    assert runtime.killed == [{"wait": True}]
    # finished now: a second cancel finds nothing
    assert (await client.call("cancel", {"request_id": "job-1"}, 3))["result"] == {
        "cancelled": False}


async def test_a_call_cancelled_twice_answers_once_and_its_task_goes_on(
        dispatcher: Dispatcher, runtime: FakeRuntime) -> None:
    """The run is awaited in the request's own task: `cancel` cancels that task, and the
    cancellations it asked for are taken back once the call is answered -32010."""
    client = Client(dispatcher)
    task = await _start_waiting_call(dispatcher, client, runtime, "job")
    for request_id in (2, 3):
        assert (await client.call("cancel", {"request_id": "job"}, request_id))["result"] == {
            "cancelled": True}
    assert (await asyncio.wait_for(task, 5))["error"]["code"] == -32010
    assert task.cancelling() == 0 and not task.cancelled()
    assert runtime.killed == [{"wait": True}]


async def test_a_cancel_while_the_connection_closes_stays_a_cancellation(
        dispatcher: Dispatcher, runtime: FakeRuntime) -> None:
    client = Client(dispatcher)
    task = await _start_waiting_call(dispatcher, client, runtime, "job")
    task.cancel()  # the connection closes...
    assert (await client.call("cancel", {"request_id": "job"}, 2))["result"] == {
        "cancelled": True}  # ...while a cancel for the call is on its way
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runtime.killed == [{"wait": True}]


async def test_cancel_matches_the_id_type_and_the_connection(
        dispatcher: Dispatcher, runtime: FakeRuntime) -> None:
    client, other = Client(dispatcher), Client(dispatcher)
    task = await _start_waiting_call(dispatcher, client, runtime, 7)
    assert (await client.call("cancel", ["7"], 2))["result"] == {"cancelled": False}
    assert (await other.call("cancel", [7], 2))["result"] == {"cancelled": False}
    assert (await client.call("cancel", {"request_id": 8}, 2))["result"] == {"cancelled": False}
    runtime.release.set()
    assert (await asyncio.wait_for(task, 5))["result"]["outputs"] == {"out": 42}
    assert runtime.killed == []


async def test_cancel_params_are_checked(dispatcher: Dispatcher) -> None:
    assert (await Client(dispatcher).call("cancel", {"request_id": {"x": 1}}))["error"] == {
        "code": -32602, "message": "Invalid params", "data": {"errors": [
            {"path": "/request_id", "message": "{'x': 1} is not of type 'string', 'number', "
                                               "'null'"}]}}


async def test_cancelling_the_frame_task_cancels_the_run(dispatcher: Dispatcher,
                                                         runtime: FakeRuntime) -> None:
    """What the server does when a connection closes."""
    client = Client(dispatcher)
    task = await _start_waiting_call(dispatcher, client, runtime, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runtime.killed == [{"wait": True}]


async def test_metrics_and_log_line_per_call(dispatcher: Dispatcher, metrics: Metrics,
                                            caplog: pytest.LogCaptureFixture) -> None:
    client = Client(dispatcher)
    with caplog.at_level(logging.INFO, logger="service.rpc.methods"):
        await client.call("process", {"actor_id": "fake", "payload": {}}, "a")
        await client.call("process", {"actor_id": "fake", "payload": {"fail": True}}, 2)
        await client.call("process", {"actor_id": "ghost", "payload": {}}, 3)
        await asyncio.sleep(0)  # a call is logged and counted in the loop's turn after its answer
    messages = [r.getMessage() for r in caplog.records]
    assert [m.rsplit(" ", 1)[0] for m in messages] == [
        'process actor=fake id="a" outcome=ok',
        "process actor=fake id=2 outcome=actor_failed",
        "process actor=ghost id=3 outcome=actor_not_found"]
    text = metrics.render().decode()
    assert 'service_calls_total{actor="fake",outcome="ok"} 1.0' in text
    assert 'service_calls_total{actor="fake",outcome="actor_failed"} 1.0' in text
    assert 'service_calls_total{actor="_unknown",outcome="actor_not_found"} 1.0' in text
    assert 'service_call_duration_seconds_count{actor="fake"} 2.0' in text
    assert 'service_sandboxes_busy{actor="fake"} 1.0' in text
    assert 'service_sandboxes_idle{actor="fake"} 2.0' in text
    assert 'service_queue_depth{actor="fake"} 3.0' in text


async def test_busy_refusals_are_logged_at_most_once_per_interval(
        dispatcher: Dispatcher, metrics: Metrics, caplog: pytest.LogCaptureFixture) -> None:
    """An overload must not write a line per refused call; the metrics still count each."""
    client = Client(dispatcher)
    with caplog.at_level(logging.INFO, logger="service.rpc.methods"):
        for i in range(50):
            error = (await client.call("process", {"actor_id": "fake", "payload": {"busy": 1}},
                                       i))["error"]
            assert error["code"] == -32008
        await client.call("process", {"actor_id": "fake", "payload": {}}, "ok")
        await asyncio.sleep(0)  # logged and counted in the loop's turn after the answers
    outcomes = [r.service_fields["outcome"] for r in caplog.records]  # type: ignore[attr-defined]
    assert outcomes == ["busy", "ok"]
    assert 'service_calls_total{actor="fake",outcome="busy"} 50.0' in metrics.render().decode()


async def test_the_call_line_has_structured_fields(dispatcher: Dispatcher,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="service.rpc.methods"):
        await Client(dispatcher).call("process", {"actor_id": "fake", "payload": {}}, "a")
        await asyncio.sleep(0)  # logged in the loop's turn after the answer
    (record,) = caplog.records
    fields = record.service_fields  # type: ignore[attr-defined]
    assert set(fields) == {"actor", "id", "outcome", "duration_ms"}
    assert (fields["actor"], fields["id"], fields["outcome"]) == ("fake", '"a"', "ok")
    assert isinstance(fields["duration_ms"], float)


class Described:
    """An actor of a runtime (``descriptor_json``: of a cluster front, made anew every
    heartbeat around the descriptor its workers registered)."""

    def __init__(self, actor_id: str, size: int = 1, descriptor_json: Any = None) -> None:
        self.id = actor_id
        self.size = size
        if descriptor_json is not None:
            self.descriptor_json = descriptor_json

    def descriptor(self) -> dict[str, Any]:
        return {"id": self.id, "enum": list(range(self.size))}


async def test_each_descriptor_is_written_once_per_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []

    def recorded(value: Any) -> str:
        written.append(value["id"])
        return encode_in_pieces(value)

    monkeypatch.setattr(methods, "encode_in_pieces", recorded)
    descriptors = methods.WrittenDescriptors()
    a, b, big = Described("a"), Described("b"), Described("big", 20_000)
    first = await descriptors.of([a, b, big])
    assert [d.value["id"] for d in first] == ["a", "b", "big"]
    assert await descriptors.of([b, big, a]) == [first[1], first[2], first[0]]
    assert written == ["a", "b", "big"]
    replaced = Described("a")
    assert (await descriptors.of([replaced]))[0] is not first[0] and written[-1] == "a"
    await descriptors.of([b], keep_only=True)  # `list` found b only
    await descriptors.of([replaced, big])
    assert written == ["a", "b", "big", "a", "a", "big"]
    registered = {"id": "r"}
    await descriptors.of([Described("r", descriptor_json=registered)])
    await descriptors.of([Described("r", descriptor_json=registered)])  # the next heartbeat
    assert written.count("r") == 1
    # sent as its text when long, else as the value
    assert methods._as_sent(first[2]) is first[2] and methods._as_sent(first[1]) == first[1].value
