"""Transport-free JSON-RPC 2.0: a frame of text in, the response text (or nothing) out.

The WebSocket handler only reads frames, hands each to :meth:`Dispatcher.handle_frame`
together with the :class:`Connection` it came from, and writes back what it is given.
Handlers may send notifications on that connection (``Call.notify``) before they return;
the core never answers a notification, not even with an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from jsonschema import Draft202012Validator
from jsonschema.protocols import Validator

from service import jsonfast
from service.errors import (
    Busy,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    ParseError,
    RpcError,
)
from service.eventloop import HEAVY_FRAME, drop_in_turn, heavy_turn
from service.heap import HEAP
from service.jsonfast import weight
from service.log import RateLimit
from service.manifest.model import schema_errors
from service.manifest.validation import quoting_class
from service.settings import ConnectionSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
Send = Callable[[str], Awaitable[None]]
ParamsCheck = Callable[[dict[str, Any]], bool]
_ABSENT = object()
# The exact Python types json.loads gives for each JSON Schema type (bool is not a number).
# Requests that never count against a connection's in-flight cap: `cancel` must get through
# to a connection whose every slot is taken by a running call.
UNCOUNTED_METHODS = frozenset({"cancel"})
# encode_in_pieces: the values one call of the C encoder writes at most (jsonfast.weight)
PIECE_VALUES = 1024
HEAVY_FRAME_CHARS = 64 << 10  # a frame this long is decoded in a turn of its own (_heavy)
BUSY_RETRY_MS = 100  # a connection at its in-flight cap: its own calls free slots, soon
MEMORY_RETRY_MS = 1000  # the server's request memory in use: other clients' calls free it
# A frame shorter than this is counted FRAME_BYTES_PER_CHAR a character for the request memory
# (_frame_size), with no pass over its text (each costs ~1 ns a byte: 10 µs for a 6 KB order,
# on every call). Decoded, arrays of one-item arrays take the most a character: ~28 bytes.
COUNTED_FRAME_CHARS = 64 << 10
FRAME_BYTES_PER_CHAR = 64
# Threads that write (and read) large JSON off the event loop: their own, not the loop's
# default executor, where dependency builds and loads can take every thread for minutes.
WRITERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="writer")
# "integer" stays int only: jsonschema also takes 1.0, and the fast check may only be stricter.
_JSON_TYPES = MappingProxyType({
    "string": (str,), "number": (int, float), "integer": (int,), "object": (dict,),
    "array": (list,), "boolean": (bool,), "null": (type(None),),
})


class Connection:
    """One client connection as the core sees it: a way to send text, and per-connection slots."""

    def __init__(self, send: Send, *, admin: bool = False,
                 notify_send: Send | None = None) -> None:
        self._send = send
        self._notify_send = notify_send or send  # notifications: a response follows
        self._slots: dict[type, Any] = {}
        self.admin = admin  # may run admin methods (`load`): decided by the transport
        self.in_flight = 0  # requests being answered (see ConnectionSettings.max_in_flight)

    async def send(self, text: str) -> None:
        await self._send(text)

    async def notify(self, method: str, params: Any) -> None:
        """Send a JSON-RPC notification to the client; InternalError when it cannot be encoded."""
        try:
            text = encode({"jsonrpc": "2.0", "method": method, "params": params})
        except RecursionError:
            raise InternalError(f"Internal error: a {method} notification is nested too "
                                "deeply to encode as JSON") from None
        await self._notify_send(text)

    def slot(self, cls: type[T]) -> T:
        """This connection's instance of ``cls`` (created on first use): per-connection state."""
        if cls not in self._slots:
            self._slots[cls] = cls()
        value: T = self._slots[cls]
        return value


@dataclass(frozen=True)
class Call:
    """What a handler knows about the request it serves."""

    connection: Connection
    method: str
    id: Any  # None for a notification *and* for an explicit null id: see is_notification
    is_notification: bool

    async def notify(self, method: str, params: Any) -> None:
        await self.connection.notify(method, params)


Handler = Callable[[dict[str, Any], Call], Awaitable[Any]]


@dataclass(frozen=True)
class _Method:
    handler: Handler
    param_names: tuple[str, ...]
    params_validator: Validator
    result_validator: Validator | None
    params_check: ParamsCheck | None  # fast path: True only for valid params


class Dispatcher:
    """An explicit registry of methods, and the JSON-RPC 2.0 rules around calling them."""

    def __init__(self, *, validate_results: bool = False,
                 limits: ConnectionSettings | None = None) -> None:
        # validate_results: check each result against its published schema (tests turn it on)
        self._methods: dict[str, _Method] = {}
        self._validate_results = validate_results
        self._limits = limits or ConnectionSettings()
        self.memory = RequestMemory(self._limits.max_request_memory_mb << 20)

    def register(
        self,
        name: str,
        handler: Handler,
        params_schema: dict[str, Any],
        result_schema: Any = None,
    ) -> None:
        """Add a method. ``params_schema`` is an object schema; its ``properties`` order
        is the order of positional params. Registering a name twice is an error."""
        if name in self._methods:
            raise ValueError(f"method {name!r} is already registered")
        Draft202012Validator.check_schema(params_schema)
        result_validator = None
        if result_schema is not None:
            Draft202012Validator.check_schema(result_schema)
            result_validator = Draft202012Validator(result_schema)
        self._methods[name] = _Method(
            handler=handler,
            param_names=tuple(params_schema.get("properties", {})),
            params_validator=quoting_class(Draft202012Validator)(params_schema),
            result_validator=result_validator,
            params_check=flat_params_check(params_schema),
        )

    @property
    def method_names(self) -> list[str]:
        return sorted(self._methods)

    async def handle_frame(self, frame: str | bytes, connection: Connection) -> str | None:
        """Handle one frame (a request, a notification or a batch); the response text or None."""
        heavy = _heavy(frame)
        if heavy:
            await heavy_turn()  # decoding it may take tens of ms: one such a turn
            HEAVY_FRAME.set(True)  # this task's: the frame's calls, and its batch's
        parks = HEAP.parks
        try:
            text = frame.decode("utf-8") if isinstance(frame, bytes) else frame
            # jsonfast: orjson where it agrees with the strict reference. 1e400 would become
            # inf, which cannot be sent back (not even as the id of an error): refused.
            message = jsonfast.loads(text, jsonfast.strict_loads)
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
            return encode(_error_response(None, ParseError()))
        held = HEAP.held_since(parks)  # a value parked out of the collector's reach: heap.py
        size = _frame_size(text)
        taken = self.memory.take(size)
        if not taken and self._uncounted_only(message):  # `cancel` always gets through
            taken = self.memory.take(size, always=True)

        def done() -> None:
            HEAP.release(held)
            if taken:
                self.memory.give(size)

        try:
            if not taken and not self._batch_refused(message):
                return self._busy_answer(message, self.memory.busy())
            budget = _ResponseBudget(self._limits.max_response_bytes)
            if isinstance(message, list):
                return await self._handle_batch(message, connection, budget)
            return await self._answer(message, connection, budget)
        finally:
            if heavy:  # freeing it is heavy too
                drop_in_turn(message, done)
            else:
                done()

    def _batch_refused(self, message: Any) -> bool:
        """Is it a batch refused whole (empty, too long), with one error and nothing run?"""
        return isinstance(message, list) and not 0 < len(message) <= self._limits.max_batch

    def _uncounted_only(self, message: Any) -> bool:
        """Does the frame hold only requests that are never refused (UNCOUNTED_METHODS), in a
        batch not too long to answer?"""
        requests = message if isinstance(message, list) else [message]
        return len(requests) <= self._limits.max_batch and all(
            isinstance(r, dict) and r.get("method") in UNCOUNTED_METHODS for r in requests)

    def _busy_answer(self, message: Any, error: Busy) -> str | None:
        """``error`` for each request of a frame that is not taken (none for a notification;
        an id that could not be echoed as it is gets null, as in handle_message)."""
        requests = message if isinstance(message, list) else [message]
        answers = [_error_response(self._echoed(request["id"]), error) for request in requests
                   if isinstance(request, dict) and "id" in request]
        if not answers:
            return None
        return encode(answers if isinstance(message, list) else answers[0])

    def _echoed(self, request_id: Any) -> Any:
        if request_id is None or not _valid_id(request_id) or len(
                request_id if isinstance(request_id, str) else encode(request_id)) \
                > self._limits.max_id_chars:
            return None
        return request_id

    async def _handle_batch(self, batch: list[Any], connection: Connection,
                            budget: _ResponseBudget) -> str | None:
        if not batch:
            return encode(_error_response(None, InvalidRequest()))
        if len(batch) > self._limits.max_batch:
            return encode(_error_response(None, InvalidRequest(
                f"Invalid Request: a batch holds at most {self._limits.max_batch} requests, "
                f"got {len(batch)}")))
        # The elements run concurrently, as separate requests would; each answer is encoded
        # (and charged to the frame's budget) as soon as it is ready, so results do not pile up.
        # Each starts in a turn of the loop of its own (heavy_turn): a hundred that each fail
        # validation with fifty errors, on a few connections at once, ran back to back.
        answers = await asyncio.gather(*(self._answer(m, connection, budget, turn=True)
                                         for m in batch))
        parts = [a for a in answers if a is not None]
        return f"[{','.join(parts)}]" if parts else None

    async def _answer(self, message: Any, connection: Connection,
                      budget: _ResponseBudget, turn: bool = False) -> str | None:
        if turn:
            await heavy_turn()
        response = await self.handle_message(message, connection)
        return None if response is None else budget.charge(response)

    async def handle_message(self, message: Any, connection: Connection) -> dict[str, Any] | None:
        """Handle one decoded request object; the response object, or None for a notification."""
        request_id = message.get("id", _ABSENT) if isinstance(message, dict) else _ABSENT
        if not _valid_id(request_id):
            request_id = None  # the id cannot be read: answer with null, as the spec says
        problem = _shape_problem(message)
        if problem is not None:
            log.debug("invalid request: %s", problem)
            return _error_response(None if request_id is _ABSENT else request_id,
                                   InvalidRequest())
        if request_id is not _ABSENT and request_id is not None and len(
                request_id if isinstance(request_id, str) else encode(request_id)) \
                > self._limits.max_id_chars:
            # Not echoed: an id is copied into every notification of the call.
            return _error_response(None, InvalidRequest(
                f"Invalid Request: an id has at most {self._limits.max_id_chars} characters"))
        call = Call(connection, message["method"], None if request_id is _ABSENT else request_id,
                    request_id is _ABSENT)
        counted = call.method not in UNCOUNTED_METHODS
        if counted and connection.in_flight >= self._limits.max_in_flight:
            log.debug("connection at its in-flight cap; refusing %s", call.method)
            return None if call.is_notification else _error_response(call.id, Busy(
                BUSY_RETRY_MS, f"Busy: this connection already has {connection.in_flight} "
                "requests in flight"))
        connection.in_flight += counted
        try:
            result = await self._dispatch(call, message.get("params", _ABSENT))
        except RpcError as exc:
            return None if call.is_notification else _error_response(call.id, exc)
        finally:
            connection.in_flight -= counted
        return None if call.is_notification else _result_response(call.id, result)

    async def _dispatch(self, call: Call, raw_params: Any) -> Any:
        method = self._methods.get(call.method)
        if method is None:
            raise MethodNotFound()
        params = _named_params(method, raw_params)
        try:
            result = await method.handler(params, call)
        except RpcError:
            raise
        except RecursionError:  # a value nested deeper than the validators can follow
            log.warning("method %s (id %r): a value is nested too deeply", call.method, call.id)
            raise InternalError("Internal error: a value is nested too deeply") from None
        except Exception:  # the one place unknown failures become -32603
            log.exception("internal error in method %s (id %r)", call.method, call.id)
            raise InternalError() from None
        if self._validate_results and method.result_validator is not None:
            errors = schema_errors(method.result_validator, plain(result))
            if errors:
                log.error("result of %s breaks its schema: %s", call.method, errors)
                raise InternalError()
        return result


def _named_params(method: _Method, raw: Any) -> dict[str, Any]:
    """Params as a dict (positional ones named per the schema), validated; else -32602."""
    if raw is _ABSENT:
        params: dict[str, Any] = {}
    elif isinstance(raw, list):
        if len(raw) > len(method.param_names):
            raise InvalidParams(data={"errors": [{
                "path": "",
                "message": f"at most {len(method.param_names)} positional params, got {len(raw)}",
            }]})
        params = dict(zip(method.param_names, raw, strict=False))
    else:
        params = raw
    if method.params_check is not None and method.params_check(params):
        return params  # jsonschema (20 us a call) runs only to explain a failure
    errors = schema_errors(method.params_validator, params)
    if errors:
        raise InvalidParams(data={"errors": errors})
    return params


def flat_params_check(schema: dict[str, Any]) -> ParamsCheck | None:
    """A fast validity test for a flat params schema (an object of properties that only have
    a ``type``, ``additionalProperties: false``), which is what every method here has; None
    for any other schema. It may call valid params invalid, never the reverse."""
    keys = {"type", "properties", "required", "additionalProperties"}
    if set(schema) - keys or schema.get("type") != "object" \
            or schema.get("additionalProperties") is not False:
        return None
    allowed: dict[str, tuple[type, ...]] = {}
    for name, prop in schema.get("properties", {}).items():
        names = prop.get("type") if isinstance(prop, dict) and set(prop) == {"type"} else None
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not all(n in _JSON_TYPES for n in names):
            return None
        allowed[name] = tuple(t for n in names for t in _JSON_TYPES[n])
    required = tuple(schema.get("required", ()))

    def check(params: dict[str, Any]) -> bool:
        return all(name in params for name in required) and all(
            type(value) in allowed.get(name, ()) for name, value in params.items())

    return check


def _valid_id(value: Any) -> bool:
    if value is _ABSENT or value is None or isinstance(value, str):
        return True
    return isinstance(value, int | float) and not isinstance(value, bool)


def _heavy(frame: str | bytes) -> bool:
    """Costly to decode: long, or with more brackets than orjson may read (the reference
    decoder reads them at a third of its speed): 200 connections' 60 KB frames of empty
    lists, decoded back to back, held the loop for 0.5-1.2 s."""
    if len(frame) > HEAVY_FRAME_CHARS:
        return True
    if len(frame) <= jsonfast.MAX_FAST_BRACKETS:  # the common case: too short to count
        return False
    return jsonfast.opening_brackets(frame) > jsonfast.MAX_FAST_BRACKETS


def _shape_problem(message: Any) -> str | None:
    """Why ``message`` is not a Request object, or None when it is one."""
    if not isinstance(message, dict):
        return "a request must be a JSON object"
    if message.get("jsonrpc") != "2.0":
        return 'jsonrpc must be exactly "2.0"'
    if not isinstance(message.get("method"), str):
        return "method must be a string"
    if "params" in message and not isinstance(message["params"], dict | list):
        return "params must be an object or an array"
    if not _valid_id(message.get("id", _ABSENT)):
        return "id must be a string, a number or null"
    return None


def _result_response(request_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "result": result, "id": request_id}


def _error_response(request_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": error.to_json(), "id": request_id}


def _frame_size(text: str) -> int:
    """What a frame holds while it is answered: its text and its value
    (jsonfast.decoded_size); a short one counted by its length alone (FRAME_BYTES_PER_CHAR)."""
    if len(text) < COUNTED_FRAME_CHARS:
        return FRAME_BYTES_PER_CHAR * len(text)
    return len(text) + jsonfast.decoded_size(text)


class RequestMemory:
    """The memory the frames being answered hold, every connection together
    (_frame_size), held to ``connections.max_request_memory_mb``. Each frame
    counts from its decoding until its value is freed. The limit was only per connection
    (``max_in_flight``): one client's 32 frames of 1 MB, each of small lists, queued for a
    slow actor, held 800 MB of the server's memory, and a few such clients could take the
    host's. A frame that does not fit while others are held is answered -32008 (it is
    decoded, for its ids, and freed at once); one alone always fits."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.held = 0
        self._refusals = RateLimit(60.0)

    def take(self, size: int, always: bool = False) -> bool:
        """Count ``size`` more bytes held, if they fit (``always``: whether or not)."""
        if self.held and self.held + size > self.limit and not always:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size

    def busy(self) -> Busy:
        """The error of a frame not taken (and a warning, at most one a minute)."""
        mb = self.held >> 20
        if (quiet := self._refusals.allow("memory")) is not None:
            log.warning("refusing requests: the frames being answered hold about %d MB "
                        "(connections.max_request_memory_mb = %d)%s", mb, self.limit >> 20,
                        f"; {quiet} more refused since the last such line" if quiet else "")
        return Busy(MEMORY_RETRY_MS, f"Busy: the requests being answered hold about {mb} MB "
                                     "of the server's memory, its limit; retry later")


class Encoded:
    """A value with its text as :func:`encode` writes it, written as is wherever it appears.

    An output goes out in its notification, then twice in the call's response (``outputs``
    and ``emitted``): 1 MB of floats took ~50 ms each time, on the event loop."""

    __slots__ = ("text", "value")

    def __init__(self, value: Any, text: str | None = None) -> None:
        self.value = value
        self.text = encode(value) if text is None else text

    def drop_value(self) -> None:
        """Keep the text alone: the value is freed (a 1 MB output of small lists is ~21 MB
        decoded, held until the call's response went out); :func:`plain` reads the text."""
        self.value = _TEXT_ONLY

    @classmethod
    async def off_loop(cls, value: Any) -> Encoded:
        """``Encoded(value)``, written in a thread and in pieces (encode_in_pieces), while the
        event loop runs on."""
        return cls(value, await off_loop(encode_in_pieces, value))


async def off_loop(function: Callable[..., T], *args: Any) -> T:
    """``function(*args)`` in a thread of WRITERS."""
    return await asyncio.get_running_loop().run_in_executor(WRITERS, function, *args)


class _HoldsEncoded(Exception):
    """The message holds an Encoded value: written by _encode_spliced."""


def _plain_only(value: Any) -> Any:
    if isinstance(value, Encoded):
        raise _HoldsEncoded
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# What json.dumps(message, allow_nan=False, separators=(",", ":")) uses, made once: with
# options, json.dumps builds a new encoder for every message (three per call).
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"), default=_plain_only)


def encode(message: Any) -> str:
    """JSON text as sent on the wire: compact, no NaN, ASCII (a lone surrogate stays escaped)."""
    try:
        return _ENCODER.encode(message)
    except _HoldsEncoded:
        return _encode_spliced(message)


def _encode_spliced(message: Any) -> str:
    """``message`` written with each Encoded value's text: each is first written as a string
    that only this call can name (a random nonce), then replaced in one pass."""
    nonce = secrets.token_hex(8)
    texts: list[str] = []

    def placeholder(value: Any) -> Any:
        if isinstance(value, Encoded):
            texts.append(value.text)
            return f"\0{nonce}{len(texts) - 1}\0"
        return _plain_only(value)

    text = json.JSONEncoder(allow_nan=False, separators=(",", ":"),
                            default=placeholder).encode(message)
    return re.sub(f'"\\\\u0000{nonce}(\\d+)\\\\u0000"',
                  lambda found: texts[int(found.group(1))], text)


def encode_in_pieces(value: Any) -> str:
    """``encode(value)``, byte for byte, written a piece at a time: no call of the C encoder
    writes more than PIECE_VALUES values (see weight). Each call holds the GIL until it
    returns: in a thread, a large value written in one call kept the event loop waiting as
    long (a descriptor with 16 MB of schemas: ~1 s); in pieces, the loop gets its turn
    between any two."""
    parts: list[str] = []
    try:
        _write_pieces(value, parts)
    except RecursionError:  # a piece takes more frames than encode's level: its own error
        return encode(value)
    return "".join(parts)


def _write_pieces(value: Any, parts: list[str]) -> None:
    if isinstance(value, Encoded):
        parts.append(value.text)
    elif isinstance(value, dict):
        parts.append("{")
        _Runs(parts, lambda items: encode(dict(items))[1:-1]).write(
            (item, item[1], weight(item[0], PIECE_VALUES)) for item in value.items())
        parts.append("}")
    elif isinstance(value, list | tuple):
        parts.append("[")
        _Runs(parts, lambda items: encode(items)[1:-1]).write((v, v, 0) for v in value)
        parts.append("]")
    else:
        parts.append(encode(value))


class _Runs:
    """The items of one list, or the (key, value) items of one dict, written comma-separated:
    runs of them that weigh less than PIECE_VALUES together in one call (``write_run``), a
    heavier one piece by piece."""

    def __init__(self, parts: list[str], write_run: Callable[[list[Any]], str]) -> None:
        self.parts = parts
        self.write_run = write_run
        self.run: list[Any] = []
        self.weight = 0
        self.first = True

    def write(self, items: Iterable[tuple[Any, Any, int]]) -> None:
        """``items``: (item, its value, what else it weighs); a dict's item is its (key,
        value), and its key weighs too."""
        for item, value, extra in items:
            heavy = extra + weight(value, PIECE_VALUES)
            if self.weight + heavy > PIECE_VALUES:
                self._flush()
            if heavy >= PIECE_VALUES and isinstance(value, dict | list | tuple):
                self._comma()
                if item is not value:  # its key, as the encoder writes it
                    self.parts.append(encode({item[0]: 0})[1:-2])
                _write_pieces(value, self.parts)
            else:
                self.run.append(item)
                self.weight += heavy
        self._flush()

    def _comma(self) -> None:
        if not self.first:
            self.parts.append(",")
        self.first = False

    def _flush(self) -> None:
        if self.run:
            self._comma()
            self.parts.append(self.write_run(self.run))
            self.run = []
            self.weight = 0


_TEXT_ONLY = object()  # the value of an Encoded that kept its text alone (drop_value)


def plain(value: Any) -> Any:
    """``value`` with every Encoded in it replaced by its value (containers copied)."""
    if isinstance(value, Encoded):
        return json.loads(value.text) if value.value is _TEXT_ONLY else plain(value.value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def encoded(message: Any, encoder: Callable[[Any], T], what: str, key: Any) -> T | InternalError:
    """``encoder(message)``, or the -32603 to send instead when JSON cannot hold it (NaN, a
    value nested too deeply), logged as ``what`` ``key``."""
    try:
        return encoder(message)
    except RecursionError:
        log.warning("%s %r is nested too deeply to encode", what, key)
        return InternalError("Internal error: the response is nested too deeply to encode "
                             "as JSON")
    except (TypeError, ValueError):
        log.exception("%s %r cannot be encoded as JSON", what, key)
        return InternalError()


def _encode_response(response: dict[str, Any]) -> str:
    text = encoded(response, encode, "response to id", response.get("id"))
    return _error_text(response.get("id"), text) if isinstance(text, InternalError) else text


def _error_text(request_id: Any, error: RpcError) -> str:
    try:
        return encode(_error_response(request_id, error))
    except (TypeError, ValueError):  # the id itself: still answer, once, as the spec's null
        return encode(_error_response(None, error))


class _ResponseBudget:
    """The bytes the answer to one frame may take; answers past it become -32603 errors."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, response: dict[str, Any]) -> str:
        text = _encode_response(response)
        if self.used + len(text) > self.limit:
            log.warning("answer to id %r dropped: the frame's answer is over %d bytes",
                        response.get("id"), self.limit)
            text = _error_text(response.get("id"), InternalError(
                f"Internal error: the answer to this frame is over {self.limit} bytes "
                "(connections.max_response_bytes)"))
        self.used += len(text)
        return text
