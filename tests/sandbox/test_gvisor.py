"""What only the gVisor backend has: a separate kernel, the bundle, cgroups on runsc, cleanup.

The contract and the hostile corpus run on gvisor too (``--backend``); these rows check what
only a separate kernel passes, and read every limit back from the OS.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import platform
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from sandbox_helpers import ACTORS, Recorder, actor_def, call, request

from service.deps.spec import Dependencies, Package
from service.errors import ResourceLimitExceeded, SandboxUnavailable, TimeLimitExceeded
from service.manifest.model import ActorDef
from service.sandbox.gvisor import (
    OVERHEAD_MB,
    OVERHEAD_TASKS,
    PIDS_PER_TASK,
    GVisorBackend,
    GVisorWorker,
    oci_config,
)
from service.sandbox.process import WorkerCgroups
from service.sandbox.seccomp import DENIED
from service.settings import SandboxSettings, Settings

MIB = 1 << 20
Boot = Callable[[ActorDef], Awaitable[GVisorWorker]]
# What the process backend's seccomp denies with EPERM (test_process_backend.py): on gVisor
# the Sentry refuses them itself, with the same denylist (OCI seccomp); none reaches the host.
SYSCALLS = ["keyctl", "bpf", "io_uring_setup", "perf_event_open", "ptrace", "userfaultfd",
            "unshare", "io_setup", "mq_open"]


@pytest.fixture
async def gvisor(settings: Settings) -> AsyncIterator[GVisorBackend]:
    backend = GVisorBackend(settings)
    available = await backend.availability()
    if not available.ok:
        await backend.aclose()
        pytest.skip(f"gvisor backend unavailable: {available.reason}")
    yield backend
    await backend.aclose()


@pytest.fixture
async def boot(gvisor: GVisorBackend) -> AsyncIterator[Boot]:
    workers: list[GVisorWorker] = []

    async def start(actor: ActorDef) -> GVisorWorker:
        worker = await gvisor.start_worker(actor)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        await worker.close()


def status(pid: int | str) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def members(worker: GVisorWorker) -> set[str]:
    return {pid for d in worker.cgroup_dirs for pid in (d / "cgroup.procs").read_text().split()}


def command(pid: str) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


# --- a kernel of its own -----------------------------------------------------------------


async def test_availability_reports_version_and_platform(gvisor: GVisorBackend) -> None:
    details = (await gvisor.availability()).details
    assert details["runsc"] and details["platform"] == "ptrace"
    assert {details[k] for k in ("memory", "pids", "cpu")} <= {"cgroup-v1", "cgroup-v2", "none"}


async def test_the_actor_sees_the_sentry_kernel_not_the_host(boot: Boot) -> None:
    worker = await boot(actor_def(ACTORS / "kernel.py"))
    outcome, _ = await call(worker, {})
    seen = outcome.return_value
    assert seen["release"] != platform.release()
    assert platform.release() not in seen["version"]
    assert seen["version"].startswith(f"Linux version {seen['release']}")
    assert (seen["uid"], seen["pid"], seen["pids"]) == (65534, 1, [1])


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="system call numbers are x86_64's")
async def test_calls_the_process_seccomp_denies_are_refused_by_the_sentry(boot: Boot) -> None:
    """The same denylist, enforced by the Sentry; fork and getpid still work (emulated)."""
    worker = await boot(actor_def(ACTORS / "syscalls.py"))
    outcome, _ = await call(worker, {"calls": [*SYSCALLS, "getpid"]})
    assert outcome.return_value == {**dict.fromkeys(SYSCALLS, "EPERM"), "getpid": "ok",
                                    "fork": "ok"}


async def test_the_actor_is_no_host_process(boot: Boot) -> None:
    """On the host there are only runsc, its gofer, the Sentry and the ptrace stubs: the
    harness and the script exist only inside the Sentry. The Sentry is host uid 65534 under
    seccomp, with no new privileges."""
    worker = await boot(actor_def(ACTORS / "origin.py"))
    pids = members(worker)
    commands = [command(pid) for pid in pids]
    assert not [c for c in commands if "harness" in c], commands
    sentry = [pid for pid in pids if command(pid).startswith("runsc-sandbox")]
    assert len(sentry) == 1
    seen = status(sentry[0])
    assert seen["Uid"].split() == ["65534"] * 4
    assert (seen["Seccomp"], seen["NoNewPrivs"]) == ("2", "1")


# --- limits, read back from the OS -------------------------------------------------------


async def test_cgroup_limits_hold_runsc_and_everything_it_starts(
        gvisor: GVisorBackend, boot: Boot) -> None:
    if gvisor.mechanisms() != {"memory": "cgroup-v1", "pids": "cgroup-v1", "cpu": "cgroup-v1"}:
        pytest.skip("this host has no writable cgroup v1 controllers")
    worker = await boot(actor_def(ACTORS / "kernel.py", memory_mb=48, pids=10, cpus=0.5))
    values = {}
    for path in worker.cgroup_dirs:
        for name in ("memory.limit_in_bytes", "pids.max", "cpu.cfs_quota_us", "cpu.shares"):
            if (path / name).exists():
                values[name] = int((path / name).read_text())
        procs = (path / "cgroup.procs").read_text().split()
        assert str(worker.pid) in procs  # runsc itself, so its gofer and Sentry too
        assert {command(p).split(" ")[0] for p in procs} >= {"runsc-gofer", "runsc-sandbox"}
    assert values == {"memory.limit_in_bytes": (48 + OVERHEAD_MB) * MIB,
                      "pids.max": 10 * PIDS_PER_TASK + OVERHEAD_TASKS + 1,  # + unshare
                      "cpu.cfs_quota_us": 50_000, "cpu.shares": 128}  # below the server's 1024
    outcome, _ = await call(worker, {})
    assert (outcome.return_value["nproc"], outcome.return_value["fsize"]) == (10, 8 * MIB)


async def test_the_cpu_quota_throttles_the_sentry(gvisor: GVisorBackend, boot: Boot) -> None:
    """The script's own CPU clocks cannot show it (the Sentry counts throttled time as
    running): the host cgroup's throttling counter does."""
    if gvisor.mechanisms()["cpu"] != "cgroup-v1":
        pytest.skip("this host has no writable cgroup v1 cpu controller")
    worker = await boot(actor_def(ACTORS / "hostile.py", cpus=0.2, timeout_s=1))
    cpu_stat = next(d / "cpu.stat" for d in worker.cgroup_dirs if (d / "cpu.stat").exists())
    with pytest.raises(TimeLimitExceeded):
        await worker.call(request({"mode": "loop"}), Recorder())
    throttled = dict(line.split() for line in cpu_stat.read_text().splitlines())
    assert int(throttled["nr_throttled"]) > 0


async def test_a_refused_fork_is_the_pids_limit(boot: Boot) -> None:
    # memory to spare: under ptrace each process also costs host memory (see fork bombs)
    worker = await boot(actor_def(ACTORS / "hostile.py", memory_mb=256))
    with pytest.raises(ResourceLimitExceeded) as caught:
        await worker.call(request({"mode": "fork"}), Recorder())
    assert caught.value.data == {"resource": "pids", "limit": 16}


# --- the bundle --------------------------------------------------------------------------


def test_bundle_mounts_only_the_system_the_actor_the_harness_and_the_channel(
        settings: Settings, tmp_path: Path) -> None:
    actor = actor_def(ACTORS / "origin.py")
    config = oci_config(settings, tmp_path / "rootfs", actor, tmp_path, network=False,
                        args=["true"])
    mounts = {m["destination"]: m for m in config["mounts"]}
    assert mounts["/actor"]["source"] == str(actor.root)
    assert {"/actor", "/usr", "/harness/harness.py", "/channel/in", "/channel/out", "/tmp",
            "/proc"} <= set(mounts)
    writable = {d for d, m in mounts.items() if "rw" in m.get("options", [])}
    assert writable == {"/channel/in", "/channel/out"}  # two FIFOs; /tmp is the Sentry's
    denied, *sockets = config["linux"]["seccomp"]["syscalls"]
    assert denied == {"names": list(DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
    assert _refused_families(sockets) == set(range(64)) - {1, 2, 10}  # unix, inet, inet6
    assert "/etc/resolv.conf" not in mounts
    assert {"type": "network"} in config["linux"]["namespaces"]
    assert config["root"] == {"path": str(tmp_path / "rootfs"), "readonly": True}
    process = config["process"]
    assert process["user"] == {"uid": 65534, "gid": 65534} and process["noNewPrivileges"]
    assert all(caps == [] for caps in process["capabilities"].values())


async def test_the_dependency_set_is_mounted_and_on_the_path(boot: Boot, tmp_path: Path) -> None:
    entry = tmp_path / "entry"
    (entry / "lib").mkdir(parents=True)
    (entry / "lib" / "gvisor_dep_probe.py").write_text("VALUE = 42\n")
    folder = tmp_path / "actor"
    folder.mkdir()
    script = folder / "uses_dep.py"
    script.write_text("import gvisor_dep_probe\n\n\ndef process(context):\n"
                      "    return gvisor_dep_probe.VALUE\n")
    actor = dataclasses.replace(actor_def(script), deps_entry=entry, dependencies=Dependencies(
        "python", (Package("x", "1.0.0"),)))
    worker = await boot(actor)
    outcome, _ = await call(worker, {})
    assert outcome.return_value == 42


def test_bundle_with_network_binds_resolver_files(settings: Settings, tmp_path: Path) -> None:
    actor = actor_def(ACTORS / "origin.py", network=True)
    config = oci_config(settings, tmp_path, actor, tmp_path, network=True, args=["true"])
    assert "/etc/resolv.conf" in {m["destination"] for m in config["mounts"]}
    assert {"type": "network"} not in config["linux"]["namespaces"]
    _, *sockets = config["linux"]["seccomp"]["syscalls"]
    assert _refused_families(sockets) == set(range(64)) - {1, 2, 10, 16}  # netlink: resolver


def _refused_families(rules: list[dict[str, Any]]) -> set[int]:
    """The socket families the OCI seccomp rules refuse with EAFNOSUPPORT (and that a
    family above 63, high bits included, is refused too)."""
    refused = set()
    for rule in rules:
        assert rule["names"] == ["socket", "socketpair"] and rule["errnoRet"] == 97
        [condition] = rule["args"]
        if condition["op"] == "SCMP_CMP_GT":
            assert condition == {"index": 0, "value": 63, "op": "SCMP_CMP_GT"}
        else:
            assert condition["op"] == "SCMP_CMP_EQ" and condition["index"] == 0
            refused.add(condition["value"])
    assert any(rule["args"][0]["op"] == "SCMP_CMP_GT" for rule in rules)
    return refused


async def test_runsc_missing_says_why(settings: Settings) -> None:
    backend = GVisorBackend(settings.replace(sandbox=SandboxSettings(runsc="/nonexistent/runsc")))
    available = await backend.availability()
    await backend.aclose()
    assert not available.ok
    assert available.reason.startswith("runsc not found or not runnable (/nonexistent/runsc)")


async def test_a_worker_that_cannot_start_is_unavailable(
        gvisor: GVisorBackend, tmp_path: Path) -> None:
    script = tmp_path / "actor.py"
    script.write_text("def process(context):\n    return 1\n")
    actor = actor_def(script)
    outside = dataclasses.replace(actor, script=ACTORS / "origin.py")  # not below its root
    with pytest.raises(SandboxUnavailable) as caught:
        await gvisor.start_worker(outside)
    assert caught.value.data["backend"] == "gvisor"


async def test_runsc_never_runs_outside_the_workers_cgroups(
        gvisor: GVisorBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """runsc starts behind a gate the host opens once it is in the worker's groups (off the
    event loop: a fork that moved itself held the loop 10-28 ms a boot). Groups it cannot
    enter: the gate closes, and runsc never runs."""
    def refuse(self: Any, pid: int) -> None:
        raise PermissionError(13, "Permission denied")

    bundles: list[Path] = []
    new_bundle = GVisorBackend._new_bundle

    def recorded(self: GVisorBackend) -> Path:
        bundles.append(new_bundle(self))
        return bundles[-1]

    monkeypatch.setattr(WorkerCgroups, "enter", refuse)
    monkeypatch.setattr(GVisorBackend, "_new_bundle", recorded)
    with pytest.raises(SandboxUnavailable) as caught:
        await gvisor.start_worker(actor_def(ACTORS / "origin.py"))
    assert caught.value.data["reason"] == "cannot limit runsc: [Errno 13] Permission denied"
    await asyncio.sleep(0.2)
    [bundle] = bundles
    assert not bundle.exists()
    assert not [pid for pid in filter(str.isdigit, os.listdir("/proc"))
                if str(bundle) in command(pid)]  # nothing ran with it: no runsc, no shell


# --- cleanup -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ok", "memory", "fork"])
async def test_close_leaves_nothing_behind(gvisor: GVisorBackend, mode: str) -> None:
    worker = await gvisor.start_worker(actor_def(ACTORS / "hostile.py"))
    dirs, pids = worker.cgroup_dirs, members(worker)
    bundle = Path(next(w for w in command(str(worker.pid)).split() if "/w-" in w))
    with contextlib.suppress(ResourceLimitExceeded):
        await worker.call(request({"mode": mode}), Recorder())
    await worker.close()
    assert dirs and not any(d.exists() for d in dirs)
    assert not [p for p in pids if Path(f"/proc/{p}").exists()]
    assert not bundle.exists()
    state = gvisor.home / "state"
    assert not state.exists() or not [p for p in state.iterdir() if bundle.name in p.name]


async def test_backend_aclose_removes_its_folder(settings: Settings) -> None:
    backend = GVisorBackend(settings)
    worker = await backend.start_worker(actor_def(ACTORS / "origin.py"))
    home = backend.home
    config = json.loads(next(home.glob("w-*/config.json")).read_text())
    assert config["process"]["args"][0] == "/bin/sh"
    await backend.aclose()
    assert not worker.alive and not home.exists()


SERVER = """
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from sandbox_helpers import ACTORS, actor_def
from service.sandbox.gvisor import GVisorBackend
from service.settings import SandboxSettings, Settings

async def main():
    backend = GVisorBackend(Settings(sandbox=SandboxSettings(tmp_mb=8)))
    worker = await backend.start_worker(actor_def(ACTORS / "origin.py"))
    print(worker.pid, backend.home, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_sandboxes_die_with_their_server(gvisor: GVisorBackend, settings: Settings) -> None:
    """A server killed outright takes its sandboxes along; the next backend removes its folder."""
    import asyncio
    import sys

    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVER, str(ACTORS.parent), stdout=asyncio.subprocess.PIPE)
    assert server.stdout is not None
    pid, home = (await server.stdout.readline()).decode().split()
    procs = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    server.kill()
    await server.wait()
    for _ in range(100):
        if not any(Path(f"/proc/{p}").exists() for p in (pid, *procs)):
            break
        await asyncio.sleep(0.05)
    assert not [p for p in (pid, *procs) if Path(f"/proc/{p}").exists()]
    later = GVisorBackend(settings)
    assert later.home.exists()  # made on first use, sweeping the folders of dead servers
    groups = {c.parent for c in later.controllers.values()}  # and its cgroups
    await later.aclose()
    assert not Path(home).exists()
    assert not [found for parent in groups for found in parent.glob(f"sandbox-{pid}-*")]
