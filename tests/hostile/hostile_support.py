"""Helpers of the hostile suite: backends by name, settings, and watching the host.

A :class:`SandboxWatch` records, while a case runs, every process this test spawned
(with its pid namespace and its cgroups), so that afterwards the test can prove
nothing of the sandbox is left on the host: no such process alive, no process in any
of those pid namespaces, no such cgroup directory, no new mount. For every sandbox
process (bubblewrap, or anything in another pid namespace) it also records the host uid
it runs as and its RLIMIT_NOFILE, read from /proc on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import re
import signal
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.manifest.model import ActorDef
from service.manifest.verdicts import VERDICTS
from service.runtime import Runtime
from service.sandbox.base import Backend, Worker
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


def _cgroup_dirs(pid: int | str, text: str | None = None) -> set[Path]:
    """The v1/v2 cgroup directories a process is in, as host paths (``text``: its
    /proc/PID/cgroup, when already read)."""
    dirs = set()
    for line in (_read(f"/proc/{pid}/cgroup") if text is None else text).splitlines():
        _, controllers, path = line.split(":", 2)
        mount = controllers.removeprefix("name=") if controllers else "unified"
        dirs.add(CGROUP_ROOT / mount / path.lstrip("/"))
    return dirs


def _status_uid(pid: int | str) -> int:
    """The real host uid of a process, from /proc/PID/status."""
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise OSError(f"no Uid line for {pid}")


def _nofile(pid: int | str) -> tuple[str, str]:
    """(soft, hard) RLIMIT_NOFILE of a process, from /proc/PID/limits."""
    for line in _read(f"/proc/{pid}/limits").splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise OSError(f"no open files limit for {pid}")


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
    # (pid, starttime) of each sandbox process -> (host uid, RLIMIT_NOFILE soft and hard)
    sandboxed: dict[tuple[int, int], tuple[int, tuple[str, str]]] = field(default_factory=dict)
    # A scan runs every 30 ms on the loop of the server under test: per (pid, starttime), the
    # pid namespace is read once, and /proc/PID/cgroup turned into groups when it changed.
    _namespace_of: dict[tuple[int, int], str] = field(default_factory=dict)
    _cgroup_texts: dict[tuple[int, int], str] = field(default_factory=dict)

    def scan(self) -> None:
        """Record the descendants of this process alive right now."""
        parents: dict[int, list[tuple[int, int]]] = {}
        for name in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid, start = _stat_fields(name)
                parents.setdefault(ppid, []).append((int(name), start))
        todo = [os.getpid()]
        verdicts = VERDICTS.pids  # the server's own processes, outlive the case
        while todo:
            for child, start in parents.get(todo.pop(), []):
                if child in verdicts:
                    continue
                if child not in self.ignore:
                    self._record(child, start)
                todo.append(child)

    def _record(self, pid: int, start: int) -> None:
        key = (pid, start)
        with contextlib.suppress(OSError):
            ns = self._namespace_of.get(key) or self._hold_namespace(key)
            # A process may move to another group (a sandbox is put in its own after it
            # starts). An exiting process shows the root groups: only groups below ours are
            # sandboxes'.
            text = _read(f"/proc/{pid}/cgroup")
            if self._cgroup_texts.get(key) != text:
                self._cgroup_texts[key] = text
                self.cgroups |= {d for d in _cgroup_dirs(pid, text)
                                 if not any(own.is_relative_to(d) for own in self.own_cgroups)}
            self.procs[pid] = start
            if key not in self.sandboxed and (
                    ns != self.own_ns or _read(f"/proc/{pid}/comm").strip() == "bwrap"):
                self.sandboxed[key] = (_status_uid(pid), _nofile(pid))

    def _hold_namespace(self, key: tuple[int, int]) -> str:
        """The pid namespace of a process first seen (fixed for its lifetime), held open:
        its inode number cannot be reused by another sandbox, so a process found in it
        later is one of ours."""
        fd = os.open(f"/proc/{key[0]}/ns/pid", os.O_RDONLY)
        ns = f"pid:[{os.fstat(fd).st_ino}]"
        if ns == self.own_ns or ns in self.namespaces:
            os.close(fd)
        else:
            self.namespaces[ns] = fd
        self._namespace_of[key] = ns
        return ns

    async def run(self, interval_s: float = 0.03) -> None:
        while True:
            self.scan()
            await asyncio.sleep(interval_s)

    def _running(self) -> list[int]:
        """The recorded processes still running (the same process: same start time)."""
        running = []
        for pid, start in self.procs.items():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if _stat_fields(str(pid))[1] == start:
                    running.append(pid)
        return running

    def live_namespaces(self) -> set[str]:
        """The pid namespaces of the recorded processes still running: one per live sandbox
        (its pid namespace is its identity, from the host: a replaced worker has a new one)."""
        found = set()
        for pid in self._running():
            with contextlib.suppress(OSError):
                if (ns := _pid_ns(pid)) != self.own_ns:
                    found.add(ns)
        return found

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
        """SIGKILL the recorded processes still running."""
        for pid in self._running():
            with contextlib.suppress(OSError):
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
    gc.freeze()  # the collection at the end looks at this case's objects only (~60 ms less)
    start_worker = backend.start_worker

    async def start_seen(actor: ActorDef) -> Worker:
        """Scans sample every 30 ms, and a sandbox that serves one call and is replaced may
        live less than that on a busy host: each is also seen once its call has begun (in
        the loop's next turn: a scan right here, tens of ms on a busy host, delayed the
        call's claim of a fresh worker, and a script spinning since its load was then
        over its idle allowance)."""
        worker = await start_worker(actor)
        asyncio.get_running_loop().call_soon(watch.scan)
        return worker

    backend.start_worker = start_seen  # type: ignore[method-assign]
    try:
        async with watching(watch):
            runtime = Runtime(settings, backend)
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
        gc.unfreeze()
    assert left == [], f"sandbox leftovers on the host: {left}"
    if backend.name == "process":
        assert_unprivileged(watch, settings)


def assert_unprivileged(watch: SandboxWatch, settings: Settings) -> None:
    """Every sandbox process ran as a host uid of the sandbox range (never root), and
    with the sandbox's own RLIMIT_NOFILE, not the server's."""
    sandbox = settings.sandbox
    uids = {uid for uid, _ in watch.sandboxed.values()}
    assert all(sandbox.uid_base <= uid < sandbox.uid_base + sandbox.uid_count
               for uid in uids), f"sandbox processes ran as host uids {sorted(uids)}"
    limits = {nofile for _, nofile in watch.sandboxed.values()}
    assert limits <= {(str(sandbox.nofile), str(sandbox.nofile))}, limits


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


# --- measured from the host while a case runs ---------------------------------------------


def _written(pid: int) -> int:
    """Bytes a process has written so far (any fd), from /proc/PID/io."""
    for line in _read(f"/proc/{pid}/io").splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def process_counters(watch: SandboxWatch) -> dict[tuple[int, int], tuple[int, int]]:
    """(CPU clock ticks of all threads, bytes written) of each sandbox process alive now."""
    counters = {}
    for pid, start in list(watch.sandboxed):
        with contextlib.suppress(OSError, ValueError, IndexError):
            rest = _read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
            if int(rest[19]) == start:
                counters[(pid, start)] = (int(rest[11]) + int(rest[12]), _written(pid))
    return counters


@dataclass
class IdleUse:
    """What the sandbox processes did during one idle window, seen from the host."""

    cpu_ms: float
    written_mb: float


async def idle_use(watch: SandboxWatch, seconds: float, sample_s: float = 0.05) -> IdleUse:
    """Wait ``seconds`` with no call running; the CPU and the bytes written by sandbox
    processes meanwhile, sampled from /proc (a process that dies keeps its last sample)."""
    loop = asyncio.get_running_loop()
    first: dict[tuple[int, int], tuple[int, int]] = {}
    last: dict[tuple[int, int], tuple[int, int]] = {}
    deadline = loop.time() + seconds
    while True:
        for key, counters in process_counters(watch).items():
            first.setdefault(key, counters)
            last[key] = counters
        if loop.time() >= deadline:
            break
        await asyncio.sleep(sample_s)
    ticks = sum(last[key][0] - first[key][0] for key in last)
    written = sum(last[key][1] - first[key][1] for key in last)
    return IdleUse(ticks * 1000 / os.sysconf("SC_CLK_TCK"), written / (1 << 20))


def rss_mb() -> float:
    """This process's resident memory: the server runs in it."""
    for line in _read("/proc/self/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def host_tcp_mem_mb() -> float:
    """The kernel's TCP buffer memory, every network namespace together (/proc/net/sockstat
    counts pages of one global pool): what a sandbox's unread connections hold on the host."""
    for line in _read("/proc/net/sockstat").splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return 0.0


def inotify_fds(pids: Iterable[int]) -> int:
    """inotify instances the given host processes hold, read from /proc/PID/fd."""
    count = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
    return count


def host_state(paths: list[str]) -> dict[str, Any]:
    """Owner, mode and (for small files) content of host paths, to compare before/after."""
    state: dict[str, Any] = {}
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            state[path] = None
            continue
        content = ""
        if path.startswith("/proc/"):
            with contextlib.suppress(OSError):
                content = _read(path)
        state[path] = (info.st_uid, info.st_gid, oct(info.st_mode), content)
    return state


def nobody_gets_inotify() -> bool:
    """Can a host process of uid 65534 (nobody) still create an inotify instance?"""
    import subprocess

    probe = ("import ctypes, os; fd = ctypes.CDLL(None).inotify_init1(0); "
             "print('ok' if fd >= 0 else 'refused')")
    result = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534",
                             "--clear-groups", "/usr/bin/python3", "-I", "-c", probe],
                            capture_output=True, text=True, timeout=30, check=False)
    return result.stdout.strip() == "ok"


def wire_bytes(notes: list[tuple[str, dict[str, Any]]]) -> int:
    """The bytes the notifications take on a WebSocket, encoded as the server does."""
    import json

    return sum(len(json.dumps({"jsonrpc": "2.0", "method": method,
                               "params": {"request_id": 1, **params}},
                              separators=(",", ":")))
               for method, params in notes)
