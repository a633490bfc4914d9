"""A recording double of the microsandbox SDK that runs the guest command for real.

``LocalSDK.install(monkeypatch)`` replaces ``microsandbox.Sandbox`` with a class that
checks every keyword of ``Sandbox.create`` and ``exec_stream`` against the installed
SDK's own type stubs, serialises mounts and the network policy the way the SDK does
(``_to_dict``, which raises on a bad combination), records the calls, and then runs the
exec session's command under bubblewrap, as strict as the real guest is:

- ``Sandbox.create`` and a kill may take time (``create_delay_s``, ``kill_delay_s``), and a
  create that is cancelled still makes its VM (the SDK's native task runs on);
- ``Sandbox.get`` returns a handle whose ``kill`` waits, then may give up with the VM still
  running (``kill_timeouts``), and raises SandboxNotRunningError on a stopped VM;
  ``Sandbox.remove`` raises while the VM runs, or when there is none;
- ``Sandbox.list_with`` filters by labels, as the SDK does;

- the session's user (``user="nobody"``) is a host uid of its own, that owns none of
  the mounted files: virtio-fs shows the guest the host's owner and mode bits, so a
  folder that uid cannot read on the host is unreadable in the guest too;
- its ``rlimits`` (RLIMIT_NPROC) applied, counted for that uid alone as in its own kernel;
- no network namespace of the host's (``Network.none()``);
- ``/tmp`` a tmpfs of the mount's size, mode 1777;
- a memory cgroup of the actor's share of the VM's memory, whose OOM kills are what
  ``cat /proc/vmstat`` reports as ``oom_kill``.

Everything of ``service.sandbox.microvm`` runs unchanged: ``_vm_options``,
``_boot_guest``, ``harness_argv``, ``_Guest`` and the worker.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import itertools
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import microsandbox
import pytest
from microsandbox import ExecEventType, MountConfig, MountKind, Network, RlimitResource, StdinMode

from service.sandbox import microvm
from service.sandbox.process import WorkerCgroups, discover_controllers
from service.settings import Limits

MIB = 1 << 20
# Host uids of the stand-in guests' users: far above any real account, one per guest.
_UIDS = itertools.count(3_900_000_000 + secrets.randbelow(1_000_000) * 64)


def _stub_params(cls: str, method: str) -> set[str]:
    """The keyword names the installed SDK's type stub declares for ``cls.method``."""
    stub = Path(microsandbox.__file__).with_name("_microsandbox.pyi")
    for node in ast.walk(ast.parse(stub.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.AsyncFunctionDef | ast.FunctionDef) and \
                        item.name == method:
                    args = item.args
                    return {a.arg for a in (*args.args, *args.kwonlyargs)} - {"self"}
    raise AssertionError(f"{cls}.{method} is not in the SDK's stub")


@dataclass
class LocalSDK:
    """Records what the backend asks of the SDK; ``guests`` are the sessions it ran."""

    creates: list[dict[str, Any]] = field(default_factory=list)
    execs: list[dict[str, Any]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    sandboxes: dict[str, LocalSandbox | LeftVM] = field(default_factory=dict)
    fail_spawn: tuple[bytes, int] | None = None  # (reason, errno) of a FAILED exec event
    create_delay_s: float = 0
    kill_delay_s: float = 0
    kill_timeouts: int = 0  # kills (of either kind) that wait, then give up, VM running

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        sdk = self

        class Sandbox:
            @staticmethod
            async def create(name: str, **options: Any) -> LocalSandbox:
                # Cancelling the caller does not stop the SDK's native task.
                return await asyncio.shield(sdk.create(name, **options))

            @staticmethod
            async def get(name: str) -> LocalHandle:
                if name not in sdk.sandboxes:
                    raise microsandbox.SandboxNotFoundError(name)
                return LocalHandle(sdk, name)

            @staticmethod
            async def remove(name: str) -> None:
                vm = sdk.sandboxes.get(name)
                if vm is None:
                    raise microsandbox.SandboxNotFoundError(name)
                if not vm.killed:
                    raise microsandbox.SandboxStillRunningError(name)
                sdk.removed.append(name)
                del sdk.sandboxes[name]

            @staticmethod
            async def list_with(*, cursor: str | None = None, limit: int | None = None,
                                labels: dict[str, str] | None = None) -> Any:
                wanted = (labels or {}).items()
                names = [name for name, vm in sdk.sandboxes.items()
                         if wanted <= (vm.options.get("labels") or {}).items()]
                return SimpleNamespace(sandboxes=[LocalHandle(sdk, n) for n in names],
                                       next_cursor=None)

        monkeypatch.setattr(microsandbox, "Sandbox", Sandbox)

    async def create(self, name: str, **options: Any) -> LocalSandbox:
        await asyncio.sleep(self.create_delay_s)
        unknown = set(options) - _stub_params("Sandbox", "create")
        assert not unknown, f"Sandbox.create has no keyword {sorted(unknown)}"
        for mount in options.get("volumes", {}).values():
            assert isinstance(mount, MountConfig)
            mount._to_dict()
        assert isinstance(options["network"], Network)
        options["network"]._to_dict()
        assert isinstance(options["memory"], int) and isinstance(options["cpus"], int)
        self.creates.append({"name": name, **options})
        sandbox = LocalSandbox(self, name, options)
        self.sandboxes[name] = sandbox
        return sandbox

    async def stop(self, vm: LocalSandbox | LeftVM) -> None:
        """A kill as the SDK does it: it takes time, and may give up with the VM running."""
        await asyncio.sleep(self.kill_delay_s)
        if self.kill_timeouts > 0:
            self.kill_timeouts -= 1
            raise microsandbox.SandboxStopTimedOutError(vm.name)
        await vm.halt()

    def leave(self, name: str, labels: dict[str, str]) -> LeftVM:
        """A running VM that another (or an earlier) server left behind."""
        vm = LeftVM(name, {"labels": labels})
        self.sandboxes[name] = vm
        return vm


@dataclass
class LeftVM:
    """A VM booted by someone else: its name, labels, and whether it still runs."""

    name: str
    options: dict[str, Any]
    killed: bool = False

    async def halt(self) -> None:
        self.killed = True


class LocalHandle:
    """What ``Sandbox.get`` returns: a handle by name, whose kill waits for the VM to stop."""

    def __init__(self, sdk: LocalSDK, name: str) -> None:
        self.sdk = sdk
        self.name = name

    async def kill(self, timeout: float | None = None) -> None:
        vm = self.sdk.sandboxes[self.name]
        if vm.killed:
            raise microsandbox.SandboxNotRunningError(self.name)
        await self.sdk.stop(vm)


class LocalSandbox:
    """One stand-in VM: its mounts, memory and network, and the exec sessions run in it."""

    def __init__(self, sdk: LocalSDK, name: str, options: dict[str, Any]) -> None:
        self.sdk = sdk
        self.name = name
        self.options = options
        self.uid = next(_UIDS)
        self.killed = False
        self._oom_kills = 0
        self.session: LocalSession | None = None
        limits = Limits(memory_mb=options["memory"] - microvm.GUEST_OVERHEAD_MB, pids=4096)
        self.cgroups = WorkerCgroups.create(discover_controllers(), limits)

    async def exec_stream(self, cmd: str, args: list[str], **options: Any) -> LocalSession:
        unknown = set(options) - _stub_params("Sandbox", "exec_stream")
        assert not unknown, f"exec_stream has no keyword {sorted(unknown)}"
        assert options["stdin"]._mode == StdinMode.PIPE
        self.sdk.execs.append({"cmd": cmd, "args": args, **options})
        self.session = await LocalSession.start(self, cmd, args, options)
        return self.session

    async def exec(self, cmd: str, args: list[str], **options: Any) -> Any:
        """Only what the backend runs besides the harness: ``cat /proc/vmstat``."""
        assert (cmd, args) == ("cat", ["/proc/vmstat"]), (cmd, args)
        return SimpleNamespace(stdout_text=f"nr_free_pages 1\noom_kill {self.oom_kills()}\n",
                               exit_code=0)

    def oom_kills(self) -> int:
        if not self.killed:
            self._oom_kills = self.cgroups.counters()[0]
        return self._oom_kills

    async def kill(self, timeout: float | None = None) -> None:
        if not self.killed:
            await self.sdk.stop(self)

    async def halt(self) -> None:
        if self.killed:
            return
        self.oom_kills()  # the count stays readable once the VM is gone
        self.killed = True
        if self.session is not None:
            await self.session.kill()
        await self.cgroups.remove()

    def bwrap_options(self) -> list[str]:
        """The VM's filesystem and network as bubblewrap options."""
        options = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
                   "--tmpfs", "/", "--ro-bind", "/usr", "/usr",
                   # The image's /etc, not the host's: what the interpreters need, no more.
                   "--perms", "0755", "--dir", "/etc",
                   "--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache",
                   "--ro-bind-try", "/etc/alternatives", "/etc/alternatives",
                   "--ro-bind-try", "/etc/localtime", "/etc/localtime",
                   "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
                   "--symlink", "usr/lib64", "/lib64", "--proc", "/proc", "--dev", "/dev"]
        if self.options["network"].policy.rules:  # only Network.none() is emulated
            raise AssertionError("the double emulates Network.none() only")
        options.append("--unshare-net")
        for guest_path, mount in self.options["volumes"].items():
            if mount.kind == MountKind.BIND:
                options += ["--ro-bind" if mount.readonly else "--bind", mount.bind, guest_path]
            elif mount.kind == MountKind.TMPFS:
                options += ["--size", str(mount.size_mib * MIB), "--perms", "1777",
                            "--tmpfs", guest_path]
            else:
                raise AssertionError(f"the double has no {mount.kind} mounts")
        return options


class LocalSession:
    """An exec session: SDK-shaped events from the guest command run under bubblewrap."""

    def __init__(self, proc: asyncio.subprocess.Process | None,
                 cgroups: WorkerCgroups | None = None) -> None:
        self.proc = proc
        self.cgroups = cgroups  # the VM's: everything the session started is in them
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self._stdin_taken = False
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def start(cls, vm: LocalSandbox, cmd: str, args: list[str],
                    options: dict[str, Any]) -> LocalSession:
        if vm.sdk.fail_spawn is not None:
            session = cls(None)
            reason, code = vm.sdk.fail_spawn
            session.events.put_nowait(_event(ExecEventType.FAILED, reason, code))
            return session
        assert options["user"] == "nobody"
        nproc = [r.soft for r in options.get("rlimits") or ()
                 if r.resource == RlimitResource.NPROC]
        user = ["/usr/bin/setpriv", f"--reuid={vm.uid}", f"--regid={vm.uid}",
                "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"]
        limit = ["/usr/bin/prlimit", f"--nproc={nproc[0]}:{nproc[0]}"] if nproc else []
        argv = ["bwrap", *vm.bwrap_options(), "--chdir", options["cwd"],
                "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP",
                "--", *limit, *user, "--", cmd, *args]
        procs = vm.cgroups.procs_files

        def enter_cgroup() -> None:
            for path in procs:
                with open(path, "w") as f:
                    f.write(str(os.getpid()))

        proc = await asyncio.create_subprocess_exec(
            *argv, env=dict(options["env"]), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            preexec_fn=enter_cgroup)
        session = cls(proc, vm.cgroups)
        session._tasks = [asyncio.create_task(session._pump())]
        return session

    async def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout and self.proc.stderr

        async def copy(kind: ExecEventType, stream: asyncio.StreamReader) -> None:
            while chunk := await stream.read(4096):
                await self.events.put(_event(kind, chunk))

        await asyncio.gather(copy(ExecEventType.STDOUT, self.proc.stdout),
                             copy(ExecEventType.STDERR, self.proc.stderr))
        code = await self.proc.wait()
        await self.events.put(_event(ExecEventType.EXITED, None, code))

    def take_stdin(self) -> Any:
        if self._stdin_taken:
            return None
        self._stdin_taken = True
        session = self

        class Sink:
            async def write(self, data: bytes) -> None:
                assert session.proc is not None and session.proc.stdin is not None
                session.proc.stdin.write(data)
                await session.proc.stdin.drain()

        return Sink()

    async def recv(self) -> Any:
        return await self.events.get()

    async def kill(self) -> None:
        """End everything the session started, as the guest's end does: bwrap killed right
        after its start may not have tied its sandbox's life to its own yet."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            if self.cgroups is not None:
                self.cgroups.kill_all()
            await self.proc.wait()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _event(kind: ExecEventType, data: bytes | None, code: int | None = None) -> Any:
    """Shaped like the SDK's ExecEvent (its native class cannot be built from Python)."""
    return SimpleNamespace(event_type=kind, pid=None, data=data, code=code)
