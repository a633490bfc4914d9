"""The runtime: the loaded actors, their pools, and the execution path of one call.

Everything a call must satisfy that is not about transport lives here:
payload validation before the run, config merge and validation, output
validation of every ``send_output`` value, and the live ``output``/``log``
notifications. The server and the CLI both drive a :class:`Runtime`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

from service.deps.build import DepsBuilder, DepsError
from service.errors import (
    ActorNotFound,
    InvalidParams,
    ManifestError,
    ManifestInvalid,
    OutputInvalid,
    PathNotAllowed,
    PayloadInvalid,
    Problem,
)
from service.manifest.lint import check_paths
from service.manifest.loader import load_manifest
from service.manifest.model import ActorDef, Port
from service.manifest.script_only import check_script_only, is_script, manifest_beside
from service.manifest.validation import LoopBudget
from service.sandbox.base import Backend, CallRequest, Event, OutputEvent
from service.sandbox.capacity import SandboxCapacity
from service.sandbox.pool import ActorPool
from service.settings import Settings
from service.state.base import StateStore
from service.state.context import is_state_context, state_context
from service.state.select import open_store
from service.state.session import StateBudget, StateSession

log = logging.getLogger(__name__)

# emit("output" | "log", params): a live notification of the call, without request_id. For an
# output it may return what the call keeps in place of its value (rpc.methods: its written
# text alone), else None.
Emit = Callable[[str, dict[str, Any]], Awaitable[Any]]
SCRIPT_SUFFIXES = (".py", ".js", ".mjs", ".cjs")


class Runtime:
    """Loaded actors by id, each with its warm pool."""

    # A process result's outputs and emitted hold what the emitter gave back for each output
    # (a cluster front decodes them apart): rpc.methods writes them once, keeps the text.
    results_hold_emitted_values = True

    def __init__(self, settings: Settings, backend: Backend,
                 store: StateStore | None = None) -> None:
        self.settings = settings
        self.backend = backend
        # Persistent state: the server's own store (settings [state]), never a client's URL.
        self.store = open_store(settings.state) if store is None else store
        if settings.cluster.enabled and not settings.state.redis_url:
            log.warning("cluster mode with the embedded state store: persistent state is "
                        "per worker; set state.redis_url to share it")
        self._actors: dict[str, ActorDef] = {}
        self._pools: dict[str, ActorPool] = {}
        self._retired: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()  # serializes load/replace
        self._reading = asyncio.Lock()  # serializes reading manifests (in a thread)
        self.deps = DepsBuilder(settings)
        self.unavailable: dict[str, str] = {}  # actor id -> why start could not load it
        self.capacity = SandboxCapacity(settings.capacity.max_sandboxes,
                                        settings.capacity.memory_mb)

    async def start(self, extra_paths: Sequence[Path | str] = ()) -> None:
        """Load every manifest under the settings' manifest_paths and ``extra_paths``.

        Raises ManifestError listing every problem of every manifest; nothing is loaded then.
        """
        paths = [*self.settings.manifest_paths, *map(Path, extra_paths)]
        actors, problems = await asyncio.to_thread(check_paths, paths, self.settings)
        errors = [p for p in problems if p.is_error]  # warnings are lint's business
        if errors:
            raise ManifestError(errors)
        loaded = 0
        for actor in actors:
            try:
                actor = await self.deps.prepare(actor)
            except DepsError as exc:  # the others still serve; `load` can retry it later
                log.error("actor %s not loaded: its dependencies cannot be installed: %s",
                          actor.id, exc)
                self.unavailable[actor.id] = f"dependencies cannot be installed: {exc}"
                continue
            await self._install(actor)
            loaded += 1
        log.info("loaded %d actors on backend %s", loaded, self.backend.name)
        log.info("sandbox capacity: %d sandboxes, %s MiB of memory limits",
                 self.capacity.max_sandboxes, self.capacity.memory_mb)

    def actors(self) -> list[ActorDef]:
        return sorted(self._actors.values(), key=lambda a: a.id)

    def get(self, actor_id: Any) -> ActorDef:
        actor = self._actors.get(actor_id) if isinstance(actor_id, str) else None
        if actor is None:
            raise ActorNotFound(actor_id)
        return actor

    def pool_stats(self) -> dict[str, tuple[int, int, int]]:
        """actor id -> (busy, idle, queued)."""
        return {actor_id: pool.stats for actor_id, pool in self._pools.items()}

    def boot_stats(self) -> dict[str, tuple[int, int]]:
        """actor id -> (sandboxes booted, boots that failed), since the actor was first loaded."""
        return {actor_id: (pool.boots, pool.boot_failures)
                for actor_id, pool in self._pools.items()}

    async def load(self, file_path: Any) -> tuple[ActorDef, bool]:
        """Load (or replace) the actor of a manifest, of a script with a manifest beside it,
        or of a script-only actor (its metadata in the script)."""
        manifest = self._allowed_manifest(check_file_path(file_path))
        try:
            async with self._reading:  # one at a time: each holds the GIL most of its time
                actor = await asyncio.to_thread(self._load_file, manifest)
        except ManifestError as exc:
            raise ManifestInvalid(exc.problems) from exc
        actor = await self._with_dependencies(actor)
        async with self._lock:
            replaced = actor.id in self._actors
            await self._install(actor)
            self.unavailable.pop(actor.id, None)
        log.info("loaded actor %s from %s (replaced=%s)", actor.id, manifest, replaced)
        return actor, replaced

    async def _with_dependencies(self, actor: ActorDef) -> ActorDef:
        """``actor`` with its dependency set built; -32007 with the installer's message if not."""
        try:
            return await self.deps.prepare(actor)
        except DepsError as exc:
            line, column = (actor.dependencies.position if actor.dependencies
                            and actor.dependencies.position else (None, None))
            raise ManifestInvalid([Problem(actor.manifest_display, line, column,
                                           f"dependencies: cannot be installed: {exc}",
                                           "/dependencies")]) from exc

    def _allowed_manifest(self, file_path: str) -> Path:
        try:
            return self._confined(Path(file_path))
        except (OSError, ValueError, RuntimeError):  # NUL byte, name too long, symlink loop
            raise PathNotAllowed(file_path) from None

    def _load_file(self, path: Path) -> ActorDef:
        if is_script(path):
            check = check_script_only(path, self.settings)
            if check.actor is None:
                raise ManifestError(check.problems)
            return check.actor
        return load_manifest(path, self.settings)

    def _confined(self, path: Path) -> Path:
        """The manifest of ``path`` (or the script itself when it has none beside it),
        if it is a file below an allowed root."""
        if path.suffix in SCRIPT_SUFFIXES:
            path = manifest_beside(path) or path
        resolved = path.resolve(strict=True)
        roots = [root.resolve() for root in self.settings.allowed_roots]
        if not resolved.is_file() or not any(resolved.is_relative_to(r) for r in roots):
            raise FileNotFoundError(path)
        return path

    async def _install(self, actor: ActorDef) -> None:
        pool = ActorPool(actor, self.backend, self.capacity)
        old = self._pools.get(actor.id)
        if old is not None:  # the boot counters are the actor's, across reloads
            pool.boots, pool.boot_failures = old.boots, old.boot_failures
        await pool.start()
        self._actors[actor.id] = actor
        self._pools[actor.id] = pool
        if old is not None:  # calls already running finish on the old definition
            task = asyncio.create_task(old.drain())
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    async def process(
        self,
        actor_id: Any,
        payload: Any,
        config: Any = None,
        state: Any = None,
        timestamp: Any = None,
        emit: Emit | None = None,
    ) -> dict[str, Any]:
        """Run one call of an actor and return the protocol's `process` result."""
        started = time.perf_counter()
        actor = self.get(actor_id)
        payload, config, state = _objects(payload=payload, config=config, state=state)
        session = self._state_session(state, actor.id)
        while True:
            await check_payload(actor, payload)
            merged = await merged_config(actor, config)
            latest = self.get(actor_id)
            if latest is actor:
                break
            actor = latest  # replaced (`load`) while it was checked: checked again, for the new one
        request = CallRequest(
            actor_id=actor.id,
            payload=payload,
            config=merged,
            state={} if session is not None else state,
            timestamp=int(time.time() * 1000) if timestamp is None else timestamp,
            state_ops=session,
        )
        call = _Call(actor, emit)
        # The actor's pool with no await in between: the definition just checked is the one
        # that runs (pool.run admits the call before its first await).
        outcome = await self._pools[actor.id].run(request, call.on_event)
        return {
            "outputs": call.outputs,
            "emitted": call.emitted,
            "return": outcome.return_value,
            # persistent state lives in the store: the context goes back as it came
            "state": state if session is not None else outcome.state,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        }

    def _state_session(self, state: dict[str, Any], actor_id: str) -> StateSession | None:
        """The call's session with the store when ``state`` is a state context, else None."""
        if not is_state_context(state):
            return None
        limits = self.settings.state
        return StateSession(self.store, state_context(state, actor_id),
                            StateBudget(limits.ops_per_call, limits.bytes_per_call))

    async def aclose(self) -> None:
        """Kill every sandbox of every pool, old definitions included."""
        pools = list(self._pools.values())
        self._pools.clear()
        for task in list(self._retired):
            task.cancel()
        await asyncio.gather(*(p.aclose() for p in pools), *self._retired,
                             return_exceptions=True)
        await self.backend.aclose()
        await self.store.aclose()


@asynccontextmanager
async def open_runtime(
    settings: Settings, extra_paths: Sequence[Path | str] = ()
) -> AsyncIterator[Runtime]:
    """A started Runtime on the backend the settings select; every sandbox is killed on exit."""
    from service.sandbox.select import select_backend  # imports the microVM SDK: only when used

    runtime = Runtime(settings, await select_backend(settings))
    try:
        await runtime.start(extra_paths)
        yield runtime
    finally:
        await runtime.aclose()  # closes the backend too


class _Call:
    """What one call has emitted so far; validates and forwards each event."""

    def __init__(self, actor: ActorDef, emit: Emit | None) -> None:
        self.actor = actor
        self.emit = emit
        self.outputs: dict[str, Any] = {}
        self.emitted: list[dict[str, Any]] = []

    async def on_event(self, event: Event) -> None:
        if isinstance(event, OutputEvent):
            await self._output(event)
        elif self.emit is not None:
            await self.emit("log", {"actor_id": self.actor.id, "stream": event.stream,
                                    "message": event.message})

    async def _output(self, event: OutputEvent) -> None:
        port = self.actor.outports.get(event.port)
        if port is None:
            message = f"{event.port!r} is not a declared outport"
            raise OutputInvalid(event.port, [{"path": "", "message": message}])
        errors = await port.check(event.data)
        if errors:
            raise OutputInvalid(event.port, errors)
        seq = len(self.emitted)
        kept = event.data
        if self.emit is not None:
            stand_in = await self.emit("output", {
                "actor_id": self.actor.id, "port": event.port, "data": event.data,
                "seq": seq, "timestamp": int(time.time() * 1000),
            })
            kept = event.data if stand_in is None else stand_in
        self.outputs[event.port] = kept
        self.emitted.append({"port": event.port, "data": kept, "seq": seq})


def _objects(**params: Any) -> tuple[dict[str, Any], ...]:
    """payload, config and state must be objects; config and state default to {}."""
    out = []
    for name, value in params.items():
        if value is None and name != "payload":
            value = {}
        if not isinstance(value, dict):
            raise InvalidParams(f"{name} must be an object",
                                {"errors": [{"path": f"/{name}", "message": "must be an object"}]})
        out.append(value)
    return tuple(out)


class HasInports(Protocol):
    """What payload validation needs of an actor (a loaded one, or a cluster front's view)."""

    @property
    def inports(self) -> Mapping[str, Port]: ...


def check_file_path(file_path: Any) -> str:
    """`load`'s path: -32602 when it is not a string; an empty one names no file (-32011)."""
    if not isinstance(file_path, str):
        raise InvalidParams("file_path must be a string", {"errors": [
            {"path": "/file_path", "message": "must be a string"}]})
    if not file_path:
        raise PathNotAllowed(file_path, "file_path is empty")
    return file_path


async def check_payload(actor: HasInports, payload: dict[str, Any]) -> None:
    """Raise PayloadInvalid for an unknown inport, a missing required one, or a schema failure."""
    for name in payload:
        if name not in actor.inports:
            raise PayloadInvalid(name, [{"path": "", "message": f"unknown inport {name!r}"}])
    budget = LoopBudget()  # the verdicts of all its values, together
    for name, port in actor.inports.items():
        if name not in payload:
            if port.required:
                raise PayloadInvalid(name, [{"path": "",
                                             "message": f"required inport {name!r} is missing"}])
            continue
        errors = await port.check(payload[name], budget)
        if errors:
            raise PayloadInvalid(name, errors)


async def merged_config(actor: ActorDef, config: dict[str, Any]) -> dict[str, Any]:
    """The caller's config over the manifest's defaults, validated by config.schema."""
    merged = {**actor.config_defaults, **config}
    if actor.config_validator is not None:
        errors = await actor.config_validator.check(merged)
        if errors:
            raise InvalidParams("config does not match the actor's config schema",
                                {"errors": errors})
    return merged
