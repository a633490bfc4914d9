"""Every method and every error code, over a real WebSocket to the real server and sandbox."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from server_support import ACTORS, MANIFESTS, Rpc, ServerFactory

from service import runtime as runtime_module
from service.errors import PayloadInvalid
from service.manifest.loader import display_path
from service.rpc.openrpc import load_openrpc
from service.runtime import Runtime
from service.settings import SandboxSettings

DOUBLER = {
    "id": "doubler",
    "language": "python",
    "description": "Doubles a number",
    "inports": {"input": {"schema": {"type": "number"}, "description": "the number to double",
                          "required": True}},
    "outports": {"output": {"schema": {"type": "number"}, "description": "twice the input"}},
    "limits": {"cpus": 1, "memory_mb": 128, "timeout_s": 5, "network": False, "pids": 64,
               "output_bytes": 1048576},
    # as given, relative to the cwd
    "manifest": display_path(MANIFESTS / "doubler" / "doubler.yaml"),
}


def _result(request_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def _error(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


# --- list / describe / load / rpc.discover ---


async def test_list(rpc: Rpc, runtime: Runtime) -> None:
    response = await rpc.call("list", {})
    actors = response["result"]["actors"]
    assert [a["id"] for a in actors] == sorted(a.id for a in runtime.actors())
    assert {"doubler", "doubler_js", "waiter"} <= {a["id"] for a in actors}
    assert next(a for a in actors if a["id"] == "doubler") == DOUBLER


async def test_describe(rpc: Rpc) -> None:
    assert await rpc.call("describe", {"actor_id": "doubler"}) == _result(1, DOUBLER)
    assert await rpc.call("describe", ["doubler"]) == _result(2, DOUBLER)


async def test_load_manifest_then_replace(rpc: Rpc) -> None:
    path = str(MANIFESTS / "doubler" / "doubler.yaml")
    response = await rpc.call("load", {"file_path": path})
    assert response == _result(1, {"success": True, "actor": DOUBLER, "replaced": True})


async def test_manifests_are_read_one_at_a_time(runtime: Runtime,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Sixty `load`s at once read their manifests in six threads that fought the event
    loop for the GIL: /healthz took up to 0.9 s. One thread reads at a time now."""
    reading, most = 0, 0
    read = runtime._load_file

    def counted(path: Path) -> Any:
        nonlocal reading, most
        reading += 1
        most = max(most, reading)
        try:
            time.sleep(0.01)
            return read(path)
        finally:
            reading -= 1

    monkeypatch.setattr(runtime, "_load_file", counted)
    path = str(MANIFESTS / "doubler" / "doubler.yaml")
    await asyncio.gather(*(runtime.load(path) for _ in range(8)))
    assert most == 1


async def test_a_call_replaced_while_its_payload_is_checked_runs_on_what_it_was_checked_for(
        runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `load` that replaced the actor while a call's payload was being checked (off the
    loop, a costly pattern) ran the new script on a payload only the old schema accepts."""
    script = ("async def process(context):\n"
              "    return {'version': VERSION, 'x': context.get_input('x')}\n")
    for version, schema in ((1, "{type: string}"), (2, "{type: integer}")):
        (tmp_path / f"v{version}.py").write_text(script.replace("VERSION", str(version)))
        (tmp_path / f"v{version}.yaml").write_text(
            f"id: racer\nlanguage: python\nscript: v{version}.py\n"
            f"inports: {{x: {{schema: {schema}}}}}\noutports: {{}}\n")
    await runtime.load(str(tmp_path / "v1.yaml"))
    checking, release = asyncio.Event(), asyncio.Event()
    check = runtime_module.check_payload

    async def slow_check(actor: Any, payload: dict[str, Any]) -> None:
        await check(actor, payload)
        if not release.is_set():
            checking.set()
            await release.wait()

    monkeypatch.setattr(runtime_module, "check_payload", slow_check)
    call = asyncio.ensure_future(runtime.process("racer", {"x": "text"}))
    await checking.wait()
    await runtime.load(str(tmp_path / "v2.yaml"))
    release.set()
    with pytest.raises(PayloadInvalid):  # checked again, for the definition that runs it
        await call
    result = await runtime.process("racer", {"x": 7})
    assert result["return"] == {"version": 2, "x": 7}


async def test_load_a_new_actor_from_its_script(rpc: Rpc, tmp_path: Path) -> None:
    (tmp_path / "tripler.py").write_text(
        "async def process(context):\n"
        "    await context.send_output('output', context.get_input('input') * 3)\n")
    (tmp_path / "tripler.yaml").write_text(
        "id: tripler\nlanguage: python\nscript: tripler.py\n"
        "inports: {input: {schema: {type: number}}}\n"
        "outports: {output: {schema: {type: number}}}\n")
    response = await rpc.call("load", {"file_path": str(tmp_path / "tripler.py")})
    assert response["result"]["success"] is True
    assert response["result"]["replaced"] is False
    assert response["result"]["actor"]["id"] == "tripler"
    _, response = await rpc.request("process", {"actor_id": "tripler",
                                                "payload": {"input": 5}})
    assert response["result"]["outputs"] == {"output": 15}


async def test_rpc_discover(rpc: Rpc) -> None:
    assert await rpc.call("rpc.discover") == _result(1, load_openrpc())


# --- process ---


@pytest.mark.parametrize("actor_id", ["doubler", "doubler_js"])
async def test_doubler_examples_send_output_before_the_response(rpc: Rpc, actor_id: str) -> None:
    notes, response = await rpc.request("process", {
        "actor_id": actor_id, "payload": {"input": 21}, "config": {}, "state": {},
        "timestamp": 1234567890}, request_id=7)
    [output] = notes
    timestamp = output["params"].pop("timestamp")
    assert isinstance(timestamp, int) and timestamp > 1_700_000_000_000  # ms since the epoch
    assert output == {"jsonrpc": "2.0", "method": "output", "params": {
        "request_id": 7, "actor_id": actor_id, "port": "output", "data": 42, "seq": 0}}
    duration_ms = response["result"].pop("duration_ms")
    assert isinstance(duration_ms, float | int) and duration_ms >= 0
    assert response == _result(7, {
        "outputs": {"output": 42},
        "emitted": [{"port": "output", "data": 42, "seq": 0}],
        "return": {"status": "completed"},
        "state": {}})


async def test_logs_and_state(rpc: Rpc) -> None:
    notes, response = await rpc.request("process", {"actor_id": "chatty", "payload": {},
                                                    "state": {"kept": 1}}, request_id="c")
    for note in notes:
        note["params"].pop("timestamp", None)
    assert notes == [
        {"jsonrpc": "2.0", "method": "log", "params": {
            "request_id": "c", "actor_id": "chatty", "stream": "stdout",
            "message": "first line"}},
        {"jsonrpc": "2.0", "method": "output", "params": {
            "request_id": "c", "actor_id": "chatty", "port": "output", "data": "between",
            "seq": 0}},
        {"jsonrpc": "2.0", "method": "log", "params": {
            "request_id": "c", "actor_id": "chatty", "stream": "stderr",
            "message": "to stderr"}},
    ]
    assert response["result"]["state"] == {"kept": 1, "seen": True}
    assert response["result"]["return"] == {"status": "completed"}


async def test_a_notification_is_sent_while_the_call_still_runs(rpc: Rpc) -> None:
    """A notification is corked so that the response right behind it shares its TCP
    segment; a call that goes on must not hold its outputs back (see test_cork.py)."""
    await rpc.send({"jsonrpc": "2.0", "id": 1, "method": "process",
                    "params": {"actor_id": "sleeper", "payload": {"seconds": 1.5}}})
    first = await rpc.recv()  # RECEIVE_TIMEOUT_S would fail it; the sleep must not end first
    assert first["method"] == "output" and first["params"]["data"] is True
    with pytest.raises(TimeoutError):  # the call sleeps 1.5 s: nothing else can come yet
        async with asyncio.timeout(0.5):
            await rpc.recv()
    _, response = await rpc.until_response(1)
    assert response["result"]["return"] == {"slept": 1.5}


async def test_streaming_outputs_keep_their_order(rpc: Rpc) -> None:
    notes, response = await rpc.request("process", {"actor_id": "ticker",
                                                    "payload": {"count": 5}})
    assert [(n["params"]["data"], n["params"]["seq"]) for n in notes] == [
        (1, 0), (2, 1), (3, 2), (4, 3), (5, 4)]
    assert response["result"]["outputs"] == {"tick": 5}


@pytest.mark.parametrize("request_id", ["abc", 12, None, 3.5])
async def test_request_id_echoed_in_notifications_and_response(rpc: Rpc,
                                                               request_id: Any) -> None:
    notes, response = await rpc.request("process", {"actor_id": "doubler",
                                                    "payload": {"input": 1}}, request_id)
    assert [type(n["params"]["request_id"]) for n in notes] == [type(request_id)]
    assert notes[0]["params"]["request_id"] == request_id
    assert type(response["id"]) is type(request_id)


async def test_positional_process_params(rpc: Rpc) -> None:
    response = await rpc.call("process", ["doubler", {"input": 4}, {}, {}, 1])
    assert response["result"]["outputs"] == {"output": 8}


async def test_calls_on_one_connection_run_concurrently(rpc: Rpc) -> None:
    """A slow call does not hold up a quick one sent after it."""
    await rpc.send({"jsonrpc": "2.0", "method": "process", "id": "slow",
                    "params": {"actor_id": "waiter", "payload": {"seconds": 1.5}}})
    await rpc.send({"jsonrpc": "2.0", "method": "list", "id": "quick"})
    ids = []
    while len(ids) < 2:
        message = await rpc.recv()
        if "id" in message:
            ids.append(message["id"])
    assert ids == ["quick", "slow"]


# --- every error of protocol.md's table, and the standard ones ---


async def test_method_not_found(rpc: Rpc) -> None:
    assert await rpc.call("nope") == _error(1, -32601, "Method not found")


async def test_invalid_params_of_each_method(rpc: Rpc) -> None:
    response = await rpc.call("load", {})
    assert response == _error(1, -32602, "Invalid params", {"errors": [
        {"path": "", "message": "'file_path' is a required property"}]})
    response = await rpc.call("load", {"file_path": 3})
    assert response == _error(2, -32602, "Invalid params", {"errors": [
        {"path": "/file_path", "message": "3 is not of type 'string'"}]})
    response = await rpc.call("process", {"actor_id": "doubler", "payload": [21]})
    assert response == _error(3, -32602, "Invalid params", {"errors": [
        {"path": "/payload", "message": "[21] is not of type 'object'"}]})
    response = await rpc.call("describe", {})
    assert response == _error(4, -32602, "Invalid params", {"errors": [
        {"path": "", "message": "'actor_id' is a required property"}]})
    response = await rpc.call("list", {"verbose": True})
    assert response == _error(5, -32602, "Invalid params", {"errors": [
        {"path": "", "message": "Additional properties are not allowed "
                                "('verbose' was unexpected)"}]})


async def test_config_failing_its_schema_is_invalid_params(rpc: Rpc) -> None:
    response = await rpc.call("process", {"actor_id": "counter", "payload": {"value": 1},
                                          "config": {"factor": "x"}})
    assert response["error"]["code"] == -32602
    assert response["error"]["data"] == {"errors": [
        {"path": "/factor", "message": "'x' is not of type 'number'"}]}


async def test_actor_not_found(rpc: Rpc) -> None:
    assert await rpc.call("describe", {"actor_id": "ghost"}) == _error(
        1, -32001, "Actor not found: ghost", {"actor_id": "ghost"})
    assert await rpc.call("process", {"actor_id": "ghost", "payload": {}}) == _error(
        2, -32001, "Actor not found: ghost", {"actor_id": "ghost"})


async def test_payload_invalid(rpc: Rpc) -> None:
    response = await rpc.call("process", {"actor_id": "doubler", "payload": {"input": "a"}})
    assert response == _error(1, -32002, "Payload invalid on port 'input'", {
        "port": "input", "errors": [{"path": "", "message": "'a' is not of type 'number'"}]})
    response = await rpc.call("process", {"actor_id": "doubler", "payload": {}})
    assert response["error"]["code"] == -32002
    assert response["error"]["data"]["port"] == "input"
    response = await rpc.call("process", {"actor_id": "doubler",
                                          "payload": {"input": 1, "extra": 2}})
    assert response["error"]["code"] == -32002
    assert response["error"]["data"]["port"] == "extra"


async def test_output_invalid_is_not_forwarded(rpc: Rpc) -> None:
    notes, response = await rpc.request("process", {"actor_id": "bad_output",
                                                    "payload": {"mode": "type"}})
    assert notes == []
    assert response == _error(1, -32003, "Output invalid on port 'output'", {
        "port": "output",
        "errors": [{"path": "", "message": "'not a number' is not of type 'number'"}]})
    notes, response = await rpc.request("process", {"actor_id": "bad_output",
                                                    "payload": {"mode": "port"}})
    assert notes == []
    assert response["error"]["code"] == -32003
    assert response["error"]["data"]["port"] == "nowhere"


async def test_actor_failed_carries_the_sandbox_traceback(rpc: Rpc) -> None:
    response = await rpc.call("process", {"actor_id": "failing", "payload": {"input": 1}})
    error = response["error"]
    assert error["code"] == -32004
    assert error["message"] == "Actor failed: ZeroDivisionError: division by zero"
    assert error["data"]["type"] == "ZeroDivisionError"
    assert error["data"]["message"] == "division by zero"
    assert "failing.py" in error["data"]["traceback"]
    assert "service/" not in error["data"]["traceback"]  # nothing of the server's


async def test_time_limit(rpc: Rpc) -> None:
    response = await rpc.call("process", {"actor_id": "sleeper", "payload": {"seconds": 30}})
    assert response == _error(1, -32005, "Time limit exceeded (2 s)", {"limit_s": 2})


async def test_memory_limit(rpc: Rpc) -> None:
    response = await rpc.call("process", {"actor_id": "hog", "payload": {"megabytes": 400}})
    assert response == _error(1, -32006, "Resource limit exceeded: memory (limit 48)",
                              {"resource": "memory", "limit": 48})


async def test_manifest_invalid_on_load(rpc: Rpc, tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("id: broken\nlanguage: cobol\n")
    response = await rpc.call("load", {"file_path": str(tmp_path / "broken.yaml")})
    assert response["error"]["code"] == -32007
    errors = response["error"]["data"]["errors"]
    assert errors and all(set(e) >= {"file", "line", "path", "message"} for e in errors)
    assert any(e["path"] == "/language" for e in errors)


TRIPLER_PY = ("async def process(context):\n"
              "    await context.send_output('output', context.get_input('input') * 3)\n")
TRIPLER = ("id: tripler\nlanguage: python\nscript: tripler.py\n"
           "inports: {input: {schema: {type: number}}}\n"
           "outports: {output: {schema: {type: number}}}\n")
TOO_LARGE = "is too large: a number must fit in a double (at most about 1.8e308)"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name, text, first", [
    ("nul.yaml", "id: t10\x00\n", "1:1:8: invalid YAML: the character U+0000 is not allowed"),
    ("esc.yaml", TRIPLER + "description: \"\x1b[31m\"\n", "1:6:15: invalid YAML: the "
     "character U+001B"),
    ("big.yaml", TRIPLER + "limits: {memory_mb: " + "9" * 5000 + "}\n",
     f"1:6:21: 9999999999…999999 (5000 characters) {TOO_LARGE}"),
    ("hex.yaml", TRIPLER + "limits: {memory_mb: 0x" + "f" * 5000 + "}\n",
     f"1:6:21: 0xffffffff…ffffff (5002 characters) {TOO_LARGE}"),
    ("schema.yaml", TRIPLER.replace("{type: number}}}", "{type: integer, maximum: 0x"
                                    + "f" * 4000 + "}}}", 1),
     f"1:4:52: 0xffffffff…ffffff (4002 characters) {TOO_LARGE}"),
    ("fifo.yaml", TRIPLER.replace("{type: number}}}", "{$ref: pipe.json}}}", 1),
     "1:4:34: inports.input.schema.$ref: $ref 'pipe.json' cannot be read: not a regular "
     "file (a named pipe)"),
    ("mem_inf.py", '@actor(name="m", memory="' + "9" * 400 + 'MB")\n' + TRIPLER_PY,
     "1:1:1: memory: 9999999999…999999 (400 characters) is too large"),
    ("js_big.js", "const metadata = {component: 'j', timeout: 0x" + "f" * 400 + "};\n",
     "1:1:44: 0xffffffff…ffffff (402 characters) is too large"),
])
async def test_a_manifest_built_to_crash_the_loader_is_manifest_invalid(
        rpc: Rpc, tmp_path: Path, name: str, text: str, first: str) -> None:
    """Not -32603: each is a clear problem at its position (and a pipe never blocks)."""
    os.mkfifo(tmp_path / "pipe.json")
    (tmp_path / "tripler.py").write_text(TRIPLER_PY)
    (tmp_path / name).write_text(text)
    response = await rpc.call("load", {"file_path": str(tmp_path / name)})
    assert response["error"]["code"] == -32007, response
    errors = response["error"]["data"]["errors"]
    assert f"{len(errors)}:{errors[0]['line']}:{errors[0]['column']}: " \
           f"{errors[0]['message']}".startswith(first)


async def test_integral_floats_load_as_ints_and_the_actor_runs(rpc: Rpc, tmp_path: Path) -> None:
    """128.0 is an integer to JSON Schema: it loads, and the sandbox gets 128 (cgroup files,
    the warm pool's range()), so calls run."""
    (tmp_path / "tripler.py").write_text(TRIPLER_PY)
    (tmp_path / "tripler.yaml").write_text(
        TRIPLER + "limits: {memory_mb: 128.0, pids: 64.0, output_bytes: 1048576.0}\n"
        "pool: {min_warm: 1.0, max_workers: 2.0, max_queue: 3.0}\n")
    response = await rpc.call("load", {"file_path": str(tmp_path / "tripler.yaml")})
    limits = response["result"]["actor"]["limits"]
    assert [(limits[k], type(limits[k])) for k in ("memory_mb", "pids", "output_bytes")] == [
        (128, int), (64, int), (1048576, int)]
    _, response = await rpc.request("process", {"actor_id": "tripler",
                                                "payload": {"input": 5}})
    assert response["result"]["outputs"] == {"output": 15}


async def _wait_started(rpc: Rpc, request_id: Any) -> None:
    note = await rpc.recv()
    assert note["method"] == "output", note
    assert note["params"]["request_id"] == request_id
    assert note["params"]["data"] is True


async def test_busy_when_the_queue_is_full(rpc: Rpc) -> None:
    await rpc.send({"jsonrpc": "2.0", "method": "process", "id": "first",
                    "params": {"actor_id": "waiter", "payload": {"seconds": 30}}})
    await _wait_started(rpc, "first")
    _, response = await rpc.request("process", {"actor_id": "waiter",
                                                "payload": {"seconds": 0}}, "second")
    assert response["error"]["code"] == -32008
    assert response["error"]["message"] == "Busy: the actor's queue is full"
    assert list(response["error"]["data"]) == ["retry_after_ms"]
    assert isinstance(response["error"]["data"]["retry_after_ms"], int)
    _, cancelled = await rpc.request("cancel", {"request_id": "first"}, "c")
    assert cancelled == _result("c", {"cancelled": True})


async def test_sandbox_unavailable(make_server: ServerFactory) -> None:
    """The real process backend, told to boot an interpreter that does not exist."""
    server = await make_server(sandbox=SandboxSettings(python="/nonexistent/python3"))
    ws = await server.ws_connect("/")
    response = await Rpc(ws).call("process", {"actor_id": "doubler", "payload": {"input": 1}})
    await ws.close()
    error = response["error"]
    assert (error["code"], list(error["data"]), error["data"]["backend"]) == (
        -32009, ["backend", "reason"], "process")
    assert "/nonexistent/python3" in error["data"]["reason"]
    assert error["message"] == f"Sandbox unavailable (process): {error['data']['reason']}"


async def test_cancel(rpc: Rpc, runtime: Runtime) -> None:
    await rpc.send({"jsonrpc": "2.0", "method": "process", "id": 41,
                    "params": {"actor_id": "waiter", "payload": {"seconds": 30}}})
    await _wait_started(rpc, 41)
    _, response = await rpc.request("cancel", {"request_id": 41}, 42)
    assert response == _result(42, {"cancelled": True})
    _, cancelled = await rpc.until_response(41)
    assert cancelled == _error(41, -32010, "Cancelled", {})
    assert runtime.pool_stats()["waiter"][0] == 0  # the sandbox is no longer busy
    _, again = await rpc.request("cancel", {"request_id": 41}, 43)
    assert again == _result(43, {"cancelled": False})
    # the actor still works afterwards, on a fresh sandbox
    _, response = await rpc.request("process", {"actor_id": "waiter",
                                                "payload": {"seconds": 0}}, 44)
    assert response["result"]["return"] == {"slept": 0}


async def test_cancel_unknown_id(rpc: Rpc) -> None:
    assert await rpc.call("cancel", {"request_id": "never"}) == _result(1, {"cancelled": False})


async def test_closing_the_connection_cancels_its_calls(server: TestClient,
                                                        runtime: Runtime) -> None:
    ws = await server.ws_connect("/")
    rpc = Rpc(ws)
    await rpc.send({"jsonrpc": "2.0", "method": "process", "id": 1,
                    "params": {"actor_id": "waiter", "payload": {"seconds": 30}}})
    await _wait_started(rpc, 1)
    assert runtime.pool_stats()["waiter"][0] == 1
    await ws.close()
    for _ in range(200):  # the server notices the close, then kills the sandbox
        if runtime.pool_stats()["waiter"][0] == 0:
            break
        await asyncio.sleep(0.05)
    assert runtime.pool_stats()["waiter"][0] == 0
    other = Rpc(await server.ws_connect("/"))
    _, response = await other.request("process", {"actor_id": "waiter",
                                                  "payload": {"seconds": 0}})
    assert response["result"]["return"] == {"slept": 0}  # not -32008: the worker was freed
    await other.ws.close()


# --- the origin README's requests, as written ---


async def test_origin_readme_requests(rpc: Rpc) -> None:
    await rpc.send('{\n  "jsonrpc": "2.0",\n  "method": "list",\n  "params": {},\n  "id": 1\n}')
    _, response = await rpc.until_response(1)
    assert [a["id"] for a in response["result"]["actors"]][:2] == ["bad_output", "chatty"]
    await rpc.send('{"jsonrpc": "2.0", "method": "load", '
                   '"params": {"file_path": "/path/to/actor.py"}, "id": 2}')
    _, response = await rpc.until_response(2)
    assert response == _error(2, -32011, "Path not allowed or not found: /path/to/actor.py",
                              {"path": "/path/to/actor.py"})
    await rpc.send('{"jsonrpc": "2.0", "method": "process", "params": {"actor_id": "my_actor",'
                   ' "payload": {"input": 42}, "config": {}, "state": {},'
                   ' "timestamp": 1234567890}, "id": 3}')
    _, response = await rpc.until_response(3)
    assert response == _error(3, -32001, "Actor not found: my_actor", {"actor_id": "my_actor"})


async def test_origin_readme_requests_with_real_paths(rpc: Rpc) -> None:
    script = MANIFESTS / "doubler" / "doubler.py"
    _, response = await rpc.request("load", {"file_path": str(script)}, 2)
    assert response["result"]["actor"]["id"] == "doubler"
    notes, response = await rpc.request("process", {
        "actor_id": "doubler", "payload": {"input": 42}, "config": {}, "state": {},
        "timestamp": 1234567890}, 3)
    assert [n["params"]["data"] for n in notes] == [84]
    assert response["result"]["outputs"] == {"output": 84}


async def test_load_outside_the_allowed_roots(rpc: Rpc, tmp_path: Path) -> None:
    outside = ACTORS.parents[2] / "config" / "settings.toml"
    response = await rpc.call("load", {"file_path": str(outside)})
    assert response == _error(1, -32011, f"Path not allowed or not found: {outside}",
                              {"path": str(outside)})


async def test_load_of_an_empty_path_names_no_file(rpc: Rpc) -> None:
    response = await rpc.call("load", {"file_path": ""})  # a string: -32011, not -32602
    assert response == _error(1, -32011, "Path not allowed: file_path is empty", {"path": ""})
    response = await rpc.call("load", {"file_path": 7})
    assert response["error"]["code"] == -32602
    assert [e["path"] for e in response["error"]["data"]["errors"]] == ["/file_path"]
