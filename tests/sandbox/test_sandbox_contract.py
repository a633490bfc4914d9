"""The contract every sandbox backend meets (run with --backend=process|microvm|all).

Hostile scripts live in ``actors/`` (``hostile.py``/``hostile.js`` pick a behaviour by
payload "mode"); each breach must raise its own wire error, and the next call on the
same actor's pool must succeed.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sandbox_helpers import ACTORS, TMP_MB, Recorder, actor_def, call, request

from service.errors import (
    ActorFailed,
    Cancelled,
    OutputInvalid,
    ResourceLimitExceeded,
    RpcError,
    TimeLimitExceeded,
)
from service.manifest.model import ActorDef, PoolSpec
from service.sandbox.base import Backend, LogEvent, OutputEvent, Worker
from service.sandbox.pool import ActorPool

Start = Callable[[ActorDef], Awaitable[Worker]]
TIME_MARGIN_S = 2.0  # kill, reap and report after the wall-clock limit


# --- the actor API -----------------------------------------------------------------------


async def test_outputs_stream_before_the_call_returns(
        start: Start, scratch_dir: Path) -> None:
    shutil.copy(ACTORS / "stream.py", scratch_dir)
    worker = await start(actor_def(scratch_dir / "stream.py"))
    go = f"go-{secrets.token_hex(4)}"
    seen: list[Any] = []

    async def sink(event: Any) -> None:
        seen.append(event)
        if isinstance(event, OutputEvent) and event.data == 1:
            (scratch_dir / go).touch()  # only a still-running script can notice this

    outcome = await worker.call(request({"go": go}), sink)

    assert outcome.return_value == {"saw_go": True}
    assert seen == [OutputEvent("output", 1), LogEvent("stdout", f"waiting for {go}"),
                    OutputEvent("output", 2)]


async def test_python_origin_example(start: Start, actor: Callable[..., ActorDef]) -> None:
    worker = await start(actor("origin.py"))
    outcome, recorder = await call(worker, {"input": 21})
    assert recorder.outputs == [("output", 42)]
    assert outcome.return_value == {"status": "completed"}
    assert outcome.state == {}


async def test_python_origin_decorator_and_state(
        start: Start, actor: Callable[..., ActorDef]) -> None:
    worker = await start(actor("origin_decorated.py"))
    outcome, recorder = await call(worker, {"input": 5}, config={"factor": 3},
                                   state={"count": 4, "keep": [1]})
    assert recorder.events == [OutputEvent("output", 10), LogEvent("stdout", "seen 4")]
    assert outcome.return_value == {"status": "completed", "factor": 3}
    assert outcome.state == {"count": 5, "keep": [1]}


@pytest.mark.parametrize("script", ["plain_def.py", "exported.js"])
async def test_context_round_trip(start: Start, actor: Callable[..., ActorDef],
                                  script: str) -> None:
    worker = await start(actor(script))
    outcome, recorder = await call(worker, {"input": 7}, config={"factor": 2},
                                   state={"count": 1, "other": "x"}, actor_id="me",
                                   timestamp=1764151200123)
    assert recorder.outputs == [("output", 14)]
    assert ("stdout", "actor me at 1764151200123") in recorder.logs
    assert outcome.return_value == {"payload": {"input": 7}, "config": {"factor": 2},
                                    "state": {"count": 2, "other": "x"}}
    assert outcome.state == {"count": 2, "other": "x"}


@pytest.mark.parametrize("script", ["plain_def.py", "exported.js"])
async def test_lone_surrogates_round_trip(start: Start, actor: Callable[..., ActorDef],
                                          script: str) -> None:
    """A lone surrogate is legal JSON text ("\\ud800"): it must come back unchanged."""
    worker = await start(actor(script))
    outcome, _ = await call(worker, {"input": 1, "s": "a\ud800"}, config={"c": "\udfff"},
                            state={"k": "\ud800\U0001f600"})
    assert outcome.return_value == {"payload": {"input": 1, "s": "a\ud800"},
                                    "config": {"c": "\udfff"},
                                    "state": {"k": "\ud800\U0001f600", "count": 1}}
    assert outcome.state == {"k": "\ud800\U0001f600", "count": 1}


@pytest.mark.parametrize("script", ["plain_def.py", "exported.js"])
async def test_returned_state_counts_as_output(start: Start, actor: Callable[..., ActorDef],
                                               script: str) -> None:
    """The return value (40 KB, it holds the state) and the state (40 KB) both go back."""
    worker = await start(actor(script, output_bytes=65_536))
    with pytest.raises(ResourceLimitExceeded) as caught:
        await call(worker, {"input": 1}, state={"big": "x" * 40_000})
    assert caught.value.data == {"resource": "output", "limit": 65_536}


async def test_state_starts_from_each_request(start: Start,
                                              actor: Callable[..., ActorDef]) -> None:
    worker = await start(actor("plain_def.py"))
    first, _ = await call(worker, {"input": 1}, state={"count": 10})
    await worker.reset()
    second, _ = await call(worker, {"input": 1})
    assert (first.state, second.state) == ({"count": 11}, {"count": 1})


async def test_javascript_origin_example(start: Start, actor: Callable[..., ActorDef]) -> None:
    worker = await start(actor("origin.js"))
    outcome, recorder = await call(worker, {"input": 21})
    assert recorder.outputs == [("output", 42)]
    assert outcome.return_value == {"status": "completed"}


async def test_javascript_module_forms(start: Start, actor: Callable[..., ActorDef]) -> None:
    by_property = await start(actor("exports_property.js"))
    module = await start(actor("esm.mjs"))
    outcome, _ = await call(by_property, {"input": 4})
    esm, recorder = await call(module)
    assert outcome.return_value == {"doubled": 8}
    assert (esm.return_value, recorder.outputs) == ({"kind": "module"}, [("output", "esm")])


async def test_a_commonjs_script_can_import_es_modules(
        start: Start, actor: Callable[..., ActorDef]) -> None:
    worker = await start(actor("dynamic_import.js"))
    outcome, _ = await call(worker, {"input": 3})
    assert outcome.return_value == {"slept": True, "input": 3}


async def test_javascript_console_goes_to_logs(start: Start,
                                               actor: Callable[..., ActorDef]) -> None:
    worker = await start(actor("exported.js"))
    _, recorder = await call(worker, {"input": 1})
    assert recorder.logs == [("stdout", "actor test at 1234567890"), ("stderr", "to stderr")]


@pytest.mark.parametrize(("script", "payload"), [
    ("probe.py", {"mode": "raw_writes"}), ("raw.js", {})])
async def test_output_bypassing_the_harness_still_comes_back(
        start: Start, actor: Callable[..., ActorDef], script: str,
        payload: dict[str, Any]) -> None:
    worker = await start(actor(script))
    outcome, recorder = await call(worker, payload)
    assert outcome.return_value == "done"
    assert {("stdout", "raw out"), ("stderr", "raw err"), ("stdout", "from a child")} <= set(
        recorder.logs)


LONG_LINES = {
    "long_lines.py": """
import os, sys
async def process(context):
    sys.stdout.write("x" * 100000)
    sys.stdout.write("\\n")
    print("after")
    for data in (b"y" * 100000, b"\\n", b"raw after\\n"):
        while data:  # a pipe may take less than a whole write (gVisor's does)
            data = data[os.write(1, data):]
""",
    "long_lines.js": """
const fs = require("fs");
async function process(context) {
  console.log("x".repeat(100000));
  console.log("after");
  for (const text of ["y".repeat(100000), "\\n", "raw after\\n"]) {
    const data = Buffer.from(text);
    for (let done = 0; done < data.length;) done += fs.writeSync(1, data, done);
  }
}
""",
}


@pytest.mark.parametrize("name", sorted(LONG_LINES))
async def test_a_long_line_goes_in_pieces_and_its_newline_adds_no_empty_line(
        start: Start, scratch_dir: Path, name: str) -> None:
    """A line longer than 64 KiB is sent in pieces (what waits for a newline is bounded);
    the newline that ends it is no line of its own."""
    script = scratch_dir / name
    script.write_text(LONG_LINES[name])
    script.chmod(0o644)
    worker = await start(actor_def(script, output_bytes=1 << 20))
    _, recorder = await call(worker, {})
    harness = [text for stream, text in recorder.logs if not text.startswith("y")
               and text != "raw after"]
    raw = [text for stream, text in recorder.logs if text.startswith("y")]
    assert harness == ["x" * 100000, "after"]
    assert "".join(raw) == "y" * 100000 and all(raw)
    assert recorder.logs[-1] == ("stdout", "raw after")
    assert all(text for _, text in recorder.logs)


# --- failures of the script --------------------------------------------------------------


@pytest.mark.parametrize(("script", "type_", "message"), [
    ("failing.py", "ZeroDivisionError", "division by zero"),
    ("failing.js", "TypeError", "bad input 1"),
])
async def test_exception_carries_the_script_traceback(
        start: Start, actor: Callable[..., ActorDef], script: str, type_: str,
        message: str) -> None:
    worker = await start(actor(script))
    with pytest.raises(ActorFailed) as caught:
        await call(worker)
    data = caught.value.data
    assert caught.value.CODE == -32004
    assert (data["type"], data["message"]) == (type_, message)
    assert script in data["traceback"]
    assert "harness" not in data["traceback"]


@pytest.mark.parametrize("script", ["hostile.py", "hostile.js"])
async def test_return_value_must_be_json(start: Start, actor: Callable[..., ActorDef],
                                         script: str) -> None:
    worker = await start(actor(script))
    with pytest.raises(ActorFailed) as caught:
        await call(worker, {"mode": "not_json"})
    assert caught.value.data["type"] == "TypeError"
    assert "not JSON-serializable" in caught.value.data["message"]


@pytest.mark.parametrize(("name", "source"), [
    ("broken.py", "def process(context:\n    return 1\n"),
    ("broken.js", "async function process(context) {\n  return {;\n}\n"),
    ("raises_on_import.py", "raise ImportError('no such thing')\n"),
    ("no_entry.py", "def other(context):\n    return 1\n"),
])
async def test_script_that_cannot_load_fails_the_call(
        start: Start, scratch_dir: Path, name: str, source: str) -> None:
    (scratch_dir / name).write_text(source)
    worker = await start(actor_def(scratch_dir / name))  # boots: the error is the call's
    with pytest.raises(ActorFailed) as caught:
        await call(worker)
    assert caught.value.data["type"] in ("SyntaxError", "ImportError", "AttributeError",
                                         "TypeError")
    assert name in caught.value.data["traceback"] + caught.value.data["message"]


@pytest.mark.parametrize(("name", "source"), [
    ("loud_load.py", "for _ in range(5000):\n    print('x' * 99)\n"
                     "def process(context):\n    return 1\n"),
    ("loud_load.js", "for (let i = 0; i < 5000; i++) console.log('x'.repeat(99));\n"
                     "async function process(context) { return 1; }\n"),
])
async def test_a_load_that_writes_more_than_a_call_may_fails_the_boot(
        start: Start, scratch_dir: Path, name: str, source: str) -> None:
    """What the load writes goes nowhere, but each line costs the server: at most what one
    call may send (here 5000 lines of 100 bytes against output_bytes 65,536)."""
    (scratch_dir / name).write_text(source)
    with pytest.raises(ResourceLimitExceeded) as caught:
        await start(actor_def(scratch_dir / name))
    assert caught.value.data == {"resource": "output", "limit": 65_536}
    quiet = scratch_dir / f"quiet_{name}"  # the same load, a little quieter, boots
    quiet.write_text(source.replace("5000", "200"))
    worker = await start(actor_def(quiet))
    outcome, _ = await call(worker)
    assert outcome.return_value == 1


DEEP_JS = """async function process(context) {
  let value = 0;
  for (let i = 0; i < context.getInput('depth'); i++) value = [value];
  return value;
}
"""


async def test_a_deep_value_is_read_as_deep_as_json_allows(start: Start,
                                                          scratch_dir: Path) -> None:
    """node writes deeper than Python's json could read back: orjson reads up to 1024
    levels; deeper fails the call (-32004) saying so, never as "garbage"."""
    (scratch_dir / "deep.js").write_text(DEEP_JS)
    worker = await start(actor_def(scratch_dir / "deep.js"))
    outcome, _ = await call(worker, {"depth": 1000})
    value, depth = outcome.return_value, 0
    while isinstance(value, list):
        value, depth = value[0], depth + 1
    assert (depth, value) == (1000, 0)
    with pytest.raises(ActorFailed) as caught:
        await call(worker, {"depth": 1100})
    assert caught.value.data["type"] == "ValueError"
    assert caught.value.data["message"] == ("the sandbox sent a value nested more than 1024 "
                                            "levels deep: too deep to read")


async def test_pool_aclose_cancels_a_running_call(backend: Backend,
                                                  actor: Callable[..., ActorDef]) -> None:
    pool = ActorPool(actor("hostile.py", timeout_s=30), backend)
    running = asyncio.create_task(pool.run(request({"mode": "loop"}), Recorder()))
    async with asyncio.timeout(10):
        while pool.stats.busy == 0:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # the sandbox is spinning
    await pool.aclose()
    with pytest.raises(Cancelled) as caught:
        await running
    assert caught.value.to_json() == {"code": -32010, "message": "Cancelled", "data": {}}


async def test_failing_sink_kills_the_worker(start: Start,
                                             actor: Callable[..., ActorDef]) -> None:
    worker = await start(actor("origin.py"))

    async def reject(event: Any) -> None:
        raise OutputInvalid("output", [{"path": "", "message": "no"}])

    with pytest.raises(OutputInvalid):
        await worker.call(request({"input": 1}), reject)
    assert not worker.alive


async def test_cancelling_the_call_kills_the_sandbox(
        start: Start, actor: Callable[..., ActorDef]) -> None:
    worker = await start(actor("stream.py"))
    started = asyncio.Event()

    async def sink(event: Any) -> None:
        started.set()

    task = asyncio.create_task(worker.call(request({"go": "never"}), sink))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not worker.alive


def _living_descendants() -> set[tuple[int, str]]:
    """(pid, start time) of every living process below this one."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields and fields[0] not in ("Z", "X"):
            children.setdefault(int(fields[1]), []).append((int(entry.name), fields[19]))
    found: set[tuple[int, str]] = set()
    todo = [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child[0])
    return found


async def test_a_boot_cancelled_twice_leaves_no_sandbox(
        backend: Backend, actor: Callable[..., ActorDef]) -> None:
    """A call cancelled while its sandbox boots, then cancelled again (a second `cancel`, or
    its connection closing): once the cancellation comes out, nothing of that sandbox runs
    (the second one used to cancel the clean-up itself, leaving the sandbox running outside
    the pool's count, its uid given back to the next one)."""
    before = _living_descendants()
    for step in range(16):
        task = asyncio.ensure_future(backend.start_worker(actor("origin.py")))
        await asyncio.sleep(step * 0.003)
        task.cancel()
        await asyncio.sleep(0)
        task.cancel()
        try:
            worker = await task
        except asyncio.CancelledError:
            pass
        else:  # booted before the first cancel came
            await worker.close()
        assert _living_descendants() <= before, f"a sandbox runs on after step {step}"


# --- limits: each breach has its own error, and the pool carries on ----------------------

BREACHES: list[tuple[str, str, dict[str, Any], type[RpcError], dict[str, Any]]] = [
    ("hostile.py", "loop", {"timeout_s": 1}, TimeLimitExceeded, {"limit_s": 1}),
    ("hostile.py", "memory", {}, ResourceLimitExceeded, {"resource": "memory", "limit": 64}),
    # memory to spare: the rows test the pids limit (on gvisor each process also costs the
    # Sentry host memory, charged to the actor's cgroup)
    ("hostile.py", "fork", {"memory_mb": 256}, ResourceLimitExceeded,
     {"resource": "pids", "limit": 16}),
    ("hostile.py", "fork_quiet", {"timeout_s": 3, "memory_mb": 256}, ResourceLimitExceeded,
     {"resource": "pids", "limit": 16}),
    ("hostile.py", "threads", {}, ResourceLimitExceeded, {"resource": "pids", "limit": 16}),
    ("hostile.py", "flood_output", {}, ResourceLimitExceeded,
     {"resource": "output", "limit": 65_536}),
    ("hostile.py", "flood_print", {}, ResourceLimitExceeded,
     {"resource": "output", "limit": 65_536}),
    ("hostile.py", "flood_raw", {}, ResourceLimitExceeded,
     {"resource": "output", "limit": 65_536}),
    ("hostile.py", "flood_tiny", {}, ResourceLimitExceeded,
     {"resource": "output", "limit": 65_536}),
    ("hostile.py", "flood_empty", {}, ResourceLimitExceeded,
     {"resource": "output", "limit": 65_536}),
    ("hostile.py", "disk", {}, ResourceLimitExceeded, {"resource": "disk", "limit": TMP_MB}),
    ("hostile.py", "raise", {}, ActorFailed, {"type": "ZeroDivisionError"}),
    ("hostile.py", "exit", {}, ActorFailed, {"type": "SandboxCrashed"}),
    ("hostile.py", "garbage", {}, ActorFailed, {"type": "ProtocolError"}),
    ("hostile.js", "loop", {"timeout_s": 1}, TimeLimitExceeded, {"limit_s": 1}),
    ("hostile.js", "memory", {}, ResourceLimitExceeded, {"resource": "memory", "limit": 160}),
    ("hostile.js", "fork", {}, ResourceLimitExceeded, {"resource": "pids", "limit": 32}),
    ("hostile.js", "fork_quiet", {"timeout_s": 3}, ResourceLimitExceeded,
     {"resource": "pids", "limit": 32}),
    ("hostile.js", "flood_output", {}, ResourceLimitExceeded,
     {"resource": "output", "limit": 65_536}),
    ("hostile.js", "flood_print", {}, ResourceLimitExceeded,
     {"resource": "output", "limit": 65_536}),
    ("hostile.js", "flood_raw", {}, ResourceLimitExceeded,
     {"resource": "output", "limit": 65_536}),
    ("hostile.js", "flood_tiny", {}, ResourceLimitExceeded,
     {"resource": "output", "limit": 65_536}),
    ("hostile.js", "flood_empty", {}, ResourceLimitExceeded,
     {"resource": "output", "limit": 65_536}),
    ("hostile.js", "disk", {}, ResourceLimitExceeded, {"resource": "disk", "limit": TMP_MB}),
    ("hostile.js", "raise", {}, ActorFailed, {"type": "TypeError"}),
    ("hostile.js", "exit", {}, ActorFailed, {"type": "SandboxCrashed"}),
    ("hostile.js", "async_throw", {}, ActorFailed,
     {"type": "RangeError", "message": "thrown in a timer"}),
]


@pytest.mark.parametrize(("script", "mode", "limits", "error", "data"), BREACHES,
                         ids=[f"{s.split('.')[1]}-{m}" for s, m, *_ in BREACHES])
async def test_breach_then_next_call_succeeds(
        backend: Backend, script: str, mode: str, limits: dict[str, Any],
        error: type[RpcError], data: dict[str, Any]) -> None:
    pool = ActorPool(actor_def(ACTORS / script, pool=PoolSpec(max_workers=1), **limits), backend)
    try:
        await pool.run(request({"mode": "ok"}), Recorder())  # a warm worker to break
        began = time.monotonic()
        with pytest.raises(error) as caught:
            await pool.run(request({"mode": mode}), Recorder())
        elapsed = time.monotonic() - began
        outcome = await pool.run(request({"mode": "ok"}), Recorder())
    finally:
        await pool.aclose()
    assert caught.value.CODE == error.CODE
    assert {k: caught.value.data[k] for k in data} == data
    if error is TimeLimitExceeded:
        assert elapsed < limits["timeout_s"] + TIME_MARGIN_S
    assert outcome.return_value == {"ok": True}


# --- isolation ---------------------------------------------------------------------------


async def test_host_files_are_out_of_reach(start: Start, actor: Callable[..., ActorDef]) -> None:
    worker = await start(actor("probe.py"))
    server_source = str(Path(__file__).resolve().parents[2] / "service" / "errors.py")
    outcome, _ = await call(worker, {"mode": "files", "host_file": server_source})
    reached = {path: result for path, result in outcome.return_value["read"].items()
               if result == "ok"}
    assert reached == {}
    assert not {"root", "home", "work", "srv", "var"} & set(outcome.return_value["root"])


async def test_server_environment_is_not_visible(
        backend: Backend, actor: Callable[..., ActorDef], monkeypatch: pytest.MonkeyPatch) -> None:
    canary = f"canary-{secrets.token_hex(8)}"
    monkeypatch.setenv("SANDBOX_TEST_SECRET", canary)
    worker = await backend.start_worker(actor("probe.py"))
    try:
        outcome, _ = await call(worker, {"mode": "environment"})
    finally:
        await worker.close()
    assert canary not in repr(outcome.return_value)
    assert "SANDBOX_TEST_SECRET" not in repr(outcome.return_value)


async def test_only_tmp_is_writable(start: Start, actor: Callable[..., ActorDef]) -> None:
    worker = await start(actor("probe.py"))
    outcome, _ = await call(worker, {"mode": "writes"})
    written = {path for path, result in outcome.return_value.items() if result == "ok"}
    assert written == {"/tmp/new"}


async def test_no_network_by_default(start: Start, actor: Callable[..., ActorDef]) -> None:
    connections: list[Any] = []
    server = await asyncio.start_server(lambda r, w: connections.append(w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        worker = await start(actor("probe.py"))
        outcome, _ = await call(worker, {"mode": "network", "port": port})
    finally:
        server.close()
        await server.wait_closed()
    assert set(outcome.return_value) == {f"127.0.0.1:{port}", "1.1.1.1:53"}
    assert all(result != "ok" for result in outcome.return_value.values())
    assert connections == []


async def test_reset_wipes_tmp_between_calls(start: Start,
                                             actor: Callable[..., ActorDef]) -> None:
    worker = await start(actor("probe.py"))
    traces, _ = await call(worker, {"mode": "leave_traces"})
    await worker.reset()
    after, _ = await call(worker, {"mode": "look"})
    assert traces.return_value == ["dir"]
    assert after.return_value["tmp"] == []


async def test_pool_reuse_never_shows_earlier_files(
        backend: Backend, actor: Callable[..., ActorDef]) -> None:
    pool = ActorPool(actor("probe.py", pool=PoolSpec(max_workers=1)), backend)
    try:
        await pool.run(request({"mode": "leave_traces"}), Recorder())
        after = await pool.run(request({"mode": "look"}), Recorder())
    finally:
        await pool.aclose()
    assert after.return_value["tmp"] == []


async def test_sandbox_user_is_nobody(start: Start, actor: Callable[..., ActorDef]) -> None:
    worker = await start(actor("probe.py"))
    outcome, _ = await call(worker, {"mode": "look"})
    assert outcome.return_value["uid"] == 65534


async def test_close_is_idempotent_and_final(start: Start,
                                             actor: Callable[..., ActorDef]) -> None:
    worker = await start(actor("origin.py"))
    await worker.close()
    await worker.close()
    assert not worker.alive
    with pytest.raises(ActorFailed):
        await call(worker, {"input": 1})
