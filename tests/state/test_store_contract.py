"""The StateStore contract (service/state/base.py), run against every store."""

from __future__ import annotations

import asyncio
import json

import pytest
from redis_support import RedisProcess

from service.state.base import (
    INT64_MAX,
    NOT_AN_INTEGER,
    WOULD_OVERFLOW,
    StateOpError,
    StateStore,
    StoreDown,
    TooLarge,
)
from service.state.embedded import EmbeddedStore
from service.state.redis_store import RedisStore, redacted


async def test_get_set_delete(store: StateStore) -> None:
    assert await store.get("ns:a:k") is None
    await store.set("ns:a:k", '{"x":1}')
    assert await store.get("ns:a:k") == '{"x":1}'
    assert await store.delete("ns:a:k") is True
    assert await store.delete("ns:a:k") is False
    assert await store.get("ns:a:k") is None


async def test_increment_counts_from_zero_and_stores_json_text(store: StateStore) -> None:
    assert await store.increment("ns:a:n", 1) == 1
    assert await store.increment("ns:a:n", 5) == 6
    assert await store.increment("ns:a:n", -10) == -4
    assert await store.get("ns:a:n") == "-4"  # a JSON text the host's reader parses


@pytest.mark.parametrize("text", ['"five"', "1.5", "[1]", "007", " 5", "true",
                                  # what Redis refuses too: its integers have one spelling
                                  "-0", "+1", "-", "", "-007", "9223372036854775808",
                                  "1" * 25, "1" * 5000])
async def test_increment_refuses_a_value_that_is_not_an_integer(store: StateStore,
                                                                text: str) -> None:
    await store.set("ns:a:k", text)
    with pytest.raises(StateOpError) as caught:
        await store.increment("ns:a:k", 1)
    assert (caught.value.error_type, str(caught.value)) == ("TypeError", NOT_AN_INTEGER)
    assert await store.get("ns:a:k") == text  # untouched


@pytest.mark.parametrize(("text", "amount", "total"), [
    ("0", 1, 1), ("-1", 1, 0), ("-9223372036854775808", 1, -INT64_MAX),
    (str(INT64_MAX), -INT64_MAX, 0)])
async def test_increment_reads_every_64_bit_integer(store: StateStore, text: str,
                                                    amount: int, total: int) -> None:
    await store.set("ns:a:k", text)
    assert await store.increment("ns:a:k", amount) == total
    assert await store.get("ns:a:k") == str(total)


async def test_increment_refuses_to_overflow_64_bits(store: StateStore) -> None:
    await store.set("ns:a:k", str(INT64_MAX))
    with pytest.raises(StateOpError) as caught:
        await store.increment("ns:a:k", 1)
    # the same words on every store, and never Redis's command (which names the key)
    assert (caught.value.error_type, str(caught.value)) == ("OverflowError", WOULD_OVERFLOW)
    assert await store.get("ns:a:k") == str(INT64_MAX)


async def test_a_64_bit_total_comes_back_exact(store: StateStore) -> None:
    assert await store.increment("ns:a:k", INT64_MAX - 1) == INT64_MAX - 1
    assert await store.increment("ns:a:k", 1) == INT64_MAX  # not rounded through a double


async def test_a_value_over_max_bytes_is_not_read(store: StateStore) -> None:
    await store.set("ns:a:k", '"ééé"')  # 8 bytes of UTF-8 (5 characters)
    assert await store.get("ns:a:k", 8) == '"ééé"'
    with pytest.raises(TooLarge) as caught:
        await store.get("ns:a:k", 7)
    assert caught.value.size == 8
    assert await store.get("ns:a:absent", 0) is None
    seen: list[str | None] = []

    def change(old: str | None) -> tuple[str | None, None]:
        seen.append(old)
        return "1", None

    with pytest.raises(TooLarge):
        await store.update("ns:a:k", change, lambda: 7)
    assert seen == [] and await store.get("ns:a:k") == '"ééé"'  # neither read nor written
    await store.update("ns:a:k", change, lambda: 8)
    assert seen == ['"ééé"'] and await store.get("ns:a:k") == "1"


async def test_increment_is_atomic_under_concurrency(store: StateStore) -> None:
    await asyncio.gather(*(store.increment("ns:a:n", 1) for _ in range(200)))
    assert await store.get("ns:a:n") == "200"


async def test_update_reads_and_writes_in_one_step(store: StateStore) -> None:
    def append(old: str | None) -> tuple[str | None, int]:
        items = [] if old is None else json.loads(old)
        items.append(len(items))
        return json.dumps(items), len(items)

    results = await asyncio.gather(*(store.update("ns:a:l", append) for _ in range(30)))
    assert sorted(results) == list(range(1, 31))  # no two saw the same list
    assert json.loads(await store.get("ns:a:l") or "") == list(range(30))


async def test_update_can_delete_and_a_failing_change_writes_nothing(store: StateStore) -> None:
    await store.set("ns:a:k", "1")

    def refuse(old: str | None) -> tuple[str | None, None]:
        raise StateOpError("TypeError", "no")

    with pytest.raises(StateOpError):
        await store.update("ns:a:k", refuse)
    assert await store.get("ns:a:k") == "1"
    assert await store.update("ns:a:k", lambda old: (None, old)) == "1"
    assert await store.get("ns:a:k") is None


async def test_check_reports_the_store(store: StateStore) -> None:
    report = await store.check()
    assert report["store"] == store.name
    assert report["ttl_s"] == 3600


async def test_redis_writes_set_the_ttl_and_zero_means_none(redis_process: RedisProcess) -> None:
    store = RedisStore(redis_process.url, 100, 2)
    forever = RedisStore(redis_process.url, 0, 2)
    try:
        await store.set("ns:a:s", "1")
        await store.increment("ns:a:i", 1)
        await store.update("ns:a:u", lambda old: ("[]", None))
        for key in ("ns:a:s", "ns:a:i", "ns:a:u"):
            assert 90 <= int(redis_process.cli("TTL", key)) <= 100, key
        await forever.set("ns:a:s", "2")  # a write with ttl 0 clears the expiry
        await forever.increment("ns:a:f", 1)
        await forever.increment("ns:a:i", 1)  # as on the embedded store, an increment too
        assert redis_process.cli("TTL", "ns:a:s") == "-1"
        assert redis_process.cli("TTL", "ns:a:f") == "-1"
        assert redis_process.cli("TTL", "ns:a:i") == "-1"
    finally:
        await store.aclose()
        await forever.aclose()


async def test_embedded_keys_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("service.state.embedded.time.monotonic", lambda: clock[0])
    store = EmbeddedStore(10)
    await store.set("ns:a:k", "1")
    clock[0] += 9
    await store.increment("ns:a:k", 1)  # a write restarts the expiry
    clock[0] += 9
    assert await store.get("ns:a:k") == "2"
    clock[0] += 2
    assert await store.get("ns:a:k") is None
    assert await EmbeddedStore(0).get("x") is None


async def test_redis_that_is_down_raises_store_down(redis_process: RedisProcess) -> None:
    store = RedisStore(redis_process.url, 0, 1)
    redis_process.stop()
    try:
        with pytest.raises(StoreDown, match="redis"):
            await store.get("ns:a:k")
        with pytest.raises(StoreDown):
            await store.increment("ns:a:k", 1)
        with pytest.raises(StoreDown):
            await store.check()
    finally:
        await store.aclose()


async def test_a_restarted_redis_fails_no_operation(redis_process: RedisProcess) -> None:
    """Pooled connections to the Redis that went away fail once each: tried again on a
    fresh connection, no operation of a Redis that answers fails."""
    store = RedisStore(redis_process.url, 0, 2)
    try:
        await asyncio.gather(*(store.increment("ns:a:n", 1) for _ in range(12)))  # 12 pooled
        redis_process.stop()
        redis_process.start()
        totals = [await store.increment("ns:a:n", 1) for _ in range(30)]
        assert totals == list(range(1, 31))  # a new, empty Redis: counted from 0, none lost
    finally:
        await store.aclose()


def test_redacted_hides_the_password() -> None:
    assert redacted("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redacted("redis://:secret@host/0") == "redis://:***@host/0"
    assert redacted("unix:///run/redis.sock") == "unix:///run/redis.sock"
    assert redacted("redis://h:1/1?password=s3cret&x=1") == "redis://h:1/1?password=***&x=1"
    assert redacted("redis://:s3cret/pass@h:1/1") == "redis://:***@h:1/1"  # a / in it


async def test_redis_bytes_that_are_not_utf8_are_refused_to_the_script(
        redis_process: RedisProcess) -> None:
    import redis.asyncio as aioredis

    raw = aioredis.Redis.from_url(redis_process.url)
    await raw.set("ns:a:bin", b"\xff\xfe")
    await raw.aclose()
    store = RedisStore(redis_process.url, 0, 2)
    try:
        with pytest.raises(StateOpError) as caught:
            await store.get("ns:a:bin")
        assert caught.value.error_type == "ValueError"
    finally:
        await store.aclose()


async def test_redis_a_failed_increment_leaves_the_expiry_alone(
        redis_process: RedisProcess) -> None:
    store = RedisStore(redis_process.url, 100, 2)
    longer = RedisStore(redis_process.url, 1000, 2)
    try:
        await store.set("ns:a:t", '"text"')
        with pytest.raises(StateOpError):
            await longer.increment("ns:a:t", 1)  # nothing written: the key keeps its TTL
        assert 90 <= int(redis_process.cli("TTL", "ns:a:t")) <= 100
    finally:
        await store.aclose()
        await longer.aclose()


async def test_redis_errors_never_show_the_command_or_the_key(
        redis_process: RedisProcess) -> None:
    redis_process.cli("HSET", "ns:a:hash", "field", "1")  # a key the host keeps as a hash
    store = RedisStore(redis_process.url, 0, 2)
    try:
        for attempt in (store.get("ns:a:hash"), store.increment("ns:a:hash", 1),
                        store.update("ns:a:hash", lambda old: (old, None))):
            with pytest.raises(StateOpError) as caught:
                await attempt
            assert (caught.value.error_type, str(caught.value)) == (
                "TypeError", "the value under this key is not a string")
        redis_process.cli("CONFIG", "SET", "maxmemory", "1")  # full: writes are refused
        with pytest.raises(StoreDown) as down:
            await store.set("ns:a:WRONGTYPE overflow", "1")
        assert "ns:a:" not in str(down.value) and "SET" not in str(down.value)
        assert "OutOfMemoryError" in str(down.value)
    finally:
        await store.aclose()


async def test_the_embedded_store_holds_at_most_max_bytes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("service.state.embedded.time.monotonic", lambda: clock[0])
    store = EmbeddedStore(10, max_bytes=40)
    await store.set("ns:a:k", "x" * 14)  # 6 + 14 = 20 bytes of key and value
    await store.set("ns:a:k", "é" * 16)  # replaced: 6 + 32 = 38 bytes, not 58
    with pytest.raises(StoreDown, match="embedded store is full"):
        await store.set("ns:a:j", "1")
    with pytest.raises(StoreDown):
        await store.update("ns:a:j", lambda old: ("1", None))
    assert await store.get("ns:a:j") is None
    assert (await store.check())["bytes"] == 38
    assert await store.delete("ns:a:k")
    await store.set("ns:a:j", "1" * 34)  # the room freed is there again: 40 bytes, the most
    clock[0] += 11  # ns:a:j expired: a write that needs its room sweeps it first
    await store.set("ns:a:k", "2" * 34)
    assert await store.get("ns:a:k") == "2" * 34
    assert (await store.check())["bytes"] == 40
