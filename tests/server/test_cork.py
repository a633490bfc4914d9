"""A connection's TCP cork: a notification waits for the response (CORK_S at most)."""

from __future__ import annotations

import asyncio
import socket

from service.rpc.core import Dispatcher
from service.server import CORK_S, Session


class FakeSocket:
    def __init__(self) -> None:
        self.corks: list[int] = []

    def setsockopt(self, level: int, option: int, value: int) -> None:
        assert (level, option) == (socket.IPPROTO_TCP, socket.TCP_CORK)
        self.corks.append(value)


class FakeWebSocket:
    closed = False

    def __init__(self, sock: FakeSocket) -> None:
        self.sock = sock
        self.frames: list[tuple[str, list[int]]] = []  # each with the corks set before it

    async def send_str(self, text: str) -> None:
        self.frames.append((text, list(self.sock.corks)))


def session() -> tuple[Session, FakeWebSocket, FakeSocket]:
    sock = FakeSocket()
    ws = FakeWebSocket(sock)
    return Session(ws, Dispatcher(), sock=sock), ws, sock  # type: ignore[arg-type]


async def test_the_response_uncorks_at_once() -> None:
    s, ws, sock = session()
    await s.send_more("notification")
    await s.send_more("another")  # already corked: no second cork
    await s.send("response")
    assert sock.corks == [1, 0]
    assert ws.frames == [("notification", [1]), ("another", [1]), ("response", [1])]
    await asyncio.sleep(CORK_S * 3)
    assert sock.corks == [1, 0]  # the timer was cancelled: no stray uncork


async def test_a_notification_alone_leaves_after_cork_s() -> None:
    s, _, sock = session()
    await s.send_more("notification")
    assert sock.corks == [1]
    await asyncio.sleep(CORK_S * 3)
    assert sock.corks == [1, 0]
    await s.send_more("next")  # corked again for the next one
    assert sock.corks == [1, 0, 1]


async def test_a_response_alone_is_never_corked() -> None:
    s, ws, sock = session()
    await s.send("response")
    assert sock.corks == [] and ws.frames == [("response", [])]


def test_cork_s_is_far_below_the_kernels_own_limit() -> None:
    assert 0 < CORK_S <= 0.005  # Linux sends a corked segment after 200 ms anyway


class SlowWebSocket(FakeWebSocket):
    """Each write waits until the test lets it through (a client taking its bytes)."""

    def __init__(self, sock: FakeSocket) -> None:
        super().__init__(sock)
        self.gates: list[asyncio.Event] = []

    async def send_str(self, text: str) -> None:
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        await super().send_str(text)


async def test_the_wait_watched_is_the_oldest_messages_not_the_write_under_way() -> None:
    """A client that takes each write in time but falls behind: what the write timeout
    watches is how long the oldest message has waited, queued behind the others; each write
    on its own was short, and a slow reader was never cut."""
    sock = FakeSocket()
    ws = SlowWebSocket(sock)
    s = Session(ws, Dispatcher(), sock=sock)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    assert s.oldest_wait is None
    queued_at = loop.time()
    sends = [asyncio.ensure_future(s.send(f"answer {n}")) for n in range(3)]
    await asyncio.sleep(0)  # each send's first step queues its message
    queued_by = loop.time()
    await asyncio.sleep(0.05)
    first_wait = s.oldest_wait
    assert first_wait is not None and queued_at <= first_wait <= queued_by
    gate_at = loop.time()
    ws.gates[0].set()  # the first write is taken; the next begins only now
    await asyncio.sleep(0.05)
    second_wait = s.oldest_wait  # the second has waited since it was queued, not since
    assert second_wait is not None and queued_at <= second_wait <= queued_by < gate_at
    for n in (1, 2):
        ws.gates[n].set()
        await asyncio.sleep(0.01)
    await asyncio.gather(*sends)
    assert s.oldest_wait is None
    assert [text for text, _ in ws.frames] == ["answer 0", "answer 1", "answer 2"]
