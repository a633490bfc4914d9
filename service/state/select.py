"""Which store the settings select: Redis when ``state.redis_url`` is set, else embedded."""

from __future__ import annotations

from service.settings import StateSettings
from service.state.base import StateStore
from service.state.embedded import EmbeddedStore


def open_store(settings: StateSettings) -> StateStore:
    """A store for the runtime (Redis is dialled on first use, not here)."""
    if settings.redis_url:
        from service.state.redis_store import RedisStore  # redis-py only when used

        return RedisStore(settings.redis_url, settings.ttl_s, settings.timeout_s)
    return EmbeddedStore(settings.ttl_s, settings.embedded_max_bytes)
