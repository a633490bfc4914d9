"""Helpers of the hostile suite: backends by name, settings, and watching the host.

A :class:`SandboxWatch` records, while a case runs, every process this test spawned
(with its pid namespace and its cgroups), so that afterwards the test can prove
nothing of the sandbox is left on the host: no such process alive, no process in any
of those pid namespaces, no such cgroup directory, no new mount.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import re
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.runtime import Runtime
from service.sandbox.base import Backend
from service.settings import SandboxSettings, Settings

HERE = Path(__file__).parent
REPO = HERE.parents[1]
BACKENDS = ("process", "gvisor", "microvm")
CANARY_NAME = "SERVICE_TEST_CANARY"
CGROUP_ROOT = Path("/sys/fs/cgroup")
VARIABLE = re.compile(r"\$[A-Z][A-Z0-9_]*")


def make_backend(name: str, settings: Settings) -> Backend:
    """A fresh backend instance by name."""
    if name == "process":
        from service.sandbox.process import ProcessBackend

        backend: Backend = ProcessBackend(settings)
        return backend
    if name == "gvisor":
        from service.sandbox.gvisor import GVisorBackend

        return GVisorBackend(settings)
    from service.sandbox.microvm import MicroVMBackend

    return MicroVMBackend(settings)


async def probe(name: str, settings: Settings) -> tuple[bool, str]:
    """Whether backend ``name`` can start sandboxes here, and why not."""
    backend = make_backend(name, settings)
    try:
        available = await backend.availability()
    finally:
        await backend.aclose()
    return available.ok, available.reason


def hostile_settings(corpus: Path) -> Settings:
    """Settings of the suite: no default manifests, the corpus as the allowed root, a small /tmp."""
    return Settings(manifest_paths=(), allowed_roots=(corpus,),
                    sandbox=SandboxSettings(tmp_mb=16))


def _read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def _stat_fields(pid: str) -> tuple[int, int]:
    """(ppid, starttime) of a process, from /proc/PID/stat (comm may hold spaces)."""
    rest = _read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    return int(rest[1]), int(rest[19])


def _cgroup_dirs(pid: int | str) -> set[Path]:
    """The v1/v2 cgroup directories a process is in, as host paths."""
    dirs = set()
    for line in _read(f"/proc/{pid}/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        mount = controllers.removeprefix("name=") if controllers else "unified"
        dirs.add(CGROUP_ROOT / mount / path.lstrip("/"))
    return dirs


def _pid_ns(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


def _pipes() -> set[str]:
    """This process's open pipe fds, as "fd -> pipe:[inode]"."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{name}")
            if target.startswith("pipe:"):
                found.add(f"{name} -> {target}")
    return found


def _mounts() -> set[str]:
    return {" ".join(line.split()[3:5]) for line in _read("/proc/self/mountinfo").splitlines()}


@dataclass
class SandboxWatch:
    """Everything this test process spawned while watching, to prove it is all gone after."""

    ignore: set[int] = field(default_factory=set)
    procs: dict[int, int] = field(default_factory=dict)  # pid -> starttime
    namespaces: dict[str, int] = field(default_factory=dict)  # pid ns -> an fd holding it
    cgroups: set[Path] = field(default_factory=set)
    own_ns: str = field(default_factory=lambda: _pid_ns("self"))
    own_cgroups: set[Path] = field(default_factory=lambda: _cgroup_dirs("self"))
    mounts: set[str] = field(default_factory=_mounts)
    pipes: set[str] = field(default_factory=_pipes)  # the channels to sandboxes are pipes

    def scan(self) -> None:
        """Record the descendants of this process alive right now."""
        parents: dict[int, list[tuple[int, int]]] = {}
        for name in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid, start = _stat_fields(name)
                parents.setdefault(ppid, []).append((int(name), start))
        todo = [os.getpid()]
        while todo:
            for child, start in parents.get(todo.pop(), []):
                if child not in self.ignore:
                    self._record(child, start)
                todo.append(child)

    def _record(self, pid: int, start: int) -> None:
        with contextlib.suppress(OSError):
            # holding the namespace open keeps its inode number from being reused by another
            # sandbox, so a process found in it later is one of ours
            fd = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY)
            ns = f"pid:[{os.fstat(fd).st_ino}]"
            if ns == self.own_ns or ns in self.namespaces:
                os.close(fd)
            else:
                self.namespaces[ns] = fd
            # an exiting process shows the root groups: only groups below ours are sandboxes'
            self.cgroups |= {d for d in _cgroup_dirs(pid)
                             if not any(own.is_relative_to(d) for own in self.own_cgroups)}
            self.procs[pid] = start

    async def run(self, interval_s: float = 0.03) -> None:
        while True:
            self.scan()
            await asyncio.sleep(interval_s)

    def alive(self) -> list[str]:
        """Recorded processes still running, and any process in a recorded pid namespace."""
        left = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if self.procs.get(int(pid)) == _stat_fields(pid)[1]:
                    left.append(f"process {pid}: {_read(f'/proc/{pid}/cmdline')!r}")
                elif _pid_ns(pid) in self.namespaces:
                    left.append(f"process {pid} in a sandbox pid namespace")
        return left

    def kill_recorded(self) -> None:
        """SIGKILL the recorded processes still running (the same process: same start time)."""
        for pid, start in self.procs.items():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if _stat_fields(str(pid))[1] == start:
                    os.kill(pid, signal.SIGKILL)

    def release(self) -> None:
        for fd in self.namespaces.values():
            os.close(fd)
        self.namespaces.clear()

    def leftovers(self) -> list[str]:
        """Everything of the watched sandboxes still on the host."""
        left = self.alive()
        left += [f"cgroup {d}" for d in sorted(self.cgroups) if d.exists()]
        left += [f"mount {m}" for m in sorted(_mounts() - self.mounts)]
        left += [f"host fd {p} still open" for p in sorted(_pipes() - self.pipes)]
        return left

    async def wait_gone(self, timeout_s: float = 3.0) -> list[str]:
        """``alive()`` once it is empty or ``timeout_s`` has passed (reaping takes a moment)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (left := self.alive()) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        return left


@contextlib.asynccontextmanager
async def watching(watch: SandboxWatch) -> AsyncIterator[SandboxWatch]:
    """Run ``watch`` in the background for the duration of the block."""
    task = asyncio.create_task(watch.run())
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        watch.scan()


@contextlib.asynccontextmanager
async def running(settings: Settings, backend: Backend, manifests: list[Path],
                  watch: SandboxWatch) -> AsyncIterator[Runtime]:
    """A started Runtime, watched; closed on exit, then checked for leftovers."""
    runtime = Runtime(settings, backend)
    try:
        async with watching(watch):
            try:
                await runtime.start(manifests)
                yield runtime
            finally:
                await runtime.aclose()
    finally:
        await watch.wait_gone()
        left = watch.leftovers()
        if left:
            watch.kill_recorded()  # fail, but leave the machine clean for the next case
        watch.release()
        # an unclosed transport warns when collected: here, in the case that leaked it
        gc.collect()
    assert left == [], f"sandbox leftovers on the host: {left}"


# --- what the cases need from the host ----------------------------------------------------


def sha256_of(path: str | Path) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return "unreadable-on-the-host"


@dataclass
class Listener:
    """Host listeners (TCP on 127.0.0.1, an abstract unix socket) counting who reaches them."""

    port: int = 0
    abstract: str = ""  # the abstract socket's name, without its leading NUL
    connections: int = 0


Substitute = Callable[[Any], Any]


def substituter(variables: dict[str, Any]) -> Substitute:
    """Fill in ``$NAME`` recursively: a whole-string ``$NAME`` keeps the value's type,
    ``$SHA256:<path>`` is that host file's sha256, and ``$NAME`` inside a string is text."""

    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            return {fill(k): fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        if not isinstance(value, str):
            return value
        if value.startswith("$SHA256:"):
            return sha256_of(fill(value.removeprefix("$SHA256:")))
        if VARIABLE.fullmatch(value):
            return variables[value[1:]]
        return VARIABLE.sub(lambda m: str(variables[m.group()[1:]]), value)

    return fill
