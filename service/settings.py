"""Settings: the only module that touches dynaconf.

``load_settings()`` reads ``config/settings.toml`` (the ``[default]`` table,
then the environment named by ``SERVICE_ENV``, then ``SERVICE_*`` environment
variables, e.g. ``SERVICE_PORT=6000`` or ``SERVICE_AUTH__TOKENS='["s3cret"]'``),
applies command-line overrides and returns a frozen :class:`Settings`.
Every problem is reported, one line each, in a single :class:`SettingsError`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import SettingsError

ENV_PREFIX = "SERVICE"
BACKENDS = ("auto", "microvm", "gvisor", "process")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
GVISOR_PLATFORMS = ("ptrace", "kvm")


@dataclass(frozen=True)
class Limits:
    """Per-call limits of an actor; also the settings' defaults."""

    cpus: float = 1
    memory_mb: int = 128
    timeout_s: float = 10
    network: bool = False
    pids: int = 64
    output_bytes: int = 1_048_576

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LimitsMax:
    """The most a manifest may ask for."""

    cpus: float = 4
    memory_mb: int = 2048
    timeout_s: float = 300
    pids: int = 512
    output_bytes: int = 16_777_216


@dataclass(frozen=True)
class AuthSettings:
    tokens: tuple[str, ...] = ()
    allow_anonymous: bool = False


@dataclass(frozen=True)
class SandboxSettings:
    """How sandboxes are built (interpreters, /tmp size, microVM images)."""

    python: str = "/usr/bin/python3"  # interpreter inside the process sandbox
    node: str = "/usr/bin/node"
    tmp_mb: int = 64  # size of each sandbox's private /tmp
    python_image: str = "python:3.11-slim"  # microVM images (OCI ref, or a local rootfs dir)
    node_image: str = "node:20-slim"
    canary_timeout_s: float = 20  # microVM availability probe
    runsc: str = "runsc"  # gVisor's runtime (a name on PATH or a path)
    gvisor_platform: str = "ptrace"  # ptrace | kvm (kvm needs a real /dev/kvm)


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 5556
    manifest_paths: tuple[Path, ...] = (Path("manifests"),)
    allowed_roots: tuple[Path, ...] = (Path("manifests"),)
    schema_roots: tuple[Path, ...] = (Path("schemas"),)  # where manifests may $ref shared schemas
    backend: str = "auto"
    max_message_bytes: int = 1_048_576
    log_level: str = "info"
    log_format: str = "text"
    shutdown_grace_s: float = 10
    limits: Limits = field(default_factory=Limits)
    limits_max: LimitsMax = field(default_factory=LimitsMax)
    auth: AuthSettings = field(default_factory=AuthSettings)
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings from ``path`` (TOML) and the environment, then apply ``overrides``.

    ``overrides`` are top-level keys (``host``, ``port``, ``backend``, ``log_level``,
    ``manifest_paths``...); None values are ignored.
    """
    raw = _read_dynaconf(path)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return settings_from_mapping(raw)


def _read_dynaconf(path: str | Path | None) -> dict[str, Any]:
    from dynaconf import Dynaconf  # imported here: the rest of the program never sees it

    files = []
    if path is not None:
        if not Path(path).is_file():
            raise SettingsError(f"settings file not found: {path}")
        files.append(str(path))
    try:
        conf = Dynaconf(
            settings_files=files,
            environments=True,
            envvar_prefix=ENV_PREFIX,
            env_switcher=f"{ENV_PREFIX}_ENV",
            merge_enabled=False,
            load_dotenv=False,
        )
        data = conf.as_dict()
    except Exception as exc:  # dynaconf raises many types for a broken file
        raise SettingsError(f"cannot read settings {path}: {exc}") from exc
    return {k.lower(): v for k, v in data.items() if k.lower() in _FIELDS}


_FIELDS = {f.name for f in dataclasses.fields(Settings)}
_FLOATS = {f.name: f.type == "float" for f in dataclasses.fields(Settings)}


def settings_from_mapping(raw: dict[str, Any]) -> Settings:
    """Validate a plain mapping (lower-case keys) into Settings; every problem is listed."""
    problems: list[str] = []
    unknown = sorted(set(raw) - _FIELDS)
    problems += [f"{k}: unknown setting" for k in unknown]
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        if f.name not in raw:
            continue
        try:
            values[f.name] = _convert(f.name, raw[f.name])
        except (TypeError, ValueError) as exc:
            problems.append(f"{f.name}: {exc}")
    if problems:
        raise SettingsError("; ".join(problems))
    settings = Settings(**values)
    _check(settings)
    return settings


def _convert(name: str, value: Any) -> Any:
    nested = {"limits": Limits, "limits_max": LimitsMax, "auth": AuthSettings,
              "sandbox": SandboxSettings}
    if name in nested:
        return _nested(nested[name], value, name)
    default = getattr(Settings(), name)
    if isinstance(default, tuple):
        items = [value] if isinstance(value, str | Path) else value
        if not isinstance(items, list | tuple):
            raise TypeError(f"expected a list of paths, got {type(value).__name__}")
        return tuple(Path(str(p)) for p in items)
    return _scalar(default, value, _FLOATS.get(name, False))


def _nested(cls: type, value: Any, name: str) -> Any:
    if not isinstance(value, dict):
        raise TypeError(f"expected a table, got {type(value).__name__}")
    value = {k.lower(): v for k, v in value.items()}
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}")
    base = cls()
    converted = {}
    for key, item in value.items():
        try:
            if key == "tokens":
                if not isinstance(item, list | tuple) or not all(isinstance(t, str) for t in item):
                    raise TypeError("expected a list of strings")
                converted[key] = tuple(item)
            else:
                converted[key] = _scalar(getattr(base, key), item, known[key].type == "float")
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{key}: {exc}") from exc
    return cls(**converted)


def _scalar(default: Any, value: Any, is_float: bool) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if isinstance(default, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        if value <= 0:
            raise ValueError(f"must be positive, got {value!r}")
        if is_float:
            return value  # an int stays an int, so 5 is shown as 5, not 5.0
        if not float(value).is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _check(s: Settings) -> None:
    problems = []
    if s.backend not in BACKENDS:
        problems.append(f"backend: must be one of {', '.join(BACKENDS)}, got {s.backend!r}")
    if s.log_level.lower() not in LOG_LEVELS:
        problems.append(f"log_level: must be one of {', '.join(LOG_LEVELS)}")
    if s.log_format not in LOG_FORMATS:
        problems.append(f"log_format: must be one of {', '.join(LOG_FORMATS)}")
    if s.sandbox.gvisor_platform not in GVISOR_PLATFORMS:
        problems.append(f"sandbox.gvisor_platform: must be one of {', '.join(GVISOR_PLATFORMS)}")
    if not 0 < s.port < 65536:
        problems.append(f"port: must be 1-65535, got {s.port}")
    for key in ("cpus", "memory_mb", "timeout_s", "pids", "output_bytes"):
        if getattr(s.limits, key) > getattr(s.limits_max, key):
            problems.append(f"limits.{key}: default is over limits_max.{key}")
    if problems:
        raise SettingsError("; ".join(problems))


def is_loopback(host: str) -> bool:
    """True when ``host`` only listens on this machine."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(s: Settings) -> None:
    """Refuse a non-loopback bind without tokens unless allow_anonymous (one line)."""
    if not is_loopback(s.host) and not s.auth.tokens and not s.auth.allow_anonymous:
        raise SettingsError(
            f"refusing to listen on {s.host} without auth.tokens; "
            "set auth.tokens or auth.allow_anonymous = true"
        )
