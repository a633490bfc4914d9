"""The fuzz oracle: what shared/spec/protocol.md says the server must send back for a frame.

It is written from the spec, not from the implementation: :func:`expect_frame` turns one
frame into a :class:`FrameExpect` (nothing, one response, or one array of responses, each
an :class:`Expect`), and the ``*_problems`` functions list what a message got wrong.
:class:`World` is the oracle's model of the server: the actors it knows (the examples in
``manifests/``, whose behaviour the manifests document), the only allowed root of ``load``
and the text that must never leave the server.

Choices the spec leaves open, pinned here so that they are visible:
- when several things are wrong with one request, any of their codes is accepted;
- an Invalid Request whose ``id`` could be read may echo that id or null;
- a number outside the range of a double cannot be represented, so a frame holding one is
  a Parse error (-32700);
- unknown param names are Invalid params (the OpenRPC schemas forbid them);
- -32603 is never acceptable: every unknown failure the fuzz provokes is a bug.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SERVER_CODE = str(REPO / "service")
TRACE_MARKERS = ("Traceback", 'File "')
SCRIPT_SUFFIXES = (".py", ".js", ".mjs", ".cjs")
MANIFEST_SUFFIXES = (".yaml", ".yml")
ABSENT: Any = object()  # a member left out of a message (a constant, never mutated)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
ACTOR_NOT_FOUND = -32001
PAYLOAD_INVALID = -32002
OUTPUT_INVALID = -32003
ACTOR_FAILED = -32004
MANIFEST_INVALID = -32007
CANCELLED = -32010
PATH_NOT_ALLOWED = -32011
RUN_FAILED = frozenset({OUTPUT_INVALID, ACTOR_FAILED})  # the script's own failures

# Positional params are named in the order protocol.md lists them.
PARAM_NAMES: dict[str, tuple[str, ...]] = {
    "list": (),
    "rpc.discover": (),
    "describe": ("actor_id",),
    "load": ("file_path",),
    "process": ("actor_id", "payload", "config", "state", "timestamp"),
    "cancel": ("request_id",),
}
DESCRIPTOR_KEYS = {"id", "language", "description", "inports", "outports", "limits", "manifest"}
LIMIT_KEYS = {"cpus", "memory_mb", "timeout_s", "network", "pids", "output_bytes"}
PROCESS_KEYS = {"outputs", "emitted", "return", "state", "duration_ms"}
RESOURCES = {"memory", "pids", "output", "cpu", "disk"}

ResultCheck = Callable[[Any], "str | None"]
Numbers = Callable[[Any], Any]


# --- JSON values -------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    """JSON Schema's ``integer``: a number with no fractional part (1.0 counts)."""
    return is_number(value) and (isinstance(value, int) or float(value).is_integer())


def as_double(value: Any) -> Any:
    """A number as JavaScript holds it (other values unchanged)."""
    if not is_number(value):
        return value
    try:
        return float(value)
    except OverflowError:
        return math.copysign(math.inf, value)


def json_equal(a: Any, b: Any, numbers: Numbers = lambda n: n) -> bool:
    """Equal as JSON values: numbers by value (via ``numbers``), booleans are not numbers."""
    if is_number(a) and is_number(b):
        return bool(numbers(a) == numbers(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k], numbers) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(
            json_equal(x, y, numbers) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def is_valid_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or is_number(value)


def has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_lone_surrogate(v) for v in value)
    return False


class _NotRepresentable(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotRepresentable(text)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity are not JSON


def parse_frame(frame: str | bytes) -> tuple[bool, Any]:
    """(True, value) for a frame holding JSON the server can represent, else (False, None)."""
    try:
        text = frame.decode("utf-8") if isinstance(frame, bytes) else frame
        return True, json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        return False, None


# --- the oracle's model of the server ----------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a run with valid params gives: a result passing ``check``, or one of ``codes``."""

    codes: frozenset[int] = frozenset()
    check: ResultCheck | None = None


@dataclass(frozen=True)
class ActorModel:
    """An example actor as its manifest documents it."""

    id: str
    language: str
    inports: dict[str, Callable[[Any], bool]]  # every port of the examples is required
    run: Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], Outcome]
    config_defaults: dict[str, Any] = field(default_factory=dict)
    config_ok: Callable[[dict[str, Any]], bool] = lambda merged: True

    def payload_ok(self, payload: dict[str, Any]) -> bool:
        """The spec's -32002 rules: no unknown port, no missing one, every value valid."""
        return payload.keys() == self.inports.keys() and all(
            check(payload[name]) for name, check in self.inports.items())


@dataclass
class World:
    """What the oracle knows of the server under test (updated as `load` succeeds)."""

    actors: dict[str, ActorModel]
    root: Path  # the only allowed root of `load`
    manifests: dict[Path, ActorModel | None]  # resolved manifest path -> its actor (None: invalid)
    secrets: tuple[str, ...] = ()  # text planted outside the root: must never be sent
    pending: dict[str, ActorModel] = field(default_factory=dict)  # new actors the frame loads
    # Loaded by a notification: nothing says when that finished, so later frames may or may
    # not see the actor yet (and a load may or may not count as a replacement).
    uncertain: set[str] = field(default_factory=set)


# --- expectations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """What one request must get: a result passing ``check``, or an error with one of ``codes``."""

    id: Any
    codes: frozenset[int] = frozenset()
    check: ResultCheck | None = None
    null_id_ok: bool = False
    method: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # named params (process/cancel/...)


@dataclass(frozen=True)
class FrameExpect:
    """What one frame must get: nothing (no elements), one response, or one array."""

    batch: bool
    elements: tuple[Expect, ...]
    quiet_cancels: tuple[Any, ...] = ()  # request_ids that cancel notifications target

    @property
    def process_ids(self) -> list[Any]:
        return [e.id for e in self.elements if e.method == "process"]


def _error(request_id: Any, code: int, null_id_ok: bool = False) -> Expect:
    return Expect(request_id, frozenset({code}), null_id_ok=null_id_ok)


def expect_frame(frame: str | bytes, world: World) -> FrameExpect:
    """What the server must answer to ``frame`` (see the module docstring).

    Actors that the frame's `load` requests define are known to ``world`` afterwards.
    """
    ok, message = parse_frame(frame)
    if not ok:
        return FrameExpect(False, (_error(None, PARSE_ERROR),))
    if isinstance(message, list) and not message:
        return FrameExpect(False, (_error(None, INVALID_REQUEST),))
    messages = message if isinstance(message, list) else [message]
    loaded, unanswered = _loaded_actors(messages, world)
    # The elements of a batch run concurrently: a call may run before or after a load.
    world.pending = {a.id: a for a in loaded + unanswered if a.id not in world.actors}
    try:
        elements = [expect_message(m, world, messages) for m in messages]
    finally:
        world.pending = {}
    world.actors.update({a.id: a for a in loaded + unanswered})
    world.uncertain.update(a.id for a in unanswered)
    fexp = FrameExpect(isinstance(message, list), tuple(e for e in elements if e is not None))
    return _with_cancellations(fexp, messages)


def _loaded_actors(messages: list[Any], world: World,
                   ) -> tuple[list[ActorModel], list[ActorModel]]:
    """The actors the frame's `load` requests define, and those its notifications define."""
    found: tuple[list[ActorModel], list[ActorModel]] = ([], [])
    for m in messages:
        if _is_request(m) and m["method"] == "load":
            path = (_named("load", m.get("params", ABSENT)) or {}).get("file_path")
            manifest = manifest_for(path, world.root) if isinstance(path, str) and path else None
            actor = world.manifests.get(manifest) if manifest is not None else None
            if actor is not None:
                found["id" not in m].append(actor)
    return found


def expect_message(message: Any, world: World, frame: list[Any]) -> Expect | None:
    """One element: None for a notification, else what its response must be."""
    request_id = message.get("id", ABSENT) if isinstance(message, dict) else ABSENT
    readable = request_id is not ABSENT and is_valid_id(request_id)
    if not _is_request(message):
        return _error(request_id if readable else None, INVALID_REQUEST, null_id_ok=True)
    if request_id is ABSENT:
        return None
    method: str = message["method"]
    if method not in PARAM_NAMES:
        return _error(request_id, METHOD_NOT_FOUND)
    params = _named(method, message.get("params", ABSENT))
    if params is None:
        return _error(request_id, INVALID_PARAMS)
    expect = _METHODS[method](params, world, frame)
    return replace(expect, id=request_id, method=method, params=params)


def _is_request(message: Any) -> bool:
    return (isinstance(message, dict) and message.get("jsonrpc") == "2.0"
            and isinstance(message.get("method"), str)
            and isinstance(message.get("params", {}), dict | list)
            and is_valid_id(message.get("id")))


def _named(method: str, raw: Any) -> dict[str, Any] | None:
    """Params by name (positional ones named in the spec's order); None when they cannot be."""
    names = PARAM_NAMES[method]
    if raw is ABSENT:
        return {}
    if isinstance(raw, list):
        return dict(zip(names, raw, strict=False)) if len(raw) <= len(names) else None
    return raw if set(raw) <= set(names) else None


def _expect_list(params: dict[str, Any], world: World, frame: list[Any]) -> Expect:
    if params:
        return Expect(None, frozenset({INVALID_PARAMS}))
    known = set(world.actors) - world.uncertain
    return Expect(None, check=lambda result: list_problem(result, known))


def _expect_discover(params: dict[str, Any], world: World, frame: list[Any]) -> Expect:
    if params:
        return Expect(None, frozenset({INVALID_PARAMS}))
    return Expect(None, check=discover_problem)


def _expect_describe(params: dict[str, Any], world: World, frame: list[Any]) -> Expect:
    actor_id = params.get("actor_id", ABSENT)
    if not isinstance(actor_id, str):
        return Expect(None, frozenset({INVALID_PARAMS}))
    if actor_id in world.pending or actor_id in world.uncertain:
        return Expect(None, frozenset({ACTOR_NOT_FOUND}),
                      check=lambda result: descriptor_problem(result, actor_id))
    if actor_id not in world.actors:
        return Expect(None, frozenset({ACTOR_NOT_FOUND}))
    return Expect(None, check=lambda result: descriptor_problem(result, actor_id))


def _expect_cancel(params: dict[str, Any], world: World, frame: list[Any]) -> Expect:
    target = params.get("request_id", ABSENT)
    if target is ABSENT or not is_valid_id(target):
        return Expect(None, frozenset({INVALID_PARAMS}))
    # Only a process call of this same frame can be in flight: the fuzz waits for each frame.
    may_cancel = any(_is_process_request(m) and json_equal(m["id"], target) for m in frame)
    return Expect(None, check=lambda result: cancel_problem(result, may_cancel))


def _is_process_request(message: Any) -> bool:
    return _is_request(message) and message["method"] == "process" and "id" in message


def _cancel_targets(frame: list[Any], notifications: bool = False) -> list[Any]:
    """The request_ids the frame's cancel requests (or its cancel notifications) name."""
    targets = []
    for m in frame:
        if _is_request(m) and m["method"] == "cancel" and ("id" in m) != notifications:
            params = _named("cancel", m.get("params", ABSENT)) or {}
            targets.append(params.get("request_id", ABSENT))
    return targets


def _expect_load(params: dict[str, Any], world: World, frame: list[Any]) -> Expect:
    file_path = params.get("file_path", ABSENT)
    if not isinstance(file_path, str):
        return Expect(None, frozenset({INVALID_PARAMS}))
    if not file_path:  # "no file_path" or "no such file": the spec allows either reading
        return Expect(None, frozenset({INVALID_PARAMS, PATH_NOT_ALLOWED}))
    manifest = manifest_for(file_path, world.root)
    if manifest is None:
        return Expect(None, frozenset({PATH_NOT_ALLOWED}))
    if manifest.suffix not in MANIFEST_SUFFIXES:  # neither a manifest nor a script
        return Expect(None, frozenset({MANIFEST_INVALID, PATH_NOT_ALLOWED}))
    actor = world.manifests.get(manifest)
    if actor is None:
        return Expect(None, frozenset({MANIFEST_INVALID}))
    twice = sum(1 for m in frame if _is_request(m) and m["method"] == "load") > 1
    replaced = None if twice or actor.id in world.uncertain else actor.id in world.actors
    return Expect(None, check=lambda result: load_problem(result, actor.id, replaced))


def manifest_for(file_path: str, root: Path) -> Path | None:
    """The resolved manifest `load` may read for ``file_path``, or None (-32011)."""
    if "\x00" in file_path:
        return None  # no file has such a name
    path = Path(file_path)
    try:
        if path.suffix in SCRIPT_SUFFIXES:
            candidates = [path.with_suffix(s) for s in MANIFEST_SUFFIXES]
            path = next((c for c in candidates if c.is_file()), candidates[0])
        resolved = Path(os.path.realpath(path, strict=True))
    except (OSError, RuntimeError, ValueError):  # a name too long, or a lone surrogate
        return None  # (no file system name): it names no file
    if not resolved.is_file() or not resolved.is_relative_to(root.resolve()):
        return None
    return resolved


def _expect_process(params: dict[str, Any], world: World, frame: list[Any]) -> Expect:
    codes = set(_process_param_problems(params))
    actor_id = params.get("actor_id")
    if not isinstance(actor_id, str):
        return Expect(None, frozenset(codes))
    actor = world.actors.get(actor_id) or world.pending.get(actor_id)
    maybe_missing = actor_id in world.pending or actor_id in world.uncertain
    if actor is None or maybe_missing:
        codes.add(ACTOR_NOT_FOUND)
    if actor is None:
        return Expect(None, frozenset(codes))
    payload, config = params.get("payload"), params.get("config", {})
    if isinstance(payload, dict) and not actor.payload_ok(payload):
        codes.add(PAYLOAD_INVALID)
    merged = {**actor.config_defaults, **config} if isinstance(config, dict) else None
    if merged is not None and not actor.config_ok(merged):
        codes.add(INVALID_PARAMS)
    if codes - {ACTOR_NOT_FOUND} or (codes and not maybe_missing):
        return Expect(None, frozenset(codes))
    if has_lone_surrogate(params):
        # A lone surrogate (\ud800) is legal JSON text but not Unicode; the server may refuse
        # it as invalid params. It must not fail internally (see test_lone_surrogate_in_state).
        codes.add(INVALID_PARAMS)
    assert isinstance(payload, dict)  # else INVALID_PARAMS was due, above
    outcome = actor.run(payload, merged or {}, params.get("state", {}))
    return Expect(None, frozenset(codes) | outcome.codes, outcome.check)


def _process_param_problems(params: dict[str, Any]) -> Iterable[int]:
    if not isinstance(params.get("actor_id"), str) or not isinstance(params.get("payload"), dict):
        yield INVALID_PARAMS
    if any(not isinstance(params.get(k, {}), dict) for k in ("config", "state")):
        yield INVALID_PARAMS
    if "timestamp" in params and not is_number(params["timestamp"]):
        yield INVALID_PARAMS


def _with_cancellations(fexp: FrameExpect, frame: list[Any]) -> FrameExpect:
    """A process call that a cancel of the same frame targets may answer -32010."""
    quiet = tuple(_cancel_targets(frame, notifications=True))
    targets = [*_cancel_targets(frame), *quiet]
    elements = tuple(
        replace(e, codes=e.codes | {CANCELLED})
        if e.method == "process" and any(json_equal(e.id, t) for t in targets) else e
        for e in fexp.elements)
    return replace(fexp, elements=elements, quiet_cancels=quiet)


_METHODS: dict[str, Callable[[dict[str, Any], World, list[Any]], Expect]] = {
    "list": _expect_list,
    "rpc.discover": _expect_discover,
    "describe": _expect_describe,
    "load": _expect_load,
    "process": _expect_process,
    "cancel": _expect_cancel,
}


# --- result checks -----------------------------------------------------------------------


def descriptor_problem(descriptor: Any, actor_id: str | None = None) -> str | None:
    if not isinstance(descriptor, dict) or not descriptor.keys() >= DESCRIPTOR_KEYS:
        return f"not a Descriptor: {descriptor!r:.200}"
    if actor_id is not None and descriptor["id"] != actor_id:
        return f"describe({actor_id!r}) gave actor {descriptor['id']!r}"
    if descriptor["language"] not in ("python", "javascript"):
        return f"language {descriptor['language']!r}"
    if set(descriptor["limits"]) != LIMIT_KEYS:
        return f"limits {descriptor['limits']!r}"
    ports_ok = all(isinstance(p, dict) and "schema" in p
                   for kind in ("inports", "outports") for p in descriptor[kind].values())
    return None if ports_ok else "a port without a schema"


def list_problem(result: Any, known: set[str]) -> str | None:
    if not isinstance(result, dict) or set(result) != {"actors"}:
        return f"list result {result!r:.200}"
    ids = [d.get("id") if isinstance(d, dict) else d for d in result["actors"]]
    if ids != sorted(ids, key=str) or not known <= set(ids):
        return f"list ids {ids} (expected sorted, with {sorted(known)})"
    return next(filter(None, map(descriptor_problem, result["actors"])), None)


def discover_problem(result: Any) -> str | None:
    if not isinstance(result, dict) or not str(result.get("openrpc", "")).startswith("1."):
        return "rpc.discover did not return an OpenRPC 1.x document"
    names = {m.get("name") for m in result.get("methods", [])}
    missing = set(PARAM_NAMES) - {"rpc.discover"} - names
    return f"OpenRPC document lacks {sorted(missing)}" if missing else None


def cancel_problem(result: Any, may_cancel: bool) -> str | None:
    if not isinstance(result, dict) or set(result) != {"cancelled"} or not isinstance(
            result["cancelled"], bool):
        return f"cancel result {result!r}"
    if result["cancelled"] and not may_cancel:
        return "cancelled: true, but no process call with that id was in flight"
    return None


def load_problem(result: Any, actor_id: str, replaced: bool | None) -> str | None:
    if not isinstance(result, dict) or set(result) != {"success", "actor", "replaced"}:
        return f"load result {result!r:.200}"
    if result["success"] is not True or not isinstance(result["replaced"], bool):
        return f"load result {result!r:.200}"
    if replaced is not None and result["replaced"] is not replaced:
        return f"replaced is {result['replaced']}, expected {replaced}"
    return descriptor_problem(result["actor"], actor_id)


def process_shape_problem(result: Any) -> str | None:
    """The shape every `process` result has, whatever the actor did."""
    if not isinstance(result, dict) or set(result) != PROCESS_KEYS:
        return f"process result keys {sorted(result) if isinstance(result, dict) else result}"
    emitted = result["emitted"]
    if not isinstance(emitted, list) or [e.get("seq") for e in emitted] != list(
            range(len(emitted))):
        return f"emitted {emitted!r:.200}"
    last = {e["port"]: e["data"] for e in emitted}
    if not json_equal(result["outputs"], last):
        return f"outputs {result['outputs']!r:.200} are not the last value per port"
    if not is_number(result["duration_ms"]) or result["duration_ms"] < 0:
        return f"duration_ms {result['duration_ms']!r}"
    return None if isinstance(result["state"], dict) else "state is not an object"


def process_result(sent: list[tuple[str, Any]], returned: Any, state: dict[str, Any],
                   numbers: Numbers = lambda n: n) -> ResultCheck:
    """The exact `process` result of a run that sent ``sent`` and returned ``returned``."""
    emitted = [{"port": port, "data": data, "seq": n} for n, (port, data) in enumerate(sent)]

    def check(result: Any) -> str | None:
        problem = process_shape_problem(result)
        if problem is not None:
            return problem
        for name, want in (("emitted", emitted), ("return", returned), ("state", state)):
            if not json_equal(result[name], want, numbers):
                return f"{name} is {result[name]!r:.200}, expected {want!r:.200}"
        return None

    return check


# --- errors and whole messages -----------------------------------------------------------


def _errors_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(e, dict) and isinstance(e.get("message"), str) for e in value)


_DATA_CHECKS: dict[int, Callable[[Any], bool]] = {
    ACTOR_NOT_FOUND: lambda d: isinstance(d, dict) and set(d) == {"actor_id"},
    PAYLOAD_INVALID: lambda d: isinstance(d, dict) and set(d) == {"port", "errors"}
    and _errors_list(d["errors"]),
    OUTPUT_INVALID: lambda d: isinstance(d, dict) and set(d) == {"port", "errors"}
    and _errors_list(d["errors"]),
    ACTOR_FAILED: lambda d: isinstance(d, dict) and set(d) == {"type", "message", "traceback"}
    and all(isinstance(v, str) for v in d.values()),
    -32005: lambda d: isinstance(d, dict) and is_number(d.get("limit_s")),
    -32006: lambda d: isinstance(d, dict) and d.get("resource") in RESOURCES,
    MANIFEST_INVALID: lambda d: isinstance(d, dict) and _errors_list(d.get("errors")),
    -32008: lambda d: isinstance(d, dict) and is_number(d.get("retry_after_ms")),
    -32009: lambda d: isinstance(d, dict) and {"backend", "reason"} <= set(d),
    CANCELLED: lambda d: d == {},
    PATH_NOT_ALLOWED: lambda d: isinstance(d, dict) and isinstance(d.get("path"), str),
}


def response_problems(response: Any, expect: Expect) -> list[str]:
    """What is wrong with ``response`` as the answer ``expect`` describes."""
    if not isinstance(response, dict) or set(response) not in (
            {"jsonrpc", "id", "result"}, {"jsonrpc", "id", "error"}):
        return [f"not a Response object (result xor error): {response!r:.300}"]
    problems = []
    if response["jsonrpc"] != "2.0":
        problems.append(f"jsonrpc is {response['jsonrpc']!r}")
    if not (json_equal(response["id"], expect.id)
            or (expect.null_id_ok and response["id"] is None)):
        problems.append(f"id {response['id']!r} instead of {expect.id!r}")
    if "error" in response:
        problems += _error_problems(response["error"], expect)
    elif expect.check is None:
        problems.append(f"a result where an error {sorted(expect.codes)} was due")
    else:
        problem = expect.check(response["result"])
        if problem is not None:
            problems.append(problem)
    return problems


def _error_problems(error: Any, expect: Expect) -> list[str]:
    if not isinstance(error, dict) or not {"code", "message"} <= set(error) or not set(
            error) <= {"code", "message", "data"}:
        return [f"not an Error object: {error!r:.300}"]
    code = error["code"]
    if not isinstance(code, int) or isinstance(code, bool) or not isinstance(
            error["message"], str):
        return [f"code/message types: {error!r:.300}"]
    problems = []
    if code not in expect.codes:
        due = sorted(expect.codes) if expect.codes else "a result"
        problems.append(f"error {code} {error['message']!r} (data {error.get('data')!r:.300}); "
                        f"due: {due}")
    data_ok = _DATA_CHECKS.get(code, lambda d: True)
    if not data_ok(error.get("data")):
        problems.append(f"error {code} has data {error.get('data')!r:.300}")
    elif code == ACTOR_NOT_FOUND and not json_equal(error["data"]["actor_id"],
                                                    expect.params.get("actor_id")):
        problems.append(f"-32001 names {error['data']['actor_id']!r}")
    return problems


def leak_problems(text: str, message: Any, secrets: Iterable[str], sent: str = "") -> list[str]:
    """Server tracebacks or planted secrets in a message (the sandbox's traceback is allowed).

    A marker the client itself sent (``sent``, the frame's text) may come back in an echo.
    """
    problems = [f"secret {s!r} sent to the client" for s in secrets if s in text]
    inner = _sandbox_tracebacks(message)
    problems += [f"the server's own traceback in -32004 data: {t[:300]}"
                 for t in inner if SERVER_CODE in t]
    if inner:
        text = json.dumps(_without_sandbox_traceback(message))
    problems += [f"{marker!r} in a message: {text[:300]}" for marker in TRACE_MARKERS
                 if marker in text and marker not in sent and json.dumps(marker)[1:-1] not in sent]
    return problems


def cancel_problems(pairs: list[tuple[Expect, Any]], quiet: tuple[Any, ...] = ()) -> list[str]:
    """A cancel answered true made its call answer -32010; a -32010 had such a cancel (or a
    cancel notification, whose true nobody sees)."""
    said_true = [e.params.get("request_id") for e, r in pairs if e.method == "cancel"
                 and isinstance(r.get("result"), dict) and r["result"].get("cancelled") is True]
    cancelled = [e.id for e, r in pairs if e.method == "process"
                 and isinstance(r.get("error"), dict) and r["error"].get("code") == CANCELLED]
    problems = [f"cancel of {t!r} said true but no call answered -32010" for t in said_true
                if not any(json_equal(t, c) for c in cancelled)]
    problems += [f"call {c!r} answered -32010 but no cancel said true" for c in cancelled
                 if not any(json_equal(t, c) for t in [*said_true, *quiet])]
    return problems


def _sandbox_tracebacks(message: Any) -> list[str]:
    found = []
    for response in message if isinstance(message, list) else [message]:
        error = response.get("error") if isinstance(response, dict) else None
        if not isinstance(error, dict) or error.get("code") != ACTOR_FAILED:
            continue
        data = error.get("data")
        if isinstance(data, dict) and isinstance(data.get("traceback"), str):
            found.append(data["traceback"])
    return found


def _without_sandbox_traceback(message: Any) -> Any:
    if isinstance(message, list):
        return [_without_sandbox_traceback(m) for m in message]
    error = message.get("error") if isinstance(message, dict) else None
    if isinstance(error, dict) and error.get("code") == ACTOR_FAILED and isinstance(
            error.get("data"), dict):
        data = {k: v for k, v in error["data"].items() if k != "traceback"}
        return {**message, "error": {**error, "data": data}}
    return message


def notification_problems(note: dict[str, Any], fexp: FrameExpect) -> list[str]:
    """An `output` or `log` notification: its shape, and that it belongs to a process request."""
    if set(note) != {"jsonrpc", "method", "params"} or note["jsonrpc"] != "2.0":
        return [f"not a Notification: {note!r:.300}"]
    params = note["params"]
    keys = {"output": {"request_id", "actor_id", "port", "data", "seq", "timestamp"},
            "log": {"request_id", "actor_id", "stream", "message"}}.get(note["method"])
    if keys is None or not isinstance(params, dict) or set(params) != keys:
        return [f"unexpected notification {note!r:.300}"]
    owners = [e for e in fexp.elements if e.method == "process"
              and json_equal(e.id, params["request_id"])]
    if not owners:
        return [f"notification for no process request of the frame: {note!r:.300}"]
    if not any(e.params.get("actor_id") == params["actor_id"] for e in owners):
        return [f"notification names actor {params['actor_id']!r}"]
    if note["method"] == "log":
        return [] if params["stream"] in ("stdout", "stderr") else [f"log stream {params}"]
    timestamp_ok = isinstance(params["timestamp"], int) and params["timestamp"] > 0
    return [] if timestamp_ok and isinstance(params["seq"], int) else [f"output params {params}"]


def outputs_match(outputs: list[dict[str, Any]], result: Any) -> str | None:
    """The `output` notifications of one call are its ``emitted`` list, in order."""
    sent = [{"port": p["port"], "data": p["data"], "seq": p["seq"]} for p in outputs]
    if not json_equal(sent, result.get("emitted")):
        return f"output notifications {sent!r:.200} differ from emitted {result['emitted']!r:.200}"
    return None


# --- the example actors ------------------------------------------------------------------


def _doubler_run(payload: dict[str, Any], config: dict[str, Any],
                 state: dict[str, Any]) -> Outcome:
    doubled = payload["input"] * 2
    if isinstance(doubled, float) and not math.isfinite(doubled):
        return Outcome(RUN_FAILED)  # infinity is not JSON: the actor cannot send it
    return Outcome(check=process_result([("output", doubled)], {"status": "completed"}, state))


def _doubler_js_run(payload: dict[str, Any], config: dict[str, Any],
                    state: dict[str, Any]) -> Outcome:
    doubled = as_double(payload["input"]) * 2
    if not math.isfinite(doubled):
        return Outcome(RUN_FAILED)
    return Outcome(check=process_result([("output", doubled)], {"status": "completed"}, state,
                                        numbers=as_double))


def _counter_run(payload: dict[str, Any], config: dict[str, Any],
                 state: dict[str, Any]) -> Outcome:
    count = state.get("count", 0)
    result = payload["value"] * config["factor"]
    if type(count) is not int or count < 0 or (
            isinstance(result, float) and not math.isfinite(result)):
        return Outcome(RUN_FAILED, process_shape_problem)  # the script's arithmetic decides
    calls = count + 1
    return Outcome(check=process_result([("result", result), ("calls", calls)],
                                        {"status": "completed", "calls": calls},
                                        {**state, "count": calls}))


def _ticker_run(payload: dict[str, Any], config: dict[str, Any],
                state: dict[str, Any]) -> Outcome:
    count = payload["count"]
    if type(count) is not int:  # 3.0 passes `integer`; range() in the script refuses it
        return Outcome(RUN_FAILED, process_shape_problem)
    ticks = [("tick", n) for n in range(1, count + 1)]
    return Outcome(check=process_result(ticks, {"status": "completed", "sent": count}, state))


def _order_total_run(payload: dict[str, Any], config: dict[str, Any],
                     state: dict[str, Any]) -> Outcome:
    # schemas/order.json is not modelled here: any documented outcome of a run is accepted
    return Outcome(RUN_FAILED | {PAYLOAD_INVALID}, process_shape_problem)


def doubler_model(actor_id: str = "doubler") -> ActorModel:
    return ActorModel(actor_id, "python", {"input": is_number}, _doubler_run)


def example_actors() -> dict[str, ActorModel]:
    """The actors of ``manifests/``, as their manifests and scripts document them."""
    models = [
        doubler_model(),
        ActorModel("doubler_js", "javascript", {"input": is_number}, _doubler_js_run),
        ActorModel("counter", "python", {"value": is_number}, _counter_run,
                   config_defaults={"factor": 2},
                   config_ok=lambda c: set(c) == {"factor"} and is_number(c["factor"])),
        ActorModel("ticker", "python", {"count": lambda v: is_integer(v) and 0 <= v <= 1000},
                   _ticker_run),
        ActorModel("order_total", "python", {"order": lambda v: True}, _order_total_run),
    ]
    return {m.id: m for m in models}
