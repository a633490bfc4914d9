"""How a process sandbox boots: cgroups joined before the actor's code runs, rlimits set
without Python in the forked child, the Python harness's bytecode compiled once."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import shutil
import threading
from pathlib import Path

import pytest
from sandbox_helpers import ACTORS, actor_def, call

from service.sandbox.compiled import MODULE, CompiledHarness
from service.sandbox.process import (
    HARNESS_DIR,
    ProcessBackend,
    _child_pid,
    _clamped,
    _launcher,
    _parent_of,
    _prlimit_command,
    _read_info,
    make_plan,
)
from service.settings import Settings


def limits_of(pid: int) -> dict[str, str]:
    """/proc/PID/limits: name -> "soft hard"."""
    out = {}
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]:
        name, values = line[:26].strip(), line[26:].split()
        out[name] = " ".join(values[:2])
    return out


# --- admission -------------------------------------------------------------------------


def test_child_pid_is_read_from_bwraps_info() -> None:
    info = b'{\n    "child-pid": 4242,\n    "net-namespace": 4026532331\n}\n'
    assert _child_pid(info) == 4242
    for bad in (b"", b"{", b"[]", b'{"child-pid": "1"}', b'{"child-pid": true}',
                b'{"child-pid": 0}', b'{"child-pid": -3}', b'{"pid": 5}'):
        assert _child_pid(bad) is None, bad


async def test_bwraps_info_is_read_without_waiting_for_eof() -> None:
    """Were the fd still open somewhere (bwrap's sandbox process, until its exec), waiting
    for EOF would wait for the very unblocking that needs the pid."""
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, b'{\n    "child-pid": 77,\n')
        os.write(write_fd, b'    "ipc-namespace": 4026532328\n}\n')
        async with asyncio.timeout(5):
            info = await asyncio.to_thread(_read_info, read_fd)
        assert _child_pid(info) == 77
    finally:
        os.close(write_fd)
        os.close(read_fd)
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b'{"child-pid": ')
    os.close(write_fd)
    assert _child_pid(_read_info(read_fd)) is None  # EOF first: no pid
    os.close(read_fd)


def test_parent_of_reads_proc_and_tolerates_a_gone_process() -> None:
    assert _parent_of(os.getpid()) == os.getppid()
    assert _parent_of(2**22 + 12345) is None


async def test_every_process_of_a_booted_sandbox_is_in_its_cgroups(
        process_backend: ProcessBackend) -> None:
    if not process_backend.controllers:
        pytest.skip("no cgroups here")
    worker = await process_backend.start_worker(actor_def(ACTORS / "origin.py"))
    try:
        inner = set(map(int, Path(f"/proc/{worker.pid}/task/{worker.pid}/children")
                        .read_text().split()))
        assert len(inner) == 1
        for folder in worker.cgroup_dirs:
            members = {int(p) for p in (folder / "cgroup.procs").read_text().split()}
            assert members == {worker.pid, *inner}, folder
        _, recorder = await call(worker, {"input": 3})
        assert recorder.outputs == [("output", 6)]
    finally:
        await worker.close()


async def test_a_sandbox_boots_while_the_default_executor_is_busy(
        process_backend: ProcessBackend) -> None:
    """Admission has threads of its own: work blocking every thread of the loop's default
    executor (a manifest read, say) must not hold the boot until it times out."""
    loop = asyncio.get_running_loop()
    release = threading.Event()
    blockers = [loop.run_in_executor(None, release.wait) for _ in range(40)]
    try:
        async with asyncio.timeout(10):
            worker = await process_backend.start_worker(actor_def(ACTORS / "origin.py"))
        try:
            _, recorder = await call(worker, {"input": 3})
            assert recorder.outputs == [("output", 6)]
        finally:
            await worker.close()
    finally:
        release.set()
        await asyncio.gather(*blockers)


async def test_the_sandbox_gets_its_rlimits_through_prlimit(
        process_backend: ProcessBackend, settings: Settings) -> None:
    worker = await process_backend.start_worker(actor_def(ACTORS / "origin.py"))
    try:
        inner = int(Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()[0])
        limits = limits_of(inner)
        nofile = settings.sandbox.nofile
        assert limits["Max open files"] == f"{nofile} {nofile}"
        size = settings.sandbox.tmp_mb << 20
        assert limits["Max file size"] == f"{size} {size}"
        assert limits["Max core file size"] == "0 0"
    finally:
        await worker.close()


def test_prlimit_command_sets_soft_and_hard_as_last() -> None:
    rlimits = ((resource.RLIMIT_AS, 1 << 27), (resource.RLIMIT_CORE, 0),
               (resource.RLIMIT_NOFILE, 64))
    command = _prlimit_command("/usr/bin/prlimit", rlimits)
    assert command[0] == "/usr/bin/prlimit"
    assert command[-1] == f"--as={1 << 27}:{1 << 27}"
    assert set(command[1:-1]) == {"--core=0:0", "--nofile=64:64"}
    assert [w for w, _ in _clamped(rlimits)][-1] == resource.RLIMIT_AS


def test_the_launcher_drops_to_the_uid_with_setpriv_else_in_the_fork() -> None:
    rlimits = ((resource.RLIMIT_NOFILE, 64),)
    command, options = _launcher("/usr/bin/prlimit", "/usr/bin/setpriv", rlimits, 2000000007)
    assert command == ["/usr/bin/prlimit", "--nofile=64:64", "/usr/bin/setpriv",
                       "--reuid=2000000007", "--regid=2000000007", "--clear-groups"]
    assert options == {}  # nothing for Python to do in the child: vfork
    command, options = _launcher("/usr/bin/prlimit", None, rlimits, 2000000007)
    assert command == ["/usr/bin/prlimit", "--nofile=64:64"]
    assert options == {"user": 2000000007, "group": 2000000007, "extra_groups": []}
    assert _launcher("/usr/bin/prlimit", "/usr/bin/setpriv", rlimits, None) == (
        ["/usr/bin/prlimit", "--nofile=64:64"], {})
    command, options = _launcher(None, None, rlimits, 2000000007)
    assert command == [] and callable(options.pop("preexec_fn"))
    assert options == {"user": 2000000007, "group": 2000000007, "extra_groups": []}


@pytest.mark.parametrize("missing", [("_setpriv",), ("_setpriv", "_prlimit")])
async def test_without_util_linux_the_fork_sets_uid_and_rlimits(
        settings: Settings, missing: tuple[str, ...]) -> None:
    backend = ProcessBackend(settings)
    if not (await backend.availability()).ok:
        pytest.skip("process backend unavailable")
    for name in missing:  # as on a host without setpriv, or without util-linux at all
        setattr(backend, name, None)
    try:
        worker = await backend.start_worker(actor_def(ACTORS / "origin.py"))
        try:
            inner = int(Path(f"/proc/{worker.pid}/task/{worker.pid}/children")
                        .read_text().split()[0])
            nofile = settings.sandbox.nofile
            assert limits_of(inner)["Max open files"] == f"{nofile} {nofile}"
            if os.geteuid() == 0:
                base = settings.sandbox.uid_base
                for pid in (worker.pid, inner):
                    uids = [line.split()[1:] for line in Path(f"/proc/{pid}/status")
                            .read_text().splitlines() if line.startswith(("Uid:", "Gid:"))]
                    assert all(int(u) >= base for row in uids for u in row), uids
            _, recorder = await call(worker, {"input": 2})
            assert recorder.outputs == [("output", 4)]
        finally:
            await worker.close()
    finally:
        await backend.aclose()


async def test_the_sandbox_runs_as_its_uid_with_no_group_and_no_capability(
        process_backend: ProcessBackend, settings: Settings) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs a root server (a uid of its own per sandbox)")
    worker = await process_backend.start_worker(actor_def(ACTORS / "origin.py"))
    try:
        status = Path(f"/proc/{worker.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines())
        uid = int(fields["Uid"].split()[0])
        assert uid >= settings.sandbox.uid_base
        assert fields["Uid"].split() == [str(uid)] * 4
        assert fields["Gid"].split() == [str(uid)] * 4
        assert fields["Groups"].strip() == ""
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0
    finally:
        await worker.close()


# --- the compiled harness --------------------------------------------------------------


def test_plan_mounts_the_compiled_harness_folder(settings: Settings, tmp_path: Path) -> None:
    mechanisms = {"memory": "rlimit", "pids": "rlimit", "cpu": "rlimit"}
    plan = make_plan(actor_def(ACTORS / "origin.py"), settings, mechanisms, (7, 8),
                     harness_dir=tmp_path)
    at = plan.options.index("/harness")
    assert plan.options[at - 2:at] == ["--ro-bind", str(tmp_path)]
    assert str(HARNESS_DIR / "harness.py") not in plan.options
    assert plan.command[4] == "/harness/harness.py"
    js = make_plan(actor_def(ACTORS / "origin.js"), settings, mechanisms, (7, 8),
                   harness_dir=tmp_path)  # node's harness is a single file, as before
    assert "/harness" not in js.options and "/harness/harness.js" in js.options


async def test_the_harness_is_compiled_once_and_again_when_it_changes(
        settings: Settings, tmp_path: Path) -> None:
    source = tmp_path / "harness.py"
    source.write_text((HARNESS_DIR / "harness.py").read_text())
    compiled = CompiledHarness(settings.sandbox.python, source, HARNESS_DIR / "boot.py")
    parent = tmp_path / "runtime"
    parent.mkdir()
    folder = await compiled.folder(parent)
    assert folder is not None
    assert (folder / "harness.py").read_text() == (HARNESS_DIR / "boot.py").read_text()
    assert (folder / "lib" / f"{MODULE}.py").read_text() == source.read_text()
    pycs = list((folder / "lib" / "__pycache__").glob(f"{MODULE}.*.pyc"))
    assert len(pycs) == 1
    for path in (folder, folder / "lib", *folder.rglob("*")):
        assert path.stat().st_mode & 0o777 in (0o755, 0o644), path
    assert await compiled.folder(parent) == folder  # not rebuilt
    source.write_text(source.read_text() + "\n# changed\n")
    os.utime(source, ns=(1, 1))
    again = await compiled.folder(parent)
    assert again is not None and again != folder
    assert (again / "lib" / f"{MODULE}.py").read_text().endswith("# changed\n")
    shutil.rmtree(parent)  # the runtime directory went away (the backend was closed)
    parent.mkdir()
    rebuilt = await compiled.folder(parent)
    assert rebuilt is not None and (rebuilt / "lib" / f"{MODULE}.py").is_file()


async def test_without_a_working_interpreter_the_plain_harness_is_mounted(
        settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    compiled = CompiledHarness("/nonexistent/python3", HARNESS_DIR / "harness.py",
                               HARNESS_DIR / "boot.py")
    with caplog.at_level(logging.WARNING):
        assert await compiled.folder(tmp_path) is None
    assert "compiled at every boot" in caplog.text
    assert list(tmp_path.iterdir()) == []


async def test_a_sandbox_runs_the_compiled_harness(process_backend: ProcessBackend) -> None:
    worker = await process_backend.start_worker(actor_def(ACTORS / "origin.py"))
    try:
        inner = int(Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()[0])
        maps = Path(f"/proc/{inner}/cmdline").read_bytes().split(b"\0")
        assert b"/harness/harness.py" in maps
        seen = os.listdir(f"/proc/{inner}/root/harness/lib/__pycache__")
        assert [name for name in seen if name.startswith(MODULE)], seen
        outcome, recorder = await call(worker, {"input": 3})
        assert recorder.outputs == [("output", 6)]
        assert outcome.return_value == {"status": "completed"}
    finally:
        await worker.close()
