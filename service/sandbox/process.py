"""Process backend: every worker is a bubblewrap sandbox whose limits the kernel enforces.

What a sandbox sees (nothing else of the host):

    /usr, /bin, /lib*, ...      read-only: what the interpreters need
    /etc/ld.so.cache, ...       read-only; resolv.conf, hosts, ssl only with limits.network
    /actor                      the actor's folder (``ActorDef.root``), read-only
    /harness/harness.{py,js}    read-only
    /deps or /node_modules      the actor's built dependency set, read-only (if it has one)
    /tmp                        private tmpfs of ``settings.sandbox.tmp_mb``, wiped after each call
    /proc, /dev                 its own (new pid namespace); / and /dev are read-only

Every namespace is new (the network too, unless ``limits.network``), the user is
65534 inside, all capabilities are dropped and the environment is rebuilt from scratch.
When the actor's folder is world-readable, bubblewrap itself runs as host uid 65534, so
the sandbox is nobody on the host as well; otherwise (e.g. under a 0700 directory) it
runs as root and maps 65534 onto it, still without any capability.

Limits: memory, pids and CPU through a cgroup per worker (v1, or v2 when its controllers
are delegated to us), created and limited before the sandbox starts; RLIMIT_AS and
RLIMIT_NPROC when a controller is not available. Disk: the tmpfs size and RLIMIT_FSIZE.
Wall clock and output bytes: counted here, per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import resource
import secrets
import shutil
import signal
import stat
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import (
    ActorFailed,
    ResourceLimitExceeded,
    SandboxUnavailable,
    TimeLimitExceeded,
)
from service.manifest.model import ActorDef
from service.sandbox.base import (
    Availability,
    CallOutcome,
    CallRequest,
    EventSink,
    LogEvent,
    OutputBudget,
    OutputEvent,
    call_line,
    decode_line,
    dependency_mount,
    harness_failure,
    harness_path_flags,
    state_reply,
)
from service.sandbox.seccomp import DENIED, denylist_program
from service.settings import Limits, Settings

logger = logging.getLogger(__name__)

BACKEND = "process"
HARNESS_DIR = Path(__file__).resolve().parent / "harness"
ACTOR_DIR = "/actor"
SANDBOX_UID = 65534
BWRAP_PROCESSES = 1  # the outer bwrap counts against pids.max too
MIB = 1 << 20
CPU_PERIOD_US = 100_000
BOOT_TIMEOUT_S = 15.0
OUTER_EXIT_GRACE_S = 1.0  # after the outer bwrap ends during a boot, for the harness's last words
FENCE_GRACE_S = 1.0  # after a result: how long to wait for the real stdout/stderr to drain
KILL_WAIT_S = 3.0
CHUNK = 1 << 16
STDERR_TAIL = 4096
QUEUE_MAX = 256  # events in flight from a sandbox; past it the sandbox waits
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}
SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives")
NETWORK_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf",
                 "/etc/ssl", "/etc/ca-certificates")
CONTROLLERS = ("memory", "pids", "cpu")
NODE_HEAP_OOM = re.compile(r"heap out of memory|Reached heap limit")


# --- cgroups -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Controller:
    """A cgroup controller we may create worker groups in, below our own group."""

    name: str  # memory | pids | cpu
    parent: Path
    version: int  # 1 or 2

    @property
    def mechanism(self) -> str:
        return f"cgroup-v{self.version}"


def discover_controllers() -> dict[str, Controller]:
    """Writable cgroup controllers of this process (a v1 hierarchy wins over v2)."""
    own_v1, own_v2 = own_cgroups(_read(Path("/proc/self/cgroup")))
    found: dict[str, Controller] = {}
    for fstype, root, mountpoint, options in cgroup_mounts(_read(Path("/proc/self/mountinfo"))):
        for name in CONTROLLERS:
            if name in found:
                continue
            if fstype == "cgroup" and name in options and name in own_v1:
                parent = mountpoint / _relative(own_v1[name], root)
                candidate = Controller(name, parent, 1)
            elif fstype == "cgroup2" and own_v2 is not None:
                parent = mountpoint / _relative(own_v2, root)
                if name not in _read(parent / "cgroup.subtree_control").split():
                    continue
                candidate = Controller(name, parent, 2)
            else:
                continue
            if _probe(candidate):
                found[name] = candidate
    return found


def sweep_stale_groups(controllers: dict[str, Controller]) -> int:
    """Remove the empty worker groups of servers that died without closing them."""
    removed = 0
    for controller in controllers.values():
        for path in controller.parent.glob("sandbox-*-*"):
            creator = path.name.split("-")[1]
            if not creator.isdigit() or Path(f"/proc/{creator}").exists():
                continue  # its server still runs (or the pid was reused: leave it)
            with contextlib.suppress(OSError):
                path.rmdir()  # fails while a process is still inside
                removed += 1
    return removed


def own_cgroups(proc_cgroup: str) -> tuple[dict[str, str], str | None]:
    """Our cgroup path per v1 controller, and our v2 path, from /proc/self/cgroup."""
    v1: dict[str, str] = {}
    v2 = None
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers:
            v1.update((c, path) for c in controllers.split(","))
        else:
            v2 = path
    return v1, v2


def cgroup_mounts(mountinfo: str) -> list[tuple[str, str, Path, set[str]]]:
    """(fstype, root, mount point, super options) of every cgroup mount in a mountinfo."""
    mounts = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            mounts.append((tail[0], fields[3], Path(fields[4]), set(tail[2].split(","))))
    return mounts


def _relative(path: str, root: str) -> str:
    if root != "/" and path.startswith(root):
        path = path[len(root):]
    return path.lstrip("/")


def _probe(controller: Controller) -> bool:
    """Can we really make a child group there (root, not read-only, not a foreign group)?"""
    probe = controller.parent / f"sandbox-probe-{secrets.token_hex(4)}"
    try:
        probe.mkdir()
    except OSError:
        return False
    with contextlib.suppress(OSError):
        probe.rmdir()
    return True


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, value: object) -> None:
    path.write_text(str(value))


def _counter(fd: int | None, key: str) -> int:
    """``key N`` from an open flat-keyed cgroup file such as memory.events or pids.events
    (read again from offset 0: the kernel renders it afresh on every read)."""
    if fd is None:
        return 0
    try:
        text = os.pread(fd, 4096, 0).decode("ascii", "replace")
    except OSError:
        return 0
    for line in text.splitlines():
        name, _, number = line.partition(" ")
        if name == key and number.strip().isdigit():
            return int(number)
    return 0


def _open_counter(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _limit_memory(path: Path, version: int, limits: Limits) -> None:
    size = limits.memory_mb * MIB
    if version == 1:
        _write(path / "memory.limit_in_bytes", size)
        swap = path / "memory.memsw.limit_in_bytes"  # memory + swap: no escape into swap
    else:
        _write(path / "memory.max", size)
        swap, size = path / "memory.swap.max", 0
    if swap.exists():
        _write(swap, size)


def _limit_pids(path: Path, version: int, limits: Limits) -> None:
    _write(path / "pids.max", limits.pids + BWRAP_PROCESSES)


def _limit_cpu(path: Path, version: int, limits: Limits) -> None:
    quota = max(1000, int(limits.cpus * CPU_PERIOD_US))
    if version == 1:
        _write(path / "cpu.cfs_period_us", CPU_PERIOD_US)
        _write(path / "cpu.cfs_quota_us", quota)
    else:
        _write(path / "cpu.max", f"{quota} {CPU_PERIOD_US}")


_LIMITERS: dict[str, Callable[[Path, int, Limits], None]] = {
    "memory": _limit_memory, "pids": _limit_pids, "cpu": _limit_cpu}


class WorkerCgroups:
    """One worker's cgroups: made and limited before the sandbox starts, removed at close."""

    def __init__(self, groups: dict[str, tuple[Controller, Path]]) -> None:
        self._groups = groups
        # Kept open and re-read with pread: reopening them took most of a counters() call.
        self._oom_fd: int | None = None
        self._pids_fd: int | None = None

    @classmethod
    def create(cls, controllers: dict[str, Controller], limits: Limits) -> WorkerCgroups:
        name = f"sandbox-{os.getpid()}-{secrets.token_hex(6)}"
        cgroups = cls({})
        try:
            for controller in controllers.values():
                path = controller.parent / name
                path.mkdir()
                cgroups._groups[controller.name] = (controller, path)
                _LIMITERS[controller.name](path, controller.version, limits)
        except OSError as exc:
            cgroups._rmdir_all()
            raise SandboxUnavailable(BACKEND, f"cannot set up cgroup {name}: {exc}") from exc
        cgroups._open_counters()
        return cgroups

    def _open_counters(self) -> None:
        if "memory" in self._groups:
            controller, path = self._groups["memory"]
            events = "memory.oom_control" if controller.version == 1 else "memory.events"
            self._oom_fd = _open_counter(path / events)
        if "pids" in self._groups:
            self._pids_fd = _open_counter(self._groups["pids"][1] / "pids.events")

    def _close_counters(self) -> None:
        for fd in (self._oom_fd, self._pids_fd):
            if fd is not None:
                os.close(fd)
        self._oom_fd = self._pids_fd = None

    @property
    def dirs(self) -> tuple[Path, ...]:
        return tuple(path for _, path in self._groups.values())

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(str(path / "cgroup.procs") for path in self.dirs)

    def has(self, name: str) -> bool:
        return name in self._groups

    def counters(self) -> tuple[int, int]:
        """(OOM kills, refused forks) so far; compared before and after a call."""
        return _counter(self._oom_fd, "oom_kill"), _counter(self._pids_fd, "max")

    def members(self) -> set[int]:
        """Host pids of every process in the worker's groups."""
        return {int(pid) for _, path in self._groups.values()
                for pid in _read(path / "cgroup.procs").split() if pid.isdigit()}

    def kill_all(self, spare: int | None = None) -> None:
        """SIGKILL every process in the worker's groups but ``spare``."""
        if spare is None:
            for controller, path in self._groups.values():
                if controller.version == 2 and (path / "cgroup.kill").exists():
                    with contextlib.suppress(OSError):
                        _write(path / "cgroup.kill", 1)
        for pid in self.members() - {spare}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def remove(self) -> None:
        """Kill what is left and remove the groups (retrying while the kernel empties them)."""
        self._close_counters()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KILL_WAIT_S
        while self._groups:
            self.kill_all()
            self._rmdir_all()
            if not self._groups or loop.time() > deadline:
                break
            await asyncio.sleep(0.02)
        if self._groups:
            logger.warning("cgroups left behind: %s", ", ".join(map(str, self.dirs)))

    def _rmdir_all(self) -> None:
        for name, (_, path) in list(self._groups.items()):
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                continue
            del self._groups[name]


# --- the sandbox command -----------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How to start one actor's sandbox."""

    options: list[str]  # bwrap options, passed on a pipe (--args) so /proc/1/cmdline stays short
    command: list[str]  # what runs inside
    host_uid: int | None  # the uid bubblewrap runs as; None: stay root (mapped to 65534)
    rlimits: tuple[tuple[int, int], ...]


def make_plan(actor: ActorDef, settings: Settings, mechanisms: dict[str, str],
              channel_fds: tuple[int, int]) -> Plan:
    """The bwrap options, command, host uid and rlimits of a sandbox for ``actor``."""
    root = actor.root
    try:
        script = Path(ACTOR_DIR, actor.script.relative_to(root)).as_posix()
    except ValueError:
        raise SandboxUnavailable(BACKEND, f"script {actor.script} is outside {root}") from None
    harness = HARNESS_DIR / ("harness.py" if actor.language == "python" else "harness.js")
    inside = f"/harness/{harness.name}"
    interpreter = settings.sandbox.python if actor.language == "python" else settings.sandbox.node
    options = _namespace_options(actor.limits.network) + _filesystem_options(
        interpreter, actor.limits.network, settings.sandbox.tmp_mb)
    options += ["--ro-bind", str(root), ACTOR_DIR, "--ro-bind", str(harness), inside]
    deps = dependency_mount(actor, BACKEND)
    if deps is not None:
        options += ["--ro-bind", str(deps[0]), deps[1]]
    options += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", ACTOR_DIR]
    command = [interpreter, *_interpreter_flags(actor), inside, *map(str, channel_fds),
               script, actor.entrypoint, "--own-pidns", "--self-reset",
               *harness_path_flags(actor)]
    host_paths = (root, actor.script, harness) + ((deps[0],) if deps else ())
    reachable = all(_world_readable(p) for p in host_paths)
    return Plan(options, command, SANDBOX_UID if reachable else None,
                _rlimits(actor, settings, mechanisms))


def _namespace_options(network: bool) -> list[str]:
    # --as-pid-1: the harness is the namespace's init, reaped by the outer bwrap itself. With
    # bwrap's own init in between, the outer one may exit first and orphan it: a zombie on
    # hosts whose pid 1 does not reap. The harness reaps strays on reset.
    options = ["--unshare-all", "--unshare-user", "--disable-userns", "--as-pid-1",
               "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--uid", str(SANDBOX_UID),
               "--gid", str(SANDBOX_UID), "--hostname", "sandbox", "--clearenv"]
    if network:
        options.insert(1, "--share-net")
    for key, value in SANDBOX_ENV.items():
        options += ["--setenv", key, value]
    return options


def _filesystem_options(interpreter: str, network: bool, tmp_mb: int) -> list[str]:
    options = ["--ro-bind", "/usr", "/usr"]
    for name in SYSTEM_DIRS:
        path = Path("/", name)
        if path.is_symlink():
            options += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            options += ["--ro-bind", str(path), str(path)]
    prefix = Path(interpreter).resolve().parents[1]
    if not prefix.is_relative_to("/usr") and prefix != Path("/"):
        options += ["--ro-bind", str(prefix), str(prefix)]  # e.g. /opt/node
    for file in SYSTEM_FILES + (NETWORK_FILES if network else ()):
        options += ["--ro-bind-try", file, file]
    options += ["--proc", "/proc", "--dev", "/dev"]
    return [*options, "--perms", "1777", "--size", str(tmp_mb * MIB), "--tmpfs", "/tmp"]


def _interpreter_flags(actor: ActorDef) -> list[str]:
    if actor.language == "python":
        return ["-I", "-B", "-u"]  # isolated: no PYTHON* variables, no user site, no cwd on path
    heap_mb = max(16, actor.limits.memory_mb * 3 // 4)  # V8 fails cleanly before the cgroup
    return [f"--max-old-space-size={heap_mb}"]


def _rlimits(actor: ActorDef, settings: Settings,
             mechanisms: dict[str, str]) -> tuple[tuple[int, int], ...]:
    limits = [(resource.RLIMIT_CORE, 0), (resource.RLIMIT_FSIZE, settings.sandbox.tmp_mb * MIB)]
    # node reserves far more address space than it uses, so RLIMIT_AS would kill it at boot
    if mechanisms["memory"] == "rlimit" and actor.language == "python":
        limits.append((resource.RLIMIT_AS, actor.limits.memory_mb * MIB))
    if mechanisms["pids"] == "rlimit":
        limits.append((resource.RLIMIT_NPROC, actor.limits.pids + BWRAP_PROCESSES))
    return tuple(limits)


def _world_readable(path: Path) -> bool:
    """Could uid 65534 reach ``path``: o+x on every directory above, o+r on it?"""
    try:
        mode = path.stat().st_mode
        if not mode & stat.S_IROTH or (stat.S_ISDIR(mode) and not mode & stat.S_IXOTH):
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in path.parents)
    except OSError:
        return False


def _preexec(procs_files: tuple[str, ...], rlimits: tuple[tuple[int, int], ...],
             uid: int | None) -> Callable[[], None]:
    """Runs in the child between fork and exec: only os-level calls (no locks, no imports).

    Order matters: the cgroups while still root, then the uid, then the rlimits with
    RLIMIT_AS last, since this child is still a copy of the (large) server until exec.
    """
    pairs = tuple((which, (value, value)) for which, value in _clamped(rlimits))

    def enter() -> None:
        pid = str(os.getpid()).encode()
        for name in procs_files:  # in the cgroups before bwrap runs: nothing escapes them
            fd = os.open(name, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        for which, pair in pairs:
            resource.setrlimit(which, pair)

    return enter


def _clamped(rlimits: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """Never above the current hard limits (a non-root child cannot raise them); AS last."""
    clamped = []
    for which, value in rlimits:
        hard = resource.getrlimit(which)[1]
        clamped.append((which, value if hard == resource.RLIM_INFINITY else min(value, hard)))
    return sorted(clamped, key=lambda pair: pair[0] == resource.RLIMIT_AS)


# --- the worker --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """Something that came out of the sandbox: a message, a raw line, a fence, an end."""

    kind: str  # message | line | fence | closed | garbage | overflow | eof
    stream: str = ""
    value: Any = None
    size: int = 0  # bytes it took on the wire from the sandbox


class _BootCrash(ActorFailed):
    """The sandbox ended (killed, or crashed) before its harness said ``ready``."""


class ProcessWorker:
    """One bubblewrap sandbox running one actor's harness; calls run one at a time."""

    def __init__(self, actor: ActorDef, tmp_mb: int, process: asyncio.subprocess.Process,
                 cgroups: WorkerCgroups, to_harness: asyncio.WriteTransport,
                 from_harness: asyncio.StreamReader) -> None:
        self.actor = actor
        self._tmp_mb = tmp_mb
        self._process = process
        self._cgroups = cgroups
        self._to_harness = to_harness
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(QUEUE_MAX)
        self._stderr_tail: deque[str] = deque(maxlen=64)
        self._fence = ""  # the current call's end-of-output marker on the real stdout/stderr
        self._closed_streams: set[str] = set()
        self._dead = False
        self._closed = False
        self._busy = False
        self._lingering = False  # the last result said threads or timers still run
        self._request: CallRequest | None = None  # the call running, for its state operations
        self._pidfd = _pidfd(process.pid)
        self.on_closed: Callable[[ProcessWorker], None] = lambda worker: None
        assert process.stdout is not None and process.stderr is not None
        self._readers = [
            asyncio.create_task(self._read_channel(from_harness)),
            asyncio.create_task(self._read_stream(process.stdout, "stdout")),
            asyncio.create_task(self._read_stream(process.stderr, "stderr")),
        ]

    @property
    def alive(self) -> bool:
        return not self._dead and self._process.returncode is None

    @property
    def pid(self) -> int:
        """The host pid of the sandbox's outer bwrap process."""
        return self._process.pid

    @property
    def cgroup_dirs(self) -> tuple[Path, ...]:
        return self._cgroups.dirs

    async def wait_ready(self) -> None:
        """Wait for the harness's first ``ready``: SandboxUnavailable when it never comes or the
        script cannot load; ActorFailed (SandboxCrashed) when the sandbox dies while booting."""
        try:
            async with asyncio.timeout(BOOT_TIMEOUT_S):
                await self._ready_or_outer_exit()
        except TimeoutError:
            raise SandboxUnavailable(
                BACKEND, f"sandbox not ready after {BOOT_TIMEOUT_S:g} s") from None
        except ActorFailed as exc:
            if self._cgroups.counters()[0]:
                raise ResourceLimitExceeded("memory", self.actor.limits.memory_mb) from None
            if isinstance(exc, _BootCrash):
                raise
            raise SandboxUnavailable(BACKEND, f"sandbox did not start: {exc.data['message']}") \
                from None

    async def _ready_or_outer_exit(self) -> None:
        """Wait for ``ready`` while watching the outer bwrap: killed from outside during the
        boot, it can leave the inner one holding the channel open, so no EOF would ever come.
        A sandbox killed while booting is killed whole (its cgroups) and answers like a crash
        of a running one; one that ended by itself did not start (its stderr says why)."""
        ready = asyncio.ensure_future(self._until_ready())
        outer = asyncio.ensure_future(self._outer_exit())
        try:
            await asyncio.wait({ready, outer}, return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():  # a harness that failed to load says why just before it ends
                await asyncio.wait({ready}, timeout=OUTER_EXIT_GRACE_S)
            if not outer.done():  # and a sandbox that ends by itself is gone soon after
                await asyncio.wait({outer}, timeout=OUTER_EXIT_GRACE_S)
            status = await self._exit_status() if outer.done() else None
        finally:
            for task in (ready, outer):
                task.cancel()
        if ready.done() and not ready.cancelled() and not isinstance(ready.exception(),
                                                                       _BootCrash):
            return ready.result()  # ready, or the harness's own error about the script
        self._kill()
        await self._exited(OUTER_EXIT_GRACE_S)
        tail = "".join(self._stderr_tail)[-STDERR_TAIL:]
        # Killed by a signal, from outside (we had sent none): the outer bwrap itself (status
        # < 0), or the sandbox inside it, whose death bwrap passes on as 128 + the signal.
        if status is not None and (status < 0 or status > 128):
            raise _BootCrash("SandboxCrashed", f"the sandbox exited (status {status}) while "
                             "starting", tail)
        raise ActorFailed("SandboxCrashed", tail.strip() or f"status {status}")

    async def _exit_status(self) -> int | None:
        """The outer bwrap's status once asyncio has reaped it (it has exited)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(OUTER_EXIT_GRACE_S):
                while self._process.returncode is None:
                    await asyncio.sleep(0.005)
        return self._process.returncode

    async def call(self, request: CallRequest, on_event: EventSink) -> CallOutcome:
        """Run one call; any failure kills the sandbox (see base.Worker)."""
        if not self.alive:
            raise ActorFailed("SandboxCrashed", "the sandbox is no longer running")
        if self._busy:
            raise RuntimeError("a worker runs one call at a time")
        self._busy = True
        self._discard_pending()
        limit_s = self.actor.limits.timeout_s
        baseline = self._cgroups.counters()
        try:
            async with asyncio.timeout(limit_s):
                outcome = await self._run(request, on_event, baseline)
        except TimeoutError:
            self._kill()
            # A script that swallows the refused fork (or survives an OOM kill of one of its
            # processes) runs into the time limit: the limit it hit is the real cause.
            raise self._breach(baseline) or TimeLimitExceeded(limit_s) from None
        except BaseException:  # an RpcError, the sink's error, or cancellation
            self._kill()
            raise
        finally:
            self._busy = False
            self._fence = ""
        if self._lingering:
            # Its threads or timers would run on between calls, with no time limit: end them
            # now; the pool replaces a worker that is not alive.
            logger.info("%s: the call left threads or timers running; worker not reused",
                        self.actor.id)
            self._kill()
        return outcome

    async def reset(self) -> None:
        """Nothing to wait for: the harness kills stray processes and wipes /tmp by itself
        right after each result, before it reads the next call (a round trip saved)."""
        if not self.alive:
            raise ActorFailed("SandboxCrashed", "the sandbox is no longer running")

    async def close(self) -> None:
        """Kill the sandbox, reap it, remove its cgroups; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._kill()
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(_Item("eof"))  # wakes a call waiting on this worker
        if not await self._exited(KILL_WAIT_S):
            self._kill_outer()
            await self._exited(KILL_WAIT_S)
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._to_harness.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        await self._cgroups.remove()
        self.on_closed(self)

    # --- a call --------------------------------------------------------------------------

    async def _run(self, request: CallRequest, on_event: EventSink,
                   baseline: tuple[int, int]) -> CallOutcome:
        self._fence = secrets.token_hex(12)
        self._request = request  # its state operations are answered while it runs
        self._to_harness.write(call_line(request, self._fence))
        budget = OutputBudget(self.actor.limits.output_bytes)
        outcome: CallOutcome | None = None
        unfenced = {"stdout", "stderr"}
        grace_end: float | None = None
        # After the result, keep forwarding raw stdout/stderr lines until both fences (which
        # the harness wrote before its result) came through, or a short grace period passed.
        while outcome is None or unfenced - self._closed_streams:
            item = await self._next(grace_end)
            if self._closed:
                raise ActorFailed("SandboxCrashed", "the worker was closed during the call")
            if item is None:
                break
            if item.kind == "fence":
                if item.value == self._fence:
                    unfenced.discard(item.stream)
                continue
            result = await self._handle(item, on_event, budget, baseline)
            if result is not None:
                outcome = result
                grace_end = asyncio.get_running_loop().time() + FENCE_GRACE_S
        assert outcome is not None
        return outcome

    async def _next(self, deadline: float | None) -> _Item | None:
        """The next item from the sandbox; None once ``deadline`` (loop time) has passed."""
        if deadline is None:
            return await self._queue.get()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                return await self._queue.get()
        return None

    async def _handle(self, item: _Item, on_event: EventSink, budget: OutputBudget,
                      baseline: tuple[int, int]) -> CallOutcome | None:
        if item.kind == "line":
            budget.spend(len(item.value.encode("utf-8")) + 1)
            await on_event(LogEvent(item.stream, item.value))
        elif item.kind == "message":
            return await self._message(item, on_event, budget, baseline)
        elif item.kind == "overflow":
            raise ResourceLimitExceeded("output", self.actor.limits.output_bytes)
        elif item.kind == "garbage":
            raise ActorFailed("ProtocolError", f"the harness sent garbage: {item.value!r}")
        elif item.kind == "eof":
            raise await self._died(baseline)
        elif item.kind == "closed":
            self._closed_streams.add(item.stream)
        return None

    async def _message(self, item: _Item, on_event: EventSink, budget: OutputBudget,
                       baseline: tuple[int, int]) -> CallOutcome | None:
        # An output or log costs its whole protocol line, envelope included: a flood of
        # tiny values then breaches the limit as fast as a flood of big ones.
        message = item.value
        kind = message.get("type")
        if kind == "output" and isinstance(message.get("port"), str):
            budget.spend(item.size)
            await on_event(OutputEvent(message["port"], message.get("data")))
        elif kind == "log" and isinstance(message.get("message"), str):
            stream = "stderr" if message.get("stream") == "stderr" else "stdout"
            budget.spend(item.size)
            await on_event(LogEvent(stream, message["message"]))
        elif kind == "result" and isinstance(message.get("state"), dict):
            budget.spend(item.size)  # the return value and the state: both go back
            self._lingering = message.get("lingering") is True
            return CallOutcome(message.get("return"), message["state"])
        elif kind == "error":
            raise self._failure(message, baseline)
        elif kind == "state" and self._request is not None:
            self._to_harness.write(await state_reply(message, self._request))
        else:
            raise ActorFailed("ProtocolError", f"unexpected message from the harness: {kind!r}")
        return None

    def _breach(self, baseline: tuple[int, int]) -> ResourceLimitExceeded | None:
        """The memory or pids limit the cgroups saw breached since ``baseline``, if any."""
        oom, refused = (now - before for now, before in
                        zip(self._cgroups.counters(), baseline, strict=True))
        if oom:
            return ResourceLimitExceeded("memory", self.actor.limits.memory_mb)
        if refused:
            return ResourceLimitExceeded("pids", self.actor.limits.pids)
        return None

    def _failure(self, message: dict[str, Any], baseline: tuple[int, int]) -> Exception:
        """The error to raise for an ``error`` message, a breached limit first."""
        hint = message.get("resource")
        limits = self.actor.limits
        if hint == "memory":
            return ResourceLimitExceeded("memory", limits.memory_mb)
        if breach := self._breach(baseline):
            return breach
        if hint == "pids" and not self._cgroups.has("pids"):
            return ResourceLimitExceeded("pids", limits.pids)
        if hint == "disk":
            return ResourceLimitExceeded("disk", self._tmp_mb)
        return harness_failure(message)

    async def _died(self, baseline: tuple[int, int]) -> Exception:
        """The error for a sandbox that ended in the middle of a call."""
        await self._exited(1.0)
        await self._drain_streams(1.0)  # its last words on stderr may say why (node's heap)
        code = self._process.returncode
        tail = "".join(self._stderr_tail)
        if NODE_HEAP_OOM.search(tail):
            return ResourceLimitExceeded("memory", self.actor.limits.memory_mb)
        if breach := self._breach(baseline):
            return breach
        if code in (128 + signal.SIGXFSZ, -signal.SIGXFSZ):
            return ResourceLimitExceeded("disk", self._tmp_mb)
        return ActorFailed("SandboxCrashed", f"the sandbox exited (status {code}) during the call",
                           tail[-STDERR_TAIL:])

    # --- plumbing ------------------------------------------------------------------------

    async def _exited(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the outer bwrap to end; whether it did."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._process.wait()
        return self._process.returncode is not None

    async def _outer_exit(self) -> None:
        """Return when the outer bwrap has exited. Not Process.wait(): that also waits for
        stdout and stderr to close, and the inner sandbox holds them open."""
        if self._pidfd is None:
            while self._outer_running():
                await asyncio.sleep(0.1)
            return
        pidfd, loop = self._pidfd, asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, readable)
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)

    async def _drain_streams(self, timeout_s: float) -> None:
        """Consume queued items until stdout and stderr are closed (their lines are dropped)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while {"stdout", "stderr"} - self._closed_streams:
                    item = await self._queue.get()
                    if item.kind == "closed":
                        self._closed_streams.add(item.stream)

    async def _until_ready(self) -> None:
        while True:
            item = await self._queue.get()
            if self._closed:
                raise ActorFailed("SandboxCrashed", "the worker was closed")
            if item.kind == "message" and item.value.get("type") == "ready":
                return
            if item.kind == "message" and item.value.get("type") == "error":
                raise ActorFailed(str(item.value.get("error_type")), str(item.value.get("message")),
                                  str(item.value.get("traceback") or ""))
            if item.kind in ("eof", "garbage", "overflow"):
                raise _BootCrash("SandboxCrashed", "the sandbox ended while starting")

    def _discard_pending(self) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item.kind == "closed":
                self._closed_streams.add(item.stream)
            elif item.kind == "eof":
                self._queue.put_nowait(item)  # keep it: the call must see the sandbox is gone
                return

    def _kill(self) -> None:
        """SIGKILL the sandbox from the inside: the harness is its pid namespace's init, so
        everything in it dies with it, and the outer bwrap reaps it and exits by itself.
        Killing the outer one first would orphan the harness (a zombie where pid 1 does not
        reap)."""
        self._dead = True
        inner = self._cgroups.members() - {self._process.pid}
        if not inner and self._outer_running():  # no cgroups: bwrap's child is the harness
            inner = _children(self._process.pid)
        if not inner:
            self._kill_outer()
        self._cgroups.kill_all(spare=self._process.pid)
        for pid in inner:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _outer_running(self) -> bool:
        """Is the outer bwrap still ours (not reaped, so its pid cannot name another process)?"""
        if self._pidfd is None:
            return self._process.returncode is None
        try:
            signal.pidfd_send_signal(self._pidfd, 0)
        except ProcessLookupError:
            return False
        return True

    def _kill_outer(self) -> None:
        """SIGKILL the outer bwrap. Not Process.kill(): it polls, reaping behind asyncio's back."""
        with contextlib.suppress(ProcessLookupError):
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            elif self._process.returncode is None:
                os.kill(self._process.pid, signal.SIGKILL)

    async def _read_channel(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # a line over the reader's limit
                await self._queue.put(_Item("overflow"))
                return
            if not line.endswith(b"\n"):
                await self._queue.put(_Item("eof"))
                return
            try:
                message = decode_line(line)
            except ValueError:
                message = None
            if isinstance(message, dict):
                await self._queue.put(_Item("message", value=message, size=len(line)))
            else:
                await self._queue.put(_Item("garbage", value=line[:200].decode("utf-8", "replace")))

    async def _read_stream(self, reader: asyncio.StreamReader, stream: str) -> None:
        pending = b""
        while chunk := await reader.read(CHUNK):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if len(pending) > CHUNK:
                lines.append(pending)
                pending = b""
            for line in lines:
                await self._stream_line(stream, line.decode("utf-8", "replace"))
        if pending:
            await self._stream_line(stream, pending.decode("utf-8", "replace"))
        await self._queue.put(_Item("closed", stream))

    async def _stream_line(self, stream: str, text: str) -> None:
        fence = self._fence
        if fence and text.endswith(fence):
            if text[: -len(fence)]:
                await self._queue.put(_Item("line", stream, text[: -len(fence)]))
            await self._queue.put(_Item("fence", stream, fence))
            return
        if stream == "stderr":
            self._stderr_tail.append(text + "\n")
        if self._busy:
            await self._queue.put(_Item("line", stream, text))
        else:
            logger.debug("%s: %s between calls: %s", self.actor.id, stream, text[:200])


def _children(pid: int) -> set[int]:
    """The children of ``pid`` (for a sandbox without cgroups: bwrap's init)."""
    text = _read(Path(f"/proc/{pid}/task/{pid}/children"))
    return {int(child) for child in text.split()}


def _pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``: signals through it never reach a recycled pid."""
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


# --- the backend -------------------------------------------------------------------------


class ProcessBackend:
    """Boots bubblewrap sandboxes on this machine (see the module docstring)."""

    name = BACKEND

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._bwrap = shutil.which("bwrap") or "/usr/bin/bwrap"
        self._controllers: dict[str, Controller] | None = None
        self._workers: set[ProcessWorker] = set()  # open ones, closed at aclose() at the latest
        self._seccomp = denylist_program()  # BPF for `bwrap --seccomp`, None without libseccomp

    @property
    def controllers(self) -> dict[str, Controller]:
        """The cgroup controllers workers get (discovered once)."""
        if self._controllers is None:
            self._controllers = discover_controllers()
            logger.info("process sandbox limits: %s", self.mechanisms())
            if swept := sweep_stale_groups(self._controllers):
                logger.info("removed %s cgroups left by servers that died", swept)
        return self._controllers

    def mechanisms(self) -> dict[str, str]:
        """How each limit is enforced: cgroup-v1, cgroup-v2 or rlimit."""
        found = self.controllers
        return {name: found[name].mechanism if name in found else "rlimit"
                for name in CONTROLLERS}

    async def availability(self) -> Availability:
        details: dict[str, Any] = {"bwrap": await _version(self._bwrap, "--version"),
                                   **self.mechanisms(), "disk": "tmpfs+RLIMIT_FSIZE",
                                   "python": await _version(self.settings.sandbox.python,
                                                            "--version"),
                                   "node": await _version(self.settings.sandbox.node, "--version")}
        if details["cpu"] == "rlimit":
            details["cpu"] = "none"  # no rlimit caps a CPU share
        details["seccomp"] = "none" if self._seccomp is None else f"denylist of {len(DENIED)}"
        if details["bwrap"] is None:
            return Availability(BACKEND, False, f"bubblewrap not found ({self._bwrap})", details)
        problem = await self._trial()
        return Availability(BACKEND, problem is None, problem or "", details)

    async def _trial(self) -> str | None:
        """Start a trivial sandbox for real; None when it worked, else why not."""
        options = _namespace_options(False) + _filesystem_options(
            self.settings.sandbox.python, False, 1) + ["--remount-ro", "/"]
        command = [self.settings.sandbox.python, "-I", "-S", "-c", "print('ok')"]
        try:
            process = await asyncio.create_subprocess_exec(
                self._bwrap, *options, *command, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={"PATH": "/usr/bin:/bin"})
            async with asyncio.timeout(BOOT_TIMEOUT_S):
                out, err = await process.communicate()
        except (OSError, TimeoutError) as exc:
            return f"cannot run bubblewrap: {exc}"
        if process.returncode != 0 or out.strip() != b"ok":
            return f"trial sandbox failed: {err.decode('utf-8', 'replace').strip()[:500]}"
        return None

    async def start_worker(self, actor: ActorDef) -> ProcessWorker:
        """Boot a sandbox for ``actor`` and wait for its harness; SandboxUnavailable if not."""
        cgroups = WorkerCgroups.create(self.controllers, actor.limits)
        # Shielded: cancelling asyncio's subprocess creation midway can hang for ever (its
        # transport then waits for pipes that were never connected).
        spawning = asyncio.ensure_future(self._spawn(actor, cgroups))
        try:
            worker = await asyncio.shield(spawning)
        except asyncio.CancelledError:
            await _abandon(spawning, cgroups)
            raise
        except BaseException:
            await cgroups.remove()
            raise
        self._workers.add(worker)
        worker.on_closed = self._workers.discard
        try:
            await worker.wait_ready()
        except BaseException:
            await worker.close()
            raise
        return worker

    async def _spawn(self, actor: ActorDef, cgroups: WorkerCgroups) -> ProcessWorker:
        loop = asyncio.get_running_loop()
        call_r, call_w = os.pipe()  # host -> harness
        event_r, event_w = os.pipe()  # harness -> host
        plan = make_plan(actor, self.settings, self.mechanisms(), (call_r, event_w))
        options = plan.options
        seccomp_r = None
        if self._seccomp is not None:
            seccomp_r = _data_pipe(self._seccomp)
            options = [*options, "--seccomp", str(seccomp_r)]
        args_r = _args_pipe(options)
        inherited = (args_r, call_r, event_w) + ((seccomp_r,) if seccomp_r is not None else ())
        try:
            # bwrap's own environment shows in the sandbox's /proc/1/environ: give it nothing
            process = await asyncio.create_subprocess_exec(
                self._bwrap, "--args", str(args_r), *plan.command,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, pass_fds=inherited,
                preexec_fn=_preexec(cgroups.procs_files, plan.rlimits, plan.host_uid),
                start_new_session=True, env={"PATH": "/usr/bin:/bin"})
        except Exception as exc:  # OSError, or SubprocessError from the preexec function
            for fd in (call_w, event_r):
                os.close(fd)
            raise SandboxUnavailable(BACKEND, f"cannot start bubblewrap: {exc}") from exc
        finally:
            for fd in inherited:
                os.close(fd)
        if plan.host_uid is None:
            logger.info("%s: %s is not world-readable; sandbox runs as root mapped to %s",
                        actor.id, actor.root, SANDBOX_UID)
        limit = actor.limits.output_bytes + self.settings.max_message_bytes + CHUNK
        reader = asyncio.StreamReader(limit=limit)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     os.fdopen(event_r, "rb", buffering=0))
        writer, _ = await loop.connect_write_pipe(asyncio.Protocol,
                                                  os.fdopen(call_w, "wb", buffering=0))
        return ProcessWorker(actor, self.settings.sandbox.tmp_mb, process, cgroups,
                             writer, reader)

    async def aclose(self) -> None:
        """Close any worker its pool left open (none, when every pool was closed)."""
        await asyncio.gather(*(w.close() for w in list(self._workers)), return_exceptions=True)


async def _abandon(spawning: asyncio.Future[ProcessWorker], cgroups: WorkerCgroups) -> None:
    """Let a spawn that was cancelled finish, then close what it made."""
    try:
        worker = await spawning
    except Exception:
        await cgroups.remove()
    else:
        await worker.close()


def _args_pipe(options: list[str]) -> int:
    """A pipe holding bwrap's options, NUL-separated, read end returned (write end closed)."""
    return _data_pipe(b"".join(option.encode() + b"\0" for option in options))


def _data_pipe(data: bytes) -> int:
    """A pipe holding ``data``, read end returned (write end closed)."""
    if len(data) > 60_000:  # must fit the pipe buffer: nobody reads it before bwrap starts
        raise SandboxUnavailable(BACKEND, "sandbox options too long")
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)
    finally:
        os.close(write_fd)
    return read_fd


async def _version(program: str, flag: str) -> str | None:
    """``program flag``'s output (e.g. "bubblewrap 0.8.0" -> "0.8.0"), None if it cannot run."""
    try:
        process = await asyncio.create_subprocess_exec(
            program, flag, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await process.communicate()
    except OSError:
        return None
    if process.returncode != 0:
        return None
    words = out.decode("utf-8", "replace").split()
    return words[-1] if words else ""
