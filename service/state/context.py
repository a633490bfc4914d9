"""The state context a host sends as ``state`` (shared/spec/state.md, "Persistent state").

``{"namespace": ..., "actor_id": ..., "redis_url"?: ...}`` (exactly those keys, strings)
selects persistent state; any other object is inline state. ``redis_url`` is accepted and
ignored: the server never dials a URL a client chose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from service.errors import InvalidParams

REQUIRED = frozenset({"namespace", "actor_id"})
OPTIONAL = frozenset({"redis_url"})
FORBIDDEN = (":", "*")  # would let a key reach outside its own {namespace}:{actor_id}:
NAME_MAX = 256
# Unicode's control characters: category Cc (C0, DEL and C1).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Lone surrogates (category Cs) have no UTF-8 form: no Redis key can hold one.
SURROGATES = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True)
class StateContext:
    namespace: str
    actor_id: str

    @property
    def prefix(self) -> str:
        """Every key this call may touch starts with this."""
        return f"{self.namespace}:{self.actor_id}:"


def is_state_context(state: Any) -> bool:
    """Does ``state`` select persistent state (rather than being the state itself)?"""
    if not isinstance(state, dict) or not REQUIRED <= state.keys() <= REQUIRED | OPTIONAL:
        return False
    return all(isinstance(value, str) for value in state.values())


def state_context(state: dict[str, Any], called_actor: str) -> StateContext:
    """The validated context; InvalidParams (-32602) naming the field that is wrong."""
    for field in ("namespace", "actor_id"):
        problem = _name_problem(state[field])
        if problem:
            raise _invalid(field, problem)
    if state["actor_id"] != called_actor:
        raise _invalid("actor_id", f"must equal the called actor_id {called_actor!r}")
    return StateContext(state["namespace"], state["actor_id"])


def _name_problem(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if len(value) > NAME_MAX:
        return f"must be at most {NAME_MAX} characters"
    if any(c in value for c in FORBIDDEN):
        return "must not contain ':' or '*'"
    return character_problem(value)


def character_problem(text: str) -> str | None:
    """Why ``text`` cannot name state (a namespace, an actor id, a key), else None."""
    if _CONTROL.search(text):
        return "must not contain control characters"
    if SURROGATES.search(text):
        return "must not contain lone surrogates (text that has no UTF-8 form)"
    return None


def _invalid(field: str, message: str) -> InvalidParams:
    return InvalidParams(f"state.{field} {message}",
                         {"errors": [{"path": f"/state/{field}", "message": message}]})
