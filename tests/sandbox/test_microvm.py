"""The microVM backend: real availability detection, backend selection, and the worker.

The worker tests boot through the real ``boot_worker``: ``_vm_options``, ``_boot_guest``,
``harness_argv`` and ``_Guest`` run unchanged against a recording double of the SDK
(``microvm_double.py``) whose exec session runs the guest command under bubblewrap, as
strict as the real guest: an unprivileged user owning none of the files, RLIMIT_NPROC,
no network, a sized 1777 /tmp and a real OOM count. What needs a bootable VM is marked
``microvm`` and skips with the detected reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any

import pytest
from microvm_double import LocalSandbox, LocalSDK

from service.deps.spec import Dependencies, Package
from service.errors import (
    ActorFailed,
    OutputInvalid,
    ResourceLimitExceeded,
    SandboxUnavailable,
    TimeLimitExceeded,
)
from service.manifest.model import ActorDef
from service.sandbox import microvm, select
from service.sandbox.base import (
    Availability,
    Backend,
    CallRequest,
    Event,
    LogEvent,
    OutputEvent,
    Worker,
)
from service.sandbox.microvm import MicroVMBackend, MicroVMWorker, harness_argv
from service.settings import Limits, SandboxSettings, Settings

# --------------------------------------------------------------------------- fixtures

pytestmark = pytest.mark.xdist_group("microvm")  # one worker probes the machine (detected)


@pytest.fixture(scope="module")
def detected() -> Availability:
    """This machine's real microVM availability, detected once (it boots a canary)."""
    return asyncio.run(MicroVMBackend(Settings()).availability())


def make_actor(folder: Path, source: str, language: str = "python", **limits: Any) -> ActorDef:
    suffix = ".py" if language == "python" else ".js"
    script = folder / f"actor{suffix}"
    script.write_text(textwrap.dedent(source))
    manifest = folder / "actor.yaml"
    manifest.write_text("id: t\n")
    return ActorDef(id="t", language=language, script=script, manifest=manifest,  # type: ignore[arg-type]
                    manifest_display="actor.yaml", inports=MappingProxyType({}),
                    outports=MappingProxyType({}), limits=Limits(**limits))


def request(payload: dict[str, Any] | None = None) -> CallRequest:
    return CallRequest(actor_id="t", payload=payload or {}, config={}, state={}, timestamp=1)


class Recorder:
    """An EventSink that keeps what it was given."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)


needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


@pytest.fixture
async def sdk(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LocalSDK]:
    """The SDK replaced by a recording double that runs the guest command for real; what
    a test leaked is stopped after it."""
    double = LocalSDK()
    double.install(monkeypatch)
    yield double
    double.kill_delay_s = double.kill_timeouts = 0
    for vm in list(double.sandboxes.values()):
        await vm.halt()


@pytest.fixture
async def boot(tmp_path: Path, sdk: LocalSDK):  # type: ignore[no-untyped-def]
    """boot(source, language=..., **limits) -> (worker, vm), through the real boot_worker.

    The actor's folder is pytest's tmp_path, under a 0700 directory, as the real-VM
    tests have it.
    """
    workers: list[MicroVMWorker] = []

    async def _boot(source: str, language: str = "python",
                    **limits: Any) -> tuple[MicroVMWorker, LocalSandbox]:
        actor = make_actor(tmp_path, source, language, **limits)
        worker = await microvm.boot_worker(actor, Settings(sandbox=SandboxSettings(tmp_mb=64)))
        workers.append(worker)
        return worker, sdk.sandboxes[sdk.creates[-1]["name"]]

    yield _boot
    for worker in workers:
        await worker.close()


# --------------------------------------------------------------------------- availability


def test_availability_here_is_not_ok_with_one_line_reason(detected: Availability) -> None:
    assert detected.backend == "microvm"
    assert detected.ok is False
    assert detected.reason and "\n" not in detected.reason
    # This machine: the SDK and its runtime are fine; KVM or the image is what fails.
    assert detected.reason.startswith(("KVM is not", "image ", "canary microVM"))
    assert detected.details["sdk_version"] == "0.7.11"
    assert Path(detected.details["msb"]).name == "msb"
    assert "libkrunfw" in Path(detected.details["libkrunfw"]).name


async def test_availability_is_cached_for_the_backend_lifetime(
        detected: Availability, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = MicroVMBackend(Settings())
    calls = []

    async def fake_detect() -> Availability:
        calls.append(1)
        return detected

    monkeypatch.setattr(backend, "_detect", fake_detect)
    assert await backend.availability() is await backend.availability()
    assert calls == [1]


async def test_missing_sdk_is_the_first_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "microsandbox", None)  # import now raises ImportError
    available = await MicroVMBackend(Settings()).availability()
    assert available.ok is False
    assert available.reason.startswith("microsandbox SDK is not installed")
    assert "pip install 'actor-sandbox-service[microvm]'" in available.reason


@pytest.mark.skipif(sys.platform != "linux", reason="KVM is Linux-only")
async def test_missing_kvm_device_is_named(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(microvm, "KVM_DEVICE", tmp_path / "kvm")
    available = await MicroVMBackend(Settings()).availability()
    assert available.ok is False
    assert available.reason == (f"KVM is not available: {tmp_path / 'kvm'} does not exist "
                                "(enable VT-x/AMD-V and load kvm_intel or kvm_amd)")
    assert "canary_image" not in available.details  # no canary without KVM


@pytest.mark.skipif(sys.platform != "linux", reason="KVM is Linux-only")
async def test_unopenable_kvm_device_is_named(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    device = tmp_path / "kvm"
    device.mkdir()  # exists, but a directory cannot be opened read-write
    monkeypatch.setattr(microvm, "KVM_DEVICE", device)
    available = await MicroVMBackend(Settings()).availability()
    assert available.reason.startswith(f"KVM is not usable: cannot open {device} read-write")


async def test_start_worker_while_unavailable_raises_32009(
        detected: Availability, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = MicroVMBackend(Settings())

    async def cached() -> Availability:
        return detected

    monkeypatch.setattr(backend, "availability", cached)
    actor = make_actor(tmp_path, "def process(context):\n    return 1\n")
    with pytest.raises(SandboxUnavailable) as caught:
        await backend.start_worker(actor)
    assert caught.value.to_json() == {
        "code": -32009,
        "message": f"Sandbox unavailable (microvm): {detected.reason}",
        "data": {"backend": "microvm", "reason": detected.reason},
    }


async def test_missing_rootfs_directory_is_sandbox_unavailable(tmp_path: Path) -> None:
    settings = Settings(sandbox=SandboxSettings(python_image=str(tmp_path / "no-rootfs")))
    actor = make_actor(tmp_path, "def process(context):\n    return 1\n")
    with pytest.raises(SandboxUnavailable) as caught:
        await microvm.boot_worker(actor, settings)
    assert caught.value.data == {
        "backend": "microvm",
        "reason": f"image {tmp_path / 'no-rootfs'} cannot be used: "
                  f"rootfs directory {tmp_path / 'no-rootfs'} does not exist"}


def test_backend_and_worker_meet_the_protocols(tmp_path: Path) -> None:
    assert isinstance(MicroVMBackend(Settings()), Backend)
    actor = make_actor(tmp_path, "def process(context):\n    return 1\n")
    assert isinstance(MicroVMWorker(actor, guest=None, tmp_mb=64), Worker)


def test_harness_command_line(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    actor = make_actor(tmp_path / "sub", "def process(context):\n    return 1\n")
    command, args = harness_argv(actor)
    assert command == "/bin/sh"
    assert args == ["-c", 'exec 3>&1 1>&2 && exec "$@"', "harness",
                    "python3", "-I", "-B", "-u", "/harness/harness.py",
                    "0", "3", "/actor/actor.py", "process", "--own-pidns"]


# --------------------------------------------------------------------------- select


class FakeProcessBackend:
    name = "process"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def availability(self) -> Availability:
        return Availability("process", True)

    async def start_worker(self, actor: ActorDef) -> Worker:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


class FakeGVisorBackend(FakeProcessBackend):
    name = "gvisor"
    reason = "runsc not found"  # unavailable unless a test says otherwise

    async def availability(self) -> Availability:
        return Availability("gvisor", not self.reason, self.reason)


@pytest.fixture
def fake_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(select, "_process_backend", FakeProcessBackend)
    monkeypatch.setattr(select, "_gvisor_backend", FakeGVisorBackend)


@pytest.fixture
def microvm_as_detected(detected: Availability, monkeypatch: pytest.MonkeyPatch) -> None:
    async def as_detected(self: MicroVMBackend) -> Availability:
        return detected

    monkeypatch.setattr(MicroVMBackend, "availability", as_detected)


@pytest.mark.usefixtures("fake_process", "microvm_as_detected")
async def test_auto_falls_back_to_process_and_says_why(
        detected: Availability, caplog: pytest.LogCaptureFixture) -> None:
    backend = await select.select_backend(Settings(backend="auto"))
    assert isinstance(backend, FakeProcessBackend)
    assert (f"sandbox backend: process, because microvm is unavailable ({detected.reason}) "
            "and gvisor too (runsc not found) "
            '(set backend = "process" in the settings, or SERVICE_BACKEND=process, '
            "to skip these checks)"
            in [r.getMessage() for r in caplog.records if r.levelname == "WARNING"])


@pytest.mark.usefixtures("fake_process", "microvm_as_detected")
async def test_auto_takes_gvisor_before_process(
        detected: Availability, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeGVisorBackend, "reason", "")
    backend = await select.select_backend(Settings(backend="auto"))
    assert isinstance(backend, FakeGVisorBackend)
    assert (f"sandbox backend: gvisor, because microvm is unavailable: {detected.reason}"
            in [r.getMessage() for r in caplog.records if r.levelname == "WARNING"])


@pytest.mark.usefixtures("fake_process")
async def test_gvisor_when_unavailable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async def must_not_run(self: MicroVMBackend) -> Availability:
        raise AssertionError("microvm was probed")

    monkeypatch.setattr(MicroVMBackend, "availability", must_not_run)
    with pytest.raises(SandboxUnavailable) as caught:
        await select.select_backend(Settings(backend="gvisor"))
    assert caught.value.data == {"backend": "gvisor", "reason": "runsc not found"}


@pytest.mark.usefixtures("microvm_as_detected")
async def test_auto_here_serves_with_the_real_gvisor_or_process_backend() -> None:
    """Here: gVisor where runsc works (it does on this project's CI), else the process one."""
    from service.sandbox.gvisor import GVisorBackend
    from service.sandbox.process import ProcessBackend

    probe = GVisorBackend(Settings())
    runsc_works = (await probe.availability()).ok
    await probe.aclose()
    backend = await select.select_backend(Settings(backend="auto"))
    try:
        assert isinstance(backend, GVisorBackend if runsc_works else ProcessBackend)
    finally:
        await backend.aclose()


@pytest.mark.usefixtures("fake_process", "microvm_as_detected")
async def test_microvm_when_unavailable_is_a_clear_error(detected: Availability) -> None:
    with pytest.raises(SandboxUnavailable) as caught:
        await select.select_backend(Settings(backend="microvm"))
    assert caught.value.data == {"backend": "microvm", "reason": detected.reason}
    assert str(caught.value) == f"Sandbox unavailable (microvm): {detected.reason}"


@pytest.mark.usefixtures("fake_process")
async def test_auto_prefers_microvm_when_it_works(monkeypatch: pytest.MonkeyPatch) -> None:
    async def works(self: MicroVMBackend) -> Availability:
        return Availability("microvm", True)

    monkeypatch.setattr(MicroVMBackend, "availability", works)
    assert isinstance(await select.select_backend(Settings(backend="auto")), MicroVMBackend)
    assert isinstance(await select.select_backend(Settings(backend="microvm")), MicroVMBackend)


@pytest.mark.usefixtures("fake_process")
async def test_process_is_taken_without_probing_microvm(monkeypatch: pytest.MonkeyPatch) -> None:
    async def must_not_run(self: MicroVMBackend) -> Availability:
        raise AssertionError("microvm was probed")

    monkeypatch.setattr(MicroVMBackend, "availability", must_not_run)
    assert isinstance(await select.select_backend(Settings(backend="process")),
                      FakeProcessBackend)


@pytest.mark.usefixtures("fake_process")
def test_all_backends_lists_all_three() -> None:
    names = [b.name for b in select.all_backends(Settings())]
    assert names == ["microvm", "gvisor", "process"]


# --------------------------------------------------------------------------- the worker

ECHO = """
    import os

    def process(context):
        print("hello")
        os.write(1, b"raw write\\n")
        context.send_output("out", context.get_input("x", 0) * 2)
        context.set_state("n", context.get_state("n", 0) + 1)
        return {"status": "completed"}
"""


@needs_bwrap
async def test_a_call_holds_its_parked_outputs_until_it_ends(boot: Any) -> None:
    """An output decoded to many containers is parked out of the collector's reach
    (service/heap.py) and held until the call ends; then the worker keeps nothing of it."""
    from service.heap import HEAP, PARK_CONTAINERS, settled

    worker, _ = await boot(f"""
    def process(context):
        context.send_output("out", [[]] * {2 * PARK_CONTAINERS})
        return 1
    """, output_bytes=1 << 20)
    held: list[int] = []

    async def sink(event: Any) -> None:
        if isinstance(event, OutputEvent):
            held.append(HEAP.held)

    async with settled():
        call = request()
        called = weakref.ref(call)
        outcome = await worker.call(call, sink)
        del call
        assert outcome.return_value == 1 and held == [1]
        assert HEAP.held == 0 and called() is None


@needs_bwrap
async def test_call_forwards_outputs_and_logs_before_the_outcome(boot: Any) -> None:
    worker, _ = await boot(ECHO)
    sink = Recorder()
    outcome = await worker.call(request({"x": 21}), sink)
    assert outcome.return_value == {"status": "completed"}
    assert outcome.state == {"n": 1}
    # fd 1 of the script is the session's stderr in the guest: a raw write is a stderr log.
    assert sorted(sink.events, key=repr) == sorted(
        [LogEvent("stdout", "hello"), OutputEvent("out", 42), LogEvent("stderr", "raw write")],
        key=repr)
    assert sink.events.index(LogEvent("stdout", "hello")) < sink.events.index(
        OutputEvent("out", 42))
    assert worker.alive


@needs_bwrap
async def test_calls_run_one_after_another_on_one_worker(boot: Any) -> None:
    worker, _ = await boot(ECHO)
    for x in (1, 2, 3):
        outcome = await worker.call(request({"x": x}), Recorder())
        assert outcome.state == {"n": 1}
    assert worker.alive


@needs_bwrap
async def test_reset_wipes_tmp(boot: Any) -> None:
    worker, _ = await boot("""
        import os

        def process(context):
            existed = os.path.exists("/tmp/mark")
            open("/tmp/mark", "w").close()
            return existed
    """)
    assert (await worker.call(request(), Recorder())).return_value is False
    assert (await worker.call(request(), Recorder())).return_value is True
    await worker.reset()
    assert (await worker.call(request(), Recorder())).return_value is False


@needs_bwrap
async def test_work_left_running_after_a_call_ends_the_vm(boot: Any) -> None:
    worker, vm = await boot("""
        import threading, time

        def process(context):
            threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
            return "started"
    """)
    assert (await worker.call(request(), Recorder())).return_value == "started"
    assert not worker.alive and vm.killed


@needs_bwrap
async def test_script_error_is_actor_failed_and_kills_the_worker(boot: Any) -> None:
    worker, vm = await boot("def process(context):\n    return 1 / 0\n")
    with pytest.raises(ActorFailed) as caught:
        await worker.call(request(), Recorder())
    assert caught.value.CODE == -32004
    assert caught.value.data["type"] == "ZeroDivisionError"
    assert caught.value.data["message"] == "division by zero"
    assert "return 1 / 0" in caught.value.data["traceback"]
    assert not worker.alive and vm.killed
    with pytest.raises(ActorFailed):
        await worker.call(request(), Recorder())


@needs_bwrap
async def test_time_limit_destroys_the_vm(boot: Any) -> None:
    worker, vm = await boot("import time\ndef process(context):\n    time.sleep(30)\n",
                               timeout_s=0.5)
    with pytest.raises(TimeLimitExceeded) as caught:
        await asyncio.wait_for(worker.call(request(), Recorder()), 10)
    assert caught.value.to_json()["code"] == -32005
    assert caught.value.data == {"limit_s": 0.5}
    assert not worker.alive and vm.killed
    assert vm.session is not None and vm.session.proc is not None
    assert vm.session.proc.returncode is not None


@needs_bwrap
async def test_output_bytes_limit(boot: Any) -> None:
    worker, vm = await boot("def process(context):\n    print('x' * 5000)\n",
                               output_bytes=1000)
    with pytest.raises(ResourceLimitExceeded) as caught:
        await worker.call(request(), Recorder())
    assert caught.value.data == {"resource": "output", "limit": 1000}
    assert vm.killed


@needs_bwrap
async def test_harness_death_is_actor_failed(boot: Any) -> None:
    worker, _ = await boot("import os, sys\ndef process(context):\n"
                           "    sys.__stderr__.write('dying\\n'); sys.__stderr__.flush()\n"
                           "    os._exit(3)\n")
    with pytest.raises(ActorFailed) as caught:
        await worker.call(request(), Recorder())
    assert caught.value.data["type"] == "SandboxCrashed"
    assert caught.value.data["message"] == "the actor's process exited with code 3"
    assert "dying" in caught.value.data["traceback"]


@needs_bwrap
async def test_death_after_a_guest_oom_kill_is_a_memory_error(boot: Any) -> None:
    # The guest's OOM killer ends the harness itself (the allocation is not caught).
    worker, vm = await boot("""
        def process(context):
            hog = []
            while True:
                hog.append(bytearray(16 << 20))
    """, memory_mb=64)
    with pytest.raises(ResourceLimitExceeded) as caught:
        await worker.call(request(), Recorder())
    assert caught.value.data == {"resource": "memory", "limit": 64}
    assert vm.oom_kills() >= 1


@needs_bwrap
async def test_harness_reported_resource_maps_to_its_limit(boot: Any) -> None:
    worker, _ = await boot("def process(context):\n    raise MemoryError()\n", memory_mb=256)
    with pytest.raises(ResourceLimitExceeded) as caught:
        await worker.call(request(), Recorder())
    assert caught.value.data == {"resource": "memory", "limit": 256}


@needs_bwrap
async def test_sink_error_kills_the_worker_and_propagates(boot: Any) -> None:
    worker, vm = await boot(ECHO)

    async def reject(event: Event) -> None:
        if isinstance(event, OutputEvent):
            raise OutputInvalid(event.port, [{"path": "", "message": "no"}])

    with pytest.raises(OutputInvalid):
        await worker.call(request({"x": 1}), reject)
    assert not worker.alive and vm.killed


@needs_bwrap
async def test_cancelling_a_call_kills_the_vm(boot: Any) -> None:
    worker, vm = await boot("import time\ndef process(context):\n    time.sleep(30)\n")
    task = asyncio.create_task(worker.call(request(), Recorder()))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not worker.alive and vm.killed


@needs_bwrap
@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
async def test_javascript_actor(boot: Any) -> None:
    worker, _ = await boot("""
        async function process(context) {
            console.log("hi");
            await context.sendOutput("out", context.getInput("x", 0) + 1);
            return { status: "completed" };
        }
    """, language="javascript")
    sink = Recorder()
    outcome = await worker.call(request({"x": 1}), sink)
    assert outcome.return_value == {"status": "completed"}
    assert sink.events == [LogEvent("stdout", "hi"), OutputEvent("out", 2)]


@needs_bwrap
@pytest.mark.parametrize("language", ["python", "javascript"])
async def test_state_operations_are_answered_over_the_session(boot: Any, language: str) -> None:
    from service.state.context import StateContext
    from service.state.embedded import EmbeddedStore
    from service.state.session import StateBudget, StateSession

    source = {"python": """
        async def process(context):
            return [await context.get_state().increment("n") for _ in range(3)]
    """, "javascript": """
        async function process(context) {
            const s = context.getState();
            return [await s.increment("n"), await s.increment("n"), await s.increment("n")];
        }
    """}[language]
    worker, _ = await boot(source, language=language)
    store = EmbeddedStore(0)
    session = StateSession(store, StateContext("default", "vm"), StateBudget(10, 10_000))
    call = CallRequest("vm", {}, {}, {}, 1, state_ops=session)
    assert (await worker.call(call, Recorder())).return_value == [1, 2, 3]
    assert await store.get("default:vm:n") == "3"
    assert worker.alive


DEPS_USER = """
    import pinned_lib

    def process(context):
        try:
            open("/deps/written", "w")
            wrote = "yes"
        except OSError as exc:
            wrote = exc.strerror
        context.send_output("out", [pinned_lib.VERSION, pinned_lib.__file__, wrote])
"""


@needs_bwrap
async def test_the_dependency_set_is_bound_read_only_into_the_guest(tmp_path: Path,
                                                                     sdk: LocalSDK) -> None:
    # A sealed cache entry (0755/0644) in a folder the guest's unprivileged user can reach;
    # the actor's folder stays under pytest's 0700 tmp_path (it is staged).
    cache = Path(tempfile.mkdtemp(prefix="deps-", dir="/tmp"))
    try:
        entry = cache / "python-0123"
        (entry / "lib").mkdir(parents=True)
        for folder in (cache, entry, entry / "lib"):
            folder.chmod(0o755)
        (entry / "lib" / "pinned_lib.py").write_text("VERSION = '1.2.3'\n")
        actor = dataclasses.replace(
            make_actor(tmp_path, DEPS_USER), deps_entry=entry,
            dependencies=Dependencies("python", (Package("pinned-lib", "1.2.3"),)))
        worker = await microvm.boot_worker(actor, Settings(sandbox=SandboxSettings(tmp_mb=64)))
        try:
            sink = Recorder()
            await worker.call(request(), sink)
        finally:
            await worker.close()
    finally:
        shutil.rmtree(cache)
    volume = sdk.creates[-1]["volumes"]["/deps"]
    assert (volume.bind, volume.readonly) == (str(entry / "lib"), True)  # bound, not copied
    assert sdk.execs[-1]["args"][-2:] == ["--own-pidns", "--path=/deps"]
    assert sink.events == [OutputEvent("out", ["1.2.3", "/deps/pinned_lib.py",
                                               "Read-only file system"])]


async def test_dependencies_that_are_not_built_are_refused(tmp_path: Path, sdk: LocalSDK) -> None:
    actor = dataclasses.replace(make_actor(tmp_path, "def process(context):\n    pass\n"),
                                dependencies=Dependencies("python", (Package("x", "1"),)))
    with pytest.raises(SandboxUnavailable, match="dependencies of t are not built"):
        await microvm.boot_worker(actor, Settings())
    assert sdk.creates == []  # refused before anything was staged or booted


class ScriptedGuest:
    """A guest whose session answers each call with events built from the call's fence."""

    name = "scripted-guest"

    def __init__(self, answer: Any) -> None:
        self._answer = answer  # fence -> list of (event_type, bytes)
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._events.put_nowait(SimpleNamespace(event_type="stdout", data=b'{"type":"ready"}\n',
                                                code=None))
        self.destroyed = False

    async def send(self, data: bytes) -> None:
        fence = json.loads(data)["fence"]
        for kind, chunk in self._answer(fence):
            await self._events.put(SimpleNamespace(event_type=kind, data=chunk, code=None))

    async def recv(self) -> Any:
        return await self._events.get()

    def exit(self, code: int) -> None:
        self._events.put_nowait(SimpleNamespace(event_type="exited", data=None, code=code))

    async def oom_kills(self) -> int:
        return 0

    async def destroy(self) -> None:
        self.destroyed = True


async def scripted(tmp_path: Path, answer: Any) -> MicroVMWorker:
    actor = make_actor(tmp_path, "def process(context):\n    return 1\n")
    worker = MicroVMWorker(actor, ScriptedGuest(answer), tmp_mb=64)
    await worker.wait_ready()
    return worker


RESULT = b'{"type":"result","return":1,"state":{}}\n'


async def test_raw_output_arriving_after_the_reply_still_comes_first(tmp_path: Path) -> None:
    worker = await scripted(tmp_path, lambda fence: [
        ("stdout", RESULT), ("stderr", b"late\n" + f"{fence}\n{fence}\n".encode())])
    sink = Recorder()
    assert (await worker.call(request(), sink)).return_value == 1
    assert sink.events == [LogEvent("stderr", "late")]  # the fences themselves never show


async def test_a_closed_fd_costs_a_grace_not_the_call(tmp_path: Path) -> None:
    worker = await scripted(tmp_path, lambda fence: [
        ("stderr", f"{fence}\n".encode()), ("stdout", RESULT)])
    assert (await worker.call(request(), Recorder())).return_value == 1
    assert worker.alive


async def test_unknown_message_types_become_logs(tmp_path: Path) -> None:
    worker = await scripted(tmp_path, lambda fence: [
        ("stdout", b'{"type":"mystery","x":1}\n'),
        ("stdout", b'{"type":"log","stream":"weird","message":"m"}\n' + RESULT),
        ("stderr", f"{fence}\n{fence}\n".encode())])
    sink = Recorder()
    await worker.call(request(), sink)
    assert sink.events == [LogEvent("stdout", '{"type": "mystery", "x": 1}'),
                           LogEvent("stdout", "m")]


async def test_garbage_on_the_protocol_stream_is_a_protocol_error(tmp_path: Path) -> None:
    worker = await scripted(tmp_path, lambda fence: [("stdout", b"not json\n" + RESULT)])
    with pytest.raises(ActorFailed) as caught:
        await worker.call(request(), Recorder())
    assert caught.value.data["type"] == "ProtocolError"
    assert caught.value.data["message"] == "the harness sent garbage: 'not json'"
    assert not worker.alive


async def test_a_partial_line_on_stderr_does_not_swallow_the_fence(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(microvm, "_FENCE_GRACE_S", 30.0)  # a grace waited is unmistakable
    worker = await scripted(tmp_path, lambda fence: [
        ("stdout", RESULT), ("stderr", b"abc" + f"{fence}\n{fence}\n".encode())])
    sink = Recorder()
    started = time.monotonic()
    assert (await worker.call(request(), sink)).return_value == 1
    assert time.monotonic() - started < 10  # no grace waited
    assert sink.events == [LogEvent("stderr", "abc")]


async def test_a_harness_that_died_while_idle_is_not_claimed(tmp_path: Path) -> None:
    worker = await scripted(tmp_path, lambda fence: [])
    assert worker.claim()
    worker._guest.exit(1)
    await asyncio.sleep(0.01)
    assert not worker.claim()  # the pool takes another worker, the call does not fail


async def test_output_waiting_undelivered_past_its_bound_destroys_the_vm(tmp_path: Path) -> None:
    # The SDK buffers without bound: the reader must stop the guest itself, even while
    # the call waits on a client that reads nothing.
    guest = ScriptedGuest(lambda fence: [("stderr", b"y" * 999 + b"\n")] * 1500)
    actor = make_actor(tmp_path, "def process(context):\n    return 1\n", output_bytes=10_000)
    worker = MicroVMWorker(actor, guest, tmp_mb=64)  # the bound: 10 kB + 1 MiB + 64 KiB
    await worker.wait_ready()
    release = asyncio.Event()

    async def stuck(event: Event) -> None:
        await release.wait()

    call = asyncio.create_task(worker.call(request(), stuck))
    for _ in range(200):
        if guest.destroyed:
            break
        await asyncio.sleep(0.01)
    assert guest.destroyed and not worker.alive
    assert guest._events.qsize() > 300  # the rest was never read
    release.set()
    with pytest.raises(ResourceLimitExceeded) as caught:
        await call
    assert caught.value.data == {"resource": "output", "limit": 10_000}


# --------------------------------------------------------------------------- the line channel


def test_lines_split_across_chunks() -> None:
    lines = microvm._Lines()
    assert lines.feed(b'{"type": "re') == []
    assert lines.feed(b'ady"}\r\nhalf') == ['{"type": "ready"}']
    assert lines.feed(b" \xff\n") == ["half \ufffd"]


def test_a_long_raw_line_goes_in_pieces_and_its_newline_adds_no_empty_line() -> None:
    lines = microvm._Lines(piece=microvm.CHUNK)
    pieces = lines.feed(b"y" * 100_000) + lines.feed(b"\nafter\n")
    assert "".join(pieces[:-1]) == "y" * 100_000 and all(pieces)
    assert pieces[-1] == "after"


def test_a_long_line_is_not_rescanned_as_it_grows() -> None:
    lines = microvm._Lines()
    started = time.process_time()
    for _ in range(2048):  # 8 MiB in 4 KiB chunks
        assert lines.feed(b"x" * 4096) == []
    assert lines.feed(b"\n") == ["x" * (8 << 20)]
    assert time.process_time() - started < 2  # rescanned, it took ~10 s


@pytest.mark.parametrize(("line", "expected"), [
    ('{"type": "ready"}', {"type": "ready"}),
    ("ready", None),
    ('{"no_type": 1}', None),
    ('{"type": 7}', None),
    ("[1, 2]", None),
    ('{"type": "result"', None),
])
def test_only_typed_objects_are_protocol(line: str, expected: Any) -> None:
    assert microvm._protocol_message(line) == expected


# ------------------------------------------------------------------ budgets, cancels, leftovers


@needs_bwrap
@pytest.mark.parametrize("when", ["call", "boot"])
async def test_a_flood_of_empty_lines_is_held_to_max_notifications(
        tmp_path: Path, sdk: LocalSDK, when: str) -> None:
    flood = "os.write(2, b'\\n' * 1000)"
    actor = make_actor(tmp_path, f"import os\n{flood if when == 'boot' else ''}\n"
                                 f"def process(context):\n    {flood}\n    return 1\n",
                       output_bytes=10_000_000)
    settings = Settings(sandbox=SandboxSettings(tmp_mb=64, max_notifications=100))
    with pytest.raises(ResourceLimitExceeded) as caught:
        worker = await microvm.boot_worker(actor, settings)
        try:
            await worker.call(request(), Recorder())
        finally:
            await worker.close()
    assert caught.value.to_json()["code"] == -32006
    assert caught.value.data == {"resource": "output", "limit": {"notifications": 100}}
    assert sdk.sandboxes == {}  # the VM is gone


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own temporary directory: where the backend stages (and sweeps)."""
    where = tmp_path / "tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def actor_in(tmp_path: Path) -> ActorDef:
    (tmp_path / "actor").mkdir()
    return make_actor(tmp_path / "actor", "def process(context):\n    return 1\n")


@needs_bwrap
@pytest.mark.parametrize("during", ["staging", "create"])
async def test_boot_cancelled_twice_leaves_no_vm_and_no_staged_dir(
        tmp_path: Path, sdk: LocalSDK, private_tmp: Path, monkeypatch: pytest.MonkeyPatch,
        during: str) -> None:
    if during == "staging":
        copytree = shutil.copytree

        def slow_copytree(*args: Any, **kwargs: Any) -> Any:
            time.sleep(0.3)
            return copytree(*args, **kwargs)

        monkeypatch.setattr(shutil, "copytree", slow_copytree)
    sdk.create_delay_s = sdk.kill_delay_s = 0.3
    boot = asyncio.create_task(microvm.boot_worker(actor_in(tmp_path),
                                                   Settings(sandbox=SandboxSettings(tmp_mb=64))))
    for _ in range(2):
        await asyncio.sleep(0.1)
        boot.cancel()
    with pytest.raises(asyncio.CancelledError):
        await boot
    await asyncio.sleep(1)  # what a boot left running would have made by now
    assert sdk.sandboxes == {}
    assert list(private_tmp.iterdir()) == []


@needs_bwrap
async def test_close_cancelled_still_destroys_the_vm(boot: Any, sdk: LocalSDK) -> None:
    worker, vm = await boot("def process(context):\n    return 1\n")
    sdk.kill_delay_s = 0.3
    closing = asyncio.create_task(worker.close())
    await asyncio.sleep(0.1)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await worker.close()  # waits for the close that went on
    assert vm.killed and sdk.removed == [vm.name]
    assert not Path(vm.options["volumes"]["/actor"].bind).exists()


@needs_bwrap
async def test_a_kill_that_gives_up_is_tried_again(boot: Any, sdk: LocalSDK) -> None:
    worker, vm = await boot("def process(context):\n    return 1\n")
    sdk.kill_timeouts = 2  # the VM's own kill, then its handle's: each waits and gives up
    await worker.close()
    assert vm.killed and sdk.removed == [vm.name]


@needs_bwrap
async def test_start_sweeps_what_dead_servers_left_and_aclose_what_is_ours(
        tmp_path: Path, sdk: LocalSDK, private_tmp: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    owner = {"owner": "actor-sandbox"}
    gone = sdk.leave(f"svc-{dead.pid}-t-0", {**owner, "server_pid": str(dead.pid)})
    mine = sdk.leave(f"svc-{os.getpid()}-t-1", {**owner, "server_pid": str(os.getpid())})
    foreign = sdk.leave(f"svc-{dead.pid}-t-2", {})  # not labelled ours: never touched
    stale = private_tmp / f"actor-sandbox-{dead.pid}-vm-x"
    stale.mkdir()  # unlocked (Staged.owned), by a pid that has ended, an hour ago
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    backend = MicroVMBackend(Settings(sandbox=SandboxSettings(tmp_mb=64)))

    async def ok() -> Availability:
        return Availability("microvm", True)

    backend.availability = ok  # type: ignore[method-assign]
    worker = await backend.start_worker(actor_in(tmp_path))
    try:
        assert gone.killed and sdk.removed == [gone.name] and not stale.exists()
        assert not mine.killed and not foreign.killed
    finally:
        await worker.close()
    await backend.aclose()
    assert mine.name in sdk.removed and not foreign.killed


@needs_bwrap
async def test_the_boot_and_the_harness_start_share_one_deadline(
        tmp_path: Path, sdk: LocalSDK, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float | None] = []
    wait_ready = MicroVMWorker.wait_ready

    async def recording(self: MicroVMWorker, boot_timeout_s: float | None = None) -> None:
        seen.append(boot_timeout_s)
        await wait_ready(self, boot_timeout_s)

    monkeypatch.setattr(MicroVMWorker, "wait_ready", recording)
    sdk.create_delay_s = 0.5
    settings = Settings(sandbox=SandboxSettings(tmp_mb=64, canary_timeout_s=10))
    worker = await microvm.boot_worker(actor_in(tmp_path), settings)
    await worker.close()
    assert seen and seen[0] is not None and seen[0] <= 9.5


# --------------------------------------------------------------------------- real microVMs


@pytest.fixture
def real_microvm(detected: Availability) -> None:
    if not detected.ok:
        pytest.skip(f"no bootable microVM here: {detected.reason}")


@pytest.mark.microvm
@pytest.mark.usefixtures("real_microvm")
async def test_real_microvm_round_trip(tmp_path: Path) -> None:
    backend = MicroVMBackend(Settings())
    (tmp_path / "data.txt").write_text("private")
    (tmp_path / "data.txt").chmod(0o600)
    tmp_path.chmod(0o700)  # the guest user cannot read the host folder: staging must
    actor = make_actor(tmp_path, ECHO + "\n    DATA = open('/actor/data.txt').read()\n")
    worker = await backend.start_worker(actor)
    try:
        sink = Recorder()
        outcome = await worker.call(request({"x": 2}), sink)
        assert outcome.return_value == {"status": "completed"}
        assert OutputEvent("out", 4) in sink.events
        await worker.reset()
        assert worker.alive
    finally:
        await worker.close()


@pytest.mark.microvm
@pytest.mark.usefixtures("real_microvm")
async def test_real_microvm_has_no_network_and_keeps_its_time_limit(tmp_path: Path) -> None:
    backend = MicroVMBackend(Settings())
    actor = make_actor(tmp_path, """
        import socket, time

        def process(context):
            if context.get_input("sleep"):
                time.sleep(30)
            try:
                socket.create_connection(("1.1.1.1", 53), timeout=2).close()
                return "connected"
            except OSError:
                return "isolated"
    """, timeout_s=5)
    worker = await backend.start_worker(actor)
    try:
        assert (await worker.call(request(), Recorder())).return_value == "isolated"
        with pytest.raises(TimeLimitExceeded):
            await worker.call(request({"sleep": True}), Recorder())
        assert not worker.alive
    finally:
        await worker.close()


# --------------------------------------------------------------------------- recorded SDK calls


@needs_bwrap
async def test_create_gets_the_real_option_types(boot: Any, sdk: LocalSDK) -> None:
    from microsandbox import Action, SecurityProfile

    worker, vm = await boot(ECHO, cpus=1.5, memory_mb=200)
    created = sdk.creates[0]
    assert created["name"] == vm.name and created["name"].startswith(f"svc-{os.getpid()}-t-")
    assert created["labels"] == {"owner": "actor-sandbox", "server_pid": str(os.getpid())}
    assert created["image"] == "python:3.11-slim" and created["hostname"] == "sandbox"
    assert created["cpus"] == 2 and created["memory"] == 200 + microvm.GUEST_OVERHEAD_MB
    assert created["security"] == SecurityProfile.RESTRICTED
    policy = created["network"].policy
    assert (policy.default_egress, policy.default_ingress, policy.rules) == (
        Action.DENY, Action.DENY, ())
    volumes = {path: mount._to_dict() for path, mount in created["volumes"].items()}
    assert volumes["/tmp"] == {"readonly": False, "noexec": False, "nosuid": True,
                               "nodev": True, "tmpfs": True, "size_mib": 64}
    for guest_path in ("/actor", "/harness"):
        assert volumes[guest_path]["readonly"] and volumes[guest_path]["nosuid"]
    # The guest reads staged copies, never the host folders themselves.
    assert Path(volumes["/actor"]["bind"]) != worker.actor.root
    assert Path(volumes["/harness"]["bind"]) != microvm.HARNESS_DIR


@needs_bwrap
async def test_exec_stream_gets_user_rlimits_and_the_harness(boot: Any, sdk: LocalSDK) -> None:
    from microsandbox import RlimitResource

    worker, _ = await boot(ECHO, pids=12)
    (session,) = sdk.execs
    assert (session["cmd"], session["args"]) == harness_argv(worker.actor)
    assert session["user"] == "nobody" and session["cwd"] == "/actor"
    assert session["env"] == microvm._GUEST_ENV
    assert [(r.resource, r.soft, r.hard) for r in session["rlimits"]] == [
        (RlimitResource.NPROC, 12, 12)]


def test_network_true_allows_the_public_internet_and_dns_to_the_gateway(tmp_path: Path) -> None:
    actor = make_actor(tmp_path, "def process(context):\n    return 1\n", network=True)
    staged = microvm._stage(actor)
    try:
        policy = microvm._vm_options(actor, Settings(), staged)["network"].policy._to_dict()
    finally:
        staged.remove()
    # What docs/backends.md says: DNS (port 53) to the host group, everything to public,
    # nothing else (no LAN, loopback or metadata); ingress only to published ports (none).
    allow = {"action": "allow", "direction": "egress", "destination_kind": "group"}
    assert policy == {"default_egress": "deny", "default_ingress": "allow", "rules": [
        {**allow, "destination": "host", "protocol": "udp", "port": "53"},
        {**allow, "destination": "host", "protocol": "tcp", "port": "53"},
        {**allow, "destination": "public"}]}


@needs_bwrap
async def test_a_spawn_failure_in_the_guest_is_32009_with_its_reason(
        tmp_path: Path, sdk: LocalSDK) -> None:
    sdk.fail_spawn = (b"failed to spawn /bin/sh: No such file or directory", 2)
    actor = make_actor(tmp_path, "def process(context):\n    return 1\n")
    with pytest.raises(SandboxUnavailable) as caught:
        await microvm.boot_worker(actor, Settings())
    assert caught.value.to_json()["code"] == -32009
    assert caught.value.data == {
        "backend": "microvm",
        "reason": "the guest could not start the harness: "
                  "failed to spawn /bin/sh: No such file or directory (ENOENT)"}
    assert sdk.removed == [sdk.creates[0]["name"]]  # the VM is discarded
    assert not Path(sdk.creates[0]["volumes"]["/actor"].bind).exists()  # and its copies


# --------------------------------------------------------------------------- as strict as a guest


@needs_bwrap
async def test_a_folder_the_guest_user_cannot_read_on_the_host_still_works(
        boot: Any, tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("private")
    (tmp_path / "data.txt").chmod(0o600)
    tmp_path.chmod(0o700)
    worker, vm = await boot("""
        import os

        def process(context):
            return [os.getuid(), open("/actor/data.txt").read()]
    """)
    uid, text = (await worker.call(request(), Recorder())).return_value
    assert text == "private"
    assert uid == vm.uid != 0


@needs_bwrap
async def test_the_guest_user_owns_nothing_and_has_no_network(boot: Any) -> None:
    worker, _ = await boot("""
        import os, socket

        def process(context):
            try:
                open("/actor/new", "w")
                wrote = True
            except OSError:
                wrote = False
            return {"wrote": wrote, "interfaces": [n for _, n in socket.if_nameindex()],
                    "tmp": oct(os.stat("/tmp").st_mode & 0o7777),
                    "tmp_bytes": os.statvfs("/tmp").f_blocks * os.statvfs("/tmp").f_frsize}
    """)
    seen = (await worker.call(request(), Recorder())).return_value
    assert seen == {"wrote": False, "interfaces": ["lo"], "tmp": "0o1777",
                    "tmp_bytes": 64 * 1024 * 1024}


@needs_bwrap
async def test_the_pids_limit_is_the_guest_users_rlimit(boot: Any) -> None:
    worker, _ = await boot("""
        import os, time

        def process(context):
            started = 0
            for _ in range(40):
                try:
                    pid = os.fork()
                except OSError:
                    break
                if pid == 0:
                    time.sleep(5)
                    os._exit(0)
                started += 1
            return started
    """, pids=8)
    started = (await worker.call(request(), Recorder())).return_value
    assert 0 < started < 8  # the harness (and its shell) count against the 8


# --------------------------------------------------------------------------- availability, fast


@pytest.fixture
def verdict_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "actor-sandbox" / "microvm-availability.json"


@pytest.mark.parametrize(("modules", "flags", "hint"), [
    (["kvm", "kvm_pvm"], ["hypervisor"], "/dev/kvm is the paravirtual kvm-pvm device"),
    (["kvm"], ["hypervisor"], "the CPU exposes no vmx/svm flag"),
])
async def test_a_host_that_cannot_run_guests_is_decided_without_a_canary(
        modules: list[str], flags: list[str], hint: str, verdict_cache: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(microvm, "_kvm_modules", lambda: modules)
    monkeypatch.setattr(microvm, "_cpu_virt_flags", lambda: flags)
    monkeypatch.setattr(microvm.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(microvm, "_check_kvm", lambda details: None)

    async def must_not_boot(*args: Any) -> None:
        raise AssertionError("a canary was booted")

    monkeypatch.setattr(microvm, "_canary", must_not_boot)
    first = await MicroVMBackend(Settings()).availability()
    second = await MicroVMBackend(Settings()).availability()
    assert first.reason == second.reason  # stable from run to run
    assert first.reason.startswith("KVM is not usable: microVMs cannot boot here — ")
    assert hint in first.reason and not first.ok
    assert not verdict_cache.exists()  # nothing to cache: it is decided every time, fast


@pytest.fixture
def canaries(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count canary boots; the host looks able to run guests; the canary succeeds."""
    booted: list[str] = []
    monkeypatch.setattr(microvm, "_check_kvm", lambda details: None)
    monkeypatch.setattr(microvm, "_cannot_boot", lambda details: None)

    async def canary(settings: Settings, details: dict[str, Any]) -> None:
        booted.append(settings.sandbox.python_image)

    monkeypatch.setattr(microvm, "_canary", canary)
    return booted


async def test_a_canary_verdict_is_cached_per_host_until_its_inputs_change(
        canaries: list[str], verdict_cache: Path) -> None:
    assert (await MicroVMBackend(Settings()).availability()).ok
    assert verdict_cache.is_file()
    again = await MicroVMBackend(Settings()).availability()  # a new process would do the same
    assert again.ok and canaries == ["python:3.11-slim"]
    assert again.details["verdict_cache"] == str(verdict_cache)
    other = Settings(sandbox=SandboxSettings(python_image="python:3.12-slim"))
    assert (await MicroVMBackend(other).availability()).ok
    assert canaries == ["python:3.11-slim", "python:3.12-slim"]  # another input: asked again


async def test_doctor_and_an_expired_verdict_boot_the_canary_again(
        canaries: list[str], verdict_cache: Path) -> None:
    await MicroVMBackend(Settings()).availability()
    await MicroVMBackend(Settings(), cached=False).availability()
    assert len(canaries) == 2
    saved = json.loads(verdict_cache.read_text())
    verdict_cache.write_text(json.dumps(dict(saved, expires_at=0)))
    await MicroVMBackend(Settings()).availability()
    assert len(canaries) == 3
    verdict_cache.write_text("not json")
    await MicroVMBackend(Settings()).availability()
    assert len(canaries) == 4


def test_doctor_probes_microvm_afresh() -> None:
    microvm_backend = select.all_backends(Settings())[0]
    assert isinstance(microvm_backend, MicroVMBackend) and microvm_backend._cached is False


async def test_an_image_without_python3_is_named_as_such(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import microsandbox

    class NoPython:
        async def exec(self, *args: Any, **kwargs: Any) -> Any:
            raise microsandbox.ExecFailedError("spawn python3: No such file or directory")

    async def create(*args: Any, **kwargs: Any) -> NoPython:
        return NoPython()

    async def discard(name: str) -> None:
        pass

    monkeypatch.setattr(microvm, "_create_vm", create)
    monkeypatch.setattr(microvm, "_discard", discard)
    failure = await microvm._boot_check("alpine:3", 5, run_python=True)
    assert failure == microvm._BootFailure(
        "python", "image alpine:3 has no working python3 "
                  "(spawn python3: No such file or directory)")
