"""Pick the sandbox backend named by ``settings.backend`` (auto | microvm | gvisor | process)."""

from __future__ import annotations

import logging

from service.errors import SandboxUnavailable
from service.sandbox.base import Backend
from service.sandbox.microvm import MicroVMBackend
from service.settings import Settings

log = logging.getLogger(__name__)


def _process_backend(settings: Settings) -> Backend:
    # Imported here: the process backend pulls in bubblewrap/cgroup helpers that a
    # microVM-only deployment never needs.
    from service.sandbox.process import ProcessBackend

    backend: Backend = ProcessBackend(settings)
    return backend


def _gvisor_backend(settings: Settings) -> Backend:
    from service.sandbox.gvisor import GVisorBackend

    backend: Backend = GVisorBackend(settings)
    return backend


async def select_backend(settings: Settings) -> Backend:
    """The backend to serve with; raises SandboxUnavailable when ``microvm`` or ``gvisor`` is
    asked for but unusable.

    ``auto`` prefers microVMs (hardware isolation), then gVisor (a user-space kernel), then
    the process backend, saying at WARNING why it fell back.
    """
    if settings.backend == "process":
        log.info("sandbox backend: process (configured)")
        return _process_backend(settings)
    if settings.backend == "gvisor":
        return await _usable(_gvisor_backend(settings), settings)
    microvm = MicroVMBackend(settings)
    available = await microvm.availability()
    if available.ok:
        log.info("sandbox backend: microvm (%s)", settings.backend)
        return microvm
    await microvm.aclose()
    if settings.backend == "microvm":
        raise SandboxUnavailable("microvm", available.reason)
    gvisor = _gvisor_backend(settings)
    gvisor_available = await gvisor.availability()
    if gvisor_available.ok:
        log.warning("sandbox backend: gvisor, because microvm is unavailable: %s",
                    available.reason)
        return gvisor
    await gvisor.aclose()
    log.warning("sandbox backend: process, because microvm is unavailable (%s) and gvisor "
                "too (%s) (set backend = \"process\" in the settings, or "
                "SERVICE_BACKEND=process, to skip these checks)", available.reason,
                gvisor_available.reason)
    return _process_backend(settings)


async def _usable(backend: Backend, settings: Settings) -> Backend:
    """``backend`` when it can start sandboxes here, else SandboxUnavailable saying why."""
    available = await backend.availability()
    if not available.ok:
        await backend.aclose()
        raise SandboxUnavailable(backend.name, available.reason)
    log.info("sandbox backend: %s (%s)", backend.name, settings.backend)
    return backend


def all_backends(settings: Settings) -> list[Backend]:
    """One instance of every backend, for ``service doctor`` to probe (afresh: no cached
    microVM verdict)."""
    return [MicroVMBackend(settings, cached=False), _gvisor_backend(settings),
            _process_backend(settings)]
