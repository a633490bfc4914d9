"""Options shared by every test folder.

``--backend`` picks the sandbox backend(s) that tests/sandbox and tests/hostile run
against: process, gvisor, microvm, microvm-local (tests/sandbox only: the microVM backend
on the SDK double), a comma-separated list, or all (default: process,gvisor; a backend
that cannot run here is skipped, saying why). It is defined here, at the root, so that it
exists whichever folder pytest is pointed at.
"""

from __future__ import annotations

import pytest
from backend_choice import DEFAULT, KNOWN, requested
from hypothesis import HealthCheck, settings

# Property tests judge behaviour, not speed: on a busy 2-core CI machine generation can be
# slow and one example can take longer than hypothesis' default 200 ms deadline.
settings.register_profile("service", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("service")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backend", default=DEFAULT,
                     help="sandbox backend(s) for tests/sandbox and tests/hostile: "
                          f"{', '.join(KNOWN)}, a comma-separated list or all (default: {DEFAULT})")


def pytest_configure(config: pytest.Config) -> None:
    requested(config)  # a typo is a usage error at once, not an empty run
