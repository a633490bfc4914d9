"""What only the process backend has: bwrap options, cgroups, host uid, cleanup, rlimits."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sandbox_helpers import ACTORS, PYTHON_LIMITS, Recorder, actor_def, call, request

from service.deps.spec import Dependencies, Package
from service.errors import (
    ActorFailed,
    ResourceLimitExceeded,
    SandboxUnavailable,
    TimeLimitExceeded,
)
from service.heap import HEAP, PARK_CONTAINERS, settled
from service.manifest.model import ActorDef
from service.sandbox.base import CallRequest, OutputEvent
from service.sandbox.process import (
    HARNESS_DIR,
    PROC_READ_ONLY,
    STAMP_SETTLE_NS,
    Controller,
    ProcessBackend,
    ProcessWorker,
    WorkerCgroups,
    cgroup_mounts,
    discover_controllers,
    make_plan,
    own_cgroups,
    settled_stamp,
    sweep_stale_groups,
)
from service.sandbox.seccomp import DENIED
from service.sandbox.staging import PREFIX, Stager, sweep_stale_dirs
from service.sandbox.uids import UidPool
from service.settings import Settings

MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
Boot = Callable[[ActorDef], Awaitable[ProcessWorker]]


@pytest.fixture
async def boot(process_backend: ProcessBackend) -> AsyncIterator[Boot]:
    workers: list[ProcessWorker] = []

    async def start(actor: ActorDef) -> ProcessWorker:
        worker = await process_backend.start_worker(actor)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        await worker.close()


def bound_sources(options: list[str]) -> set[str]:
    """The host paths a bwrap option list mounts into the sandbox."""
    sources = set()
    for i, option in enumerate(options):
        if option in ("--bind", "--ro-bind", "--ro-bind-try", "--bind-try", "--dev-bind"):
            sources.add(options[i + 1])
    return sources


def host_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


# --- the plan ----------------------------------------------------------------------------


def test_plan_mounts_only_the_system_the_actor_and_the_harness(settings: Settings) -> None:
    plan = make_plan(actor_def(ACTORS / "origin.py"), settings,
                     {"memory": "cgroup-v1", "pids": "cgroup-v1", "cpu": "cgroup-v1"}, (7, 8))
    assert bound_sources(plan.options) == {
        "/usr", "/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives", str(ACTORS),
        str(HARNESS_DIR / "harness.py"), *PROC_READ_ONLY}
    assert "--share-net" not in plan.options
    assert plan.options[:2] == ["--unshare-all", "--unshare-user"]
    assert plan.options[-4:] == ["--remount-ro", "/", "--chdir", "/actor"]
    assert plan.command == [settings.sandbox.python, "-I", "-B", "-u", "/harness/harness.py",
                            "7", "8", "/actor/origin.py", "process", "--own-pidns",
                            "--self-reset"]
    assert plan.host_uid == 65534


def test_plan_mounts_the_dependency_set_read_only(settings: Settings, tmp_path: Path) -> None:
    mechanisms = {"memory": "rlimit", "pids": "rlimit", "cpu": "rlimit"}
    for script, payload, inside in ((ACTORS / "origin.py", "lib", "/deps"),
                                    (ACTORS / "origin.js", "node_modules", "/node_modules")):
        entry = tmp_path / script.suffix
        language = "python" if script.suffix == ".py" else "javascript"
        actor = dataclasses.replace(actor_def(script), deps_entry=entry, dependencies=Dependencies(
            language, (Package("x", "1.0.0"),)))
        plan = make_plan(actor, settings, mechanisms, (7, 8))
        at = plan.options.index(inside)
        assert plan.options[at - 2:at + 1] == ["--ro-bind", str(entry / payload), inside]
        assert plan.options[-4:] == ["--remount-ro", "/", "--chdir", "/actor"]
        assert (plan.command[-1] == "--path=/deps") == (language == "python")
        assert plan.host_uid != 0  # never root, even for an entry below a 0700 folder
        staged = make_plan(actor, settings, mechanisms, (7, 8), deps_root=tmp_path / "copy")
        at = staged.options.index(inside)
        assert staged.options[at - 2:at + 1] == ["--ro-bind", str(tmp_path / "copy"), inside]


def test_plan_refuses_dependencies_that_are_not_built(settings: Settings) -> None:
    actor = dataclasses.replace(actor_def(ACTORS / "origin.py"),
                                dependencies=Dependencies("python", (Package("x", "1"),)))
    with pytest.raises(SandboxUnavailable, match="run `service build`"):
        make_plan(actor, settings, {"memory": "rlimit", "pids": "rlimit", "cpu": "rlimit"},
                  (7, 8))


def test_plan_with_network_shares_it_and_binds_resolver_files(settings: Settings) -> None:
    plan = make_plan(actor_def(ACTORS / "origin.js", network=True), settings,
                     {"memory": "rlimit", "pids": "rlimit", "cpu": "rlimit"}, (7, 8))
    assert plan.options[:2] == ["--unshare-all", "--share-net"]
    assert {"/etc/resolv.conf", "/etc/hosts", "/etc/ssl"} <= bound_sources(plan.options)
    assert plan.command[1] == "--max-old-space-size=120"  # 3/4 of memory_mb: V8 fails first


def test_plan_refuses_a_script_outside_its_folder(settings: Settings, tmp_path: Path) -> None:
    stray = actor_def(ACTORS / "origin.py")
    outside = ActorDef(**{**stray.__dict__, "script": tmp_path / "x.py"})
    with pytest.raises(SandboxUnavailable):
        make_plan(outside, settings, {"memory": "rlimit", "pids": "rlimit", "cpu": "rlimit"},
                  (7, 8))


# --- the kernel's side -------------------------------------------------------------------


async def test_availability_reports_the_mechanisms(process_backend: ProcessBackend) -> None:
    available = await process_backend.availability()
    assert available.ok, available.reason
    details = available.details
    assert {"bwrap", "memory", "pids", "cpu", "disk", "python", "node"} <= set(details)
    assert details["memory"] in ("cgroup-v1", "cgroup-v2", "rlimit")
    assert details["pids"] in ("cgroup-v1", "cgroup-v2", "rlimit")
    assert details["cpu"] in ("cgroup-v1", "cgroup-v2", "none")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="system call numbers are x86_64's")
async def test_seccomp_denies_what_no_actor_needs(
        process_backend: ProcessBackend, boot: Boot) -> None:
    details = (await process_backend.availability()).details
    assert details["seccomp"] == f"denylist of {len(DENIED)}"
    worker = await boot(actor_def(ACTORS / "syscalls.py"))
    denied = ["keyctl", "bpf", "io_uring_setup", "perf_event_open", "ptrace", "userfaultfd",
              "unshare", "io_setup", "mq_open"]
    outcome, _ = await call(worker, {"calls": [*denied, "getpid"]})
    assert outcome.return_value == {**dict.fromkeys(denied, "EPERM"), "getpid": "ok",
                                    "fork": "ok"}


async def test_cgroup_limits_are_written(process_backend: ProcessBackend, boot: Boot) -> None:
    if process_backend.mechanisms() != {"memory": "cgroup-v1", "pids": "cgroup-v1",
                                        "cpu": "cgroup-v1"}:
        pytest.skip("this host has no writable cgroup v1 controllers")
    worker = await boot(actor_def(ACTORS / "origin.py", memory_mb=48, pids=10, cpus=0.5))
    values = {}
    for path in worker.cgroup_dirs:
        for name in ("memory.limit_in_bytes", "pids.max", "cpu.cfs_quota_us", "cpu.shares"):
            if (path / name).exists():
                values[name] = int((path / name).read_text())
        members = (path / "cgroup.procs").read_text().split()
        assert str(worker.pid) in members  # bwrap itself, and so everything below it
    assert values == {"memory.limit_in_bytes": 48 * MIB, "pids.max": 11,
                      "cpu.cfs_quota_us": 50_000, "cpu.shares": 128}  # below the server's 1024


def open_cgroup_files(dirs: tuple[Path, ...]) -> set[str]:
    """The files below ``dirs`` that this process holds open."""
    found = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if any(target.startswith(f"{d}/") for d in dirs):
                found.add(Path(target).name)
    return found


async def test_limit_counters_stay_open_until_close(process_backend: ProcessBackend) -> None:
    """Read with pread on every call, opened once: reopening them cost more than the call."""
    if process_backend.mechanisms()["pids"] != "cgroup-v1":
        pytest.skip("this host has no writable cgroup v1 controllers")
    worker = await process_backend.start_worker(actor_def(ACTORS / "hostile.py"))
    dirs = worker.cgroup_dirs
    try:
        with pytest.raises(ResourceLimitExceeded) as caught:
            await worker.call(request({"mode": "fork"}), Recorder())
        held = open_cgroup_files(dirs)
    finally:
        await worker.close()
    assert caught.value.data == {"resource": "pids", "limit": 16}
    assert held == {"memory.oom_control", "pids.events", "pids.current", "cpuacct.usage",
                    "cgroup.procs"}
    assert open_cgroup_files(dirs) == set()


def sandbox_uids(worker: ProcessWorker) -> set[int]:
    """The host uids of every process of the worker's sandbox (its cgroups' members)."""
    pids = {int(pid) for d in worker.cgroup_dirs
            for pid in (d / "cgroup.procs").read_text().split()}
    return {host_uid(pid) for pid in pids | {worker.pid}}


async def test_each_sandbox_runs_as_its_own_unprivileged_host_uid(
        boot: Boot, settings: Settings) -> None:
    first = await boot(actor_def(ACTORS / "origin.py"))
    second = await boot(actor_def(ACTORS / "origin.py"))
    base, count = settings.sandbox.uid_base, settings.sandbox.uid_count
    uids = sandbox_uids(first), sandbox_uids(second)
    assert all(len(u) == 1 and base <= min(u) < base + count for u in uids), uids
    assert uids[0] != uids[1]


async def test_private_folder_is_staged_never_run_as_root(
        boot: Boot, tmp_path: Path, settings: Settings) -> None:
    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    shutil.copy(ACTORS / "probe.py", folder)
    (folder / "probe.py").chmod(0o600)
    worker = await boot(actor_def(folder / "probe.py"))
    outcome, _ = await call(worker, {"mode": "writes"})
    assert 0 not in sandbox_uids(worker)
    assert min(sandbox_uids(worker)) >= settings.sandbox.uid_base
    assert {p for p, r in outcome.return_value.items() if r == "ok"} == {"/tmp/new"}


async def test_a_sandbox_gets_no_pseudo_terminal(boot: Boot) -> None:
    """ptys come from one host-wide pool (kernel.pty.max): one sandbox took all 3071."""
    worker = await boot(actor_def(ACTORS / "probe.py"))
    outcome, _ = await call(worker, {"mode": "terminals"})
    result = outcome.return_value
    assert result["pts"] == []
    assert result["openpty"].startswith("FileNotFoundError")
    assert result["ptmx"].startswith("FileNotFoundError")


async def test_a_freed_uid_is_given_out_again(process_backend: ProcessBackend) -> None:
    worker = await process_backend.start_worker(actor_def(ACTORS / "origin.py"))
    uid = worker.host_uid
    await worker.close()
    assert process_backend.uids is not None and process_backend.uids.in_use == 0
    again = await process_backend.start_worker(actor_def(ACTORS / "origin.py"))
    try:
        assert again.host_uid is not None and uid is not None
    finally:
        await again.close()


async def test_reset_kills_stray_processes(boot: Boot) -> None:
    worker = await boot(actor_def(ACTORS / "probe.py"))
    await call(worker, {"mode": "leave_traces"})
    await worker.reset()
    outcome, _ = await call(worker, {"mode": "look"})
    assert outcome.return_value["pids"] == [outcome.return_value["me"]] == [1]


async def test_harness_resets_itself_after_each_call(boot: Boot) -> None:
    """No reset() round trip: the next call already finds no strays and an empty /tmp."""
    worker = await boot(actor_def(ACTORS / "probe.py"))
    traces, _ = await call(worker, {"mode": "leave_traces"})
    outcome, _ = await call(worker, {"mode": "look"})
    assert traces.return_value == ["dir"]
    assert outcome.return_value["pids"] == [outcome.return_value["me"]] == [1]
    assert outcome.return_value["tmp"] == []


@pytest.mark.parametrize("script", ["probe.py", "exported.js"])
async def test_an_idle_sandbox_killed_from_outside_is_not_handed_out(boot: Boot,
                                                                     script: str) -> None:
    """Its harness killed (kill -9 from the host), an idle worker still looked alive until
    asyncio saw the exit: a call sent at once failed -32004 SandboxCrashed although it never
    ran. Its task count, read as it is claimed, has dropped: the pool takes another."""
    worker = await boot(actor_def(ACTORS / script))
    harness = worker._harness_pid
    assert harness is not None and worker.alive
    os.kill(harness, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{harness}").exists() and time.monotonic() < deadline:
        time.sleep(0.001)  # gone from the host's view, still unseen by the (blocked) loop
    assert not worker.claim()


async def test_a_flood_of_raw_lines_is_not_queued_past_the_calls_budget(
        boot: Boot, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raw output is charged as it is read: 64 KiB of newlines (65,536 lines, a turn of
    the event loop each time they are split and queued) stop at the limit, and the pipe is
    read no more."""
    queued: list[str] = []
    enqueue = ProcessWorker._enqueue

    def counted(self: ProcessWorker, item: Any) -> None:
        queued.append(item.kind)
        enqueue(self, item)

    monkeypatch.setattr(ProcessWorker, "_enqueue", counted)
    worker = await boot(actor_def(ACTORS / "hostile.py", output_bytes=8192))
    with pytest.raises(ResourceLimitExceeded) as caught:
        await call(worker, {"mode": "flood_empty_raw"})
    assert caught.value.data == {"resource": "output", "limit": 8192}
    assert 0 < queued.count("line") < 200 and queued.count("refused") == 1


async def test_the_host_finds_a_file_the_harness_left_in_tmp(boot: Boot) -> None:
    """The host's own look at /tmp between calls (one stat while the folder is unchanged
    since it was seen empty) still finds what a patched harness no longer wipes."""
    worker = await boot(actor_def(ACTORS / "probe.py"))
    for _ in range(2):  # the second reset stamps /tmp as settled (older than any tick)
        await asyncio.sleep(STAMP_SETTLE_NS / 1e9)
        await call(worker, {"mode": "look"})
        await worker.reset()
    assert worker.alive
    outcome, _ = await call(worker, {"mode": "hide_in_tmp"})
    assert outcome.return_value == "hidden"
    with pytest.raises(ActorFailed):
        await worker.reset()
    assert not worker.alive and worker.violation == "its reset left 1 entries in /tmp"


def test_a_folder_stamp_counts_once_older_than_a_clock_tick(tmp_path: Path) -> None:
    fresh = settled_stamp(os.stat(tmp_path))
    assert fresh is None  # made just now: a change in the same jiffy could keep its times
    os.utime(tmp_path, ns=(0, 0))  # the mtime says 1970, the ctime still says now
    assert settled_stamp(os.stat(tmp_path)) is None
    time.sleep(STAMP_SETTLE_NS / 1e9)
    stamp = settled_stamp(os.stat(tmp_path))
    assert stamp is not None and stamp == settled_stamp(os.stat(tmp_path))
    (tmp_path / "new").write_text("x")
    time.sleep(STAMP_SETTLE_NS / 1e9)
    assert settled_stamp(os.stat(tmp_path)) not in (None, stamp)


@pytest.mark.parametrize("mode", ["ok", "memory", "fork"])
async def test_close_leaves_nothing_behind(process_backend: ProcessBackend, mode: str) -> None:
    worker = await process_backend.start_worker(actor_def(ACTORS / "hostile.py"))
    dirs, pid = worker.cgroup_dirs, worker.pid
    members = {p for d in dirs for p in (d / "cgroup.procs").read_text().split()}
    with contextlib.suppress(ResourceLimitExceeded):
        await worker.call(request({"mode": mode}), Recorder())
    await worker.close()
    assert dirs and not any(d.exists() for d in dirs)
    assert not Path(f"/proc/{pid}").exists()
    assert not [p for p in members if Path(f"/proc/{p}").exists()]


async def test_warm_python_worker_is_small(boot: Boot) -> None:
    worker = await boot(actor_def(ACTORS / "origin.py"))
    harness = [pid for d in worker.cgroup_dirs for pid in (d / "cgroup.procs").read_text().split()
               if b"harness.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
               and b"bwrap" not in Path(f"/proc/{pid}/cmdline").read_bytes()]
    if not harness:
        pytest.skip("no cgroup to find the harness process in")
    status = Path(f"/proc/{harness[0]}/status").read_text()
    rss_kb = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1])
    assert rss_kb <= 15 * 1024


async def test_network_limit_true_reaches_the_host(boot: Boot) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        worker = await boot(actor_def(ACTORS / "probe.py", network=True))
        outcome, _ = await call(worker, {"mode": "network", "port": port, "local_only": True})
    finally:
        server.close()
        await server.wait_closed()
    assert outcome.return_value == {f"127.0.0.1:{port}": "ok"}


async def test_rlimit_fallback_still_limits_memory(settings: Settings) -> None:
    backend = ProcessBackend(settings)
    # As on a host without a writable memory cgroup. (The pids cgroup stays: RLIMIT_NPROC
    # counts every process of uid 65534 on the host, other tests' sandboxes included.)
    backend._controllers = {k: v for k, v in discover_controllers().items() if k != "memory"}
    worker = await backend.start_worker(actor_def(ACTORS / "hostile.py"))
    pid = worker.pid
    harness = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    try:
        with pytest.raises(ResourceLimitExceeded) as caught:
            await worker.call(request({"mode": "memory"}), Recorder())
    finally:
        await worker.close()
    assert caught.value.data == {"resource": "memory", "limit": 64}
    assert len(harness) == 1
    assert not [p for p in [str(pid), *harness] if Path(f"/proc/{p}").exists()]
    assert backend.mechanisms()["memory"] == "rlimit"


async def test_without_cgroups_close_still_leaves_nothing(settings: Settings) -> None:
    backend = ProcessBackend(settings)
    backend._controllers = {}  # rlimits only; a pids limit high enough for a busy host's uid
    worker = await backend.start_worker(actor_def(ACTORS / "hostile.py", pids=100_000))
    pid = worker.pid
    harness = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    try:
        outcome, _ = await call(worker, {"mode": "ok"})
    finally:
        await worker.close()
    assert outcome.return_value == {"ok": True}
    assert (worker.cgroup_dirs, len(harness)) == ((), 1)
    assert not [p for p in [str(pid), *harness] if Path(f"/proc/{p}").exists()]


def test_cgroup_layouts_are_parsed() -> None:
    mountinfo = (
        "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
        "35 31 0:32 /ctr /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
        "22 1 0:20 / /proc rw - proc proc rw\n")
    proc_cgroup = "4:memory:/ctr/api/x\n1:cpu,cpuacct:/\n0::/user.slice\n"
    assert cgroup_mounts(mountinfo) == [
        ("cgroup", "/", Path("/sys/fs/cgroup/cpu"), {"rw", "cpu", "cpuacct"}),
        ("cgroup", "/ctr", Path("/sys/fs/cgroup/memory"), {"rw", "memory"}),
        ("cgroup2", "/", Path("/sys/fs/cgroup/unified"), {"rw"})]
    assert own_cgroups(proc_cgroup) == (
        {"memory": "/ctr/api/x", "cpu": "/", "cpuacct": "/"}, "/user.slice")
    assert own_cgroups("0::/system.slice/actors.service\n") == (
        {}, "/system.slice/actors.service")


async def test_backend_aclose_closes_workers_left_open(settings: Settings) -> None:
    backend = ProcessBackend(settings)
    worker = await backend.start_worker(actor_def(ACTORS / "origin.py"))
    dirs = worker.cgroup_dirs
    await backend.aclose()
    assert not worker.alive
    assert not any(d.exists() for d in dirs)


async def test_groups_of_dead_servers_are_swept(process_backend: ProcessBackend) -> None:
    controllers = process_backend.controllers
    if not controllers:
        pytest.skip("no cgroups here")
    dead = 2**22 + 1  # above the default pid_max: never a live process
    stale = [c.parent / f"sandbox-{dead}-0123456789ab" for c in controllers.values()]
    for path in stale:
        path.mkdir()
    assert sweep_stale_groups(controllers) >= len(stale)
    assert not any(path.exists() for path in stale)


def test_a_worker_group_on_cgroup_v2_is_one_folder_for_every_controller(
        tmp_path: Path) -> None:
    """On v2 (and v1 with controllers mounted together) the controllers share a folder:
    it was made once per controller, and the second time failed, refusing every worker."""
    controllers = {name: Controller(name, tmp_path, 2) for name in ("memory", "pids", "cpu")}
    cgroups = WorkerCgroups.create(controllers, PYTHON_LIMITS)
    [group] = cgroups.dirs
    assert group.parent == tmp_path
    assert (group / "memory.max").read_text() == str(PYTHON_LIMITS.memory_mb * MIB)
    assert (group / "pids.max").read_text() == str(PYTHON_LIMITS.pids + 1)
    assert (group / "cpu.max").read_text() == "100000 100000"


def test_no_sandbox_cgroup_is_left_over() -> None:
    """Runs last in this file: every test above removed its worker groups."""
    leftovers = [p for root in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup/cpu")
                 for p in Path(root).glob(f"sandbox-{os.getpid()}-*")]
    assert leftovers == []


# --- host uids and staged folders ----------------------------------------------------------


def test_uid_pools_share_a_range_without_sharing_a_uid(tmp_path: Path) -> None:
    first = UidPool(3_000_000_000, 3, tmp_path, "process")
    second = UidPool(3_000_000_000, 3, tmp_path, "process")
    try:
        taken = [first.acquire(), first.acquire(), second.acquire()]
        assert sorted(taken) == [3_000_000_000, 3_000_000_001, 3_000_000_002]
        with pytest.raises(SandboxUnavailable) as caught:
            second.acquire()
        assert "uid_count" in caught.value.data["reason"]
        first.release(taken[0])
        assert second.acquire() == taken[0]
    finally:
        first.close()
        second.close()
        for lock in Path("/run/actor-sandbox").glob("uids-3000000000.lock"):
            lock.unlink()


def test_a_readable_tree_is_mounted_as_it_is() -> None:
    tree = Path(tempfile.mkdtemp(prefix="readable-tree-"))  # below /tmp (1777), not pytest's
    stager = Stager()
    try:
        tree.chmod(0o755)
        (tree / "a.py").write_text("x = 1\n")
        (tree / "a.py").chmod(0o644)
        assert stager.readable(tree) == tree
        (tree / "a.py").chmod(0o640)
        assert stager.readable(tree) != tree
    finally:
        stager.close()
        shutil.rmtree(tree)


def test_a_private_tree_is_staged_readable_links_kept_specials_left_out(
        tmp_path: Path) -> None:
    tree = tmp_path / "private"
    tree.mkdir(mode=0o700)
    (tree / "sub").mkdir(mode=0o700)
    (tree / "sub" / "run.sh").write_text("#!/bin/sh\n")
    (tree / "sub" / "run.sh").chmod(0o700)
    (tree / "secret.txt").write_text("only root\n")
    (tree / "secret.txt").chmod(0o600)
    (tree / "link").symlink_to("/etc/shadow")
    os.mkfifo(tree / "fifo")
    stager = Stager()
    try:
        staged = stager.readable(tree)
        assert staged != tree and staged.parent == stager.directory
        assert stat.S_IMODE(stager.directory.stat().st_mode) == 0o711
        assert stat.S_IMODE((staged / "secret.txt").stat().st_mode) == 0o644
        assert stat.S_IMODE((staged / "sub").stat().st_mode) == 0o755
        assert stat.S_IMODE((staged / "sub" / "run.sh").stat().st_mode) == 0o755
        assert os.readlink(staged / "link") == "/etc/shadow"  # a link, never its target
        assert not (staged / "fifo").exists()
        assert stager.readable(tree) == staged  # same content: the same copy
        (tree / "secret.txt").write_text("changed\n")
        assert stager.readable(tree) != staged  # new content: a new copy
    finally:
        stager.close()
    assert not staged.exists()


@pytest.mark.parametrize("victim", ["outer", "inner"])
async def test_a_sandbox_killed_while_it_boots_answers_like_a_crash(
        process_backend: ProcessBackend, monkeypatch: pytest.MonkeyPatch, victim: str) -> None:
    """Killed from outside during the boot, the outer bwrap (no 15 s wait for a `ready` that
    the surviving inner sandbox would never send) or the sandbox inside it: a crash, as for a
    running sandbox, not -32009; and nothing of it is left running."""
    import signal

    from service.errors import ActorFailed

    seen: list[ProcessWorker] = []
    original = ProcessWorker.wait_ready

    async def killed_while_booting(worker: ProcessWorker) -> None:
        seen.append(worker)
        if victim == "outer":
            os.kill(worker.pid, signal.SIGKILL)  # slow_boot.py is still sleeping in its import
        else:
            if not worker.cgroup_dirs:
                pytest.skip("no cgroups here to find the inner sandbox by")
            async with asyncio.timeout(10):
                while not (inner := worker._cgroups.members() - {worker.pid}):
                    await asyncio.sleep(0.01)
            for pid in inner:
                os.kill(pid, signal.SIGKILL)
        await original(worker)

    monkeypatch.setattr(ProcessWorker, "wait_ready", killed_while_booting)
    with pytest.raises(ActorFailed) as info:
        await process_backend.start_worker(actor_def(ACTORS / "slow_boot.py"))
    assert info.value.data["type"] == "SandboxCrashed"
    assert re.fullmatch(r"the sandbox exited \(status (-9|137)\) while starting",
                        info.value.data["message"])
    (worker,) = seen
    assert not worker.alive
    for folder in worker.cgroup_dirs:
        assert not folder.exists()  # closed: every process of it gone, its cgroups removed


async def test_state_replies_a_sandbox_does_not_read_are_not_buffered_without_bound(
        scratch_dir: Path) -> None:
    """A script that asks for big values and never reads its input: past BUFFER_BYTES of
    replies waiting in the pipe's transport the host stops reading the sandbox, which then
    blocks on its own writes and runs into its time limit (state budgets set far out of
    the way, as a server may configure them)."""
    from service.sandbox.process import BUFFER_BYTES
    from service.settings import SandboxSettings, StateSettings
    from service.state.context import StateContext
    from service.state.embedded import EmbeddedStore
    from service.state.session import StateBudget, StateSession

    script = scratch_dir / "asks.py"
    script.write_text(
        "import os, time\n"
        "def process(context):\n"
        "    argv = open('/proc/self/cmdline', 'rb').read().split(b'\\0')\n"
        "    fd = int(argv[[a.endswith(b'harness.py') for a in argv].index(True) + 2])\n"
        "    for n in range(1, 401):\n"
        "        os.write(fd, b'{\"type\":\"state\",\"id\":%d,' % n\n"
        "                 + b'\"op\":\"get\",\"key\":\"big\"}\\n')\n"
        "    time.sleep(60)\n")
    script.chmod(0o644)
    actor = actor_def(script, timeout_s=3)
    settings = Settings(sandbox=SandboxSettings(tmp_mb=8),
                        state=StateSettings(ops_per_call=10**6, bytes_per_call=10**10))
    backend = ProcessBackend(settings)
    store = EmbeddedStore(0)
    context = StateContext("default", actor.id)
    await store.set(context.prefix + "big", '"' + "v" * 100_000 + '"')  # each reply ~100 KB
    session = StateSession(store, context, StateBudget(10**6, 10**10))
    worker = await backend.start_worker(actor)
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, worker._to_harness.get_write_buffer_size())
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    try:
        with pytest.raises(TimeLimitExceeded):
            await worker.call(dataclasses.replace(request(), state_ops=session), Recorder())
    finally:
        watcher.cancel()
        await worker.close()
        await backend.aclose()
    assert 0 < most <= BUFFER_BYTES + 200_000, most  # one reply past the mark, at most


async def test_a_call_holds_its_parked_outputs_and_the_worker_keeps_nothing_after(
        boot: Boot, tmp_path: Path) -> None:
    """An output decoded to many containers is parked (service/heap.py) and held until
    the call ends. Then the worker holds nothing of the call: it kept the last call's
    request, payload and all, until the next one (memory an idle worker sat on, scanned by
    every full collection)."""
    script = tmp_path / "lists.py"
    script.write_text("async def process(context):\n"
                      f"    await context.send_output('output', [[]] * {2 * PARK_CONTAINERS})\n"
                      "    return len(context.get_input('items'))\n")
    worker = await boot(actor_def(script, output_bytes=MIB))
    held: list[int] = []

    async def sink(event: Any) -> None:
        if isinstance(event, OutputEvent):
            held.append(HEAP.held)

    async with settled():
        request = CallRequest("lists", {"items": [1, 2]}, {}, {}, 0)
        called = weakref.ref(request)
        outcome = await worker.call(request, sink)
        del request
        assert outcome.return_value == 2 and held == [1]
        assert HEAP.held == 0 and called() is None


CHILD_STAGES = ("import sys; from service.sandbox.staging import PREFIX, Staged; "
                "print(Staged.owned(PREFIX).root, flush=True); sys.stdin.read()")


@pytest.mark.parametrize("own_pids", [False, True])
def test_a_runtime_folder_is_swept_once_its_server_has_ended(own_pids: bool) -> None:
    """Whatever pid namespace the server ran in: as pid 1 (a container, ``unshare --pid``),
    "/proc/1 exists" kept every folder it left (81 of them on the machine this was found
    on). Its lock on the folder says whether it still runs."""
    if own_pids and (os.geteuid() != 0 or not shutil.which("unshare")):
        pytest.skip("needs root and unshare")
    prefix = ("unshare", "--pid", "--fork", "--kill-child") if own_pids else ()
    child = subprocess.Popen([*prefix, sys.executable, "-c", CHILD_STAGES], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdin is not None
    folder = Path(child.stdout.readline().strip())
    try:
        assert folder.name.startswith(f"{PREFIX}{1 if own_pids else child.pid}-")
        sweep_stale_dirs()
        assert folder.is_dir()  # its server runs
    finally:
        child.communicate(timeout=30)  # its stdin closed: it ends
    sweep_stale_dirs()
    assert not folder.exists()


def test_a_folder_with_no_lock_is_swept_by_its_creators_pid_once_a_minute_old() -> None:
    """Folders made before locks were, or not locked yet."""
    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process has it
    young = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{gone}-"))
    old = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{gone}-"))
    mine = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
    an_hour_ago = time.time() - 3600
    for folder in (old, mine):
        os.utime(folder, (an_hour_ago, an_hour_ago))
    try:
        sweep_stale_dirs()
        assert young.is_dir() and mine.is_dir() and not old.exists()
    finally:
        for folder in (young, old, mine):
            shutil.rmtree(folder, ignore_errors=True)


def test_a_new_folder_is_never_seen_unlocked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweeper running between the lock file's creation and its lock found it free, and
    removed a starting server's folder."""
    from service.sandbox import staging

    lock = staging.fcntl.flock

    def sweep_first(fd: int, operation: int) -> None:
        if operation == staging.fcntl.LOCK_EX:  # the owner's (a sweeper's does not wait)
            sweep_stale_dirs()  # another server starting at that moment
        lock(fd, operation)

    monkeypatch.setattr(staging.fcntl, "flock", sweep_first)
    made = staging.Staged.owned(PREFIX)
    try:
        assert made.root.is_dir() and (made.root / staging.OWNER_LOCK).exists()
    finally:
        made.remove()
