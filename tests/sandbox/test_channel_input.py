"""Every line on the harness channel is hostile input, on every backend.

A script finds the harness's channel fd in /proc/self/cmdline and can write any bytes to
it: forged outputs, results, errors and state requests must each cost the call something
bounded and end as the protocol says (-32004, -32006), never as an internal error or an
unbounded use of the server. And the script's own load (its top-level code) runs against
the actor's timeout_s (-32005), not the sandbox's boot timeout (-32009 after 15 s).
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sandbox_helpers import Recorder, actor_def, call, request

from service.errors import ActorFailed, ResourceLimitExceeded, TimeLimitExceeded
from service.manifest.model import ActorDef, PoolSpec
from service.sandbox.base import Backend, CallRequest, Worker
from service.sandbox.pool import ActorPool
from service.settings import StateSettings
from service.state.context import StateContext
from service.state.embedded import EmbeddedStore
from service.state.session import StateBudget, StateSession

Start = Callable[[ActorDef], Awaitable[Worker]]
DEFAULTS = StateSettings()  # what the backends of the `start` fixture count state against
BOOT_MARGIN_S = 8.0  # a load timeout answers well before the 15 s boot timeout

# The harness's channel fds, found as any script can: IN_FD OUT_FD follow it on its command line.
CHANNEL = """
    import os, time

    def channel():
        argv = open("/proc/self/cmdline", "rb").read().split(b"\\0")
        i = [a.endswith(b"harness.py") for a in argv].index(True)
        return int(argv[i + 1]), int(argv[i + 2])

    def write(fd, data):
        view = memoryview(data)
        while view:  # a pipe may take a long line in parts (gVisor's FIFO does)
            view = view[os.write(fd, view):]
"""
FORGER = CHANNEL + """
    def process(context):
        in_fd, out_fd = channel()
        for line in context.get_input("lines", []):
            write(out_fd, line.encode() + b"\\n")
            if context.get_input("read_replies"):
                os.read(in_fd, 1 << 20)
        return {"returned": True}
"""


def _script(folder: Path, name: str, source: str, **limits: Any) -> ActorDef:
    path = folder / name
    path.write_text(textwrap.dedent(source))
    path.chmod(0o644)
    return actor_def(path, **limits)


def _persistent(actor: ActorDef, payload: dict[str, Any], ops: int = 100_000,
                bytes_: int = 1 << 30) -> CallRequest:
    """A call with persistent state, whose session allows far more than the server's
    state settings: what is refused here is refused by the sandbox layer itself."""
    session = StateSession(EmbeddedStore(0), StateContext("default", actor.id),
                           StateBudget(ops, bytes_))
    return CallRequest(actor.id, payload, {}, {}, 1, state_ops=session)


# --- non-finite numbers ----------------------------------------------------------------


@pytest.mark.parametrize("line", [
    '{"type":"output","port":"output","data":NaN}',
    '{"type":"output","port":"output","data":1e400}',
    '{"type":"output","port":"output","data":[-1E999]}',
    '{"type":"log","stream":"stdout","message":"x","n":-Infinity}',
    '{"type":"result","return":Infinity,"state":{}}',
    # past what orjson reads alike (a long digit run): the strict reference decides
    '{"type":"result","return":[12345678901234567890123, NaN],"state":{}}',
])
async def test_a_forged_non_finite_number_is_a_protocol_error(
        start: Start, scratch_dir: Path, line: str) -> None:
    worker = await start(_script(scratch_dir, "forger.py", FORGER))
    sink = Recorder()
    with pytest.raises(ActorFailed) as caught:
        await worker.call(request({"lines": [line]}), sink)
    assert caught.value.data["type"] == "ProtocolError"
    assert sink.outputs == []  # nothing of it reached the caller
    assert not worker.alive


# --- what decoded values take --------------------------------------------------------------


async def test_an_output_that_decodes_to_more_than_memory_mb_is_refused_unread(
        start: Start, scratch_dir: Path) -> None:
    """[{}] * N: 3 bytes of JSON each, a 64-byte dict each once decoded, held by the server
    until the call answers. What that takes is charged to the actor's memory_mb."""
    actor = _script(scratch_dir, "amplified.py", """
        async def process(context):
            await context.send_output("output", [{}] * context.get_input("n"))
            return {"returned": True}
    """, memory_mb=64, output_bytes=8 << 20)
    worker = await start(actor)
    _, sink = await call(worker, {"n": 10_000})  # 0.7 MB decoded: fine
    assert len(sink.outputs[0][1]) == 10_000
    sink = Recorder()
    with pytest.raises(ResourceLimitExceeded) as caught:
        await worker.call(request({"n": 1_200_000}), sink)  # ~150 MB decoded
    assert caught.value.data == {"resource": "memory", "limit": 64}
    assert sink.outputs == []


# --- a forged error ----------------------------------------------------------------------


async def test_a_forged_error_is_charged_to_output_bytes(start: Start,
                                                        scratch_dir: Path) -> None:
    """Its message and traceback go back to the caller: they cost what a result costs."""
    actor = _script(scratch_dir, "forger.py", FORGER, output_bytes=65_536)
    worker = await start(actor)
    line = json.dumps({"type": "error", "error_type": "E", "message": "m" * 200_000,
                       "traceback": "t" * 200_000})
    with pytest.raises(ResourceLimitExceeded) as caught:
        await worker.call(request({"lines": [line]}), Recorder())
    assert caught.value.data == {"resource": "output", "limit": 65_536}


async def test_an_error_within_output_bytes_still_comes_back(start: Start,
                                                            scratch_dir: Path) -> None:
    actor = _script(scratch_dir, "raises.py", """
        def process(context):
            raise ValueError("v" * 1000)
    """, output_bytes=65_536)
    worker = await start(actor)
    with pytest.raises(ActorFailed) as caught:
        await call(worker)
    assert caught.value.data["type"] == "ValueError"
    assert caught.value.data["message"] == "v" * 1000


# --- state requests ----------------------------------------------------------------------


@pytest.mark.parametrize("state_id", [1, "x" * 262_144])
async def test_a_state_request_without_persistent_state_is_refused(
        start: Start, scratch_dir: Path, state_id: Any) -> None:
    """No harness sends one then (its state is inline): nothing is answered or echoed.
    (output_bytes out of the way: the microVM backend counts the long id against it.)"""
    worker = await start(_script(scratch_dir, "forger.py", FORGER, output_bytes=1 << 24))
    line = json.dumps({"type": "state", "id": state_id, "op": "get", "key": "k"})
    with pytest.raises(ActorFailed) as caught:
        await worker.call(request({"lines": [line] * 50}), Recorder())
    assert caught.value.data["type"] == "ProtocolError"
    if state_id == 1:  # (a long one is refused first for being no counter)
        assert "without persistent state" in caught.value.data["message"]
    assert not worker.alive


@pytest.mark.parametrize("state_id", ["1", "x" * 262_144, 0, -1, 1.5, True, None, [1],
                                      {"id": 1}, 2**53 + 1])
async def test_a_state_id_that_is_not_a_harness_counter_is_refused(
        start: Start, scratch_dir: Path, state_id: Any) -> None:
    actor = _script(scratch_dir, "forger.py", FORGER, output_bytes=1 << 24)
    worker = await start(actor)
    line = json.dumps({"type": "state", "id": state_id, "op": "get", "key": "k"})
    with pytest.raises(ActorFailed) as caught:
        await worker.call(_persistent(actor, {"lines": [line], "read_replies": True}),
                          Recorder())
    assert caught.value.data["type"] == "ProtocolError"
    assert "not a counter" in caught.value.data["message"]
    assert len(caught.value.data["message"]) < 200  # the id is never echoed whole


async def test_every_state_request_counts_against_ops_per_call(start: Start,
                                                              scratch_dir: Path) -> None:
    """An operation the session refuses (unknown) costs an operation too."""
    actor = _script(scratch_dir, "forger.py", FORGER)
    worker = await start(actor)
    lines = [json.dumps({"type": "state", "id": n, "op": "nope", "key": "k"})
             for n in range(1, DEFAULTS.ops_per_call + 2)]
    with pytest.raises(ResourceLimitExceeded) as caught:
        await worker.call(_persistent(actor, {"lines": lines, "read_replies": True}),
                          Recorder())
    assert caught.value.data == {"resource": "state", "limit": {"ops": DEFAULTS.ops_per_call}}
    assert not worker.alive


async def test_the_bytes_of_state_requests_count_against_bytes_per_call(
        start: Start, scratch_dir: Path) -> None:
    """Padding the session never looks at (an unknown op's, a field no op has) is paid.
    (output_bytes is out of the way: the microVM backend counts every byte of the harness
    against it too.)"""
    actor = _script(scratch_dir, "forger.py", FORGER, output_bytes=1 << 24)
    worker = await start(actor)
    lines = [json.dumps({"type": "state", "id": n, "op": "nope", "key": "k",
                         "pad": "p" * 100_000}) for n in range(1, 20)]
    with pytest.raises(ResourceLimitExceeded) as caught:
        await worker.call(_persistent(actor, {"lines": lines, "read_replies": True}),
                          Recorder())
    assert caught.value.data == {"resource": "state",
                                 "limit": {"bytes": DEFAULTS.bytes_per_call}}


# --- the script's load -------------------------------------------------------------------


HANG_AT_LOAD = {
    "spin.py": "while True:\n    pass\n\ndef process(context):\n    return 1\n",
    "sleep.py": "import time\ntime.sleep(3600)\n\ndef process(context):\n    return 1\n",
    "spin.js": "while (true) {}\nasync function process(context) { return 1; }\n",
    "await.mjs": "await new Promise(() => setInterval(() => {}, 1000));\n"
                 "export async function process(context) { return 1; }\n",
    # the script repeats the harness's `loading` to restart the clock: only the first counts
    "relay.py": textwrap.dedent(CHANNEL) + textwrap.dedent("""
        while True:
            os.write(channel()[1], b'{"type":"loading"}\\n')
            time.sleep(0.2)

        def process(context):
            return 1
    """),
}


@pytest.mark.parametrize("name", sorted(HANG_AT_LOAD))
async def test_a_load_that_outlasts_timeout_s_is_a_time_limit(
        backend: Backend, scratch_dir: Path, name: str) -> None:
    actor = _script(scratch_dir, name, HANG_AT_LOAD[name], timeout_s=1)
    began = time.monotonic()
    with pytest.raises(TimeLimitExceeded) as caught:
        worker = await backend.start_worker(actor)
        await worker.close()
    assert time.monotonic() - began < 1 + BOOT_MARGIN_S
    assert caught.value.data == {"limit_s": 1}
    assert "did not finish loading within its timeout_s (1 s)" in caught.value.message


async def test_the_call_that_waited_for_the_load_gets_minus_32005(
        backend: Backend, scratch_dir: Path) -> None:
    actor = _script(scratch_dir, "slow_load.py", """
        import time
        time.sleep(3)

        def process(context):
            return 1
    """, timeout_s=1, pool=PoolSpec(max_workers=1))
    pool = ActorPool(actor, backend)
    try:
        with pytest.raises(TimeLimitExceeded) as caught:
            await pool.run(request(), Recorder())
    finally:
        await pool.aclose()
    assert caught.value.CODE == -32005 and caught.value.data == {"limit_s": 1}


async def test_the_sandbox_boot_is_not_the_scripts_time(start: Start,
                                                       scratch_dir: Path) -> None:
    """A short timeout_s still boots (the interpreter's start and a slow sandbox's boot
    keep the boot timeout), and a load within timeout_s is fine."""
    quick = _script(scratch_dir, "quick.js", """
        async function process(context) { return 2; }
    """, timeout_s=0.5)
    in_time = _script(scratch_dir, "in_time.py", """
        import time
        time.sleep(0.3)

        def process(context):
            return 1
    """, timeout_s=2)
    for actor, value in ((quick, 2), (in_time, 1)):
        worker = await start(actor)
        outcome, _ = await call(worker)
        assert outcome.return_value == value


async def test_a_load_that_raises_keeps_its_error(start: Start, scratch_dir: Path) -> None:
    actor = _script(scratch_dir, "raises_at_load.py", "raise KeyError('at load')\n",
                    timeout_s=1)
    worker = await start(actor)
    with pytest.raises(ActorFailed) as caught:
        await call(worker)
    assert caught.value.data["type"] == "KeyError"


async def test_a_large_payload_is_still_written_whole(start: Start, scratch_dir: Path) -> None:
    """The call line goes out at once, past what the pipe holds: the host pauses reading
    the sandbox until the harness has read it, then goes on."""
    worker = await start(_script(scratch_dir, "size.py", """
        def process(context):
            return len(context.get_input("x"))
    """))
    payload = {"x": "p" * (3 << 20)}
    outcome, _ = await call(worker, payload)
    assert outcome.return_value == 3 << 20
    outcome, _ = await call(worker, payload)  # and the worker serves on
    assert outcome.return_value == 3 << 20

