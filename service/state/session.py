"""One call's state operations: what a sandbox's ``state`` messages do to the store.

The messages come from inside the sandbox (untrusted): every field is checked here, every
key is confined below the call's ``{namespace}:{actor_id}:`` prefix, and every byte the
server moves is paid from the call's budget.

Message (harness -> host): ``{"type": "state", "id": N, "op": OP, "key": K, ...}`` with
``value`` (set, push), ``amount`` (increment, decrement), ``values`` (extend).
Reply (host -> harness): ``{"type": "state_reply", "id": N, "ok": true, "value": V}``
(``get``: also ``"found": bool``), or ``{"type": "state_reply", "id": N, "ok": false,
"error_type": ..., "message": ...}`` when the operation cannot apply: the script sees an
exception. A budget overrun (-32006) or a store that is down (-32009) fails the call instead.

The budget (settings ``state.ops_per_call``, ``state.bytes_per_call``). Each operation
costs one op and the UTF-8 bytes of every text the server reads from the store, encodes
or decodes, or writes to it:

- every operation: its full key;
- ``get``: the stored text; ``set``: the new text;
- ``push``/``extend``: the values added (as JSON), then the stored list and the new list;
  ``pop``: the stored list and the new list (the popped value is part of the stored one);
- ``increment``/``decrement``: 20 bytes (a 64-bit integer's text); ``delete``: nothing more.

A stored text is only read when it fits what the call has left (the store checks its
size first), and a text is charged before it is written, so no call makes the server
handle more than ``bytes_per_call`` bytes of state; over it, -32006
``{"resource": "state", "limit": {"bytes": N}}``. No value may be written that is over a
quarter of ``bytes_per_call`` (``StateBudget.value_max_bytes``): the script gets a
ValueError and nothing is written. So one call can always read a value at that cap and
write it back changed (its key, the old and the new text and what is added fit).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from service.errors import ResourceLimitExceeded, SandboxUnavailable
from service.state.base import (
    INT64_MAX,
    INT64_MIN,
    StateOpError,
    StateStore,
    StoreDown,
    TooLarge,
    text_size,
)
from service.state.context import SURROGATES, StateContext, character_problem

KEY_MAX_BYTES = 1024
INTEGER_TEXT_BYTES = len(str(INT64_MIN))  # the longest text increment reads or writes
VALUE_SHARE = 4  # a stored value is at most 1/VALUE_SHARE of the call's bytes


def encode_value(value: Any) -> str:
    """A value as the JSON text stored (compact, UTF-8: what the host's reader expects).

    A lone surrogate (a legal JSON string, e.g. ``"\\ud800"``) has no UTF-8 form: it is
    written as its ``\\uXXXX`` escape, which reads back as the same string on every store.
    """
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:  # the only kind a decoded message can hold (the stdlib's words vary)
        raise StateOpError("ValueError", "value is not JSON (NaN or Infinity)") from None
    except RecursionError:
        raise StateOpError("ValueError", "value is nested too deeply") from None
    return SURROGATES.sub(lambda found: f"\\u{ord(found[0]):04x}", text)


def decode_value(text: str) -> Any:
    """A stored text as a value; a text that is not JSON reads back as that string."""
    try:
        return json.loads(text)
    except ValueError:
        return text
    except RecursionError:  # JSON someone else wrote, deeper than this process decodes
        raise StateOpError("ValueError", "the value under this key is nested too deeply") from None


class StateBudget:
    """How many operations and bytes a call may still use (settings [state])."""

    def __init__(self, ops: int, bytes_: int) -> None:
        self.ops_limit, self.bytes_limit = ops, bytes_
        self.ops = self.bytes = 0
        self.value_max_bytes = bytes_ // VALUE_SHARE

    def spend(self, ops: int = 0, size: int = 0) -> None:
        self.ops += ops
        self.bytes += size
        if self.ops > self.ops_limit:
            raise ResourceLimitExceeded("state", {"ops": self.ops_limit})
        if self.bytes > self.bytes_limit:
            raise self.over_bytes()

    def bytes_left(self) -> int:
        """The most bytes the next read may take."""
        return max(0, self.bytes_limit - self.bytes)

    def over_bytes(self) -> ResourceLimitExceeded:
        return ResourceLimitExceeded("state", {"bytes": self.bytes_limit})


class StateSession:
    """Serves one call's ``state`` messages (base.StateOps of the sandbox layer)."""

    def __init__(self, store: StateStore, context: StateContext, budget: StateBudget) -> None:
        self.store = store
        self.context = context
        self.budget = budget
        self._ops: dict[str, Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "get": self._get, "set": self._set, "delete": self._delete,
            "increment": self._increment, "decrement": self._decrement,
            "push": self._push, "pop": self._pop, "extend": self._extend,
        }

    async def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        """The reply to one ``state`` message; raises RpcError to fail the call."""
        op_id = message.get("id")
        if not isinstance(op_id, int) or isinstance(op_id, bool):
            op_id = None
        try:
            body = await self._apply(message)
        except StateOpError as exc:
            return {"type": "state_reply", "id": op_id, "ok": False,
                    "error_type": exc.error_type, "message": str(exc)}
        except StoreDown as exc:
            raise SandboxUnavailable(f"state:{self.store.name}", str(exc)) from None
        return {"type": "state_reply", "id": op_id, "ok": True, **body}

    async def _apply(self, message: dict[str, Any]) -> dict[str, Any]:
        self.budget.spend(ops=1)  # every message, one the session refuses too
        op = message.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            raise StateOpError("ValueError", f"unknown state operation {_shown(op)}")
        full = self.context.prefix + _key(message.get("key"))
        self.budget.spend(size=text_size(full))
        try:
            return await handler(full, message)
        except TooLarge:  # the stored value is more than the call has left: nothing was read
            raise self.budget.over_bytes() from None

    def _spend_text(self, text: str | None) -> None:
        if text is not None:
            self.budget.spend(size=text_size(text))

    def _encoded(self, text: str) -> str:
        """A JSON text the server encoded (to write it), paid for; over the value cap, the
        script's ValueError (a value that cannot be stored)."""
        size = text_size(text)
        self.budget.spend(size=size)
        if size > self.budget.value_max_bytes:
            raise StateOpError("ValueError", "a state value is at most "
                               f"{self.budget.value_max_bytes} bytes (as JSON)")
        return text

    def _stored_list(self, old: str | None) -> list[Any]:
        self._spend_text(old)
        if old is None:
            return []
        value = decode_value(old)
        if not isinstance(value, list):
            raise StateOpError("TypeError", "the value under this key is not a list")
        return value

    async def _get(self, key: str, message: dict[str, Any]) -> dict[str, Any]:
        text = await self.store.get(key, self.budget.bytes_left())
        self._spend_text(text)
        return {"found": text is not None, "value": None if text is None else decode_value(text)}

    async def _set(self, key: str, message: dict[str, Any]) -> dict[str, Any]:
        await self.store.set(key, self._encoded(encode_value(message.get("value"))))
        return {"value": None}

    async def _delete(self, key: str, message: dict[str, Any]) -> dict[str, Any]:
        return {"value": await self.store.delete(key)}

    async def _increment(self, key: str, message: dict[str, Any]) -> dict[str, Any]:
        amount = _amount(message, 1)
        self.budget.spend(size=INTEGER_TEXT_BYTES)
        return {"value": await self.store.increment(key, amount)}

    async def _decrement(self, key: str, message: dict[str, Any]) -> dict[str, Any]:
        amount = _amount(message, -1)
        self.budget.spend(size=INTEGER_TEXT_BYTES)
        return {"value": await self.store.increment(key, amount)}

    async def _push(self, key: str, message: dict[str, Any]) -> dict[str, Any]:
        return await self._append(key, [message.get("value")])

    async def _extend(self, key: str, message: dict[str, Any]) -> dict[str, Any]:
        values = message.get("values")
        if not isinstance(values, list):
            raise StateOpError("TypeError", "extend takes a list of values")
        return await self._append(key, values)

    async def _append(self, key: str, values: list[Any]) -> dict[str, Any]:
        self._encoded(encode_value(values))  # refused (not JSON, too big) before any read

        def change(old: str | None) -> tuple[str | None, int]:
            items = self._stored_list(old)
            items.extend(values)
            return self._encoded(encode_value(items)), len(items)

        return {"value": await self.store.update(key, change, self.budget.bytes_left)}

    async def _pop(self, key: str, message: dict[str, Any]) -> dict[str, Any]:
        def change(old: str | None) -> tuple[str | None, Any]:
            if old is None:
                return None, None
            items = self._stored_list(old)
            first = items.pop(0) if items else None
            return self._encoded(encode_value(items)), first

        return {"value": await self.store.update(key, change, self.budget.bytes_left)}


def _shown(value: Any) -> str:
    """``value`` as the script sent it, cut: the reply to a refusal stays small."""
    text = repr(value)
    return text if len(text) <= 60 else text[:50] + "..."


def _key(key: Any) -> str:
    """The script's key, checked: a non-empty string of at most KEY_MAX_BYTES in UTF-8,
    without control characters or lone surrogates (as the context's names)."""
    if not isinstance(key, str) or not key:
        raise StateOpError("TypeError", "a state key must be a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > KEY_MAX_BYTES:
        raise StateOpError("ValueError", f"a state key is at most {KEY_MAX_BYTES} bytes")
    problem = character_problem(key)
    if problem:
        raise StateOpError("ValueError", f"a state key {problem}")
    return key


def _amount(message: dict[str, Any], sign: int) -> int:
    """The amount to add: ``amount`` (default 1) times ``sign``, a 64-bit integer (so
    ``decrement(k, -2**63)``, whose negation is not, is refused as on every store)."""
    amount = message.get("amount", 1)
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise StateOpError("TypeError", "amount must be an integer")
    if not INT64_MIN <= sign * amount <= INT64_MAX:
        raise StateOpError("OverflowError", "amount is out of the 64-bit range")
    return sign * amount
