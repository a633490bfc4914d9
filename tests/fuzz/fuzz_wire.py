"""Drive the live server one frame at a time and judge what comes back with the fuzz oracle.

After each frame the wire sends a sentinel request and reads until both the sentinel's
answer and the frame's due answers have arrived. A message that should not exist (an
answer to a notification, a second answer, a notification after its call's answer) is
either in that read or shows up first in the next one, where it fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient
from fuzz_oracle import (
    Expect,
    FrameExpect,
    World,
    cancel_problems,
    expect_frame,
    json_equal,
    leak_problems,
    notification_problems,
    outputs_match,
    response_problems,
)

RECEIVE_TIMEOUT_S = 30.0  # the example actors time out after 5 s; a missing answer is a hang
LIVENESS_EVERY = 25  # frames between two list + /healthz checks
SENTINEL_TARGET = "fuzz-sentinel-target"  # no process call ever has this id


@dataclass(frozen=True)
class Received:
    text: str
    message: Any

    @property
    def is_notification(self) -> bool:
        return isinstance(self.message, dict) and "method" in self.message


class Wire:
    """One fuzzing connection to the live server."""

    def __init__(self, client: TestClient, ws: ClientWebSocketResponse, world: World) -> None:
        self.client = client
        self.ws = ws
        self.world = world
        self.frames = 0
        self.previous: str | bytes | None = None

    async def exchange(self, frame: str | bytes, *, liveness: bool = True) -> None:
        """Send ``frame`` and assert that what comes back is what the spec says."""
        fexp = expect_frame(frame, self.world)
        await (self.ws.send_bytes(frame) if isinstance(frame, bytes) else self.ws.send_str(frame))
        sentinel = f"sentinel-{self.frames}"
        await self.ws.send_str(json.dumps({"jsonrpc": "2.0", "method": "cancel", "id": sentinel,
                                           "params": {"request_id": SENTINEL_TARGET}}))
        received = await self._collect(frame, sentinel, 1 if fexp.elements else 0)
        sent = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
        problems = judge(fexp, received, self.world, sent)
        assert not problems, self._report(frame, fexp, received, problems)
        self.previous = frame
        self.frames += 1
        if liveness and self.frames % LIVENESS_EVERY == 0:
            await self.assert_alive()

    async def assert_alive(self) -> None:
        """The server still answers `list` on this connection and GET /healthz."""
        await self.exchange(json.dumps({"jsonrpc": "2.0", "method": "list", "id": "alive"}),
                            liveness=False)
        response = await self.client.get("/healthz")
        assert response.status == 200, await response.text()
        assert (await response.json())["status"] == "ok"

    async def _collect(self, frame: str | bytes, sentinel: str, due: int) -> list[Received]:
        received: list[Received] = []
        sentinel_seen = False
        while not sentinel_seen or sum(not r.is_notification for r in received) < due:
            try:
                msg = await self.ws.receive(timeout=RECEIVE_TIMEOUT_S)
            except TimeoutError:
                raise AssertionError(f"no answer within {RECEIVE_TIMEOUT_S} s to {frame!r:.500}; "
                                     f"got {[r.text[:200] for r in received]}") from None
            assert msg.type == WSMsgType.TEXT, f"{msg.type} {msg.data!r} after {frame!r:.500}"
            message = json.loads(msg.data)
            if _is_answer_to(message, sentinel):
                assert message == {"jsonrpc": "2.0", "result": {"cancelled": False},
                                   "id": sentinel}, message
                sentinel_seen = True
            else:
                received.append(Received(msg.data, message))
        return received

    def _report(self, frame: str | bytes, fexp: FrameExpect, received: list[Received],
                problems: list[str]) -> str:
        due = [(e.id, e.method, sorted(e.codes), e.check is not None) for e in fexp.elements]
        lines = [f"frame: {frame!r:.1500}",
                 f"due (id, method, codes, result ok): {due}",
                 *(f"got: {r.text[:1500]}" for r in received),
                 *(f"PROBLEM: {p}" for p in problems),
                 f"(the frame before: {self.previous!r:.500})"]
        return "\n".join(lines)


def _is_answer_to(message: Any, request_id: str) -> bool:
    return isinstance(message, dict) and "method" not in message and message.get(
        "id") == request_id


def judge(fexp: FrameExpect, received: list[Received], world: World, sent: str) -> list[str]:
    """Every problem with what one frame brought back."""
    problems = [p for r in received for p in leak_problems(r.text, r.message, world.secrets, sent)]
    notes = [(i, r.message) for i, r in enumerate(received) if r.is_notification]
    answers = [(i, r.message) for i, r in enumerate(received) if not r.is_notification]
    due = 1 if fexp.elements else 0
    if len(answers) != due:
        return [*problems, f"{len(answers)} answers where {due} were due"]
    problems += [p for _, note in notes for p in notification_problems(note, fexp)]
    if not answers or problems:
        return problems
    position, answer = answers[0]
    if any(i > position for i, _ in notes):
        problems.append("a notification came after the answer of its call")
    pairs, matching = _pairs(fexp, answer)
    problems += matching + cancel_problems(pairs, fexp.quiet_cancels)
    problems += _output_problems(fexp, pairs, [n for _, n in notes])
    return problems


def _pairs(fexp: FrameExpect, answer: Any) -> tuple[list[tuple[Expect, Any]], list[str]]:
    """Match the answer(s) to the due elements; the problems when they cannot be matched."""
    if not fexp.batch:
        if isinstance(answer, list):
            return [], [f"an array answered a single request: {answer!r:.300}"]
        return [(fexp.elements[0], answer)], response_problems(answer, fexp.elements[0])
    if not isinstance(answer, list) or len(answer) != len(fexp.elements):
        return [], [f"batch of {len(fexp.elements)} requests answered with {answer!r:.500}"]
    fits = [[not response_problems(r, e) for e in fexp.elements] for r in answer]
    assignment = _assign(fits, 0, set())
    if assignment is not None:
        return [(fexp.elements[j], answer[i]) for i, j in enumerate(assignment)], []
    problems = []
    for response in answer:
        same_id = [e for e in fexp.elements if isinstance(response, dict)
                   and json_equal(e.id, response.get("id"))] or list(fexp.elements)
        problems += [f"batch element: {p}" for p in response_problems(response, same_id[0])]
    return [], problems or ["the batch's answers match its requests only with ids reused"]


def _assign(fits: list[list[bool]], row: int, used: set[int]) -> list[int] | None:
    """A one-to-one assignment of answers (rows) to requests (columns) that fit."""
    if row == len(fits):
        return []
    for column, fit in enumerate(fits[row]):
        if fit and column not in used:
            rest = _assign(fits, row + 1, used | {column})
            if rest is not None:
                return [column, *rest]
    return None


def _output_problems(fexp: FrameExpect, pairs: list[tuple[Expect, Any]],
                     notes: list[dict[str, Any]]) -> list[str]:
    """Each call's `output` notifications count from 0 and are its ``emitted`` values."""
    problems = []
    ids = fexp.process_ids
    for expect, response in pairs:
        if expect.method != "process" or sum(json_equal(expect.id, i) for i in ids) > 1:
            continue  # with a reused id the notifications cannot be told apart
        outputs = [n["params"] for n in notes if n["method"] == "output"
                   and json_equal(n["params"]["request_id"], expect.id)]
        if [o["seq"] for o in outputs] != list(range(len(outputs))):
            problems.append(f"output seq {[o['seq'] for o in outputs]}")
        elif "result" in response:
            problem = outputs_match(outputs, response["result"])
            problems += [problem] if problem else []
    return problems


class RawWebSocket:
    """A hand-made WebSocket client, for frames a real client library refuses to build."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int) -> RawWebSocket:
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RECEIVE_TIMEOUT_S)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send_frame(self, payload: bytes, opcode: int, *, fin: bool = True, rsv: int = 0,
                   masked: bool = True) -> None:
        """Write one frame as given (RFC 6455 5.2); client frames must be masked."""
        head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)])
        mask_bit = 0x80 if masked else 0
        if len(payload) < 126:
            head += bytes([mask_bit | len(payload)])
        elif len(payload) < 1 << 16:
            head += bytes([mask_bit | 126]) + struct.pack("!H", len(payload))
        else:
            head += bytes([mask_bit | 127]) + struct.pack("!Q", len(payload))
        if masked:
            key = os.urandom(4)
            head += key
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + payload)

    async def read_frame(self) -> tuple[int, bytes] | None:
        """The next frame from the server (opcode, payload); None at end of stream."""
        try:
            first, second = await asyncio.wait_for(self.reader.readexactly(2),
                                                   RECEIVE_TIMEOUT_S)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            assert not second & 0x80, "a server frame must not be masked"
            return first & 0x0F, await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
