"""The one place where what the roles read from Redis is parsed and checked.

Anyone who can write to the cluster's keys can write anything there, and one bad entry
must not crash the loop that reads it (nor every worker that reclaims it after). Each
``parse_*`` function turns raw fields into a typed value, or raises :class:`Malformed`
with the reason; the caller then drops the entry (acknowledging it if it is a call),
logs a warning, counts it, and, when :attr:`Malformed.reply_to` is known, tells the
caller of that call.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from service.cluster.streams import FIELD

_UNDECODED = re.compile("[\udc80-\udcff]")  # surrogateescape's stand-ins for bytes
EVENT_KINDS = frozenset({"output", "log", "result", "error", "retry", "load"})


class Malformed(ValueError):
    """An entry this code cannot use; ``reply_to`` is (front id, call id) when readable."""

    def __init__(self, reason: str, reply_to: tuple[str, str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply_to = reply_to


@dataclass(frozen=True)
class Call:
    """A call as a front added it to ``calls:<actor>``."""

    call_id: str
    front: str
    attempt: int
    actor_id: str  # the stream's actor, whatever the entry says
    payload: Any = None
    config: Any = None
    state: Any = None
    timestamp: Any = None
    quiet: bool = False
    # How long its front waits for the answer, from ``origin_ms`` (Redis's clock: the ms of
    # the first attempt's entry id); None in an entry that does not say (no expiry).
    wait_ms: int | None = None
    origin_ms: int | None = None

    def message(self, attempt: int | None = None, origin_ms: int | None = None
                ) -> dict[str, Any]:
        """The entry's message (with another ``attempt`` and the first attempt's
        ``origin_ms`` when queued again)."""
        message = {"call_id": self.call_id, "front": self.front,
                   "attempt": self.attempt if attempt is None else attempt,
                   "actor_id": self.actor_id, "payload": self.payload, "config": self.config,
                   "state": self.state, "timestamp": self.timestamp, "quiet": self.quiet}
        if self.wait_ms is not None:
            message["wait_ms"] = self.wait_ms
        origin_ms = self.origin_ms if origin_ms is None else origin_ms
        if origin_ms is not None:
            message["origin_ms"] = origin_ms
        return message

    def origin(self, entry_id: str) -> int:
        """When the first attempt was queued, in Redis's clock (``entry_id``: this one's)."""
        return self.origin_ms if self.origin_ms is not None else entry_ms(entry_id)

    def expires_ms(self, entry_id: str) -> int | None:
        """When its front stops waiting, in Redis's clock (None: the entry does not say)."""
        return None if self.wait_ms is None else self.origin(entry_id) + self.wait_ms


def entry_ms(entry_id: str) -> int:
    """The Redis time (ms) at which a stream entry was added: its id's first part."""
    return int(entry_id.partition("-")[0])


@dataclass(frozen=True)
class Offer:
    """One actor of a worker's registration."""

    descriptor: dict[str, Any]
    max_workers: int
    max_queue: int


@dataclass(frozen=True)
class Registration:
    """A live worker's registration (``worker:<id>``)."""

    worker_id: str
    actors: dict[str, Offer] = field(default_factory=dict)


def _message(fields: Any) -> dict[str, Any]:
    if not isinstance(fields, dict) or not isinstance(fields.get(FIELD), str):
        raise Malformed(f"no {FIELD!r} field")
    return _json_object(fields[FIELD])


def _json_object(text: str) -> dict[str, Any]:
    if _UNDECODED.search(text):  # bytes that were not UTF-8 (streams.connect)
        raise Malformed("not UTF-8")
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        raise Malformed("not JSON") from None
    if not isinstance(message, dict):
        raise Malformed("not a JSON object")
    return message


def _int(message: dict[str, Any], key: str, default: int | None = None,
         minimum: int = 0) -> int:
    value = message.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise Malformed(f"{key!r} is not an integer >= {minimum}")
    return value


def _optional_int(message: dict[str, Any], key: str) -> int | None:
    return None if message.get(key) is None else _int(message, key)


def _str(message: dict[str, Any], key: str) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value:
        raise Malformed(f"{key!r} is not a non-empty string")
    return value


def parse_call(actor_id: str, fields: Any) -> Call:
    """A call entry of ``calls:<actor_id>``; payload, config and state are left to the
    runtime, which checks them as it does on one machine."""
    message = _message(fields)
    reply_to = None
    if isinstance(message.get("front"), str) and isinstance(message.get("call_id"), str) \
            and message["front"] and message["call_id"]:
        reply_to = (message["front"], message["call_id"])
    try:
        quiet = message.get("quiet", False)
        if not isinstance(quiet, bool):
            raise Malformed("'quiet' is not a boolean")
        return Call(_str(message, "call_id"), _str(message, "front"),
                    _int(message, "attempt", 1, minimum=1), actor_id, message.get("payload"),
                    message.get("config"), message.get("state"), message.get("timestamp"),
                    quiet, _optional_int(message, "wait_ms"), _optional_int(message, "origin_ms"))
    except Malformed as exc:
        raise Malformed(exc.reason, reply_to) from None


def parse_event(fields: Any) -> dict[str, Any]:
    """An event on a front's stream, checked for the fields its kind needs."""
    message = _message(fields)
    kind = message.get("kind")
    if kind not in EVENT_KINDS:
        raise Malformed(f"unknown kind {kind!r}")
    if kind == "load":
        _str(message, "token")
        _str(message, "worker_id")
        actor = message.get("actor")
        if isinstance(actor, dict) and not isinstance(actor.get("id"), str):
            raise Malformed("a load reply whose actor has no id")
        if not isinstance(actor, dict) and not isinstance(message.get("error"), dict):
            raise Malformed("a load reply without 'actor' or 'error'")
        return message
    call_id = _str(message, "call_id")
    try:
        _check_call_event(kind, message)
    except Malformed as exc:
        raise Malformed(exc.reason, ("", call_id)) from None
    return message


def _check_call_event(kind: str, message: dict[str, Any]) -> None:
    _int(message, "attempt", 1, minimum=1)
    if kind in ("output", "log"):
        _int(message, "n", 0)  # the event's number in its run (0: a worker that does not say)
        params = message.get("params")
        if not isinstance(params, dict):
            raise Malformed("'params' is not an object")
        if kind == "output":
            _int(params, "seq")
    elif kind == "result":
        result = message.get("result")
        if not isinstance(result, dict) or not isinstance(result.get("emitted"), list):
            raise Malformed("'result' is not a process result")
    elif kind == "error":
        error = message.get("error")
        if not isinstance(error, dict) or isinstance(error.get("code"), bool) \
                or not isinstance(error.get("code"), int):
            raise Malformed("'error' is not an error object")


def parse_control(fields: Any) -> dict[str, Any]:
    """A ``cancel`` or ``load`` broadcast."""
    message = _message(fields)
    op = message.get("op")
    if op == "cancel":
        _str(message, "call_id")
    elif op == "load":
        _str(message, "token")
        _str(message, "front")
    else:
        raise Malformed(f"unknown op {op!r}")
    return message


def parse_registration(worker_id: str, value: str) -> Registration:
    """A worker's registration: every actor with a descriptor and pool sizes."""
    message = _json_object(value)
    served = message.get("actors")
    if not isinstance(served, dict):
        raise Malformed("'actors' is not an object")
    actors = {}
    for actor_id, entry in served.items():
        if not isinstance(entry, dict):
            raise Malformed(f"actor {actor_id!r} is not an object")
        descriptor = entry.get("descriptor")
        if not isinstance(descriptor, dict) or descriptor.get("id") != actor_id:
            raise Malformed(f"actor {actor_id!r} has no descriptor with its id")
        inports = descriptor.get("inports", {})
        if not isinstance(inports, dict) or not all(
                isinstance(spec, dict) and isinstance(spec.get("schema", {}), (dict, bool))
                for spec in inports.values()):
            raise Malformed(f"actor {actor_id!r}: inports are not port objects")
        limits = descriptor.get("limits", {})
        timeout_s = limits.get("timeout_s", 10) if isinstance(limits, dict) else None
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) \
                or not 0 < timeout_s < float("inf"):
            raise Malformed(f"actor {actor_id!r}: limits.timeout_s is not a positive number")
        try:
            actors[actor_id] = Offer(descriptor, _int(entry, "max_workers", minimum=1),
                                     _int(entry, "max_queue"))
        except Malformed as exc:
            raise Malformed(f"actor {actor_id!r}: {exc.reason}") from None
    return Registration(worker_id, actors)
