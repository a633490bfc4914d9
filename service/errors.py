"""Errors that go on the wire (RpcError and its subclasses) and errors of a manifest.

Every wire error carries its JSON-RPC code as the class attribute ``CODE``;
``RpcError.to_json()`` is the one place that builds the error object.
Anything else that escapes a method becomes -32603 in ``service.rpc.core``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


class RpcError(Exception):
    """An error with a JSON-RPC code, sent to the caller as it is."""

    CODE: ClassVar[int] = -32603
    MESSAGE: ClassVar[str] = "Internal error"

    def __init__(self, message: str | None = None, data: Any = None) -> None:
        self.message = message or self.MESSAGE
        self.data = data
        super().__init__(self.message)

    def to_json(self) -> dict[str, Any]:
        """The JSON-RPC ``error`` member."""
        error: dict[str, Any] = {"code": self.CODE, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class ParseError(RpcError):
    CODE = -32700
    MESSAGE = "Parse error"


class InvalidRequest(RpcError):
    CODE = -32600
    MESSAGE = "Invalid Request"


class MethodNotFound(RpcError):
    CODE = -32601
    MESSAGE = "Method not found"


class InvalidParams(RpcError):
    CODE = -32602
    MESSAGE = "Invalid params"


class InternalError(RpcError):
    CODE = -32603
    MESSAGE = "Internal error"


class ActorNotFound(RpcError):
    CODE = -32001
    MESSAGE = "Actor not found"

    def __init__(self, actor_id: Any) -> None:
        super().__init__(f"Actor not found: {actor_id}", {"actor_id": actor_id})


class PayloadInvalid(RpcError):
    CODE = -32002
    MESSAGE = "Payload invalid"

    def __init__(self, port: str | None, errors: list[dict[str, str]]) -> None:
        where = f" on port {port!r}" if port else ""
        super().__init__(f"Payload invalid{where}", {"port": port, "errors": errors})


class OutputInvalid(RpcError):
    CODE = -32003
    MESSAGE = "Output invalid"

    def __init__(self, port: str, errors: list[dict[str, str]]) -> None:
        super().__init__(f"Output invalid on port {port!r}", {"port": port, "errors": errors})


class ActorFailed(RpcError):
    CODE = -32004
    MESSAGE = "Actor failed"

    def __init__(self, type_: str, message: str, traceback: str = "") -> None:
        super().__init__(
            f"Actor failed: {type_}: {message}",
            {"type": type_, "message": message, "traceback": traceback},
        )


class TimeLimitExceeded(RpcError):
    CODE = -32005
    MESSAGE = "Time limit exceeded"

    def __init__(self, limit_s: float, reason: str = "") -> None:
        message = f"Time limit exceeded ({limit_s:g} s)"
        super().__init__(f"{message}: {reason}" if reason else message, {"limit_s": limit_s})


class ResourceLimitExceeded(RpcError):
    """``resource`` is one of memory, pids, output, cpu, disk, state. ``limit`` is the
    number the resource is counted in (MiB, bytes, ...), or ``{unit: number}`` where the
    resource has more than one limit (output's notification count, state's ops/bytes)."""

    CODE = -32006
    MESSAGE = "Resource limit exceeded"

    def __init__(self, resource: str, limit: Any) -> None:
        shown = (", ".join(f"{number} {unit}" for unit, number in limit.items())
                 if isinstance(limit, dict) else limit)
        super().__init__(
            f"Resource limit exceeded: {resource} (limit {shown})",
            {"resource": resource, "limit": limit},
        )


class ManifestInvalid(RpcError):
    CODE = -32007
    MESSAGE = "Manifest invalid"

    def __init__(self, problems: list[Problem]) -> None:
        first = problems[0].message if problems else ""
        super().__init__(
            f"Manifest invalid: {first}", {"errors": [p.to_json() for p in problems]}
        )


class Busy(RpcError):
    CODE = -32008
    MESSAGE = "Busy: the actor's queue is full"

    def __init__(self, retry_after_ms: int, message: str | None = None) -> None:
        super().__init__(message or self.MESSAGE, {"retry_after_ms": retry_after_ms})


class SandboxUnavailable(RpcError):
    CODE = -32009
    MESSAGE = "Sandbox unavailable"

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"Sandbox unavailable ({backend}): {reason}",
                         {"backend": backend, "reason": reason})


class Cancelled(RpcError):
    CODE = -32010
    MESSAGE = "Cancelled"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE, {})


class PathNotAllowed(RpcError):
    CODE = -32011
    MESSAGE = "Path not allowed or not found"

    def __init__(self, path: str, reason: str | None = None) -> None:
        super().__init__(f"Path not allowed: {reason}" if reason else
                         f"Path not allowed or not found: {path}", {"path": path})


# --- errors of the program or of a manifest (never sent as they are) ---


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a manifest, at the YAML node that caused it (1-based line/col)."""

    file: str
    line: int | None
    column: int | None
    message: str
    path: str = ""  # JSON pointer into the manifest, e.g. "/limits/timeout_s"
    severity: str = "error"  # or "warning": shown by lint, never blocks a load

    def to_json(self) -> dict[str, Any]:
        out = {"file": self.file, "line": self.line, "column": self.column,
               "path": self.path, "message": self.message}
        if self.severity != "error":
            out["severity"] = self.severity
        return out

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        level = "" if self.is_error else f"{self.severity}: "
        return f"{self.file}:{self.line or 0}:{self.column or 0}: {level}{self.message}"


class ManifestError(Exception):
    """A manifest (or its script) is invalid; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class SettingsError(Exception):
    """The settings file or an override is invalid; the message is one line per problem."""
