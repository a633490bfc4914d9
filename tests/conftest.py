"""Options shared by every test folder.

``--backend`` picks the sandbox backend(s) that tests/sandbox and tests/hostile run
against: one name, a comma-separated list, or ``all`` (default: process,gvisor; a backend
that cannot run here is skipped, saying why). It is defined here, at the root, so that it
exists whichever folder pytest is pointed at.
"""

from __future__ import annotations

import pytest

BACKENDS = ("process", "gvisor", "microvm")
DEFAULT_BACKENDS = "process,gvisor"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backend", default=DEFAULT_BACKENDS,
                     help="sandbox backend(s) for tests/sandbox and tests/hostile: process, "
                          f"gvisor, microvm, a comma-separated list or all ({DEFAULT_BACKENDS})")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``backend_name`` (tests/sandbox, tests/hostile) by ``--backend``."""
    if "backend_name" in metafunc.fixturenames:
        metafunc.parametrize("backend_name", chosen_backends(metafunc.config))


def chosen_backends(config: pytest.Config) -> tuple[str, ...]:
    """The backends ``--backend`` names, in BACKENDS order; a usage error for a typo."""
    chosen = str(config.getoption("backend", default=DEFAULT_BACKENDS))
    names = set(BACKENDS) if chosen == "all" else {n.strip() for n in chosen.split(",")}
    if unknown := names - set(BACKENDS):
        raise pytest.UsageError(f"--backend: unknown backend(s) {sorted(unknown)}; "
                                f"choose from {', '.join(BACKENDS)} or all")
    return tuple(name for name in BACKENDS if name in names)
