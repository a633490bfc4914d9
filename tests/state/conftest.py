"""Fixtures of the state tests: a store of each kind (the same contract tests run on both)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from service.state.base import StateStore
from service.state.embedded import EmbeddedStore
from service.state.redis_store import RedisStore

STORES = ("embedded", "redis")


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    """An empty store of each kind, ttl 3600 s."""
    made: StateStore
    if request.param == "redis":
        made = RedisStore(request.getfixturevalue("redis_server"), 3600, 2)
    else:
        made = EmbeddedStore(3600)
    yield made
    await made.aclose()
