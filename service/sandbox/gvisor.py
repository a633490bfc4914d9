"""gVisor backend: every worker is a runsc sandbox, so the actor talks to a user-space kernel.

The Sentry (gVisor's kernel, written in Go) implements the Linux system calls of the actor
itself; the host kernel only sees the Sentry's own small, seccomp-filtered set. A kernel bug
reachable from the actor's calls is then a Sentry bug, not a host one.

Each worker is ``runsc run`` on an OCI bundle this module writes, with the same view as the
process backend (``service/sandbox/process.py``):

    /usr, /bin -> usr/bin, /lib*  read-only
    /etc/ld.so.cache, ...         read-only; resolv.conf, hosts, ssl only with limits.network
    /actor                        the actor's folder, read-only
    /harness/harness.{py,js}      read-only
    /deps or /node_modules        the actor's built dependency set, read-only (if it has one)
    /channel/in, /channel/out     two FIFOs: the harness's line channel (see below)
    /tmp                          the Sentry's own tmpfs of ``settings.sandbox.tmp_mb``
    /proc, /dev                   the Sentry's

The user inside is 65534 with no capabilities. ``runsc`` runs as root on the host (it needs
to set up namespaces and chroots); it then runs the Sentry as host uid 65534 in a new user
namespace, and the gofer (the file proxy) as root with six capabilities, both under their
own seccomp filters. ``--network=none`` (loopback only) unless ``limits.network``, then
``--network=host`` (the Sentry's netstack is bypassed: its calls reach the host stack);
``--host-uds=none``: no host Unix socket can be opened or created. The process backend's
seccomp denylist (``service/sandbox/seccomp.py``) is applied inside too: the Sentry answers
those calls with EPERM itself (``--oci-seccomp``), so less of the Sentry can be reached.

The channel: this runsc (20221219) passes only fds 0-2 into the sandbox, and the harness
needs its channel apart from the script's stdout/stderr (which the host still reads, as
for the process backend). So the channel is two host FIFOs that runsc opens for the
sandbox (``--host-fifo=open``), put on fds 3 and 4 by ``/bin/sh`` before it execs the
harness; the harness and the line protocol are unchanged.

Limits: memory, pids and CPU through the same per-worker cgroups as the process backend,
holding ``runsc`` and everything it starts (the Sentry, the gofer, the ptrace stubs that
run the actor's code), with room on top for gVisor's own memory and threads. Wall clock,
output bytes, reuse and reset: exactly as the process backend (the same worker class).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from service.errors import ResourceLimitExceeded, SandboxUnavailable
from service.manifest.model import ActorDef
from service.sandbox.base import Availability, dependency_mount
from service.sandbox.process import (
    ACTOR_DIR,
    CHUNK,
    CONTROLLERS,
    HARNESS_DIR,
    MIB,
    NETWORK_FILES,
    SANDBOX_ENV,
    SANDBOX_UID,
    SYSTEM_DIRS,
    SYSTEM_FILES,
    Controller,
    ProcessWorker,
    WorkerCgroups,
    abandon,
    connect_pipes,
    discover_controllers,
    harness_command,
    output_pipes,
    sweep_stale_groups,
    to_the_end,
)
from service.sandbox.seccomp import DENIED, FAMILY_MAX, SOCKET_CALLS, refused_families
from service.sandbox.staging import Staged, sweep_abandoned
from service.settings import Settings

logger = logging.getLogger(__name__)

BACKEND = "gvisor"
BOOT_TIMEOUT_S = 15.0
TRIAL_TIMEOUT_S = 10.0
# What gVisor itself needs on top of the actor's limits, measured on this runsc with an idle
# Python harness: runsc, the gofer, the Sentry and the harness hold ~25 MiB and ~70 host
# threads (ptrace platform).
OVERHEAD_MB = 48
OVERHEAD_TASKS = 96
PIDS_PER_TASK = 3  # under ptrace every actor task costs a stub thread and a Sentry thread
CHANNEL_IN, CHANNEL_OUT = "/channel/in", "/channel/out"
IN_FD, OUT_FD = 3, 4
# dash opens the FIFOs on fds 3 and 4, then execs the harness: the harness is pid 1
OPEN_CHANNEL = f'exec "$@" {IN_FD}<{CHANNEL_IN} {OUT_FD}>{CHANNEL_OUT}'
NAMESPACES = ("pid", "ipc", "uts", "mount")
# runsc runs as the init of a pid namespace of its own: when a worker is killed, the kernel
# reaps whatever of it is left (the Sentry's ptrace stubs would otherwise be orphans, and
# zombies for ever on hosts whose pid 1 does not reap). --pdeathsig: unshare dies with the
# server, --kill-child: runsc (and so the whole namespace) with unshare.
REAPER = ("setpriv", "--pdeathsig", "KILL", "--",
          "unshare", "--pid", "--fork", "--kill-child", "--mount-proc")
HOME_PREFIX = "gvisor-sandboxes-"


class GVisorWorker(ProcessWorker):
    """A runsc sandbox running one actor's harness: the process backend's worker, with the
    FIFO channel's guards and the bundle's folder to clean up."""

    HOST_CHECKS = False  # runsc's tree and the Sentry's threads are not bwrap's (see there)
    # an idle Sentry uses ~0.1 ms of CPU a second (measured, Python and JavaScript workers)
    IDLE_CPU_NS_PER_S = 2_000_000

    def __init__(self, *args: Any, bundle: Path, state: Path, guards: tuple[int, int],
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bundle = bundle
        self._state = state
        self._guards: tuple[int, ...] = guards
        self._guard_task = asyncio.create_task(self._release_guard_on_exit())

    async def wait_ready(self) -> None:
        """Wait for the harness's ``ready``; from then on it holds the channel's write end."""
        try:
            await super().wait_ready()
        except SandboxUnavailable as exc:
            raise SandboxUnavailable(BACKEND, str(exc.data.get("reason", exc))) from None
        finally:
            self._release_guard()

    def _failure(self, message: dict[str, Any], baseline: tuple[int, int]) -> Exception:
        """The Sentry enforces the pids limit (RLIMIT_NPROC: the host cgroup's is only a
        backstop sized for gVisor's own threads): a refused fork or thread is the limit."""
        if message.get("resource") == "pids":
            return ResourceLimitExceeded("pids", self.actor.limits.pids)
        return super()._failure(message, baseline)

    async def close(self) -> None:
        """Kill the sandbox (every runsc process; the kernel reaps the rest with runsc's pid
        namespace) and remove its files."""
        await super().close()
        self._release_guard()
        self._guard_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._guard_task
        await asyncio.to_thread(self._remove_files)

    def _remove_files(self) -> None:
        """The bundle, and runsc's state of a container it could not clean up (killed)."""
        shutil.rmtree(self._bundle, ignore_errors=True)
        for path in self._state.glob(f"*{self._bundle.name}*"):
            path.unlink(missing_ok=True)

    def _release_guard(self) -> None:
        """Close our own far ends of the FIFOs (see make_channel): from then on, the channel
        ends (EOF, broken pipe) when the harness's ends close."""
        for fd in self._guards:
            os.close(fd)
        self._guards = ()

    async def _release_guard_on_exit(self) -> None:
        """A sandbox that ends before ``ready`` must still end the channel."""
        await self._process.wait()
        self._release_guard()


class GVisorBackend:
    """Boots runsc sandboxes (see the module docstring)."""

    name = BACKEND

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._runsc = shutil.which(settings.sandbox.runsc) or settings.sandbox.runsc
        self._controllers: dict[str, Controller] | None = None
        self._home: Staged | None = None  # runsc's state, the bundles and the shared root
        self._workers: set[ProcessWorker] = set()

    @property
    def controllers(self) -> dict[str, Controller]:
        """The cgroup controllers workers get (discovered once)."""
        if self._controllers is None:
            self._controllers = discover_controllers()
            if swept := sweep_stale_groups(self._controllers):
                logger.info("removed %s cgroups left by servers that died", swept)
        return self._controllers

    def mechanisms(self) -> dict[str, str]:
        found = self.controllers
        return {name: found[name].mechanism if name in found else "none" for name in CONTROLLERS}

    @property
    def home(self) -> Path:
        """A private (0700) folder: runsc's --root, one bundle per worker, the shared rootfs."""
        if self._home is None:
            if swept := sweep_stale_homes():
                logger.info("removed %s gVisor folders left by servers that died", swept)
            self._home = Staged.owned(HOME_PREFIX)
            make_rootfs(self._home / "rootfs")
        return self._home.root

    async def availability(self) -> Availability:
        version = await runsc_version(self._runsc)
        details: dict[str, Any] = {"runsc": version,
                                   "platform": self.settings.sandbox.gvisor_platform,
                                   **self.mechanisms(), "disk": "Sentry tmpfs",
                                   "seccomp": f"Sentry; denylist of {len(DENIED)} inside"}
        if version is None:
            return Availability(BACKEND, False, f"runsc not found or not runnable ({self._runsc}); "
                                "install it with: apt-get install runsc", details)
        problem = await self._trial()
        return Availability(BACKEND, problem is None, problem or "", details)

    async def _trial(self) -> str | None:
        """Boot a trivial sandbox the way workers boot; None when it worked, else why not."""
        bundle = self._new_bundle()
        config = oci_config(self.settings, self.home / "rootfs", None, bundle, network=False,
                            args=[self.settings.sandbox.python, "-I", "-S", "-c", "print('ok')"])
        (bundle / "config.json").write_text(json.dumps(config))
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command(bundle, network=False), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
            try:
                async with asyncio.timeout(TRIAL_TIMEOUT_S):
                    out, err = await process.communicate()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, 9)
                await process.wait()
                return (f"the trial sandbox did not finish in {TRIAL_TIMEOUT_S:g} s "
                        f"(platform {self.settings.sandbox.gvisor_platform})")
        except OSError as exc:
            return f"cannot run runsc: {exc}"
        finally:
            shutil.rmtree(bundle, ignore_errors=True)
        if process.returncode != 0 or out.strip() != b"ok":
            return f"trial sandbox failed: {err.decode('utf-8', 'replace').strip()[-500:]}"
        return None

    async def start_worker(self, actor: ActorDef) -> GVisorWorker:
        """Boot a sandbox for ``actor`` and wait for its harness; SandboxUnavailable if not."""
        cgroups = WorkerCgroups.create(self.controllers, gvisor_limits(actor))
        spawning = asyncio.ensure_future(self._spawn(actor, cgroups))
        try:
            worker = await asyncio.shield(spawning)  # see ProcessBackend.start_worker
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

    async def _spawn(self, actor: ActorDef, cgroups: WorkerCgroups) -> GVisorWorker:
        bundle = self._new_bundle()
        try:
            channel = make_channel(bundle / "channel")
            config = oci_config(self.settings, self.home / "rootfs", actor, bundle,
                                network=actor.limits.network,
                                args=harness_args(actor, self.settings))
            (bundle / "config.json").write_text(json.dumps(config))
        except (OSError, SandboxUnavailable) as exc:
            shutil.rmtree(bundle, ignore_errors=True)
            if isinstance(exc, SandboxUnavailable):
                raise
            raise SandboxUnavailable(BACKEND, f"cannot write the sandbox's bundle: {exc}") from exc
        (out_r, out_w), (err_r, err_w) = output_pipes()
        gate_r, gate_w = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *_gated(self._command(bundle, actor.limits.network)), stdin=gate_r,
                stdout=out_w, stderr=err_w, start_new_session=True,
                env={"PATH": "/usr/bin:/bin"})
        except Exception as exc:  # OSError
            for fd in (channel[0], channel[1], *channel[2], out_r, err_r, gate_w):
                os.close(fd)
            shutil.rmtree(bundle, ignore_errors=True)
            raise SandboxUnavailable(BACKEND, f"cannot start runsc: {exc}") from exc
        finally:
            for fd in (out_w, err_w, gate_r):
                os.close(fd)
        try:
            # Off the event loop: the first move in a while waits for an RCU grace period
            # (~10 ms on cgroup v1), and a fork waiting for it held the loop 10-28 ms a boot.
            await to_the_end(asyncio.to_thread(cgroups.enter, process.pid))
            os.write(gate_w, b"\n")  # in its groups: runsc may start
        except BaseException as exc:  # OSError, or cancelled (the move is done by then)
            with contextlib.suppress(ProcessLookupError):
                process.kill()  # still at the gate: runsc never ran
            for fd in (channel[0], channel[1], *channel[2], out_r, err_r):
                os.close(fd)
            shutil.rmtree(bundle, ignore_errors=True)
            if isinstance(exc, OSError):
                raise SandboxUnavailable(BACKEND, f"cannot limit runsc: {exc}") from exc
            raise
        finally:
            os.close(gate_w)
        return await self._connect(actor, process, cgroups, channel, (out_r, err_r), bundle)

    async def _connect(self, actor: ActorDef, process: asyncio.subprocess.Process,
                       cgroups: WorkerCgroups, channel: tuple[int, int, tuple[int, int]],
                       output: tuple[int, int], bundle: Path) -> GVisorWorker:
        call_fd, event_fd, guards = channel
        limit = actor.limits.output_bytes + self.settings.max_message_bytes + CHUNK
        pipes = await connect_pipes(call_fd, event_fd, *output, limit)
        sandbox = self.settings.sandbox
        return GVisorWorker(actor, sandbox.tmp_mb, process, cgroups, pipes,
                            bundle=bundle, state=self.home / "state", guards=guards,
                            idle_lifetime_s=sandbox.idle_lifetime_s,
                            max_notifications=sandbox.max_notifications,
                            state_limits=self.settings.state)

    def _command(self, bundle: Path, network: bool) -> list[str]:
        return [*REAPER, self._runsc, "--root", str(self.home / "state"),
                f"--platform={self.settings.sandbox.gvisor_platform}",
                f"--network={'host' if network else 'none'}", "--host-uds=none",
                "--host-fifo=open", "--oci-seccomp",
                "--ignore-cgroups",  # ours, made before runsc starts
                "run", "--bundle", str(bundle), bundle.name]

    def _new_bundle(self) -> Path:
        bundle = self.home / f"w-{secrets.token_hex(8)}"
        bundle.mkdir(mode=0o700)
        return bundle

    def _adopt(self, worker: ProcessWorker) -> None:
        self._workers.add(worker)
        worker.on_closed = self._workers.discard

    async def aclose(self) -> None:
        """Close any worker its pool left open, and remove the backend's folder."""
        await asyncio.gather(*(w.close() for w in list(self._workers)), return_exceptions=True)
        if self._home is not None:
            await asyncio.to_thread(self._home.remove)
            self._home = None


def sweep_stale_homes() -> int:
    """Remove the folders of servers that died without closing their backend (their
    sandboxes died with them: see REAPER)."""
    return sweep_abandoned(HOME_PREFIX)


# --- the bundle --------------------------------------------------------------------------


def gvisor_limits(actor: ActorDef) -> Any:
    """The limits the worker's cgroups get: the actor's, plus what gVisor itself uses."""
    limits = actor.limits
    return dataclasses.replace(limits, memory_mb=limits.memory_mb + OVERHEAD_MB,
                               pids=limits.pids * PIDS_PER_TASK + OVERHEAD_TASKS)


def make_rootfs(path: Path) -> None:
    """The sandbox's read-only root: empty but for the host's /bin, /lib... symlinks."""
    path.mkdir(mode=0o755)
    for name in SYSTEM_DIRS:
        host = Path("/", name)
        if host.is_symlink():
            (path / name).symlink_to(os.readlink(host))


def make_channel(folder: Path) -> tuple[int, int, tuple[int, int]]:
    """Two FIFOs only the sandbox's user may open, and the host's ends of them:
    (call write end, event read end, guards).

    Opened without blocking, which a FIFO allows only while its other end is open: the
    guards are our own reader of the call FIFO and writer of the event FIFO, held until the
    harness has opened its ends (a FIFO with no writer reads as EOF at once). The call end
    is write-only, never read-write: asyncio takes a readable write end for a closed pipe.
    """
    folder.mkdir(mode=0o700)
    os.chown(folder, SANDBOX_UID, SANDBOX_UID)
    for name in ("in", "out"):
        os.mkfifo(folder / name, 0o600)
        os.chown(folder / name, SANDBOX_UID, SANDBOX_UID)
    flags = os.O_NONBLOCK | os.O_CLOEXEC
    call_guard = os.open(folder / "in", os.O_RDONLY | flags)
    call_fd = os.open(folder / "in", os.O_WRONLY | flags)
    event_fd = os.open(folder / "out", os.O_RDONLY | flags)
    event_guard = os.open(folder / "out", os.O_WRONLY | flags)
    return call_fd, event_fd, (call_guard, event_guard)


def harness_args(actor: ActorDef, settings: Settings) -> list[str]:
    """The sandbox's command: dash opens the channel, then becomes the harness."""
    return ["/bin/sh", "-c", OPEN_CHANNEL, "sh",
            *harness_command(actor, settings, (IN_FD, OUT_FD), BACKEND)]


def oci_config(settings: Settings, rootfs: Path, actor: ActorDef | None, bundle: Path, *,
               network: bool, args: list[str]) -> dict[str, Any]:
    """The OCI runtime spec of a sandbox (``actor`` None: the availability trial)."""
    namespaces = NAMESPACES if network else (*NAMESPACES, "network")
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False, "user": {"uid": SANDBOX_UID, "gid": SANDBOX_UID},
            "args": args, "env": [f"{k}={v}" for k, v in SANDBOX_ENV.items()],
            "cwd": ACTOR_DIR if actor is not None else "/",
            "capabilities": {k: [] for k in ("bounding", "effective", "inheritable",
                                             "permitted", "ambient")},
            "noNewPrivileges": True,
            "rlimits": _rlimits(settings, actor),
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "sandbox",
        "mounts": _mounts(settings, actor, bundle, network),
        "linux": {"namespaces": [{"type": name} for name in namespaces],
                  "seccomp": _seccomp(network)},
    }


def _seccomp(network: bool) -> dict[str, Any]:
    """The process backend's filter, enforced by the Sentry too (``--oci-seccomp``): less
    of the Sentry for a script to reach (its user namespaces, ptrace, keyrings, netlink...):
    the denylist, and the socket families (seccomp.refused_families) as an allowlist."""
    refused = [{"index": 0, "value": family, "op": "SCMP_CMP_EQ"}
               for family in refused_families(network)]
    refused.append({"index": 0, "value": FAMILY_MAX, "op": "SCMP_CMP_GT"})
    sockets = [{"names": list(SOCKET_CALLS), "action": "SCMP_ACT_ERRNO",
                "errnoRet": errno.EAFNOSUPPORT, "args": [condition]} for condition in refused]
    return {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": list(DENIED), "action": "SCMP_ACT_ERRNO",
                          "errnoRet": errno.EPERM}, *sockets]}


def _rlimits(settings: Settings, actor: ActorDef | None) -> list[dict[str, Any]]:
    # The Sentry enforces these itself. RLIMIT_NPROC counts the tasks (threads too) of uid
    # 65534 in this sandbox's kernel: exactly the actor's, so it is the pids limit.
    pairs = {"RLIMIT_CORE": 0, "RLIMIT_FSIZE": settings.sandbox.tmp_mb * MIB,
             "RLIMIT_NPROC": actor.limits.pids if actor is not None else 16}
    return [{"type": name, "soft": value, "hard": value} for name, value in pairs.items()]


def _mounts(settings: Settings, actor: ActorDef | None, bundle: Path,
            network: bool) -> list[dict[str, Any]]:
    mounts = [_bind("/usr", "/usr")]
    mounts += [_bind(f"/{name}", f"/{name}") for name in SYSTEM_DIRS
               if Path("/", name).is_dir() and not Path("/", name).is_symlink()]
    for interpreter in (settings.sandbox.python, settings.sandbox.node):
        prefix = Path(interpreter).resolve().parents[1]
        if not prefix.is_relative_to("/usr") and prefix != Path("/") and prefix.is_dir():
            mounts.append(_bind(str(prefix), str(prefix)))  # e.g. /opt/node
    for file in SYSTEM_FILES + (NETWORK_FILES if network else ()):
        if Path(file).exists():
            mounts.append(_bind(file, file))
    mounts.append({"destination": "/proc", "type": "proc", "source": "proc"})
    mounts.append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "nodev", "mode=1777",
                               f"size={settings.sandbox.tmp_mb * 1024}k"]})
    if actor is not None:
        harness = HARNESS_DIR / ("harness.py" if actor.language == "python" else "harness.js")
        channel = bundle / "channel"
        if deps := dependency_mount(actor, BACKEND):  # its built dependency set, read-only
            mounts.append(_bind(str(deps[0]), deps[1]))
        mounts += [_bind(str(actor.root), ACTOR_DIR),
                   _bind(str(harness), f"/harness/{harness.name}"),
                   # rw: gVisor refuses to open a FIFO for writing on a read-only mount; a
                   # single-FIFO mount lets nothing else be written
                   _bind(str(channel / "in"), CHANNEL_IN, "rw"),
                   _bind(str(channel / "out"), CHANNEL_OUT, "rw")]
    return mounts


def _bind(source: str, destination: str, mode: str = "ro") -> dict[str, Any]:
    return {"destination": destination, "type": "bind", "source": source,
            "options": ["rbind", mode, "nosuid", "nodev", "noexec" if mode == "rw" else "exec"]}


def _gated(command: list[str]) -> list[str]:
    """``command`` behind a gate: a shell waits for a line on its stdin, then becomes
    ``command`` (the same process, stdin /dev/null); at end of file it exits instead. The
    host moves it into the worker's cgroups meanwhile, so runsc and all it starts are in
    them before it runs, and the spawn needs no code between fork and exec (which made it a
    full fork, with the event loop waiting for the move)."""
    return ["/bin/sh", "-c", 'read -r _ || exit 70; exec "$@" </dev/null', "runsc-gate",
            *command]


async def runsc_version(runsc: str) -> str | None:
    """``runsc --version``'s release (e.g. "0.0~20221219.0"), None if it cannot run."""
    try:
        process = await asyncio.create_subprocess_exec(
            runsc, "--version", stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        async with asyncio.timeout(TRIAL_TIMEOUT_S):
            out, _ = await process.communicate()
    except (OSError, TimeoutError):
        return None
    if process.returncode != 0:
        return None
    first = out.decode("utf-8", "replace").splitlines()[:1]
    return first[0].removeprefix("runsc version ").strip() if first else ""
