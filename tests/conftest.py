"""Options shared by every test folder.

``--backend=process|microvm|all`` picks the sandbox backend(s) that tests/sandbox and
tests/hostile run against (default: process). It is defined here, at the root, so that
it exists whichever folder pytest is pointed at.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

# Property tests judge behaviour, not speed: on a busy 2-core CI machine generation can be
# slow and one example can take longer than hypothesis' default 200 ms deadline.
settings.register_profile("service", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("service")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backend", default="process",
                     choices=("process", "microvm", "microvm-local", "all"),
                     help="sandbox backend(s) for tests/sandbox and tests/hostile: process, "
                          "microvm, microvm-local (the microVM backend on the SDK double) or all")
