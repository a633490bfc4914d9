"""Process backend: every worker is a bubblewrap sandbox whose limits the kernel enforces.

What a sandbox sees (nothing else of the host):

    /usr, /bin, /lib*, ...      read-only: what the interpreters need
    /etc/ld.so.cache, ...       read-only; resolv.conf, hosts, ssl only with limits.network
    /actor                      the actor's folder (``ActorDef.root``), read-only
    /harness/harness.{py,js}    read-only
    /deps or /node_modules      the actor's built dependency set, read-only (if it has one)
    /tmp                        private tmpfs of ``settings.sandbox.tmp_mb``, wiped after each call
    /proc, /dev                 its own (new pid namespace); / and /dev are read-only,
                                /proc/sys (and sysrq-trigger, irq, bus) read-only; no
                                pseudo-terminals (/dev/pts is empty)

Every namespace is new (the network too, unless ``limits.network``), the user is
65534 inside, all capabilities are dropped and the environment is rebuilt from scratch.
On the host, bubblewrap runs as an unprivileged uid of its own (``uids.py``: one per
live sandbox, from ``sandbox.uid_base``), never as root: the actor's folder and the
harness are mounted as they are when any uid can read them, else from copies staged
where that uid can (``staging.py``), whatever the permissions of the originals.

Between calls the host, not the harness, decides whether a worker may serve again: after
the harness's own reset it checks that no process but the harness is left and /tmp is
empty, and while the worker is idle that it uses no CPU, starts no task and writes no byte
(cgroup counters and the pipes, read here). Any of it kills the worker; so does being
idle longer than ``sandbox.idle_lifetime_s``.

Limits: memory, pids and CPU through a cgroup per worker (v1, or v2 when its controllers
are delegated to us), created and limited before the sandbox starts; RLIMIT_AS and
RLIMIT_NPROC when a controller is not available. Disk: the tmpfs size and RLIMIT_FSIZE.
Wall clock and output bytes: counted here, per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import resource
import secrets
import shutil
import signal
import struct
import termios
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.errors import (
    ActorFailed,
    ResourceLimitExceeded,
    SandboxUnavailable,
    TimeLimitExceeded,
)
from service.eventloop import Turns
from service.heap import HEAP
from service.manifest.model import ActorDef
from service.sandbox.base import (
    CHUNK,
    Availability,
    CallOutcome,
    CallRequest,
    EventSink,
    LineSplitter,
    LogEvent,
    NestedTooDeeply,
    OutputBudget,
    OutputEvent,
    StateRequests,
    call_line_in_turn,
    decode_line,
    dependency_mount,
    encode_line,
    harness_failure,
    harness_path_flags,
    log_size,
    notification_size,
    to_the_end,
)
from service.sandbox.compiled import CompiledHarness
from service.sandbox.seccomp import DENIED, denylist_program
from service.sandbox.staging import Stager
from service.sandbox.uids import UidPool
from service.settings import Limits, Settings, StateSettings

logger = logging.getLogger(__name__)

BACKEND = "process"
HARNESS_DIR = Path(__file__).resolve().parent / "harness"
ACTOR_DIR = "/actor"
SANDBOX_UID = 65534
BWRAP_PROCESSES = 1  # the outer bwrap counts against pids.max too
MIB = 1 << 20
CPU_PERIOD_US = 100_000
# A sandbox's weight where the CPUs are short, against 1024 for the server (a task of the
# default weight): eight busy sandboxes weigh as much as the server together.
SANDBOX_CPU_SHARES = 128
BOOT_TIMEOUT_S = 15.0  # until the harness says it is loading the script (see wait_ready)
BOOT_ERROR_CHARS = 1000  # of a harness's error before its ready, in SandboxUnavailable's reason
# Admission (a blocking read of bwrap's info, then the move into the cgroups) has threads of
# its own: on the loop's default executor, other work that blocks (reading manifests,
# validation in the past) could make every boot wait for BOOT_TIMEOUT_S and fail.
_ADMISSION_THREADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="admission")
OUTER_EXIT_GRACE_S = 1.0  # after the outer bwrap ends during a boot, for the harness's last words
KILL_WAIT_S = 3.0
STDERR_TAIL = 4096
# Read ahead from one sandbox, and written to it unread: past either the pipes out of the
# sandbox are not read, and it waits on its own writes.
BUFFER_BYTES = 1 << 20
ITEM_OVERHEAD = 256  # what one queued item costs beyond its bytes
IDLE_CHECK_S = 0.1  # how often an idle worker's counters are read (two preads)
IDLE_CPU_NS = 50_000_000  # CPU an idle worker may use in all (V8 finishing its GC work)
STAMP_SETTLE_NS = 50_000_000  # older than a jiffy of any kernel (HZ >= 100): see settled_stamp
RESET_TIMEOUT_S = 5.0  # for the harness's "ready" after its own reset
TOO_DEEP = "the sandbox sent a value nested more than 1024 levels deep: too deep to read"
RESET_CPU_NS = 250_000_000  # CPU that reset may take (killing strays, wiping a full /tmp)
EXIT_WAIT_S = 0.2  # for what the harness just SIGKILLed to leave (node does not wait for it)
BOOTING, BUSY, RESETTING, IDLE, CLAIMED = "booting", "busy", "resetting", "idle", "claimed"
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
ACCOUNTING = ("cpuacct",)  # v1 only: read, never limited (v2 has cpu.stat in every group)
PROC_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus")
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
        for name in CONTROLLERS + ACCOUNTING:
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


def _number(fd: int) -> int | None:
    """The single number of an open cgroup file such as pids.current or cpuacct.usage."""
    try:
        text = os.pread(fd, 64, 0).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _open_counter(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _limit_memory(path: Path, version: int, limits: Limits) -> None:
    size = limits.memory_mb * MIB
    if version == 1:
        _write(path / "memory.limit_in_bytes", size)
        # v1 charges socket buffers to a group only once its TCP limit is set (v2 always,
        # within memory.max): without it, unread loopback connections held host memory
        # many times memory_mb. Kept apart from memory.limit_in_bytes, so as large again.
        tcp = path / "memory.kmem.tcp.limit_in_bytes"
        if tcp.exists():
            _write(tcp, size)
        swap = path / "memory.memsw.limit_in_bytes"  # memory + swap: no escape into swap
    else:
        _write(path / "memory.max", size)
        swap, size = path / "memory.swap.max", 0
    if swap.exists():
        _write(swap, size)


def _limit_pids(path: Path, version: int, limits: Limits) -> None:
    _write(path / "pids.max", limits.pids + BWRAP_PROCESSES)


def _limit_cpu(path: Path, version: int, limits: Limits) -> None:
    """At most ``cpus`` CPUs; and, where the CPUs are short, a share below the server's
    own (SANDBOX_CPU_SHARES): eight gVisor sandboxes booting at once, each weighing as
    much as the server, kept it from answering for 100-130 ms."""
    quota = max(1000, int(limits.cpus * CPU_PERIOD_US))
    if version == 1:
        _write(path / "cpu.cfs_period_us", CPU_PERIOD_US)
        _write(path / "cpu.cfs_quota_us", quota)
        _write(path / "cpu.shares", SANDBOX_CPU_SHARES)
    else:
        _write(path / "cpu.max", f"{quota} {CPU_PERIOD_US}")
        _write(path / "cpu.weight", max(1, SANDBOX_CPU_SHARES * 100 // 1024))


def _limit_nothing(path: Path, version: int, limits: Limits) -> None:
    """cpuacct: only read."""


_LIMITERS: dict[str, Callable[[Path, int, Limits], None]] = {
    "memory": _limit_memory, "pids": _limit_pids, "cpu": _limit_cpu, "cpuacct": _limit_nothing}


class WorkerCgroups:
    """One worker's cgroups: made and limited before the sandbox starts, removed at close."""

    def __init__(self, groups: dict[str, tuple[Controller, Path]]) -> None:
        self._groups = groups
        # Kept open and re-read with pread: reopening them took most of a counters() call.
        self._oom_fd: int | None = None
        self._pids_fd: int | None = None
        self._usage_fd: int | None = None  # cpuacct.usage (ns) or v2 cpu.stat (usage_usec)
        self._tasks_fd: int | None = None  # pids.current: threads and processes
        self._procs_fd: int | None = None  # cgroup.procs of one group (each holds them all)

    @classmethod
    def create(cls, controllers: dict[str, Controller], limits: Limits) -> WorkerCgroups:
        name = f"sandbox-{os.getpid()}-{secrets.token_hex(6)}"
        cgroups = cls({})
        try:
            for controller in controllers.values():
                path = controller.parent / name
                if path not in cgroups.dirs:  # v2, or co-mounted v1: one folder for several
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
            self._tasks_fd = _open_counter(self._groups["pids"][1] / "pids.current")
        if "cpuacct" in self._groups:
            self._usage_fd = _open_counter(self._groups["cpuacct"][1] / "cpuacct.usage")
        else:
            v2 = [path for c, path in self._groups.values() if c.version == 2]
            self._usage_fd = _open_counter(v2[0] / "cpu.stat") if v2 else None
        for _, path in self._groups.values():
            self._procs_fd = _open_counter(path / "cgroup.procs")
            break

    def _close_counters(self) -> None:
        for fd in (self._oom_fd, self._pids_fd, self._usage_fd, self._tasks_fd, self._procs_fd):
            if fd is not None:
                os.close(fd)
        self._oom_fd = self._pids_fd = self._usage_fd = self._tasks_fd = self._procs_fd = None

    def cpu_ns(self) -> int | None:
        """CPU time the worker's processes used so far, in ns; None when no group counts it."""
        if self._usage_fd is None:
            return None
        if "cpuacct" in self._groups:
            return _number(self._usage_fd)
        usage = _counter(self._usage_fd, "usage_usec")
        return usage * 1000

    def tasks(self) -> int | None:
        """Threads and processes in the worker now; None without a pids group."""
        return None if self._tasks_fd is None else _number(self._tasks_fd)

    @property
    def dirs(self) -> tuple[Path, ...]:
        return tuple(dict.fromkeys(path for _, path in self._groups.values()))

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(str(path / "cgroup.procs") for path in self.dirs)

    def has(self, name: str) -> bool:
        return name in self._groups

    def counters(self) -> tuple[int, int]:
        """(OOM kills, refused forks) so far; compared before and after a call."""
        return _counter(self._oom_fd, "oom_kill"), _counter(self._pids_fd, "max")

    def enter(self, pid: int) -> None:
        """Move process ``pid`` into every group (OSError if the kernel refuses). The first
        move in a while waits for an RCU grace period (cgroup v1's threadgroup lock): ~10 ms."""
        for name in self.procs_files:
            fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, str(pid).encode())
            finally:
                os.close(fd)

    def members(self) -> set[int]:
        """Host pids of every process in the worker's groups."""
        return {int(pid) for _, path in self._groups.values()
                for pid in _read(path / "cgroup.procs").split() if pid.isdigit()}

    def processes(self) -> set[int]:
        """Host pids in the worker's groups, read from one of them (each holds them all)."""
        if self._procs_fd is None:
            return set()
        text = b""
        try:
            while len(chunk := os.pread(self._procs_fd, CHUNK, len(text))) == CHUNK:
                text += chunk  # (a sandbox holds at most limits_max.pids processes)
            text += chunk
        except OSError:
            return set()
        return {int(pid) for pid in text.split() if pid.isdigit()}

    def kill_all(self, spare: int | None = None, members: set[int] | None = None) -> None:
        """SIGKILL every process in the worker's groups but ``spare`` (``members``: read by
        the caller just now; each read of every group's list is a few ms on the loop)."""
        if spare is None:
            for controller, path in self._groups.values():
                if controller.version == 2 and (path / "cgroup.kill").exists():
                    with contextlib.suppress(OSError):
                        _write(path / "cgroup.kill", 1)
        for pid in (self.members() if members is None else members) - {spare}:
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
    host_uid: int | None  # the uid bubblewrap runs as; None: the server's own (never root)
    rlimits: tuple[tuple[int, int], ...]


def harness_path(actor: ActorDef) -> Path:
    """The harness of ``actor``'s language, on the host."""
    return HARNESS_DIR / ("harness.py" if actor.language == "python" else "harness.js")


def make_plan(actor: ActorDef, settings: Settings, mechanisms: dict[str, str],
              channel_fds: tuple[int, int], *, host_uid: int | None = None,
              root: Path | None = None, harness: Path | None = None,
              deps_root: Path | None = None, harness_dir: Path | None = None) -> Plan:
    """The bwrap options, command, host uid and rlimits of a sandbox for ``actor``.

    ``root``, ``harness`` and ``deps_root`` are where the actor's folder, the harness and
    its built dependencies are mounted from (by default the originals; the backend passes
    copies its sandbox uid can read when it cannot read those), and
    ``host_uid`` the unprivileged uid bubblewrap runs as (by default 65534 when the server
    is root, else the server's own uid: a sandbox never runs as host root). ``harness_dir``,
    for Python: a folder mounted at /harness instead, whose harness.py starts the harness
    from its compiled module (``compiled.py``).
    """
    command = harness_command(actor, settings, channel_fds, BACKEND)
    root = root or actor.root
    harness = harness or harness_path(actor)
    inside = f"/harness/{harness_path(actor).name}"
    interpreter = command[0]  # its own files are mounted too
    options = _namespace_options(actor.limits.network) + _filesystem_options(
        interpreter, actor.limits.network, settings.sandbox.tmp_mb)
    options += ["--ro-bind", str(root), ACTOR_DIR]
    if harness_dir is not None and actor.language == "python":
        options += ["--ro-bind", str(harness_dir), "/harness"]
    else:
        options += ["--ro-bind", str(harness), inside]
    deps = dependency_mount(actor, BACKEND)
    if deps is not None:
        options += ["--ro-bind", str(deps_root or deps[0]), deps[1]]
    options += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", ACTOR_DIR]
    if host_uid is None and os.geteuid() == 0:
        host_uid = SANDBOX_UID
    return Plan(options, command, host_uid, _rlimits(actor, settings, mechanisms))


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
    options += ["--proc", "/proc"]
    for knobs in PROC_READ_ONLY:  # global kernel knobs: no write even where a check passes
        options += ["--ro-bind-try", knobs, knobs]
    # /dev's nodes stay their own mounts: bwrap's read-only remount would add nodev (and
    # break /dev/null). No sandbox uid owns them, so none can chmod or chown them.
    # No pseudo-terminals: every devpts instance draws from one host-wide pool
    # (kernel.pty.max), which a single sandbox could exhaust; /dev/ptmx leads nowhere.
    options += ["--dev", "/dev", "--perms", "0555", "--size", "4096", "--tmpfs", "/dev/pts",
                "--remount-ro", "/dev/pts"]
    return [*options, "--perms", "1777", "--size", str(tmp_mb * MIB), "--tmpfs", "/tmp"]


def harness_command(actor: ActorDef, settings: Settings, channel_fds: Sequence[int | str],
                    backend: str) -> list[str]:
    """The harness's command in the sandbox (this backend's and gVisor's): the actor's
    folder at ACTOR_DIR, the harness at /harness; it kills the script's leftovers in its
    own pid namespace and resets itself after each call."""
    try:
        script = Path(ACTOR_DIR, actor.script.relative_to(actor.root)).as_posix()
    except ValueError:
        raise SandboxUnavailable(
            backend, f"script {actor.script} is outside {actor.root}") from None
    interpreter = settings.sandbox.python if actor.language == "python" else settings.sandbox.node
    return [interpreter, *_interpreter_flags(actor), f"/harness/{harness_path(actor).name}",
            *map(str, channel_fds), script, actor.entrypoint, "--own-pidns", "--self-reset",
            *harness_path_flags(actor)]


def _interpreter_flags(actor: ActorDef) -> list[str]:
    if actor.language == "python":
        return ["-I", "-B", "-u"]  # isolated: no PYTHON* variables, no user site, no cwd on path
    heap_mb = max(16, actor.limits.memory_mb * 3 // 4)  # V8 fails cleanly before the cgroup
    return [f"--max-old-space-size={heap_mb}"]


def _rlimits(actor: ActorDef, settings: Settings,
             mechanisms: dict[str, str]) -> tuple[tuple[int, int], ...]:
    limits = [(resource.RLIMIT_CORE, 0), (resource.RLIMIT_FSIZE, settings.sandbox.tmp_mb * MIB),
              (resource.RLIMIT_NOFILE, settings.sandbox.nofile)]  # never the server's
    # node reserves far more address space than it uses, so RLIMIT_AS would kill it at boot
    if mechanisms["memory"] == "rlimit" and actor.language == "python":
        limits.append((resource.RLIMIT_AS, actor.limits.memory_mb * MIB))
    if mechanisms["pids"] == "rlimit":
        limits.append((resource.RLIMIT_NPROC, actor.limits.pids + BWRAP_PROCESSES))
    return tuple(limits)


class _Admission:
    """Puts a starting sandbox into its cgroups and rlimits before anything of it runs.

    bwrap starts as the sandbox's host uid (set by the fork, in C: no Python runs in the
    child) with its rlimits (set by ``prlimit``, which then runs it), outside the cgroups.
    Its sandbox process sets up the namespaces and mounts, then waits on ``--block-fd``
    before it loads the seccomp filter and runs the interpreter; meanwhile the host moves
    bwrap and (named on ``--info-fd``) that process into the worker's cgroups, and only
    then unblocks it. The actor's code therefore never runs outside the limits, as when the
    forked child joined them itself; but the cgroup move, which waits for an RCU grace
    period on cgroup v1 (~10 ms), now overlaps bwrap's own set-up instead of preceding it.
    What bwrap itself allocates before the move stays charged to the server's groups.
    """

    def __init__(self, info_fd: int, block_fd: int) -> None:
        self.info_fd = info_fd  # read end: bwrap's JSON with "child-pid"
        self.block_fd = block_fd  # write end: one byte lets the sandbox go on

    def run(self, outer: int, cgroups: WorkerCgroups) -> str | None:
        """Admit the sandbox of outer bwrap ``outer`` (blocking: run it in a thread); None
        when it may go on, else why not (it then stays blocked: kill it)."""
        try:
            cgroups.enter(outer)  # bwrap's clone may be under way: the child is moved below
            child = _child_pid(_read_info(self.info_fd))
            if child is None or _parent_of(child) != outer:
                return "bubblewrap did not report its sandbox process"
            cgroups.enter(child)
            # Still bwrap's child after the moves, so the pid named no other process meanwhile.
            if _parent_of(child) != outer:
                return "the sandbox process ended while starting"
            os.write(self.block_fd, b"\n")
        except OSError as exc:
            return f"cannot limit the sandbox: {exc}"
        finally:
            self.close()
        return None

    def close(self) -> None:
        for fd in (self.info_fd, self.block_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.info_fd = self.block_fd = -1


def _read_info(fd: int) -> bytes:
    """bwrap's --info-fd JSON: until it parses (a bwrap whose sandbox process kept the fd
    until its exec would never give EOF before we unblock it), EOF, or 64 KiB."""
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
        if len(data) > 65536 or _child_pid(data) is not None:
            break
    return data


def _child_pid(info: bytes) -> int | None:
    """The "child-pid" of bwrap's --info-fd JSON, if any."""
    try:
        pid = json.loads(info).get("child-pid")
    except (ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None


def _parent_of(pid: int) -> int | None:
    """The parent pid of ``pid`` (from /proc/PID/stat), None when it is gone."""
    text = _read(Path(f"/proc/{pid}/stat"))
    fields = text[text.rfind(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None


_PRLIMIT_OPTIONS = {resource.RLIMIT_AS: "--as", resource.RLIMIT_CORE: "--core",
                    resource.RLIMIT_FSIZE: "--fsize", resource.RLIMIT_NOFILE: "--nofile",
                    resource.RLIMIT_NPROC: "--nproc"}


def _prlimit_command(prlimit: str, rlimits: tuple[tuple[int, int], ...]) -> list[str]:
    """util-linux ``prlimit`` setting ``rlimits`` (soft and hard) on itself, then running
    what follows it: no Python code between fork and exec (setrlimit from outside, with
    prlimit(2), would need CAP_SYS_RESOURCE, which containers often drop)."""
    return [prlimit, *(f"{_PRLIMIT_OPTIONS[which]}={value}:{value}"
                       for which, value in _clamped(rlimits))]


def _launcher(prlimit: str | None, setpriv: str | None, rlimits: tuple[tuple[int, int], ...],
              uid: int | None) -> tuple[list[str], dict[str, Any]]:
    """What runs before bwrap, and the options of the fork, to start it as ``uid`` (None:
    the server's own) with ``rlimits``. With util-linux ``prlimit`` and ``setpriv`` (which
    drops to the uid: setgroups, setresgid, setresuid, every capability gone) the server
    forks with vfork: no copy of its page tables (~10 ms for a server of 70 MB) and no
    Python in the child. Without setpriv the fork sets the uid (in C, a full fork); without
    prlimit too, a preexec_fn sets the rlimits."""
    as_user: dict[str, Any] = ({} if uid is None
                               else {"user": uid, "group": uid, "extra_groups": []})
    if prlimit is None:
        return [], {**as_user, "preexec_fn": _rlimits_preexec(rlimits)}
    command = _prlimit_command(prlimit, rlimits)
    if uid is None:
        return command, {}
    if setpriv is None:
        return command, as_user
    return [*command, setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"], {}


def _rlimits_preexec(rlimits: tuple[tuple[int, int], ...]) -> Callable[[], None]:
    """Without a prlimit program: the rlimits set between fork and exec (only os-level
    calls there, RLIMIT_AS last: the child is still a copy of the large server)."""
    pairs = tuple((which, (value, value)) for which, value in _clamped(rlimits))

    def enter() -> None:
        for which, pair in pairs:
            resource.setrlimit(which, pair)

    return enter


def _clamped(rlimits: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """Never above the current hard limits (a non-root server cannot raise them); AS last."""
    clamped = []
    for which, value in rlimits:
        hard = resource.getrlimit(which)[1]
        clamped.append((which, value if hard == resource.RLIM_INFINITY else min(value, hard)))
    return sorted(clamped, key=lambda pair: pair[0] == resource.RLIMIT_AS)


# --- the worker --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """Something that came out of the sandbox: a message, a raw line, a fence, an end."""

    kind: str  # message | line | closed | garbage | overflow | refused | eof
    stream: str = ""
    value: Any = None
    size: int = 0  # bytes it took on the wire from the sandbox


class _BootCrash(ActorFailed):
    """The sandbox ended (killed, or crashed) before its harness said ``ready``."""


def _answered(ready: asyncio.Future[None]) -> bool:
    """The harness said ``ready``, or why its script cannot load (not a crash)."""
    return (ready.done() and not ready.cancelled()
            and not isinstance(ready.exception(), _BootCrash))


class ProcessWorker:
    """One bubblewrap sandbox running one actor's harness; calls run one at a time."""

    # The checks between calls read bubblewrap's process tree (bwrap, then the harness), its
    # /tmp and its task count: a subclass whose sandbox looks otherwise (gVisor: runsc, the
    # gofer, the Sentry's own threads, a /tmp inside the Sentry) turns them off. The CPU
    # the worker's cgroups count while it is idle, the bytes it writes and the idle lifetime
    # are checked for every worker.
    HOST_CHECKS = True
    # CPU an idle worker may use per second of idle time, beyond IDLE_CPU_NS in all (gVisor:
    # the Sentry's own timers and Go runtime)
    IDLE_CPU_NS_PER_S = 0

    def __init__(self, actor: ActorDef, tmp_mb: int, process: asyncio.subprocess.Process,
                 cgroups: WorkerCgroups, pipes: SandboxPipes, *, idle_lifetime_s: float = 300,
                 max_notifications: int | None = None, host_uid: int | None = None,
                 state_limits: StateSettings | None = None) -> None:
        self.actor = actor
        self.host_uid = host_uid  # the host uid its processes run as (None: the server's)
        self.violation = ""  # why the host killed it between calls, if it did
        self._tmp_mb = tmp_mb
        self._idle_lifetime_s = idle_lifetime_s
        self._max_notifications = max_notifications
        self._state_limits = state_limits or StateSettings()
        self._process = process
        self._cgroups = cgroups
        self._pipes = pipes
        self._to_harness = pipes.to_harness
        self._writer = pipes.writer
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()  # bounded in bytes: _enqueue
        self._buffered = 0  # bytes (and item overheads) queued
        self._paused = False  # not reading the pipes (see _flow)
        self._line_limit = pipes.line_limit
        self._channel_buffer = bytearray()  # a line from the harness, until its newline
        self._channel_ended = False
        # raw output, in lines; one longer than CHUNK in pieces (what is held is bounded)
        self._raw = {"stdout": LineSplitter(CHUNK), "stderr": LineSplitter(CHUNK)}
        self._stderr_tail: deque[str] = deque(maxlen=64)
        self._closed_streams: set[str] = set()
        self._dead = False
        self._closed = False
        self._closing: asyncio.Future[None] | None = None
        self._phase = BOOTING
        self._settling: asyncio.Task[None] | None = None
        self._ready_early = False  # the harness's ready after its reset came during the call
        self._harness_pid: int | None = None
        self._idle_since = 0.0
        self._idle_cpu: int | None = None  # CPU and tasks counters when it became idle
        self._idle_tasks: int | None = None
        self._baseline = (0, 0)  # (OOM kills, refused forks) when it became idle
        self._tmp_clean: tuple[int, ...] | None = None  # how /tmp looked when last seen empty
        self._idle_check: asyncio.TimerHandle | None = None
        self._lingering = False  # the last result said threads or timers still run
        self._state_requests: StateRequests | None = None  # the running call's state operations
        self._budget: OutputBudget | None = None  # the running call's
        self._over_budget = False  # a raw line went past it: the rest are dropped
        self._loading = False  # the harness said it is loading the script (boot only)
        self._pidfd = _pidfd(process.pid)
        self.on_closed: Callable[[ProcessWorker], None] = lambda worker: None
        pipes.attach(self._received)
        pipes.writer.attach(self._flow)

    @property
    def alive(self) -> bool:
        """Running, and (when idle) clean: an idle worker is checked from the host right
        here too, so the pool never hands out one that ran code since its last check."""
        if self._dead or self._process.returncode is not None:
            return False
        if self._phase == IDLE and (reason := self._idle_violation()):
            self._violate(reason)
            return False
        return True

    def claim(self) -> bool:
        """Alive, and clean as checked from the host right now: the call that follows at once
        starts without reading the counters again."""
        if not self.alive:
            return False
        if self._phase == IDLE:
            self._phase = CLAIMED  # its idle check, when it comes, finds it busy and waits
        return True

    @property
    def pid(self) -> int:
        """The host pid of the sandbox's outer bwrap process."""
        return self._process.pid

    @property
    def cgroup_dirs(self) -> tuple[Path, ...]:
        return self._cgroups.dirs

    async def wait_ready(self) -> None:
        """Wait for the harness's first ``ready``: SandboxUnavailable when it never comes or the
        script cannot load; ActorFailed (SandboxCrashed) when the sandbox dies while booting;
        TimeLimitExceeded when the script's own load outlasts ``limits.timeout_s``.

        The sandbox and the interpreter's start get BOOT_TIMEOUT_S (a slow boot is not the
        script's fault), until the harness says it is loading the script; from then on the
        script's top-level code gets the actor's timeout_s, as a call does."""
        timeout_s = self.actor.limits.timeout_s
        timer = asyncio.timeout(BOOT_TIMEOUT_S)

        def loading() -> None:
            timer.reschedule(asyncio.get_running_loop().time() + timeout_s)

        try:
            async with timer:
                await self._ready_or_outer_exit(loading)
            tasks = self._cgroups.tasks()
            if reason := self._leftovers(tasks):
                self._kill()
                raise SandboxUnavailable(BACKEND, f"the script's load left {reason}")
            if not self._dead:  # else it died after its ready: the call says so (-32004)
                self._become_idle(tasks)
        except TimeoutError:
            if self._loading:
                self._kill()
                raise TimeLimitExceeded(timeout_s, "the script did not finish loading within "
                                        f"its timeout_s ({timeout_s:g} s)") from None
            raise SandboxUnavailable(
                BACKEND, f"sandbox not ready after {BOOT_TIMEOUT_S:g} s") from None
        except ActorFailed as exc:
            if self._cgroups.counters()[0]:
                raise ResourceLimitExceeded("memory", self.actor.limits.memory_mb) from None
            if isinstance(exc, _BootCrash):
                raise
            reason = exc.data["message"][:BOOT_ERROR_CHARS]  # a line the script may have forged
            raise SandboxUnavailable(BACKEND, f"sandbox did not start: {reason}") from None

    async def _ready_or_outer_exit(self, loading: Callable[[], None]) -> None:
        """Wait for ``ready`` while watching the outer bwrap: killed from outside during the
        boot, it can leave the inner one holding the channel open, so no EOF would ever come.
        A sandbox killed while booting is killed whole (its cgroups) and answers like a crash
        of a running one; one that ended by itself did not start (its stderr says why).
        ``loading`` is called when the harness says it is loading the script."""
        ready = asyncio.ensure_future(self._until_ready(loading))
        outer = asyncio.ensure_future(self._outer_exit())
        try:
            await asyncio.wait({ready, outer}, return_when=asyncio.FIRST_COMPLETED)
            if not ready.done():  # a harness that failed to load says why just before it ends
                await asyncio.wait({ready}, timeout=OUTER_EXIT_GRACE_S)
            if _answered(ready):  # the common case: no wait for an outer that still runs
                return ready.result()  # ready, or the harness's own error about the script
            if not outer.done():  # a sandbox that ends by itself is gone soon after
                await asyncio.wait({outer}, timeout=OUTER_EXIT_GRACE_S)
            status = await self._exit_status() if outer.done() else None
        finally:
            for task in (ready, outer):
                task.cancel()
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
        if self._phase == RESETTING:
            await self.reset()  # a caller that did not reset: the host checks still run
        if self._phase == BUSY:
            raise RuntimeError("a worker runs one call at a time")
        if not self.claim():
            raise ActorFailed("SandboxCrashed", "the sandbox is no longer running")
        self._phase = BUSY
        self._discard_pending()
        limit_s = self.actor.limits.timeout_s
        baseline = self._baseline  # read when it became idle: nothing ran since (claim())
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
            self._phase = RESETTING  # until the host saw the harness's reset (reset())
            self._settling = None
        if self._lingering:
            # Its threads or timers would run on between calls, with no time limit: end them
            # now; the pool replaces a worker that is not alive.
            logger.info("%s: the call left threads or timers running; worker not reused",
                        self.actor.id)
            self._kill()
        return outcome

    async def reset(self) -> None:
        """Wait for the harness's own reset (it kills stray processes and wipes /tmp right
        after each call, then says ready: usually in the same write as the result), then
        check from the host that it happened: no process but the harness, nothing in /tmp.
        ActorFailed (and the worker is killed) when not; then the worker watches itself
        while idle."""
        if not self.reset_nowait() and self._phase == RESETTING and self.alive:
            if self._settling is None:
                self._settling = asyncio.ensure_future(self._settle())
            await asyncio.shield(self._settling)
        if self._dead or self._process.returncode is not None:  # (just checked if idle)
            raise ActorFailed("SandboxCrashed", self.violation or "the sandbox is no longer "
                              "running")

    def reset_nowait(self) -> bool:
        """reset() when it has nothing to wait for, the common case (the harness's ready came
        with the result, nothing is left over): True once the worker is idle again, checked.
        False when reset() has to run: it waits for the harness, or says what went wrong."""
        if self._phase == RESETTING and self.alive and self._settling is None \
                and self._ready_early:
            tasks = self._cgroups.tasks()
            extra = self._extra_pids(tasks)
            if not (extra or self._threads_left(tasks)):
                self._finish_reset(tasks, extra)
        return self._phase == IDLE and not self._dead and self._process.returncode is None

    async def _settle(self) -> None:
        # The call's clock stopped at its result: the CPU its harness uses before its ready
        # (a script that patched the harness to answer first and compute on) is held to
        # what a reset needs, else the worker is not reused.
        cpu_before = self._cgroups.cpu_ns()
        try:
            async with asyncio.timeout(RESET_TIMEOUT_S):
                if not self._ready_early:
                    await self._until_ready()
        except (TimeoutError, ActorFailed) as exc:
            self._violate(f"no ready after its reset ({exc or 'timeout'})")
            return
        cpu_after = self._cgroups.cpu_ns()
        if cpu_before is not None and cpu_after is not None \
                and cpu_after - cpu_before > RESET_CPU_NS:
            self._violate(f"used {(cpu_after - cpu_before) / 1e6:.0f} ms of CPU for its reset")
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EXIT_WAIT_S
        while loop.time() < deadline:  # killed, still exiting: a real leftover stays
            tasks = self._cgroups.tasks()
            if not (self._extra_pids(tasks) or self._threads_left(tasks)):
                break
            await asyncio.sleep(0.005)
        self._finish_reset(self._cgroups.tasks())

    def _finish_reset(self, tasks: int | None, extra: set[int] | None = None) -> None:
        """``tasks``: the pids counter, just read; ``extra``: the other processes read with
        it, if they were."""
        if reason := self._leftovers(tasks, extra) or self._threads_left(tasks):
            self._violate(f"its reset left {reason}")
        elif not self._dead:
            self._become_idle(tasks)

    def _extra_pids(self, tasks: int | None) -> set[int]:
        """Processes of the sandbox besides bwrap and the harness: none when the pids counter
        (``tasks``) says so, or before the harness is known."""
        if self._harness_pid is None or self._dead or not self.HOST_CHECKS \
                or self._counted_clean(tasks):
            return set()
        return self._sandbox_pids() - {self._process.pid, self._harness_pid}

    def _counted_clean(self, tasks: int | None) -> bool:
        """A Python sandbox holding just the outer bwrap and the single-threaded harness: its
        pids counter (``tasks``) says so, without reading the list of its processes."""
        return (self.HOST_CHECKS and self.actor.language == "python" and not self._dead
                and tasks == BWRAP_PROCESSES + 1)

    def _threads_left(self, tasks: int | None) -> str | None:
        """A Python harness waits for the next call on one thread: any other is the
        script's, still there after its call (the harness's own "lingering" report, checked
        where the script cannot patch it). Node's runtime has threads of its own."""
        if self.actor.language != "python" or tasks is None or self._dead \
                or not self.HOST_CHECKS:
            return None
        extra = tasks - BWRAP_PROCESSES - 1
        return f"{extra} threads besides the harness's" if extra > 0 else None

    # --- between calls: checked from the host ----------------------------------------------

    def _sandbox_pids(self) -> set[int]:
        """Host pids of the sandbox's processes: its cgroups' members, or (without cgroups)
        bwrap, its child and that child's children."""
        members = self._cgroups.processes()
        if members:
            return members
        inner = _children(self._process.pid)
        return {self._process.pid, *inner, *(c for pid in inner for c in _children(pid))}

    def _leftovers(self, tasks: int | None, extra: set[int] | None = None) -> str | None:
        """What a clean idle sandbox must not have: processes other than the outer bwrap and
        the harness, entries in /tmp. Read from the host (/proc, the cgroups). A sandbox
        whose harness is gone has died (e.g. killed from outside): it is killed, quietly."""
        if not self.HOST_CHECKS:
            return None
        if self._harness_pid is None:
            children = _children(self._process.pid)
            if len(children) > 1:
                return f"{len(children)} processes below bubblewrap"
            if not children:
                self._kill()
                return None
            self._harness_pid = children.pop()
        if extra is None:
            extra = self._extra_pids(tasks)
        if extra:
            return f"{len(extra)} processes besides the harness"
        tmp = f"/proc/{self._harness_pid}/root/tmp"
        try:
            stamp = settled_stamp(os.stat(tmp))
            if stamp is not None and stamp == self._tmp_clean:
                return None  # unchanged since it was seen empty
            left = os.listdir(tmp)
        except (FileNotFoundError, ProcessLookupError):
            self._kill()  # no /proc/PID: the harness has exited
            return None
        except OSError as exc:
            return f"a /tmp the host cannot read ({exc.strerror})"
        self._tmp_clean = None if left else stamp
        return f"{len(left)} entries in /tmp" if left else None

    def _become_idle(self, tasks: int | None) -> None:
        self._phase = IDLE
        self._idle_since = asyncio.get_running_loop().time()
        self._idle_cpu = self._cgroups.cpu_ns()
        self._idle_tasks = tasks
        self._baseline = self._cgroups.counters()  # for the next call, read off its clock
        self._schedule_idle_check()

    def _schedule_idle_check(self) -> None:
        """Check the idle worker within IDLE_CHECK_S. The timer outlives the calls in between
        (one at most per worker, not one per call): a worker busy when it fires is checked
        from its next idle time on."""
        if self._idle_check is None:
            loop = asyncio.get_running_loop()
            self._idle_check = loop.call_later(IDLE_CHECK_S, self._check_idle)

    def _stop_idle_checks(self) -> None:
        if self._idle_check is not None:
            self._idle_check.cancel()
            self._idle_check = None

    def _check_idle(self) -> None:
        self._idle_check = None
        if self._phase != IDLE or self._dead:  # busy: _become_idle schedules the next check
            return
        if reason := self._idle_violation():
            self._violate(reason)
        elif asyncio.get_running_loop().time() - self._idle_since > self._idle_lifetime_s:
            logger.info("%s: worker idle for %g s, closing it", self.actor.id,
                        self._idle_lifetime_s)
            self._kill()
        else:
            self._schedule_idle_check()

    def _idle_violation(self) -> str | None:
        """What the idle sandbox did since it became idle, if anything: the harness waits
        on its pipe, so any CPU beyond a small allowance or any new task is the script."""
        cpu = self._cgroups.cpu_ns()
        if cpu is not None and self._idle_cpu is not None:
            idle_s = asyncio.get_running_loop().time() - self._idle_since
            if cpu - self._idle_cpu > IDLE_CPU_NS + self.IDLE_CPU_NS_PER_S * idle_s:
                return f"used {(cpu - self._idle_cpu) / 1e6:.0f} ms of CPU while idle"
        if not self.HOST_CHECKS:
            return None
        tasks = self._cgroups.tasks()
        if tasks is not None and self._idle_tasks is not None and tasks > self._idle_tasks:
            return f"started {tasks - self._idle_tasks} threads or processes while idle"
        if tasks is not None and self._idle_tasks is not None and tasks < self._idle_tasks:
            if self._harness_pid is not None and not os.path.exists(f"/proc/{self._harness_pid}"):
                # killed from outside: asyncio may not have seen the exit yet, and a call
                # sent now would fail although it never ran; the pool takes another worker
                return "its harness ended while idle"
            self._idle_tasks = tasks  # a thread of the runtime's own ended: fewer to allow
        if tasks is None and self._sandbox_pids() - {self._process.pid, self._harness_pid}:
            return "started a process while idle"
        return None

    def _violate(self, reason: str) -> None:
        """Kill a worker that did something between calls; it is never reused."""
        if self._dead:
            return
        self.violation = reason
        logger.warning("%s: worker killed between calls: %s", self.actor.id, reason)
        self._kill()

    async def close(self) -> None:
        """Kill the sandbox, reap it, remove its cgroups; idempotent. The close finishes even
        when its caller is cancelled (a pool closed during a server's shutdown): a later
        call waits for the same one, so no cgroup is left behind."""
        if self._closing is None:
            self._closed = True
            self._stop_idle_checks()
            self._kill()
            self._queue.put_nowait(_Item("eof"))  # wakes a call waiting on this worker
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if not await self._exited(KILL_WAIT_S):
            self._kill_outer()
            await self._exited(KILL_WAIT_S)
        self._pipes.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        await self._cgroups.remove()
        self.on_closed(self)

    # --- a call --------------------------------------------------------------------------

    async def _run(self, request: CallRequest, on_event: EventSink,
                   baseline: tuple[int, int]) -> CallOutcome:
        self._ready_early = False
        self._state_requests = StateRequests(request, self._state_limits)  # answered while it runs
        # Up to max_message_bytes: what the pipe does not take waits in the transport, and
        # past BUFFER_BYTES the pipes out are not read until the harness has read it (_flow).
        # no fences: see _forward_raw_output
        self._to_harness.write(await call_line_in_turn(request, ""))
        budget = OutputBudget(self.actor.limits.output_bytes, self._max_notifications,
                              hold_limit=self.actor.limits.memory_mb * MIB)
        self._budget = budget  # lines are held to it as they are read (_line_item, _stream_line)
        self._over_budget = False
        turns = Turns()  # what the sandbox wrote at once is queued: none of it waits
        try:
            outcome: CallOutcome | None = None
            while outcome is None:
                item = await self._get()
                if self._closed:
                    raise ActorFailed("SandboxCrashed", "the worker was closed during the call")
                outcome = await self._handle(item, on_event, budget, baseline)
                size = item.size
                del item  # its decoded value, while the next is awaited: the call keeps its own
                await turns.took(size)
            await self._forward_raw_output(on_event, budget, baseline, turns)
        finally:
            self._budget = self._state_requests = None  # which hold the call's values
            budget.release()
        return outcome

    async def _forward_raw_output(self, on_event: EventSink, budget: OutputBudget,
                                  baseline: tuple[int, int], turns: Turns) -> None:
        """Forward, before the result, what the script wrote to its real stdout/stderr (os.write,
        subprocesses) during the call. The harness wrote its result after all of it, so those
        bytes are in the pipes or read already; read what is left now (the pipes are read in
        the loop's own callbacks, so everything read is queued), and send what is queued.
        The harness's ``ready`` may be queued too: its reset is done."""
        for stream in ("stdout", "stderr"):
            self._read_now(stream)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            self._taken(item)
            if _is_ready(item):
                self._ready_early = True
            elif item.kind == "eof":  # it died after its result: reset() finds out
                self._queue.put_nowait(item)
                return
            else:
                await self._handle(item, on_event, budget, baseline)
                await turns.took(item.size)

    async def _handle(self, item: _Item, on_event: EventSink, budget: OutputBudget,
                      baseline: tuple[int, int]) -> CallOutcome | None:
        if item.kind == "line":  # charged when it was read (_stream_line)
            await on_event(LogEvent(item.stream, item.value))
        elif item.kind == "message":
            return await self._message(item, on_event, budget, baseline)
        elif item.kind == "overflow":
            raise ResourceLimitExceeded("output", self.actor.limits.output_bytes)
        elif item.kind == "refused":  # values past what the server holds, or too deep to decode
            raise item.value
        elif item.kind == "garbage":
            raise ActorFailed("ProtocolError", f"the harness sent garbage: {item.value!r}")
        elif item.kind == "eof":
            raise await self._died(baseline)
        elif item.kind == "closed":
            self._closed_streams.add(item.stream)
        return None

    async def _message(self, item: _Item, on_event: EventSink, budget: OutputBudget,
                       baseline: tuple[int, int]) -> CallOutcome | None:
        # An output or log costs the notification it becomes on the wire, envelope included:
        # a flood of tiny values then breaches the limit as fast as a flood of big ones.
        message = item.value
        kind = message.get("type")
        if kind == "output" and isinstance(message.get("port"), str):
            budget.notify(notification_size("output", self.actor.id, item.size))
            await on_event(OutputEvent(message["port"], message.get("data")))
        elif kind == "log" and isinstance(message.get("message"), str):
            stream = "stderr" if message.get("stream") == "stderr" else "stdout"
            budget.notify(log_size(self.actor.id, stream, message["message"]))
            await on_event(LogEvent(stream, message["message"]))
        elif kind == "result" and isinstance(message.get("state"), dict):
            budget.spend(item.size)  # the return value and the state: both go back
            self._lingering = message.get("lingering") is True
            return CallOutcome(message.get("return"), message["state"])
        elif kind == "error":
            failure = self._failure(message, baseline)
            if isinstance(failure, ActorFailed):  # its message and traceback go back: as a result
                budget.spend(item.size)
            raise failure
        elif kind == "state" and self._state_requests is not None:
            # A small request may ask for a big reply: none is made while BUFFER_BYTES of
            # earlier ones wait unread (nor are the pipes out read meanwhile: _flow). A
            # sandbox that never reads runs into its time limit here.
            await self._writer.drained()
            self._to_harness.write(await self._state_requests.reply(message, item.size))
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
            while self.outer_running():
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
                    item = await self._get()
                    if item.kind == "closed":
                        self._closed_streams.add(item.stream)

    async def _until_ready(self, loading: Callable[[], None] | None = None) -> None:
        """Consume items until the harness's ``ready``. ``loading``: called on the boot's
        ``loading`` message, once (any later one is the script's).

        What the script's load writes meanwhile goes nowhere, but each line costs the
        server's loop as much as a call's: it is held to what one call may send (its
        output_bytes and max_notifications), else the boot fails with -32006 output."""
        budget = OutputBudget(self.actor.limits.output_bytes, self._max_notifications)
        while True:
            item = await self._get()
            if self._closed:
                raise ActorFailed("SandboxCrashed", "the worker was closed")
            if item.kind == "message" and item.value.get("type") == "ready":
                return
            budget.notify(item.size)
            if item.kind == "message" and item.value.get("type") == "loading" \
                    and loading is not None and not self._loading:
                self._loading = True
                loading()
            if item.kind == "message" and item.value.get("type") == "error":
                raise ActorFailed(str(item.value.get("error_type")), str(item.value.get("message")),
                                  str(item.value.get("traceback") or ""))
            if item.kind in ("eof", "garbage", "overflow"):
                raise _BootCrash("SandboxCrashed", "the sandbox ended while starting")

    def _discard_pending(self) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            self._taken(item)
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
        members = self._cgroups.members()
        inner = members - {self._process.pid}
        if not inner and self.outer_running():  # no cgroups: bwrap's child is the harness
            inner = _children(self._process.pid)
        if not inner:
            self._kill_outer()
        self._cgroups.kill_all(spare=self._process.pid, members=members)
        for pid in inner:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def outer_running(self) -> bool:
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

    # --- the pipes out of the sandbox: parsed as they are read ------------------------------

    def _received(self, pipe: str, data: bytes | None) -> None:
        """Bytes from one of the sandbox's pipes (None: it ended), in the order the loop read
        them: ``channel`` (the harness's messages), ``stdout`` or ``stderr`` (raw output)."""
        if pipe == "channel":
            self._channel_data(data)
        elif data is None:
            self._stream_end(pipe)
        else:
            self._stream_data(pipe, data)

    def _channel_data(self, data: bytes | None) -> None:
        if self._channel_ended:
            return
        if data is None:  # an unterminated last line is no message: the sandbox is gone
            self._channel_ended = True
            self._enqueue(_Item("eof"))
            return
        buffer = self._channel_buffer
        unscanned = len(buffer)  # what is buffered holds no newline: a long line is not rescanned
        buffer += data
        start = 0
        while (end := buffer.find(b"\n", max(start, unscanned))) >= 0:
            if end + 1 - start > self._line_limit:
                break
            self._enqueue(self._line_item(bytes(buffer[start:end + 1])))
            start = end + 1
        del buffer[:start]
        if len(buffer) > self._line_limit:  # a line past any output limit: stop reading it
            self._channel_ended = True
            self._channel_buffer = bytearray()
            self._pipes.channel.stop()
            self._enqueue(_Item("overflow"))

    def _line_item(self, line: bytes) -> _Item:
        """The item of one channel line. During a call, a line whose decoded values would
        take the call past what the server holds of them (OutputBudget.fits) is refused
        before it is decoded; a decoded output or result is held until the call ends."""
        budget = self._budget
        if budget is None:
            return _message_item(line)
        try:
            size = budget.fits(line)
        except ResourceLimitExceeded as exc:
            return _Item("refused", value=exc, size=len(line))
        parks = HEAP.parks
        item = _message_item(line)
        if item.kind == "message" and item.value.get("type") in ("output", "result"):
            budget.hold(size, parks)
        return item

    def _stream_data(self, stream: str, data: bytes) -> None:
        for text in self._raw[stream].feed(data):
            self._stream_line(stream, text)

    def _stream_end(self, stream: str) -> None:
        self._flush_partial(stream)
        self._enqueue(_Item("closed", stream))

    def _flush_partial(self, stream: str) -> None:
        if (text := self._raw[stream].flush()) is not None:
            self._stream_line(stream, text)

    def _stream_line(self, stream: str, text: str) -> None:
        if stream == "stderr":
            self._stderr_tail.append(text + "\n")
        if (budget := self._budget) is not None:
            # A call's line is charged as it is read, as the notification it becomes: a flood
            # (64 KiB of newlines is 65,536 lines) is not split and queued past the limit.
            if self._over_budget:
                return
            try:
                budget.notify(log_size(self.actor.id, stream, text))
            except ResourceLimitExceeded as exc:
                self._over_budget = True
                self._pipes.stream(stream).stop()  # the call fails: read no more of it
                self._enqueue(_Item("refused", value=exc))
                return
        self._enqueue(_Item("line", stream, text, len(text)))

    def _read_now(self, stream: str) -> None:
        """Read what waits in ``stream``'s pipe now (at most what the pipe holds), and end an
        unterminated last line: the call's output is complete."""
        for data in self._pipes.stream(stream).read_waiting():
            self._stream_data(stream, data)
        self._flush_partial(stream)

    def _enqueue(self, item: _Item) -> None:
        """Queue an item for the call (or boot, or reset) that reads it. About BUFFER_BYTES
        wait here per worker: past it the pipes are not read, and the sandbox blocks on its
        writes. Anything but the harness's ready, written between calls, is a violation that
        kills the worker (its bytes are dropped)."""
        if not self._expected(item):
            if not self._dead:
                self._violate(f"wrote on its {item.stream or 'channel'} between calls")
            return
        self._buffered += item.size + ITEM_OVERHEAD
        self._queue.put_nowait(item)
        if self._buffered > BUFFER_BYTES and not self._paused:
            self._flow()

    def _expected(self, item: _Item) -> bool:
        if item.kind in ("closed", "eof") or self._phase in (BOOTING, BUSY):
            return True
        return self._phase == RESETTING and _is_ready(item) and not self._ready_early

    async def _get(self) -> _Item:
        item = await self._queue.get()
        self._taken(item)
        return item

    def _taken(self, item: _Item) -> None:
        self._buffered -= item.size + ITEM_OVERHEAD
        if self._paused and self._buffered <= BUFFER_BYTES:
            self._flow()

    def _flow(self) -> None:
        """Read the sandbox's pipes unless BUFFER_BYTES of what it wrote wait in the queue,
        or more than BUFFER_BYTES of what the host wrote to it wait unread (state replies to
        a script that writes requests and never reads): either way it then blocks on its
        own writes, and runs into its time limit if it never catches up. So neither grows
        without bound in the server."""
        pause = self._buffered > BUFFER_BYTES or self._writer.blocked
        if pause != self._paused:
            self._paused = pause
            if pause:
                self._pipes.pause()
            else:
                self._pipes.resume()


def _message_item(line: bytes) -> _Item:
    """What one line from the harness is: a message, a value too deep to decode (the
    actor's failure, -32004, saying so: it is JSON, not garbage), or garbage."""
    try:
        message = decode_line(line)
    except NestedTooDeeply:
        return _Item("refused", value=ActorFailed("ValueError", TOO_DEEP), size=len(line))
    except ValueError:
        message = None
    if isinstance(message, dict):
        if message.get("type") == "state":  # never on the wire: its bytes as read, UTF-8
            return _Item("message", value=message, size=len(line) - 1)
        return _Item("message", value=message, size=_wire_size(line, message))
    return _Item("garbage", value=line[:200].decode("utf-8", "replace"), size=len(line))


def _is_ready(item: _Item) -> bool:
    return item.kind == "message" and item.value.get("type") == "ready"


def _wire_size(line: bytes, message: dict[str, Any]) -> int:
    """The bytes ``message`` takes once the server encodes it as ASCII JSON (non-ASCII text
    grows to \\u escapes)."""
    if line.isascii():
        return len(line) - 1
    try:
        return len(encode_line(message)) - 1
    except (RecursionError, ValueError):
        return 6 * len(line)  # every byte an escape, at most


def settled_stamp(st: os.stat_result) -> tuple[int, ...] | None:
    """What a folder's stat says of its entries, or None while that is not yet telling.

    Adding, removing or renaming an entry, or setting the folder's times, moves its ctime,
    to a clock no sandbox can set: an unchanged stamp means unchanged entries, one stat
    instead of a listing. A kernel before 6.13 stamps tmpfs with a clock that only ticks
    every jiffy, though, so a change in the same tick as the stamp leaves it unchanged: a
    stamp counts only once its ctime is older than any tick (STAMP_SETTLE_NS)."""
    if time.time_ns() - st.st_ctime_ns < STAMP_SETTLE_NS:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns, st.st_mtime_ns


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
        # util-linux: set a sandbox's rlimits and uid (see _launcher)
        self._prlimit = shutil.which("prlimit", path="/usr/bin:/bin")
        self._setpriv = shutil.which("setpriv", path="/usr/bin:/bin")
        self._compiled = CompiledHarness(settings.sandbox.python, HARNESS_DIR / "harness.py",
                                         HARNESS_DIR / "boot.py")
        self._controllers: dict[str, Controller] | None = None
        self._workers: set[ProcessWorker] = set()  # open ones, closed at aclose() at the latest
        # BPF for `bwrap --seccomp` by limits.network, None without libseccomp
        self._seccomp = {network: denylist_program(network) for network in (False, True)}
        self._stager = Stager()
        self._uids: UidPool | None = None

    @property
    def uids(self) -> UidPool | None:
        """The host uids sandboxes get; None when the server is not root (its sandboxes
        then run as its own, unprivileged, uid)."""
        if os.geteuid() != 0:
            return None
        if self._uids is None:
            sandbox = self.settings.sandbox
            self._uids = UidPool(sandbox.uid_base, sandbox.uid_count, self._stager.directory,
                                 BACKEND)
        return self._uids

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
        details["seccomp"] = ("none" if self._seccomp[False] is None
                              else f"denylist of {len(DENIED)}")
        sandbox = self.settings.sandbox
        details["host_uids"] = (f"{sandbox.uid_base}+{sandbox.uid_count}" if os.geteuid() == 0
                                else f"the server's ({os.geteuid()})")
        accounting = "cpuacct" in self.controllers or any(
            c.version == 2 for c in self.controllers.values())
        details["idle_watch"] = "+".join(
            ["cpu"] * accounting + ["tasks"] * ("pids" in self.controllers) + ["bytes", "tmp"])
        if details["bwrap"] is None:
            return Availability(BACKEND, False, f"bubblewrap not found ({self._bwrap})", details)
        problem = await self._trial()
        return Availability(BACKEND, problem is None, problem or "", details)

    async def _trial(self) -> str | None:
        """Start a trivial sandbox for real; None when it worked, else why not."""
        options = _namespace_options(False) + _filesystem_options(
            self.settings.sandbox.python, False, 1) + ["--remount-ro", "/"]
        command = [self.settings.sandbox.python, "-I", "-S", "-c", "print('ok')"]
        uids = self.uids
        try:
            uid = uids.acquire() if uids is not None else None
        except SandboxUnavailable as exc:
            return str(exc.data["reason"])
        try:
            process = await asyncio.create_subprocess_exec(
                self._bwrap, *options, *command, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={"PATH": "/usr/bin:/bin"}, user=uid, group=uid,
                extra_groups=None if uid is None else [])
            async with asyncio.timeout(BOOT_TIMEOUT_S):
                out, err = await process.communicate()
        except (OSError, TimeoutError) as exc:
            return f"cannot run bubblewrap: {exc}"
        finally:
            if uids is not None and uid is not None:
                uids.release(uid)
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
            await to_the_end(abandon(spawning, cgroups, self._adopt))
            raise
        except BaseException:
            await to_the_end(cgroups.remove())
            raise
        self._adopt(worker)
        try:
            await worker.wait_ready()
        except BaseException:
            await to_the_end(worker.close())
            raise
        return worker

    def _adopt(self, worker: ProcessWorker) -> None:
        self._workers.add(worker)
        worker.on_closed = self._forget

    def _forget(self, worker: ProcessWorker) -> None:
        """A closed worker: its uid is free again once no process of it can be left."""
        self._workers.discard(worker)
        if worker.host_uid is None or self._uids is None:
            return
        if worker.cgroup_dirs:  # its groups could not be removed: something may still run
            logger.warning("%s: uid %s not reused: its cgroups are still there",
                           worker.actor.id, worker.host_uid)
            return
        self._uids.release(worker.host_uid)

    async def _spawn(self, actor: ActorDef, cgroups: WorkerCgroups) -> ProcessWorker:
        uids = self.uids
        uid = uids.acquire() if uids is not None else None
        try:
            return await self._spawn_as(actor, cgroups, uid)
        except BaseException:
            if uids is not None and uid is not None:
                uids.release(uid)  # nothing of the sandbox runs: its cgroups are removed
            raise

    def _staged(self, actor: ActorDef) -> tuple[Path, Path, Path | None]:
        """The actor's folder, its harness and its built dependencies, or copies of them,
        that any uid can read."""
        deps = dependency_mount(actor, BACKEND)
        try:
            return (self._stager.readable(actor.root),
                    self._stager.readable(harness_path(actor)),
                    # a built set never changes (one folder per set): judged once
                    self._stager.readable(deps[0], immutable=True) if deps else None)
        except OSError as exc:
            raise SandboxUnavailable(
                BACKEND, f"cannot stage {actor.root} for the sandbox: {exc}") from exc

    async def _spawn_as(self, actor: ActorDef, cgroups: WorkerCgroups,
                        uid: int | None) -> ProcessWorker:
        root, harness, deps_root = self._staged(actor) if uid is not None else (None, None, None)
        harness_dir = (await self._compiled.folder(self._stager.directory)
                       if actor.language == "python" else None)
        call_r, call_w = os.pipe()  # host -> harness
        event_r, event_w = os.pipe()  # harness -> host
        plan = make_plan(actor, self.settings, self.mechanisms(), (call_r, event_w),
                         host_uid=uid, root=root, harness=harness, deps_root=deps_root,
                         harness_dir=harness_dir)
        options = plan.options
        seccomp_r = None
        if (program := self._seccomp[actor.limits.network]) is not None:
            seccomp_r = _data_pipe(program)
            options = [*options, "--seccomp", str(seccomp_r)]
        info_r, info_w = os.pipe()  # bwrap -> host: its sandbox process's pid
        block_r, block_w = os.pipe()  # host -> sandbox: admitted, go on
        options = [*options, "--info-fd", str(info_w), "--block-fd", str(block_r)]
        args_r = _args_pipe(options)
        inherited = (args_r, call_r, event_w, info_w, block_r) + (
            (seccomp_r,) if seccomp_r is not None else ())
        admission = _Admission(info_r, block_w)
        host_uid = plan.host_uid
        launcher, as_user = _launcher(self._prlimit, self._setpriv, plan.rlimits, host_uid)
        (out_r, out_w), (err_r, err_w) = output_pipes()
        try:
            # bwrap's own environment shows in the sandbox's /proc/1/environ: give it nothing.
            # The uid and the rlimits are set by the launcher (see _launcher).
            process = await asyncio.create_subprocess_exec(
                *launcher, self._bwrap, "--args", str(args_r), *plan.command,
                stdin=asyncio.subprocess.DEVNULL, stdout=out_w, stderr=err_w,
                pass_fds=inherited, start_new_session=True, env={"PATH": "/usr/bin:/bin"},
                **as_user)
        except Exception as exc:  # OSError, or SubprocessError
            for fd in (call_w, event_r, out_r, err_r):
                os.close(fd)
            admission.close()
            raise SandboxUnavailable(BACKEND, f"cannot start bubblewrap: {exc}") from exc
        finally:
            for fd in (*inherited, out_w, err_w):
                os.close(fd)
        admitting = asyncio.get_running_loop().run_in_executor(
            _ADMISSION_THREADS, admission.run, process.pid, cgroups)
        limit = actor.limits.output_bytes + self.settings.max_message_bytes + CHUNK
        pipes = await connect_pipes(call_w, event_r, out_r, err_r, limit)
        sandbox = self.settings.sandbox
        worker = ProcessWorker(actor, sandbox.tmp_mb, process, cgroups, pipes,
                               idle_lifetime_s=sandbox.idle_lifetime_s,
                               max_notifications=sandbox.max_notifications, host_uid=uid,
                               state_limits=self.settings.state)
        try:
            async with asyncio.timeout(BOOT_TIMEOUT_S):  # bwrap stuck before its info
                problem = await asyncio.shield(admitting)
        except TimeoutError:
            problem = f"not admitted after {BOOT_TIMEOUT_S:g} s"
        if problem is not None and worker.outer_running():
            await worker.close()
            raise SandboxUnavailable(BACKEND, f"sandbox did not start: {problem}")
        return worker  # bwrap ended by itself: wait_ready() reports its stderr

    async def aclose(self) -> None:
        """Close any worker its pool left open (none, when every pool was closed)."""
        await asyncio.gather(*(w.close() for w in list(self._workers)), return_exceptions=True)
        if self._uids is not None:
            self._uids.close()
            self._uids = None
        self._stager.close()


async def abandon(spawning: asyncio.Future[Any], cgroups: WorkerCgroups,
                  adopt: Callable[[Any], None]) -> None:
    """Let a spawn that was cancelled finish, then close what it made: ``adopt`` (the
    backend's) first, so that its close frees its uid as any worker's does."""
    try:
        worker = await spawning
    except Exception:
        await cgroups.remove()
    else:
        adopt(worker)
        await worker.close()



class _Pipe(asyncio.Protocol):
    """A pipe out of a sandbox, read by the event loop: each chunk goes to the worker from
    the loop's read callback itself (kept until a worker is attached), so whatever the
    server has read from any of a sandbox's pipes is queued, in the order it was read."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._transport: asyncio.ReadTransport | None = None
        self._fd = -1
        self._sink: Callable[[str, bytes | None], None] | None = None
        self._early: list[bytes | None] = []
        self._stopped = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)
        self._transport = transport
        self._fd = transport.get_extra_info("pipe").fileno()

    def data_received(self, data: bytes) -> None:
        self._deliver(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deliver(None)

    def _deliver(self, data: bytes | None) -> None:
        if self._sink is None:
            self._early.append(data)
        else:
            self._sink(self.name, data)

    def attach(self, sink: Callable[[str, bytes | None], None]) -> None:
        self._sink = sink
        early, self._early = self._early, []
        for data in early:
            sink(self.name, data)

    def read_waiting(self) -> list[bytes]:
        """What the pipe holds right now (FIONREAD), read at once, past the loop."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return []
        fd = self._fd
        chunks: list[bytes] = []
        with contextlib.suppress(OSError):  # EAGAIN: nothing after all; EBADF: closed
            waiting = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
            while waiting > 0 and (data := os.read(fd, waiting)):
                chunks.append(data)
                waiting -= len(data)
        return chunks

    def pause(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._transport is not None and not self._transport.is_closing() \
                and not self._stopped:
            self._transport.resume_reading()

    def stop(self) -> None:
        """Read no more from it, for good (the sandbox blocks on its next write)."""
        self._stopped = True
        self.pause()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _Writer(asyncio.Protocol):
    """The pipe into a sandbox: whether what the host wrote waits unread past the
    transport's high-water mark (asyncio calls pause_writing above it, resume_writing once
    it drained to the low one), reported to the worker as it changes."""

    def __init__(self) -> None:
        self.blocked = False
        self._drained = asyncio.Event()
        self._drained.set()
        self._changed: Callable[[], None] = lambda: None

    def attach(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        changed()

    async def drained(self) -> None:
        """Return once the sandbox has read what waited past the high-water mark (or the
        pipe is gone)."""
        await self._drained.wait()

    def pause_writing(self) -> None:
        self.blocked = True
        self._drained.clear()
        self._changed()

    def resume_writing(self) -> None:
        self.blocked = False
        self._drained.set()
        self._changed()

    def connection_lost(self, exc: Exception | None) -> None:
        self.resume_writing()  # nothing waits any more: the sandbox's end is closed


@dataclass
class SandboxPipes:
    """The host's ends of a sandbox's pipes: calls to the harness, its messages back, and
    the sandbox's real stdout and stderr (os.write, subprocesses)."""

    to_harness: asyncio.WriteTransport
    writer: _Writer  # to_harness's protocol
    channel: _Pipe
    stdout: _Pipe
    stderr: _Pipe
    line_limit: int  # the longest message line read from the harness

    def stream(self, name: str) -> _Pipe:
        return self.stdout if name == "stdout" else self.stderr

    def attach(self, sink: Callable[[str, bytes | None], None]) -> None:
        for pipe in (self.channel, self.stdout, self.stderr):
            pipe.attach(sink)

    def pause(self) -> None:
        for pipe in (self.channel, self.stdout, self.stderr):
            pipe.pause()

    def resume(self) -> None:
        for pipe in (self.channel, self.stdout, self.stderr):
            pipe.resume()

    def close(self) -> None:
        self.to_harness.close()
        for pipe in (self.channel, self.stdout, self.stderr):
            pipe.close()


async def connect_pipes(call_fd: int, event_fd: int, stdout_fd: int, stderr_fd: int,
                        line_limit: int) -> SandboxPipes:
    """Take over the host's ends of a sandbox's pipes (each fd is closed with its pipe)."""
    loop = asyncio.get_running_loop()

    async def reader(name: str, fd: int) -> _Pipe:
        _, pipe = await loop.connect_read_pipe(lambda: _Pipe(name),
                                               os.fdopen(fd, "rb", buffering=0))
        return pipe

    channel, stdout, stderr = (await reader("channel", event_fd), await reader("stdout", stdout_fd),
                               await reader("stderr", stderr_fd))
    transport, writer = await loop.connect_write_pipe(_Writer,
                                                      os.fdopen(call_fd, "wb", buffering=0))
    transport.set_write_buffer_limits(high=BUFFER_BYTES, low=BUFFER_BYTES // 4)
    return SandboxPipes(transport, writer, channel, stdout, stderr, line_limit)


def output_pipes() -> tuple[tuple[int, int], tuple[int, int]]:
    """Pipes for a sandbox's stdout and stderr: ((read, write), (read, write)); the write
    ends go to the sandbox, the read ends to connect_pipes."""
    return os.pipe(), os.pipe()


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
