"""Options shared by every test folder.

``--backend`` picks the sandbox backend(s) that tests/sandbox and tests/hostile run
against: process, gvisor, microvm, microvm-local (tests/sandbox only: the microVM backend
on the SDK double), a comma-separated list, or all (default: process,gvisor; a backend
that cannot run here is skipped, saying why). It is defined here, at the root, so that it
exists whichever folder pytest is pointed at.

Every test gets the logging set-up it started with back (main() and setup_logging()
configure the root logger and aiohttp's), so no test depends on which ran before it.

A real Redis for any test that needs one: ``redis_server`` (its URL), ``redis_process``
(``.url``, ``.cli(...)``, ``.stop()``) and ``redis_factory`` (start several).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from backend_choice import DEFAULT, KNOWN, requested
from hypothesis import HealthCheck, settings
from redis_support import REDIS_CLI, REDIS_SERVER, RedisProcess

# Property tests judge behaviour, not speed: on a busy 2-core CI machine generation can be
# slow and one example can take longer than hypothesis' default 200 ms deadline.
settings.register_profile("service", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("service")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The root logger's handlers and level, and the filters of aiohttp's server logger
    (setup_logging adds one that rate-limits its lines per process), as they were."""
    root, server = logging.getLogger(), logging.getLogger("aiohttp.server")
    handlers, level, filters = list(root.handlers), root.level, list(server.filters)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    server.filters[:] = filters


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backend", default=DEFAULT,
                     help="sandbox backend(s) for tests/sandbox and tests/hostile: "
                          f"{', '.join(KNOWN)}, a comma-separated list or all (default: {DEFAULT})")


def pytest_configure(config: pytest.Config) -> None:
    requested(config)  # a typo is a usage error at once, not an empty run


# --- a real Redis (tests/redis_support.py) -------------------------------------------------

RedisFactory = Callable[[], RedisProcess]


@pytest.fixture
def redis_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisFactory]:
    """Start real redis-servers (unix sockets in temp folders); all stopped after the test.
    Skips, saying why, when redis-server is not installed."""
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server/redis-cli not installed (scripts/setup.sh installs them)")
    started: list[RedisProcess] = []

    def start() -> RedisProcess:
        folder: Path = tmp_path_factory.mktemp("redis")
        started.append(RedisProcess(folder).start())
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def redis_process(redis_factory: RedisFactory) -> RedisProcess:
    """One fresh real Redis for this test (``.url``, ``.cli("GET", key)``, ``.stop()``)."""
    return redis_factory()


@pytest.fixture
def redis_server(redis_process: RedisProcess) -> str:
    """The URL (``unix:///...``) of a fresh real Redis for this test."""
    return redis_process.url
