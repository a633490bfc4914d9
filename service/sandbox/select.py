"""Pick the sandbox backend named by ``settings.backend`` (auto | microvm | process)."""

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


async def select_backend(settings: Settings) -> Backend:
    """The backend to serve with; raises SandboxUnavailable when ``microvm`` is asked but unusable.

    ``auto`` prefers microVMs (hardware isolation) and falls back to the process
    backend, saying why at WARNING.
    """
    if settings.backend == "process":
        log.info("sandbox backend: process (configured)")
        return _process_backend(settings)
    microvm = MicroVMBackend(settings)
    available = await microvm.availability()
    if available.ok:
        log.info("sandbox backend: microvm (%s)", settings.backend)
        return microvm
    await microvm.aclose()
    if settings.backend == "microvm":
        raise SandboxUnavailable("microvm", available.reason)
    log.warning("sandbox backend: process, because microvm is unavailable: %s "
                "(set backend = \"process\" in the settings, or SERVICE_BACKEND=process, "
                "to skip this check)", available.reason)
    return _process_backend(settings)


def all_backends(settings: Settings) -> list[Backend]:
    """One instance of every backend, for ``service doctor`` to probe (afresh: no cached
    microVM verdict)."""
    return [MicroVMBackend(settings, cached=False), _process_backend(settings)]
