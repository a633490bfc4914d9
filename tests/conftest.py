"""Options shared by every test folder.

``--backend=process|microvm|all`` picks the sandbox backend(s) that tests/sandbox and
tests/hostile run against (default: process). It is defined here, at the root, so that
it exists whichever folder pytest is pointed at.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backend", default="process",
                     choices=("process", "microvm", "microvm-local", "all"),
                     help="sandbox backend(s) for tests/sandbox and tests/hostile: process, "
                          "microvm, microvm-local (the microVM backend on the SDK double) or all")
