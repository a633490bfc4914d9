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
