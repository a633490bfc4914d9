"""The fresh-sandbox floor: bubblewrap starting the interpreter on an empty script.

The bwrap options come from the process backend's own builder (``make_plan``), so the
namespaces, mounts, uid and interpreter flags are the ones a real worker gets; what is
left out is everything the backend adds on top: cgroups, the harness, the actor script,
the protocol channel.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench import procs
from service.manifest.model import ActorDef
from service.sandbox.process import ProcessBackend, harness_path, make_plan
from service.sandbox.staging import Stager
from service.settings import Settings

HARNESS_PREFIX = "/harness/"
EMPTY_SCRIPT = {"python": ("-c", ""), "javascript": ("-e", "")}
IDLE_SCRIPT = {"python": ("-c", "import time; time.sleep(60)"),
               "javascript": ("-e", "setTimeout(() => {}, 60000)")}
SETTLE_S = 0.5  # long enough for either interpreter to be up and idle


@dataclass(frozen=True)
class BareSandbox:
    """bwrap, the actor's sandbox options and its interpreter with flags: add a script."""

    prefix: tuple[str, ...]
    language: str
    uid: int | None  # the host uid bwrap runs as, as for a real worker

    async def spawn(self, script: Sequence[str]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *self.prefix, *script, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin"}, user=self.uid, group=self.uid,
            extra_groups=None if self.uid is None else [])


def bare_sandbox(actor: ActorDef, settings: Settings, stager: Stager) -> BareSandbox:
    """The bare sandbox of ``actor``: its bwrap options and interpreter, no harness. Its
    folders are mounted as the backend mounts them: as they are, or copies in ``stager``
    when the sandbox uid cannot read them (a checkout below a 0700 home)."""
    plan = make_plan(actor, settings, ProcessBackend(settings).mechanisms(), (0, 1),
                     root=stager.readable(actor.root),
                     harness=stager.readable(harness_path(actor)))
    harness_at = next(i for i, arg in enumerate(plan.command) if arg.startswith(HARNESS_PREFIX))
    bwrap = shutil.which("bwrap") or "/usr/bin/bwrap"  # found as the backend finds it
    return BareSandbox((bwrap, *plan.options, *plan.command[:harness_at]), actor.language,
                       plan.host_uid)


async def start_once(sandbox: BareSandbox) -> float:
    """Run the empty script in the bare sandbox until it exits; wall time in ms."""
    started = time.perf_counter()
    process = await sandbox.spawn(EMPTY_SCRIPT[sandbox.language])
    _, err = await process.communicate()
    elapsed_ms = (time.perf_counter() - started) * 1000
    if process.returncode != 0:
        raise RuntimeError(f"bare sandbox failed ({process.returncode}): {err.decode()[-500:]}")
    return elapsed_ms


async def idle_footprint(sandbox: BareSandbox) -> tuple[int, int]:
    """(RSS, PSS) in bytes of the bare sandbox's processes while the interpreter idles."""
    process = await sandbox.spawn(IDLE_SCRIPT[sandbox.language])
    try:
        await asyncio.sleep(SETTLE_S)
        found = procs.tree(process.pid)
        return found.rss, found.pss
    finally:
        process.kill()  # --die-with-parent takes the interpreter along
        await process.communicate()
