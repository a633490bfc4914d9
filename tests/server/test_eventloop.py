"""The servers' event loop: asyncio's, polling for up to busy_poll_us before it sleeps."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time

from service.eventloop import (
    HEAVY_SHARE,
    BusyPollSelector,
    Turns,
    drop_in_turn,
    heavy_turn,
    loop_factory,
    run,
)


def test_zero_polls_without_spinning() -> None:
    loop = loop_factory(0)()
    try:
        selector = loop._selector  # type: ignore[attr-defined]
        assert isinstance(selector, BusyPollSelector) and selector._spin_s == 0
    finally:
        loop.close()


def test_heavy_steps_take_turns_with_the_sockets() -> None:
    """One heavy step a turn of the loop, in the order they came, the sockets read between
    any two: forty connections' large frames ran back to back, /healthz waiting 1-2 s."""
    async def main() -> list[str]:
        events: list[str] = []
        reader, writer = socket.socketpair()
        loop = asyncio.get_running_loop()
        loop.add_reader(reader, lambda: events.append(f"read {reader.recv(1)!r}"))

        async def heavy(name: str) -> None:
            await heavy_turn()
            events.append(name)
            writer.send(name[-1].encode())  # ready for the next poll

        try:
            await asyncio.gather(*(heavy(f"step {i}") for i in range(4)))
            await asyncio.sleep(0.01)
        finally:
            loop.remove_reader(reader)
            reader.close()
            writer.close()
        return events

    events = run(main(), 0)
    steps = [i for i, event in enumerate(events) if event.startswith("step")]
    assert [events[i] for i in steps] == ["step 0", "step 1", "step 2", "step 3"]
    # what each step wrote was read before the next step ran
    assert all("read" in events[a + 1] for a in steps[:-1]), events


def test_heavy_steps_leave_the_rest_of_the_loop_its_share_of_the_time() -> None:
    """A heavy step that took 30 ms is followed by as long for everything else: a new
    connection's /healthz needs a few turns (accept, read, answer), and found a heavy step
    in each of them (40 connections' 1 MiB frames: 104-127 ms)."""
    step_s = 0.03

    async def main() -> tuple[list[tuple[str, float]], int]:
        events: list[tuple[str, float]] = []
        ticks = 0

        async def heavy(name: str) -> None:
            await heavy_turn()
            events.append((f"{name} began", time.perf_counter()))
            time.sleep(step_s)  # a decode, the loop held
            events.append((f"{name} ended", time.perf_counter()))

        async def light() -> None:  # a turn of its own each time: a request's steps
            nonlocal ticks
            while len(events) < 6:
                ticks += 1
                await asyncio.sleep(0)

        await asyncio.gather(light(), *(heavy(f"step {i}") for i in range(3)))
        return events, ticks

    events, ticks = run(main(), 0)
    names = [name for name, _ in events]
    assert names == ["step 0 began", "step 0 ended", "step 1 began", "step 1 ended",
                     "step 2 began", "step 2 ended"]
    gap = step_s * (1 - HEAVY_SHARE) / HEAVY_SHARE
    for ended, began in ((1, 2), (3, 4)):
        assert events[began][1] - events[ended][1] >= gap * 0.95, events
    assert ticks > 10  # the light steps ran in the gaps


def test_a_dropped_value_is_freed_in_a_heavy_turn_before_the_steps_waiting() -> None:
    """Freeing a large value (~6 ms for 350,000 objects) is a heavy step, and comes before
    decoding more: a flood's values freed last piled up to a gigabyte, and decodes into
    fresh memory took 100 ms."""
    class Value:
        def __del__(self) -> None:
            events.append("freed")
            times.append(time.perf_counter())

    events: list[str] = []
    times: list[float] = []

    async def main() -> None:
        async def heavy(name: str) -> None:
            await heavy_turn()
            events.append(name)
            time.sleep(0.02)  # the others wait as long again
            times.append(time.perf_counter())

        first = asyncio.ensure_future(heavy("step 0"))  # runs at once
        await asyncio.sleep(0)
        waiting = [asyncio.ensure_future(heavy(f"step {i}")) for i in (1, 2)]
        await asyncio.sleep(0)
        value = Value()
        drop_in_turn(value, lambda: events.append("then"))
        del value
        assert events == ["step 0"]  # still held: not freed in the caller's step
        await asyncio.gather(first, *waiting)
        await asyncio.sleep(0.01)

    run(main(), 0)
    assert events == ["step 0", "freed", "then", "step 1", "step 2"]
    assert times[1] - times[0] >= 0.02 * 0.95  # a heavy step: after step 0's share


async def test_heavy_turn_on_a_loop_it_did_not_make_returns_at_once() -> None:
    await asyncio.wait_for(heavy_turn(), 1)
    await asyncio.wait_for(heavy_turn(), 1)


def test_what_is_ready_comes_back_at_once() -> None:
    selector = BusyPollSelector(0.001)
    reader, writer = socket.socketpair()
    try:
        selector.register(reader, 1)  # EVENT_READ
        assert selector.select(0) == []
        writer.send(b"x")
        assert [key.fileobj for key, _ in selector.select(None)] == [reader]
    finally:
        selector.close()
        reader.close()
        writer.close()


def test_a_wait_longer_than_the_spin_still_sleeps_until_it_ends() -> None:
    selector = BusyPollSelector(0.001)
    reader, writer = socket.socketpair()
    try:
        selector.register(reader, 1)
        started = time.monotonic()
        assert selector.select(0.05) == []  # nothing came: the whole timeout, not the spin
        assert time.monotonic() - started >= 0.045
        threading.Timer(0.02, writer.send, (b"x",)).start()  # comes after the spin
        assert [key.fileobj for key, _ in selector.select(5)] == [reader]
    finally:
        selector.close()
        reader.close()
        writer.close()


def test_a_timeout_shorter_than_the_spin_is_kept() -> None:
    selector = BusyPollSelector(60.0)  # a spin far longer than the timer
    reader, writer = socket.socketpair()
    try:
        selector.register(reader, 1)
        started = time.monotonic()
        assert selector.select(0.01) == []
        assert time.monotonic() - started < 10
    finally:
        selector.close()
        reader.close()
        writer.close()


def test_the_servers_loop_runs_coroutines_timers_and_signals() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    async def main() -> tuple[str, float, bool]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop._selector, BusyPollSelector)  # type: ignore[attr-defined]
        started = loop.time()
        await asyncio.sleep(0.02)
        slept = loop.time() - started
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
            writer.write(b"ping\n")
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
        got_signal = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, got_signal.set)  # as a server is stopped
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(got_signal.wait(), 5)
        loop.remove_signal_handler(signal.SIGTERM)
        return line.decode(), slept, got_signal.is_set()

    line, slept, signalled = run(main(), 50)
    assert line == "ping\n" and slept >= 0.015 and signalled


async def test_turns_let_the_loop_run_after_so_many_items_or_bytes() -> None:
    ran: list[int] = []
    turns = Turns(items=3, size=100)
    asyncio.get_running_loop().call_soon(ran.append, 1)
    await turns.took()
    await turns.took()
    assert ran == []  # nothing yielded yet
    await turns.took()
    assert ran == [1]  # the third item's turn is up
    asyncio.get_running_loop().call_soon(ran.append, 2)
    await turns.took(100)  # or a turn's bytes
    assert ran == [1, 2]
