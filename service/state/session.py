"""One call's state operations: what a sandbox's ``state`` messages do to the store.

The messages come from inside the sandbox (untrusted): every field is checked here, every
key is confined below the call's ``{namespace}:{actor_id}:`` prefix, and the call's budget
(operations and bytes, both ways) is spent before the store is touched.

Message (harness -> host): ``{"type": "state", "id": N, "op": OP, "key": K, ...}`` with
``value`` (set, push), ``amount`` (increment, decrement), ``values`` (extend).
Reply (host -> harness): ``{"type": "state_reply", "id": N, "ok": true, "value": V}``
(``get``: also ``"found": bool``), or ``{"type": "state_reply", "id": N, "ok": false,
"error_type": ..., "message": ...}`` when the operation cannot apply: the script sees an
exception. A budget overrun (-32006) or a store that is down (-32009) fails the call instead.
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
)
from service.state.context import StateContext

KEY_MAX_BYTES = 1024


def encode_value(value: Any) -> str:
    """A value as the JSON text stored (compact, UTF-8: what the host's reader expects)."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError as exc:  # NaN or Infinity: not JSON
        raise StateOpError("ValueError", f"value is not JSON: {exc}") from None


def decode_value(text: str) -> Any:
    """A stored text as a value; a text that is not JSON reads back as that string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class StateBudget:
    """How many operations and bytes a call may still use (settings [state])."""

    def __init__(self, ops: int, bytes_: int) -> None:
        self.ops_limit, self.bytes_limit = ops, bytes_
        self.ops = self.bytes = 0

    def spend(self, ops: int = 0, size: int = 0) -> None:
        self.ops += ops
        self.bytes += size
        if self.ops > self.ops_limit:
            raise ResourceLimitExceeded("state", {"ops": self.ops_limit})
        if self.bytes > self.bytes_limit:
            raise ResourceLimitExceeded("state", {"bytes": self.bytes_limit})


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
        op = message.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            raise StateOpError("ValueError", f"unknown state operation {op!r}")
        key = message.get("key")
        if not isinstance(key, str) or not key:
            raise StateOpError("TypeError", "a state key must be a non-empty string")
        if len(key.encode("utf-8", "surrogatepass")) > KEY_MAX_BYTES:
            raise StateOpError("ValueError", f"a state key is at most {KEY_MAX_BYTES} bytes")
        if any(ord(c) < 32 or ord(c) == 127 for c in key):
            raise StateOpError("ValueError", "a state key must not contain control characters")
        full = self.context.prefix + key
        self.budget.spend(ops=1, size=len(full.encode("utf-8", "surrogatepass")))
        return await handler(full, message)

    def _spend_text(self, text: str | None) -> None:
        if text is not None:
            self.budget.spend(size=len(text.encode("utf-8", "surrogatepass")))

    async def _get(self, key: str, message: dict[str, Any]) -> dict[str, Any]:
        text = await self.store.get(key)
        self._spend_text(text)
        return {"found": text is not None, "value": None if text is None else decode_value(text)}

    async def _set(self, key: str, message: dict[str, Any]) -> dict[str, Any]:
        text = encode_value(message.get("value"))
        self._spend_text(text)
        await self.store.set(key, text)
        return {"value": None}

    async def _delete(self, key: str, message: dict[str, Any]) -> dict[str, Any]:
        return {"value": await self.store.delete(key)}

    async def _increment(self, key: str, message: dict[str, Any]) -> dict[str, Any]:
        return {"value": await self.store.increment(key, _amount(message))}

    async def _decrement(self, key: str, message: dict[str, Any]) -> dict[str, Any]:
        amount = _amount(message)
        return {"value": await self.store.increment(key, -amount)}

    async def _push(self, key: str, message: dict[str, Any]) -> dict[str, Any]:
        return await self._append(key, [message.get("value")])

    async def _extend(self, key: str, message: dict[str, Any]) -> dict[str, Any]:
        values = message.get("values")
        if not isinstance(values, list):
            raise StateOpError("TypeError", "extend takes a list of values")
        return await self._append(key, values)

    async def _append(self, key: str, values: list[Any]) -> dict[str, Any]:
        added = [encode_value(v) for v in values]  # refused before anything is written
        self.budget.spend(size=sum(len(t.encode("utf-8", "surrogatepass")) for t in added))

        def change(old: str | None) -> tuple[str | None, int]:
            items = _list_of(old)
            items.extend(values)
            return encode_value(items), len(items)

        return {"value": await self.store.update(key, change)}

    async def _pop(self, key: str, message: dict[str, Any]) -> dict[str, Any]:
        def change(old: str | None) -> tuple[str | None, Any]:
            if old is None:
                return None, None
            items = _list_of(old)
            if not items:
                return old, None
            first = items.pop(0)
            return encode_value(items), first

        value = await self.store.update(key, change)
        self._spend_text(encode_value(value))
        return {"value": value}


def _amount(message: dict[str, Any]) -> int:
    amount = message.get("amount", 1)
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise StateOpError("TypeError", "amount must be an integer")
    if not INT64_MIN <= amount <= INT64_MAX:
        raise StateOpError("OverflowError", "amount is out of the 64-bit range")
    return amount


def _list_of(text: str | None) -> list[Any]:
    if text is None:
        return []
    value = decode_value(text)
    if not isinstance(value, list):
        raise StateOpError("TypeError", "the value under this key is not a list")
    return value
