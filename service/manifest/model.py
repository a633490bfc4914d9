"""The typed, immutable actor definition a manifest is loaded into."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from jsonschema.protocols import Validator

from service.deps.spec import Dependencies
from service.manifest.validation import LoopBudget, SchemaValidator, bounded_errors
from service.settings import POOL_DEFAULTS, Limits

Language = Literal["python", "javascript"]


def schema_errors(validator: Validator | SchemaValidator, value: Any) -> list[dict[str, str]]:
    """Every way ``value`` fails ``validator``, as ``[{"path": "/a/0", "message": ...}]``."""
    if isinstance(validator, SchemaValidator):
        return validator.errors(value)
    return bounded_errors(validator.iter_errors(value))


@dataclass(frozen=True)
class Port:
    """An inport or outport: its JSON Schema, compiled once."""

    name: str
    schema: Any  # self-contained: $refs to files are bundled, so a host can validate with it alone
    validator: SchemaValidator = field(repr=False, compare=False)
    description: str = ""
    required: bool = True  # meaningful for inports only

    def errors(self, value: Any) -> list[dict[str, str]]:
        return self.validator.errors(value)

    async def check(self, value: Any, budget: LoopBudget | None = None) -> list[dict[str, str]]:
        """Like ``errors``, without stalling the event loop on a costly value (``budget``: see
        SchemaValidator.check)."""
        return await self.validator.check(value, budget)

    def describe(self, inport: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": self.schema, "description": self.description}
        if inport:
            out["required"] = self.required
        return out


@dataclass(frozen=True)
class PoolSpec:
    min_warm: int = POOL_DEFAULTS["min_warm"]
    max_workers: int = POOL_DEFAULTS["max_workers"]
    max_queue: int = POOL_DEFAULTS["max_queue"]
    reuse: bool = True


@dataclass(frozen=True)
class Example:
    name: str
    payload: dict[str, Any]
    outputs: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ActorDef:
    """One loaded actor. Paths are absolute and resolved; ``manifest_display`` is as given."""

    id: str
    language: Language
    script: Path
    manifest: Path
    manifest_display: str
    inports: MappingProxyType[str, Port]
    outports: MappingProxyType[str, Port]
    limits: Limits
    description: str = ""
    entrypoint: str = "process"
    config_schema: Any = None
    config_validator: SchemaValidator | None = field(default=None, repr=False, compare=False)
    config_defaults: MappingProxyType[str, Any] = field(
        default_factory=lambda: MappingProxyType({}))
    pool: PoolSpec = field(default_factory=PoolSpec)
    examples: tuple[Example, ...] = ()
    persistent_state: bool = False  # declared (manifest `state: persistent`); documentation
    dependencies: Dependencies | None = None  # what the manifest declares
    deps_entry: Path | None = None  # the built cache entry, set by the runtime before use

    @property
    def root(self) -> Path:
        """The folder holding the manifest: the only host files the sandbox sees (read-only)."""
        return self.manifest.parent

    def descriptor(self) -> dict[str, Any]:
        """The wire Descriptor of protocol.md (`list`, `describe`, `load`)."""
        return {
            "id": self.id,
            "language": self.language,
            "description": self.description,
            "inports": {n: p.describe(True) for n, p in self.inports.items()},
            "outports": {n: p.describe(False) for n, p in self.outports.items()},
            "limits": self.limits.to_json(),
            "manifest": self.manifest_display,
            **({"state": "persistent"} if self.persistent_state else {}),
        }
