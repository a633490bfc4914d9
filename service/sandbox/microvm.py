"""The microVM backend: one microsandbox (libkrun) virtual machine per worker.

Each worker boots its own VM from ``settings.sandbox.python_image`` or
``node_image`` (an OCI reference, or a local rootfs directory bound as the
VM's root), with the actor's folder and the harness mounted read-only, a
private tmpfs ``/tmp``, no network unless ``limits.network``, and vCPUs and
memory taken from the actor's limits. The harness runs as one long-lived
``exec`` session; the host speaks the line protocol of ``base.py`` to it.

The private channel: the exec session has exactly one stdin and two output
streams. The harness is started through ``/bin/sh`` with its descriptors
rearranged so that fd 3 is the session's stdout and fds 1 and 2 both go to
the session's stderr. The harness writes protocol lines to fd 3 only, so
whatever the script (or a child process) prints lands on stderr and becomes
a log line, never a protocol line. A stdout line that is not a protocol object
can only come from code writing to fd 3 on purpose: the call fails with
ProtocolError and the VM is destroyed, as on the process backend.

The microsandbox SDK is imported lazily: this module loads (and reports why
the backend is unavailable) on hosts without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import re
import secrets
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.errors import (
    ActorFailed,
    ResourceLimitExceeded,
    RpcError,
    SandboxUnavailable,
    TimeLimitExceeded,
)
from service.eventloop import Turns
from service.heap import HEAP
from service.manifest.model import ActorDef
from service.sandbox.base import (
    CHUNK,
    MIB,
    Availability,
    CallOutcome,
    CallRequest,
    Event,
    EventSink,
    LineSplitter,
    LogEvent,
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
from service.sandbox.staging import PREFIX, Staged, copy_readable, sweep_stale_dirs
from service.settings import Limits, Settings, StateSettings

if TYPE_CHECKING:
    from microsandbox import ExecEvent, ExecHandle, ExecSink, ImageSource, Sandbox

log = logging.getLogger(__name__)

NAME = "microvm"
HARNESS_DIR = Path(__file__).resolve().parent / "harness"
KVM_DEVICE = Path("/dev/kvm")
KVM_GET_API_VERSION = 0xAE00  # _IO(KVMIO, 0x00)
KVM_API_VERSION = 12  # the only stable KVM API version
GUEST_ACTOR_DIR = "/actor"
GUEST_HARNESS_DIR = "/harness"
# Unprivileged inside the guest so that RLIMIT_NPROC (the pids limit) applies:
# the kernel does not enforce it for root.
GUEST_USER = "nobody"
# The guest kernel, its init/agent and page cache live in the VM's memory too;
# the actor's memory_mb is what is left for the harness and the script.
GUEST_OVERHEAD_MB = 96
PROTOCOL_FD = 3
# fd 3 := the session's stdout (protocol); fds 1 and 2 := the session's stderr (logs).
_FD_SHUFFLE = f'exec {PROTOCOL_FD}>&1 1>&2 && exec "$@"'
_HARNESS_FILES = {"python": "harness.py", "javascript": "harness.js"}
_GUEST_ENV = {
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
}
_STDERR_TAIL_LINES = 40
_FENCE_GRACE_S = 0.5  # how long a reply waits for the fences of fds 1 and 2
_PROBE_TIMEOUT_S = 5  # guest-side checks after the harness died (OOM counter)
_SDK_STEP_TIMEOUT_S = 15  # one SDK step of tearing a VM down (a kill waits up to 5 s itself)
# Every VM is labelled with its server: what a server that died left is found and removed.
OWNER = "actor-sandbox"
_OVERFLOW = object()  # queued by the session reader when too much waits undelivered


# --------------------------------------------------------------------------- availability


class MicroVMBackend:
    """Boots one microsandbox microVM per worker; availability is probed once, for real."""

    name = NAME

    def __init__(self, settings: Settings, *, cached: bool = True) -> None:
        self.settings = settings
        self._cached = cached  # False: always boot the canary (``service doctor``)
        self._availability: Availability | None = None
        self._lock = asyncio.Lock()
        self._started = False  # a worker was booted: leftovers were swept, and are at aclose

    async def availability(self) -> Availability:
        """SDK + runtime, /dev/kvm, then a canary boot; the first failure is the reason."""
        if self._availability is None:
            async with self._lock:
                if self._availability is None:
                    self._availability = await self._detect()
                    _log_availability(self._availability)
        return self._availability

    async def start_worker(self, actor: ActorDef) -> MicroVMWorker:
        """Boot a microVM for ``actor``; SandboxUnavailable when the backend or the boot fails."""
        available = await self.availability()
        if not available.ok:
            raise SandboxUnavailable(NAME, available.reason)
        if not self._started:
            self._started = True
            await asyncio.to_thread(sweep_stale_dirs)  # staged copies of servers that died
            await _sweep(lambda name: not _server_alive(name))
        return await boot_worker(actor, self.settings)

    async def aclose(self) -> None:
        """Remove every VM of this server's still there: its pools closed their workers, so
        these are VMs whose removal failed (or a boot's that the loop's end cut short)."""
        if self._started:
            await _sweep(lambda name: True, _labels())

    async def _detect(self) -> Availability:
        """Certain answers first (no SDK, no usable /dev/kvm, a CPU that cannot run guests);
        then the verdict cached for this host's inputs; only then a canary boot."""
        details: dict[str, Any] = {}
        problem = _check_sdk(details) or _check_kvm(details) or _cannot_boot(details)
        if problem is not None:
            return Availability(NAME, False, problem, details)
        key = _verdict_key(self.settings, details)
        verdict = _read_verdict(key) if self._cached else None
        if verdict is not None:
            return verdict
        failure = await _canary(self.settings, details)
        verdict = Availability(NAME, failure is None, failure.reason if failure else "", details)
        _write_verdict(key, verdict, failure.kind if failure else "ok")
        return verdict


def _log_availability(available: Availability) -> None:
    if available.ok:
        log.info("microvm backend available (%s)", available.details.get("canary_image"))
    else:
        log.info("microvm backend unavailable: %s", available.reason)


def _check_sdk(details: dict[str, Any]) -> str | None:
    """The SDK imports and resolves a complete msb + libkrunfw pair."""
    try:
        import microsandbox
    except ImportError as exc:
        return (f"microsandbox SDK is not installed ({exc}); it is the optional extra "
                "[microvm]: pip install 'actor-sandbox-service[microvm]'")
    details["sdk_version"] = microsandbox.version()
    try:
        runtime = microsandbox.resolve_runtime()
    except Exception as exc:  # the native resolver raises several error types
        return f"microsandbox runtime (msb + libkrunfw) not found: {_first_line(exc)}"
    details.update(msb=runtime.msb_path, libkrunfw=runtime.libkrunfw_path,
                   runtime_origin=runtime.origin)
    if not os.access(runtime.msb_path, os.X_OK):
        return f"microsandbox runtime binary is not executable: {runtime.msb_path}"
    if not Path(runtime.libkrunfw_path).is_file():
        return f"libkrunfw is missing: {runtime.libkrunfw_path}"
    return None


def _check_kvm(details: dict[str, Any]) -> str | None:
    """/dev/kvm exists, opens read-write and answers the stable API version."""
    if sys.platform != "linux":
        details["kvm"] = f"not used on {sys.platform}"
        return None
    details["kvm_modules"] = _kvm_modules()
    details["cpu_virt_flags"] = _cpu_virt_flags()
    if not KVM_DEVICE.exists():
        return (f"KVM is not available: {KVM_DEVICE} does not exist "
                "(enable VT-x/AMD-V and load kvm_intel or kvm_amd)")
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return (f"KVM is not usable: cannot open {KVM_DEVICE} read-write ({exc.strerror}); "
                "run as root or add the user to the kvm group")
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as exc:
        return f"KVM is not usable: {KVM_DEVICE} rejects KVM_GET_API_VERSION ({exc.strerror})"
    finally:
        os.close(fd)
    details["kvm_api_version"] = version
    if version != KVM_API_VERSION:
        return f"KVM is not usable: {KVM_DEVICE} reports API version {version}, expected 12"
    return None


def _kvm_modules() -> list[str]:
    names = ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm")
    return [name for name in names if Path("/sys/module", name).exists()]


def _cpu_virt_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return sorted(flags & {"vmx", "svm", "hypervisor"})


def _kvm_hint() -> str:
    """Why KVM may exist yet not run guests, from what the host says about itself."""
    modules = set(_kvm_modules())
    if "kvm_pvm" in modules and not {"kvm_intel", "kvm_amd"} & modules:
        return " — /dev/kvm is the paravirtual kvm-pvm device (no VT-x/AMD-V)"
    is_x86 = platform.machine() in ("x86_64", "AMD64")
    if sys.platform == "linux" and is_x86 and not {"vmx", "svm"} & set(_cpu_virt_flags()):
        return " — the CPU exposes no vmx/svm flag (enable nested virtualization)"
    return ""


def _cannot_boot(details: dict[str, Any]) -> str | None:
    """The reason, when the host says of itself that libkrun cannot run a guest here.

    Certain without a canary: kvm-pvm (a paravirtual device libkrun's guests fail on
    with KVM_EXIT_INTERNAL_ERROR) or an x86 CPU without vmx/svm. The text depends only
    on the host, so it is the same on every run.
    """
    hint = _kvm_hint()
    if not hint:
        return None
    details["decided_without_canary"] = True
    return f"KVM is not usable: microVMs cannot boot here{hint}"


# A verdict is cached per host and reused while the inputs it was reached from are
# unchanged and it is younger than its kind's lifetime: a canary boot costs seconds.
_VERDICT_TTL_S = {"ok": 86400, "kvm": 86400}
_TRANSIENT_VERDICT_TTL_S = 600  # an image that could not be pulled, a slow boot: retry soon


def _verdict_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "actor-sandbox" / "microvm-availability.json"


def _verdict_key(settings: Settings, details: dict[str, Any]) -> str:
    """A digest of everything a canary's outcome depends on."""
    inputs: list[Any] = [os.uname().release, settings.sandbox.python_image,
                         settings.sandbox.node_image, details.get("sdk_version"),
                         details.get("kvm_modules"), details.get("cpu_virt_flags"),
                         details.get("kvm_api_version")]
    for path in (details.get("msb"), details.get("libkrunfw"), str(KVM_DEVICE),
                 settings.sandbox.python_image, settings.sandbox.node_image):
        with contextlib.suppress(OSError, TypeError):
            st = os.stat(path)  # type: ignore[arg-type]
            inputs.append([path, st.st_mtime_ns, st.st_size, st.st_rdev])
    return hashlib.sha256(json.dumps(inputs, default=str).encode()).hexdigest()


def _read_verdict(key: str) -> Availability | None:
    try:
        saved = json.loads(_verdict_path().read_text())
        if saved["key"] != key or time.time() > saved["expires_at"]:
            return None
        details = dict(saved["details"], verdict_cached_at=saved["checked_at"],
                       verdict_cache=str(_verdict_path()))
        return Availability(NAME, bool(saved["ok"]), str(saved["reason"]), details)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_verdict(key: str, verdict: Availability, kind: str) -> None:
    """Keep ``verdict`` for the next start; a cache that cannot be written is only logged."""
    now = time.time()
    saved = {"key": key, "ok": verdict.ok, "reason": verdict.reason, "kind": kind,
             "details": verdict.details, "checked_at": now,
             "expires_at": now + _VERDICT_TTL_S.get(kind, _TRANSIENT_VERDICT_TTL_S)}
    path = _verdict_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(saved, default=str))
        temporary.replace(path)
    except OSError as exc:
        log.debug("cannot cache the microVM verdict in %s: %s", path, exc)


async def _canary(settings: Settings, details: dict[str, Any]) -> _BootFailure | None:
    """Boot the Python image and run its interpreter; on an image failure, probe KVM alone.

    The KVM probe (an empty rootfs, so no registry is needed) only ever sharpens
    the reason: when KVM itself cannot run a guest, that is the problem to fix first.
    """
    ref = settings.sandbox.python_image
    timeout_s = settings.sandbox.canary_timeout_s
    details["canary_image"] = ref
    details["node_image"] = await _image_state(settings.sandbox.node_image)
    failure = await _boot_check(ref, timeout_s, run_python=True)
    if failure is None or failure.kind != "image":
        return failure
    details["image_problem"] = failure.reason
    with tempfile.TemporaryDirectory(prefix="msb-kvm-probe-") as empty_root:
        probe = await _boot_check(empty_root, timeout_s, run_python=False)
    if probe is not None and probe.kind == "kvm":
        return probe
    return failure


@dataclass(frozen=True)
class _BootFailure:
    kind: str  # "image" | "kvm" | "boot" | "timeout" | "python" (booted, no python3)
    reason: str


async def _boot_check(ref: str, timeout_s: float, *,
                      run_python: bool) -> _BootFailure | None:
    """Boot a throwaway VM from ``ref`` (and run python3 in it); None when all went well."""
    from microsandbox import Network, SecurityProfile

    name = _vm_name("canary")
    try:
        image = _image_source(ref)
        async with asyncio.timeout(timeout_s):
            vm = await _create_vm(name, image, memory=256, cpus=1, network=Network.none(),
                                  security=SecurityProfile.RESTRICTED)
            if not run_python:
                return None
            return await _python_check(vm, ref)
    except TimeoutError:
        return _BootFailure("timeout", f"canary microVM from {ref} did not boot within "
                            f"{timeout_s:g} s (raise sandbox.canary_timeout_s or pre-pull it)")
    except Exception as exc:  # every SDK failure becomes a reason, never a crash
        return await _classify_boot_failure(name, ref, exc, "canary microVM")
    finally:
        await to_the_end(_discard(name))


async def _python_check(vm: Sandbox, ref: str) -> _BootFailure | None:
    """The VM booted: does its image run python3? (A spawn failure is the image's fault.)"""
    from microsandbox import Stdin

    try:
        out = await vm.exec("python3", ["-c", "print(6 * 7)"], stdin=Stdin.null())
    except Exception as exc:  # e.g. ExecFailedError: no python3 on the image's PATH
        return _BootFailure("python", f"image {ref} has no working python3 "
                            f"({_first_line(exc)})")
    if out.stdout_text.strip() != "42":
        return _BootFailure("python", f"image {ref} has no working python3 "
                            f"(exit {out.exit_code}: {_first_line(out.stderr_text)})")
    return None


async def _image_state(ref: str) -> str:
    """How an image stands locally, without pulling it (for the details of doctor)."""
    root = _local_rootfs(ref)
    if root is not None:
        return "local rootfs directory" if root.is_dir() else f"missing directory {root}"
    from microsandbox import Image

    try:
        await Image.get(ref)
    except Exception:  # not cached (or the cache cannot be read): pulled on first boot
        return "not cached: pulled on first boot"
    return "cached"


async def _classify_boot_failure(name: str, ref: str, exc: BaseException,
                                 what: str) -> _BootFailure:
    """Turn an SDK boot error into one line an operator can act on."""
    from microsandbox import ImageNotFoundError, ImagePullFailedError

    log.debug("%s %s failed to boot", what, name, exc_info=exc)
    message = _first_line(exc)
    if isinstance(exc, FileNotFoundError):  # a local rootfs directory that is not there
        return _BootFailure("image", f"image {ref} cannot be used: {message}")
    if isinstance(exc, ImageNotFoundError | ImagePullFailedError) or _is_image_error(message):
        unreachable = re.search(r"error sending request|dns|connect|timed out|unreachable",
                                message, re.IGNORECASE)
        cause = "registry unreachable" if unreachable else "pull failed"
        return _BootFailure("image", f"image {ref} cannot be pulled: {cause} ({message})")
    system = await _system_log(name)
    kvm_exit = re.search(r"KVM_EXIT_[A-Z_]+", system)
    if kvm_exit:
        return _BootFailure("kvm", f"KVM is not usable: {what} failed to boot "
                            f"({kvm_exit.group(0)}){_kvm_hint()}")
    errors = [ln for ln in system.splitlines() if " ERROR " in f" {ln} "]
    tail = f"; {errors[-1].strip()}" if errors else ""
    return _BootFailure("boot", f"{what} from {ref} failed to boot: {message}{tail}")


def _is_image_error(message: str) -> bool:
    return message.startswith(("image error", "registry error")) or "manifest unknown" in message


async def _system_log(name: str) -> str:
    """The runtime/kernel diagnostic lines the SDK kept for sandbox ``name`` ('' if none)."""
    from microsandbox import LogReadSource, Sandbox

    try:
        handle = await Sandbox.get(name)
        entries = await handle.logs(sources=[LogReadSource.SYSTEM])
    except Exception:  # no sandbox record (e.g. the pull failed first): nothing to read
        return ""
    return "\n".join(entry.text().rstrip() for entry in entries)


# --------------------------------------------------------------------------- booting


def _local_rootfs(ref: str) -> Path | None:
    """The directory ``ref`` names, when it names one; None for an OCI reference."""
    path = Path(ref).expanduser()
    if ref.startswith(("/", "./", "../", "~")) or path.is_dir():
        return path.resolve()
    return None


def _image_source(ref: str) -> str | ImageSource:
    """A local directory is bound as the VM's rootfs; anything else is an OCI reference."""
    from microsandbox import Image

    root = _local_rootfs(ref)
    if root is None:
        return ref
    if not root.is_dir():
        raise FileNotFoundError(f"rootfs directory {root} does not exist")
    return Image.bind(str(root))


def _vm_name(label: str) -> str:
    """A unique sandbox name carrying this server's pid (the SDK allows 128 bytes; ids are
    kept short and tame): ``svc-PID-LABEL-RANDOM``."""
    tame = re.sub(r"[^a-zA-Z0-9-]", "-", label)[:48].strip("-") or "actor"
    return f"svc-{os.getpid()}-{tame}-{secrets.token_hex(6)}"


def _labels() -> dict[str, str]:
    """The labels of this server's VMs."""
    return {"owner": OWNER, "server_pid": str(os.getpid())}


def _server_alive(name: str) -> bool:
    """Does the server whose pid the VM's name carries still run? (The name, not the
    ``server_pid`` label: a listed handle always has its name.)"""
    pid = name.split("-")[1] if name.startswith("svc-") and name.count("-") >= 3 else ""
    if not pid.isdigit():
        return True  # not named by a server: left alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


async def _create_vm(name: str, image: str | ImageSource, **options: Any) -> Sandbox:
    from microsandbox import Sandbox

    return await Sandbox.create(name, image=image, hostname="sandbox", labels=_labels(),
                                **options)


async def _sdk_step(step: Awaitable[Any]) -> Any:
    async with asyncio.timeout(_SDK_STEP_TIMEOUT_S):
        return await step


async def _discard(name: str) -> None:
    """Kill the VM called ``name`` if it runs and remove its persisted state; never raises.

    Each SDK step is bounded. A kill may give up after its own wait (the VM still runs,
    so the removal fails): tried once more; what is left then is swept when the backend
    closes, or by the next server."""
    from microsandbox import Sandbox, SandboxNotFoundError, SandboxNotRunningError

    failure: Exception | None = None
    for _ in range(2):
        try:
            handle = await _sdk_step(Sandbox.get(name))
            with contextlib.suppress(SandboxNotRunningError):
                await _sdk_step(handle.kill())
            await _sdk_step(Sandbox.remove(name))
            return
        except SandboxNotFoundError:  # never created, or already removed
            return
        except Exception as exc:
            failure = exc
    log.warning("could not remove microVM %s: %s", name, _first_line(failure))


async def _sweep(doomed: Callable[[str], bool], labels: dict[str, str] | None = None) -> None:
    """Discard the VMs labelled ``labels`` (default: any server's of this service) whose
    name ``doomed`` says must go."""
    from microsandbox import Sandbox

    names: list[str] = []
    cursor = None
    try:
        while True:
            page = await _sdk_step(Sandbox.list_with(cursor=cursor,
                                                     labels=labels or {"owner": OWNER}))
            names += [handle.name for handle in page.sandboxes]
            if (cursor := page.next_cursor) is None:
                break
    except Exception as exc:
        log.warning("could not list leftover microVMs: %s", _first_line(exc))
    names = [name for name in names if doomed(name)]
    if names:
        log.info("removing %d leftover microVM(s)", len(names))
    await asyncio.gather(*(_discard(name) for name in names))


def _vm_options(actor: ActorDef, settings: Settings, staged: Staged) -> dict[str, Any]:
    """Sandbox.create keyword arguments for one actor's worker.

    ``staged`` holds readable copies of the actor's folder and the harness: virtio-fs
    shows the guest the host's owner and mode bits, and the guest user owns neither.
    """
    from microsandbox import Network, NetworkProfile, SecurityProfile, Volume

    limits = actor.limits
    # network=true: the public internet, plus DNS (UDP and TCP port 53) to the host group,
    # i.e. the sandbox's gateway, which resolves names for the guest (from_profiles adds
    # that pair of rules to any profile). Never the LAN, loopback or metadata addresses.
    network = (Network.from_profiles(NetworkProfile.PUBLIC) if limits.network
               else Network.none())
    return {
        "cpus": max(1, math.ceil(limits.cpus)),
        "memory": limits.memory_mb + GUEST_OVERHEAD_MB,
        "network": network,
        "security": SecurityProfile.RESTRICTED,
        "volumes": {
            GUEST_ACTOR_DIR: Volume.bind(str(staged / "actor"), readonly=True, nosuid=True,
                                         nodev=True),
            GUEST_HARNESS_DIR: Volume.bind(str(staged / "harness"), readonly=True, nosuid=True,
                                           nodev=True),
            "/tmp": Volume.tmpfs(size_mib=settings.sandbox.tmp_mb, nosuid=True, nodev=True),
            **_dependency_volume(actor),
        },
    }


def _dependency_volume(actor: ActorDef) -> dict[str, Any]:
    """The actor's built dependency set, bound as it is (not staged: the builder sealed it
    0755/0644, readable by the guest's nobody, and copying it would cost every boot)."""
    from microsandbox import Volume

    deps = dependency_mount(actor, NAME)
    if deps is None:
        return {}
    return {deps[1]: Volume.bind(str(deps[0]), readonly=True, nosuid=True, nodev=True)}


def harness_argv(actor: ActorDef) -> tuple[str, list[str]]:
    """The command that runs the harness in the guest: ``IN_FD OUT_FD SCRIPT ENTRYPOINT``.

    stdin is the channel in; fd 3 (the session's stdout) the channel out.
    ``--own-pidns``: the harness runs as an unprivileged user alone in its VM, so its
    reset-time ``kill(-1)`` reaches exactly the script's leftover processes.
    """
    script = f"{GUEST_ACTOR_DIR}/{actor.script.relative_to(actor.root).as_posix()}"
    harness = f"{GUEST_HARNESS_DIR}/{_HARNESS_FILES[actor.language]}"
    interpreter = (["python3", "-I", "-B", "-u"] if actor.language == "python" else ["node"])
    return "/bin/sh", ["-c", _FD_SHUFFLE, "harness", *interpreter, harness,
                       "0", str(PROTOCOL_FD), script, actor.entrypoint, "--own-pidns",
                       *harness_path_flags(actor)]


def _image_ref(actor: ActorDef, settings: Settings) -> str:
    if actor.language == "python":
        return settings.sandbox.python_image
    return settings.sandbox.node_image


async def boot_worker(actor: ActorDef, settings: Settings) -> MicroVMWorker:
    """Boot a VM, start the harness in it and wait for its ``ready`` line (the VM's boot and
    the interpreter's start within ``sandbox.canary_timeout_s`` in all, the script's load
    within its ``timeout_s``: see MicroVMWorker.wait_ready)."""
    loop = asyncio.get_running_loop()
    timeout_s = settings.sandbox.canary_timeout_s
    deadline = loop.time() + timeout_s
    # Shielded, staging included: a cancelled Sandbox.create may make its VM all the same,
    # and a cancelled to_thread its copy. A boot that is cancelled (once or again) is let
    # finish, and what it made is destroyed.
    spawning = asyncio.ensure_future(_boot_guest(actor, settings, timeout_s))
    try:
        guest = await asyncio.shield(spawning)
    except asyncio.CancelledError:
        await to_the_end(_abandon(spawning))
        raise
    worker = MicroVMWorker(actor, guest, tmp_mb=settings.sandbox.tmp_mb,
                           state_limits=settings.state,
                           max_notifications=settings.sandbox.max_notifications,
                           max_message_bytes=settings.max_message_bytes)
    try:
        await worker.wait_ready(max(0.0, deadline - loop.time()))
    except BaseException as exc:
        await to_the_end(worker.close())
        if isinstance(exc, TimeoutError):
            raise SandboxUnavailable(NAME, f"the harness for {actor.id} sent no ready line "
                                     f"within {timeout_s:g} s") from None
        raise
    log.debug("microVM %s ready for %s", guest.name, actor.id)
    return worker


async def _abandon(spawning: asyncio.Future[_Guest]) -> None:
    """Let a boot that was cancelled finish, then destroy the VM it made (a boot that
    failed has removed what it made)."""
    with contextlib.suppress(Exception):
        guest = await spawning
        await guest.destroy()


def _stage(actor: ActorDef) -> Staged:
    """Readable copies of the actor's folder and the harness (see staging.py), in a folder
    named and locked as a Stager's runtime directory is (Staged.owned): so
    sweep_stale_dirs removes the copies a server that died left."""
    staged = Staged.owned(PREFIX, "vm-")
    try:
        staged.root.chmod(0o755)
        for name, source in {"actor": actor.root, "harness": HARNESS_DIR}.items():
            copy_readable(source, staged / name)
    except BaseException:
        staged.remove()
        raise
    return staged


async def _boot_guest(actor: ActorDef, settings: Settings, timeout_s: float) -> _Guest:
    """Stage, boot and start the harness session; on any failure, remove what was made."""
    name = _vm_name(actor.id)
    dependency_mount(actor, NAME)  # unbuilt dependencies: refused before anything is staged
    staged = await asyncio.to_thread(_stage, actor)
    try:
        sandbox, handle = await _start_harness(actor, settings, name, staged, timeout_s)
        stdin = handle.take_stdin()
        if stdin is None:  # the SDK hands the sink out once; a fresh handle always has it
            raise SandboxUnavailable(NAME, "the SDK gave no stdin for the harness session")
    except BaseException:
        await _discard(name)
        staged.remove()
        raise
    return _Guest(name, sandbox, handle, stdin, staged)


async def _start_harness(actor: ActorDef, settings: Settings, name: str, staged: Staged,
                         timeout_s: float) -> tuple[Sandbox, ExecHandle]:
    """Boot the VM called ``name`` and start the harness; SandboxUnavailable if not."""
    from microsandbox import Rlimit, Stdin

    ref = _image_ref(actor, settings)
    try:
        async with asyncio.timeout(timeout_s):
            options = _vm_options(actor, settings, staged)
            sandbox = await _create_vm(name, _image_source(ref), **options)
            command, args = harness_argv(actor)
            handle = await sandbox.exec_stream(
                command, args, cwd=GUEST_ACTOR_DIR, user=GUEST_USER, env=_GUEST_ENV,
                stdin=Stdin.pipe(), rlimits=[Rlimit.nproc(actor.limits.pids)])
    except TimeoutError:
        raise SandboxUnavailable(NAME, f"microVM from {ref} did not boot within "
                                 f"{timeout_s:g} s") from None
    except Exception as exc:  # every SDK failure to boot is a SandboxUnavailable
        failure = await _classify_boot_failure(name, ref, exc, "microVM")
        raise SandboxUnavailable(NAME, failure.reason) from exc
    return sandbox, handle


class _Guest:
    """The SDK objects of one booted VM and the harness session streaming inside it."""

    def __init__(self, name: str, sandbox: Sandbox, handle: ExecHandle, stdin: ExecSink,
                 staged: Staged) -> None:
        self.name = name
        self._sandbox = sandbox
        self._handle = handle
        self._stdin = stdin
        self._staged = staged

    async def send(self, data: bytes) -> None:
        await self._stdin.write(data)

    async def recv(self) -> ExecEvent | None:
        """The next event of the harness session; None once it is over or the VM is gone."""
        try:
            return await self._handle.recv()
        except Exception as exc:  # the VM died under the session
            log.debug("microVM %s: session ended: %s", self.name, _first_line(exc))
            return None

    async def oom_kills(self) -> int:
        """How many processes the guest kernel's OOM killer has killed since boot."""
        out = await self._sandbox.exec("cat", ["/proc/vmstat"])
        for line in out.stdout_text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    async def destroy(self) -> None:
        """Kill the session and the VM, remove its record and the copies; never raises.
        Each SDK step is bounded: a VM that outlives them is swept later (see _discard)."""
        try:
            for kill in (self._handle.kill, self._sandbox.kill):
                with contextlib.suppress(Exception):  # the session or the VM may be gone
                    await _sdk_step(kill())
            await _discard(self.name)
        finally:
            self._staged.remove()


# --------------------------------------------------------------------------- the worker


class _Lines(LineSplitter):
    """Text lines of a session stream, a final ``\r`` dropped."""

    def __init__(self, piece: int | None = None) -> None:
        super().__init__(piece, strip_cr=True)


def _size(event: Any) -> int:
    """The bytes a session event holds."""
    return len(event.data or b"") if event is not None else 0


async def _drop(event: Event) -> None:
    """The sink outside calls (boot, reset): nobody is listening."""
    log.debug("microVM output outside a call: %s", event)


class MicroVMWorker:
    """One booted microVM holding one actor's harness; runs calls one after another.

    A reader task moves the session's events into a queue, so a timeout only ever
    cancels a queue wait, never an SDK read halfway through an event. The SDK buffers a
    session's events without bound, so the reader takes them as they come (the queue
    applies no backpressure to the guest) and bounds what waits in bytes instead: past
    a call's output_bytes, one message (max_message_bytes) and one CHUNK, the VM is
    destroyed and the call fails -32006 output.
    """

    def __init__(self, actor: ActorDef, guest: Any, tmp_mb: int,
                 state_limits: StateSettings | None = None, max_notifications: int | None = None,
                 max_message_bytes: int = 1 << 20) -> None:
        self.actor = actor
        self._guest = guest  # a _Guest (tests pass a stand-in with the same methods)
        self._tmp_mb = tmp_mb
        self._state_limits = state_limits or StateSettings()
        self._max_notifications = max_notifications
        # Nothing legitimate waits beyond this: a call's whole output, one message (a state
        # request, the result) and one raw piece; also the longest protocol line accepted.
        self._backlog_limit = actor.limits.output_bytes + max_message_bytes + CHUNK
        self._backlog = 0  # bytes received from the session and not yet taken from the queue
        self._alive = True
        self._closing: asyncio.Future[None] | None = None
        self._session_over = False  # the reader saw the harness's end (or overflowed)
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._splitters = {"stdout": _Lines(), "stderr": _Lines(piece=CHUNK)}
        self._lines: deque[tuple[str, str]] = deque()
        self._stderr_tail: deque[str] = deque(maxlen=_STDERR_TAIL_LINES)
        self._fence = ""
        self._fences_seen = 0
        self._state_requests: StateRequests | None = None  # the running call's state operations

    @property
    def alive(self) -> bool:
        return self._alive

    def claim(self) -> bool:
        """Alive, and its harness not gone while it was idle (an exit waits in the queue):
        else the pool takes another worker."""
        return self._alive and not self._session_over

    async def wait_ready(self, boot_timeout_s: float | None = None) -> None:
        """Consume boot output until the harness says ``ready``: within ``boot_timeout_s``
        (None: no limit; TimeoutError) until it says it is loading the script, then within
        the actor's timeout_s, as a call (TimeLimitExceeded: the script's top-level code
        ran too long). Only the first ``loading`` counts: the script runs after it. What the
        load writes goes nowhere, but is held to what one call may send (output_bytes and
        sandbox.max_notifications), else the boot fails with -32006 output."""
        budget = OutputBudget(self.actor.limits.output_bytes, self._max_notifications)
        async with asyncio.timeout(boot_timeout_s):
            reply = await self._read_reply(budget, _drop)
        if reply["type"] == "loading":
            timeout_s = self.actor.limits.timeout_s
            try:
                async with asyncio.timeout(timeout_s):
                    while reply["type"] == "loading":
                        reply = await self._read_reply(budget, _drop)
            except TimeoutError:
                raise TimeLimitExceeded(timeout_s, "the script did not finish loading within "
                                        f"its timeout_s ({timeout_s:g} s)") from None
        if reply["type"] != "ready":
            raise self._error(reply)

    async def call(self, request: CallRequest, on_event: EventSink) -> CallOutcome:
        """Run one call; any failure (or cancellation) destroys the VM."""
        if not self._alive:
            raise ActorFailed("WorkerClosed", "this microVM worker was already closed")
        limit_s = self.actor.limits.timeout_s
        timer = asyncio.timeout(limit_s)
        try:
            async with timer:
                outcome, lingering = await self._exchange(request, on_event)
        except TimeoutError:
            await to_the_end(self.close())
            if timer.expired():
                raise TimeLimitExceeded(limit_s) from None
            raise
        except BaseException:
            await to_the_end(self.close())
            raise
        if lingering:  # threads or timers would run on between calls: not reused
            await to_the_end(self.close())
        return outcome

    async def reset(self) -> None:
        """Have the harness kill the script's leftover processes and wipe /tmp."""
        try:
            async with asyncio.timeout(self.actor.limits.timeout_s):
                await self._guest.send(encode_line({"type": "reset"}))
                budget = OutputBudget(self.actor.limits.output_bytes, self._max_notifications)
                reply = await self._read_reply(budget, _drop)
            if reply["type"] != "ready":
                raise self._error(reply)
        except BaseException as exc:
            await to_the_end(self.close())
            if isinstance(exc, Exception):
                raise SandboxUnavailable(NAME, f"could not reset a worker: {exc}") from exc
            raise

    async def close(self) -> None:
        """Kill the VM and remove its state; idempotent. The close finishes even when its
        caller is cancelled: a later close waits for the same one."""
        await asyncio.shield(self._start_close())

    def _start_close(self) -> asyncio.Future[None]:
        if self._closing is None:
            self._alive = False
            if self._reader is not None and self._reader is not asyncio.current_task():
                self._reader.cancel()
            self._closing = asyncio.ensure_future(self._guest.destroy())
        return self._closing

    async def _exchange(
        self, request: CallRequest, on_event: EventSink
    ) -> tuple[CallOutcome, bool]:
        """The call's outcome, and whether the script left work running after it."""
        self._fence, self._fences_seen = secrets.token_hex(16), 0
        self._state_requests = StateRequests(request, self._state_limits)
        budget = OutputBudget(self.actor.limits.output_bytes, self._max_notifications,
                              hold_limit=self.actor.limits.memory_mb * MIB)
        try:
            await self._guest.send(await call_line_in_turn(request, self._fence))
            reply = await self._read_reply(budget, on_event)
            await self._drain_fences(budget, on_event)
        finally:
            self._state_requests = None  # it holds the call's request: its payload
            budget.release()
        if reply["type"] == "result":
            state = reply.get("state")
            outcome = CallOutcome(reply.get("return"), state if isinstance(state, dict) else {})
            return outcome, reply.get("lingering") is True
        if reply["type"] in ("ready", "loading"):
            raise ActorFailed("ProtocolError",
                              f"the harness answered a call with {reply['type']!r}")
        raise self._error(reply)

    async def _drain_fences(self, budget: OutputBudget, on_event: EventSink) -> None:
        """Forward what the script wrote to fds 1/2 before its reply (both fences seen).

        The fences ride the session's stderr, the reply its stdout: two streams with
        no order between them. A script that closed fd 1 or 2 costs a short grace.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_FENCE_GRACE_S):
                while self._fences_seen < 2:
                    stream, line = await self._next_line()
                    stray = await self._route(stream, line, on_event, budget)
                    if stray is not None:
                        log.warning("microVM %s: protocol line after the reply: %s",
                                    self._guest.name, stray.get("type"))

    async def _read_reply(self, budget: OutputBudget, on_event: EventSink) -> dict[str, Any]:
        """Forward outputs and logs until a result, error or ready message; return it."""
        turns = Turns()  # what the guest wrote at once is queued: none of it waits
        while True:
            stream, line = await self._next_line()
            reply = await self._route(stream, line, on_event, budget)
            if reply is not None:
                return reply
            await turns.took(len(line))

    async def _route(self, stream: str, line: str, on_event: EventSink,
                     budget: OutputBudget) -> dict[str, Any] | None:
        """Forward one line as an event, charged what its notification takes on the wire
        (as on the process backend: a flood of tiny lines breaches the limit as fast as a
        flood of big ones); a reply (result, error, ready, loading) is returned instead. A
        line whose decoded values would be more than the call may have the server hold is
        refused before it is decoded (OutputBudget.fits)."""
        if stream == "stderr":
            if self._fence and line.endswith(self._fence):  # what precedes it: a partial line
                self._fences_seen += 1
                line = line[:-len(self._fence)]
                if not line:
                    return None
            self._stderr_tail.append(line)
            budget.notify(log_size(self.actor.id, "stderr", line))
            await on_event(LogEvent("stderr", line))
            return None
        raw = line.encode("utf-8", "surrogatepass")
        size = budget.fits(raw)
        parks = HEAP.parks
        message = _protocol_message(line)
        if message is None:  # only the harness writes fd 3: anything else is an attack
            raise ActorFailed("ProtocolError", f"the harness sent garbage: {line[:200]!r}")
        kind = message["type"]
        if kind in ("output", "result"):
            budget.hold(size, parks)  # released as the call ends (_exchange)
        if kind == "result" or (kind == "error" and "resource" not in message):
            budget.spend(len(raw))  # the return value and state, or the traceback: all go back
        if kind in ("result", "error", "ready", "loading"):
            return message
        if kind == "state" and self._state_requests is not None:
            await self._guest.send(await self._state_requests.reply(message, len(raw)))
            return None
        event = _event_of(message)
        if isinstance(event, OutputEvent):
            budget.notify(notification_size("output", self.actor.id, len(raw)))
        else:
            budget.notify(log_size(self.actor.id, event.stream, event.message))
        await on_event(event)
        return None

    async def _next_line(self) -> tuple[str, str]:
        """The next complete line of either stream; the harness' exit raises what it means."""
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_session())
        while not self._lines:
            event = await self._events.get()
            if event is _OVERFLOW:
                raise ResourceLimitExceeded("output", self.actor.limits.output_bytes)
            self._backlog -= _size(event)
            if event is None:
                raise await self._death(None)
            kind = str(event.event_type)
            if kind == "failed":  # the guest agent could not spawn the harness at all
                raise _spawn_failure(event)
            if kind == "exited":
                raise await self._death(event.code)
            if kind in ("stdout", "stderr"):
                self._lines.extend((kind, line) for line in self._splitters[kind].feed(
                    event.data or b""))
                if self._splitters["stdout"].pending > self._backlog_limit:
                    raise ResourceLimitExceeded("output", self.actor.limits.output_bytes)
        return self._lines.popleft()

    async def _read_session(self) -> None:
        """Move the session's events into the queue until it ends (None marks the end), or
        until more bytes wait in it than any call may leave waiting: the VM is then
        destroyed at once, since the guest would go on filling the SDK's buffer."""
        while True:
            event = await self._guest.recv()
            self._backlog += _size(event)
            if self._backlog > self._backlog_limit:
                log.warning("microVM %s: more than %d bytes of output wait undelivered; "
                            "destroying it", self._guest.name, self._backlog_limit)
                self._overflow()
                return
            self._events.put_nowait(event)
            if event is None or str(event.event_type) in ("exited", "failed"):
                self._session_over = True
                return

    def _overflow(self) -> None:
        """Drop what waits, tell the reading call, and destroy the VM."""
        self._session_over = True
        while not self._events.empty():
            self._events.get_nowait()
        self._backlog = 0
        self._events.put_nowait(_OVERFLOW)
        self._start_close()

    def _error(self, message: dict[str, Any]) -> RpcError:
        resource = message.get("resource")
        if isinstance(resource, str):
            return ResourceLimitExceeded(resource, _limit_of(resource, self.actor.limits,
                                                             self._tmp_mb))
        return harness_failure(message)

    async def _death(self, code: int | None) -> RpcError:
        """The harness is gone: say why when the guest knows (its OOM killer)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                if await self._guest.oom_kills() > 0:
                    return ResourceLimitExceeded("memory", self.actor.limits.memory_mb)
        how = f"exited with code {code}" if code is not None else "lost its microVM"
        return ActorFailed("SandboxCrashed", f"the actor's process {how}",
                           "\n".join(self._stderr_tail))


def _spawn_failure(event: Any) -> SandboxUnavailable:
    """A FAILED exec event: ``data`` holds the agent's reason, ``code`` an errno."""
    reason = (event.data or b"").decode("utf-8", errors="replace").strip()
    code = event.code
    errno_name = f" ({errno.errorcode.get(code, code)})" if isinstance(code, int) else ""
    return SandboxUnavailable(NAME, "the guest could not start the harness: "
                              f"{reason or 'no reason given'}{errno_name}")


def _protocol_message(line: str) -> dict[str, Any] | None:
    """The protocol object on ``line``, or None when it is not one."""
    if not line.startswith("{"):
        return None
    try:
        message = decode_line(line)
    except ValueError:
        return None
    if isinstance(message, dict) and isinstance(message.get("type"), str):
        return message
    return None


def _event_of(message: dict[str, Any]) -> Event:
    kind = message["type"]
    if kind == "output" and isinstance(message.get("port"), str):
        return OutputEvent(message["port"], message.get("data"))
    if kind == "log":
        stream = message.get("stream")
        return LogEvent(stream if stream in ("stdout", "stderr") else "stdout",
                        str(message.get("message", "")))
    return LogEvent("stdout", json.dumps(message))  # an unknown type: shown, not obeyed


def _limit_of(resource: str, limits: Limits, tmp_mb: int) -> Any:
    return {"memory": limits.memory_mb, "pids": limits.pids, "output": limits.output_bytes,
            "cpu": limits.cpus, "disk": tmp_mb}.get(resource)


def _first_line(value: object) -> str:
    text = str(value).strip()
    return text.splitlines()[0][:300] if text else type(value).__name__
