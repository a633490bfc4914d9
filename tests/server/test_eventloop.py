"""The servers' event loop: asyncio's, polling for up to busy_poll_us before it sleeps."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time

from service.eventloop import BusyPollSelector, Turns, heavy_turn, loop_factory, run


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
