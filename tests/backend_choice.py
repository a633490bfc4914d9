"""``--backend`` (tests/conftest.py): the sandbox backends tests/sandbox and tests/hostile
run against. One name, a comma-separated list, or ``all`` (every backend the folder knows)."""

from __future__ import annotations

import pytest

DEFAULT = "process,gvisor"
KNOWN = ("process", "gvisor", "microvm", "microvm-local")


def requested(config: pytest.Config) -> set[str]:
    """The names given; a usage error for a name no folder knows."""
    value = str(config.getoption("backend", default=DEFAULT))
    if value == "all":
        return set(KNOWN)
    names = {name.strip() for name in value.split(",") if name.strip()}
    if unknown := names - set(KNOWN):
        raise pytest.UsageError(f"--backend: unknown backend(s) {sorted(unknown)}; choose "
                                f"from {', '.join(KNOWN)}, a comma-separated list, or all")
    return names


def parametrize(metafunc: pytest.Metafunc, known: tuple[str, ...]) -> None:
    """Parametrize ``backend_name`` with the requested backends ``known`` to this folder."""
    if "backend_name" in metafunc.fixturenames:
        chosen = requested(metafunc.config)
        metafunc.parametrize("backend_name", [name for name in known if name in chosen])
