"""Helpers of the sandbox tests: tiny ActorDefs, a recording event sink, one-call shortcuts."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

from service.manifest.model import ActorDef, PoolSpec
from service.sandbox.base import CallOutcome, CallRequest, Event, Worker
from service.sandbox.process import HARNESS_DIR
from service.settings import Limits

ACTORS = Path(__file__).resolve().parent / "actors"
TMP_MB = 8
# Small, fast limits: CI has two cores.
PYTHON_LIMITS = Limits(cpus=1, memory_mb=64, timeout_s=5, pids=16, output_bytes=65_536)
NODE_LIMITS = Limits(cpus=1, memory_mb=160, timeout_s=5, pids=32, output_bytes=65_536)


def actor_def(script: Path, *, pool: PoolSpec | None = None, **limits: Any) -> ActorDef:
    """A minimal ActorDef for ``script`` (no ports: the sandbox does not validate)."""
    language = "python" if script.suffix == ".py" else "javascript"
    base = PYTHON_LIMITS if language == "python" else NODE_LIMITS
    return ActorDef(
        id=script.stem.replace("_", "-").lower(),
        language=language,
        script=script,
        manifest=script.with_suffix(".yaml"),
        manifest_display=script.with_suffix(".yaml").name,
        inports=MappingProxyType({}),
        outports=MappingProxyType({}),
        limits=Limits(**{**base.to_json(), **limits}),
        pool=pool or PoolSpec(),
    )


class Recorder:
    """An event sink that keeps every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def __call__(self, event: Event) -> None:
        self.events.append(event)

    @property
    def outputs(self) -> list[tuple[str, Any]]:
        return [(e.port, e.data) for e in self.events if hasattr(e, "port")]

    @property
    def logs(self) -> list[tuple[str, str]]:
        return [(e.stream, e.message) for e in self.events if hasattr(e, "stream")]


def request(payload: dict[str, Any] | None = None, *, config: dict[str, Any] | None = None,
            state: dict[str, Any] | None = None, actor_id: str = "test",
            timestamp: Any = 1234567890) -> CallRequest:
    return CallRequest(actor_id, payload or {}, config or {}, state or {}, timestamp)


async def call(worker: Worker, payload: dict[str, Any] | None = None,
               **kwargs: Any) -> tuple[CallOutcome, Recorder]:
    """One call with a recording sink."""
    recorder = Recorder()
    outcome = await worker.call(request(payload, **kwargs), recorder)
    return outcome, recorder


def load_python_harness(name: str) -> ModuleType:
    """The Python harness imported as module ``name`` (its functions only: importing it
    runs nothing; never run it as a program outside a sandbox)."""
    spec = importlib.util.spec_from_file_location(name, HARNESS_DIR / "harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
