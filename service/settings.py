"""Settings: the only module that touches dynaconf.

``load_settings()`` reads ``config/settings.toml`` (the ``[default]`` table,
then the environment named by ``SERVICE_ENV``, then ``SERVICE_*`` environment
variables, e.g. ``SERVICE_PORT=6000`` or ``SERVICE_AUTH__TOKENS='["a-long-random-token-1234"]'``),
applies command-line overrides and returns a frozen :class:`Settings`.
Every problem is reported, one line each, in a single :class:`SettingsError`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import SettingsError

ENV_PREFIX = "SERVICE"
BACKENDS = ("auto", "microvm", "gvisor", "process")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
GVISOR_PLATFORMS = ("ptrace", "kvm")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
# keys where 0 means "none", not a mistake (pool_max.min_warm = 0: no sandbox kept warm)
ZERO_ALLOWED = frozenset({"ttl_s", "busy_poll_us", "min_warm"})
MIN_TOKEN_CHARS = 16  # a shorter token can be guessed; refused at settings load
CLUSTER_ROLES = ("front", "worker", "both")


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
    # Network is the operator's to grant, not the manifest's: `network: true` is refused
    # unless this is true, or the actor's id is in network_actors.
    network: bool = False
    network_actors: tuple[str, ...] = ()

    def allows_network(self, actor_id: object) -> bool:
        return self.network or actor_id in self.network_actors


# A manifest's `pool` when it says nothing (manifest.model.PoolSpec's defaults).
POOL_DEFAULTS = {"min_warm": 0, "max_workers": 4, "max_queue": 64}


@dataclass(frozen=True)
class PoolMax:
    """The most a manifest's ``pool`` may ask for."""

    min_warm: int = 8
    max_workers: int = 64
    max_queue: int = 1024


def machine_memory_mb() -> int:
    """The host's physical memory in MiB (sysconf), 4096 when it cannot be read."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 1_048_576
    except (ValueError, OSError):
        return 4096


def _default_capacity_memory_mb() -> int:
    return max(256, machine_memory_mb() * 3 // 4)


def _default_request_memory_mb() -> int:
    return max(256, machine_memory_mb() // 8)


@dataclass(frozen=True)
class CapacitySettings:
    """The whole server's sandboxes, every actor together (booting, idle or running)."""

    max_sandboxes: int = 256
    # The sum of the live sandboxes' limits.memory_mb; default three quarters of the host's RAM.
    memory_mb: int = field(default_factory=_default_capacity_memory_mb)


@dataclass(frozen=True)
class ConnectionSettings:
    """What one client connection, one frame and one request may cost; who may connect."""

    max_connections: int = 512  # open TCP connections, every client together
    header_timeout_s: float = 10  # to send a complete request head (and between requests)
    max_in_flight: int = 64  # requests of one connection being answered at once
    max_batch: int = 100  # requests in one batch
    max_response_bytes: int = 67_108_864  # the answer to one frame (a batch: all of it)
    max_id_chars: int = 256  # a longer string id is an Invalid Request
    write_timeout_s: float = 30  # for one answer to be taken by a client that reads
    allowed_origins: tuple[str, ...] = ()  # browser Origins allowed to upgrade; none by default
    allowed_hosts: tuple[str, ...] = ()  # Host header names accepted besides the bind address
    # The frames being answered, decoded, every connection together (rpc.core._frame_size);
    # default an eighth of the host's RAM. Past it a frame's requests answer -32008.
    max_request_memory_mb: int = field(default_factory=_default_request_memory_mb)


@dataclass(frozen=True)
class AuthSettings:
    tokens: tuple[str, ...] = ()
    allow_anonymous: bool = False
    admin_tokens: tuple[str, ...] = ()  # may call `load` (and everything else)


@dataclass(frozen=True)
class SandboxSettings:
    """How sandboxes are built (interpreters, /tmp size, microVM images)."""

    python: str = "/usr/bin/python3"  # interpreter inside the process sandbox
    node: str = "node"  # a bare name is looked up on PATH (see __post_init__)
    tmp_mb: int = 64  # size of each sandbox's private /tmp
    python_image: str = "python:3.11-slim"  # microVM images (OCI ref, or a local rootfs dir)
    node_image: str = "node:20-slim"
    canary_timeout_s: float = 20  # microVM availability probe
    # process sandboxes: each runs as its own host uid from this range (never root)
    uid_base: int = 2_000_000_000
    uid_count: int = 65_536
    idle_lifetime_s: float = 300  # an idle worker older than this is closed (and replaced)
    max_notifications: int = 20_000  # output/log notifications one call may send
    nofile: int = 1024  # RLIMIT_NOFILE of a sandbox (soft = hard)
    runsc: str = "runsc"  # gVisor's runtime (a name on PATH or a path)
    gvisor_platform: str = "ptrace"  # ptrace | kvm (kvm needs a real /dev/kvm)

    def __post_init__(self) -> None:
        # The sandbox binds the interpreter by absolute path; a bare name means "from PATH",
        # so lint and the sandbox find the node a user installed wherever it is.
        if "/" not in self.node and (found := shutil.which(self.node)):
            object.__setattr__(self, "node", found)


@dataclass(frozen=True)
class StateSettings:
    """Persistent actor state (shared/spec/state.md): the server's own store, never a client's."""

    redis_url: str = ""  # empty: the embedded in-process store
    ttl_s: int = 3600  # refreshed on each write; 0: keys never expire
    ops_per_call: int = 1000  # state operations one call may make
    # key and value bytes one call may move, both ways; a value is at most a quarter of it
    bytes_per_call: int = 1_048_576
    timeout_s: float = 2  # Redis connect and reply timeout
    embedded_max_bytes: int = 268_435_456  # keys and values the embedded store may hold


@dataclass(frozen=True)
class ClusterSettings:
    """Cluster mode (docs/cluster.md); off while ``redis_url`` is empty (one machine)."""

    redis_url: str = ""  # redis://[user:password@]host:port/db, rediss:// (TLS), unix://path
    role: str = "front"  # front | worker | both
    key_prefix: str = "actors"  # every key and stream lives under "<key_prefix>:"
    max_attempts: int = 2  # runs of a call whose worker died, before -32009
    heartbeat_s: float = 1.0  # how often workers say they are alive
    worker_timeout_s: float = 5.0  # silent this long: a worker is dead, its calls reclaimed
    stream_maxlen: int = 10_000  # entries kept at most in any stream (approximate trimming)
    queue_timeout_s: float = 60  # a front gives up on a call unanswered this long past its limits
    reconnect_max_s: float = 2.0  # the longest wait between two attempts to reach Redis

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 5556
    manifest_paths: tuple[Path, ...] = (Path("manifests"),)
    allowed_roots: tuple[Path, ...] = (Path("manifests"),)
    schema_roots: tuple[Path, ...] = (Path("schemas"),)  # where manifests may $ref shared schemas
    schema_format_assertion: bool = False  # `format` fails values (else an annotation only)
    validation_timeout_s: float = 1  # most time one schema check may take (costly verdict, errors)
    deps_dir: Path = Path(".cache/deps")  # built dependency sets, one folder per set
    backend: str = "auto"
    max_message_bytes: int = 1_048_576
    log_level: str = "info"
    log_format: str = "text"
    shutdown_grace_s: float = 10
    busy_poll_us: int = 50  # how long the event loop polls before it sleeps (0: off)
    limits: Limits = field(default_factory=Limits)
    limits_max: LimitsMax = field(default_factory=LimitsMax)
    auth: AuthSettings = field(default_factory=AuthSettings)
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    pool_max: PoolMax = field(default_factory=PoolMax)
    capacity: CapacitySettings = field(default_factory=CapacitySettings)
    connections: ConnectionSettings = field(default_factory=ConnectionSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    state: StateSettings = field(default_factory=StateSettings)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def load_settings(path: str | Path | None = None, *, isolated: bool = False,
                  base: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from ``path`` (TOML) and the environment, then apply ``overrides``.

    ``overrides`` are top-level keys (``host``, ``port``, ``backend``, ``log_level``,
    ``manifest_paths``...); None values are ignored. Unknown tables, keys and ``SERVICE_*``
    variables are errors, reported together with every invalid value. Relative paths
    resolve against the working directory (manifest.md), or against ``base`` when given
    (the project root of a settings file found from a folder below it, see
    ``cli.find_default_config``). ``isolated``: dynaconf runs in a child process, so that
    a long-running server never holds it (see :func:`_read_in_child`).
    """
    problems = _file_problems(path) + _env_problems(os.environ)
    raw = _read_in_child(path) if isolated else _read_dynaconf(path)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = settings_from_mapping(raw)
    except SettingsError as exc:
        problems.append(str(exc))
    if problems:
        raise SettingsError("; ".join(problems))
    return _resolve_paths(settings, base)


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
    # Unknown names were reported by _file_problems/_env_problems; keep only known ones here.
    return {k.lower(): _known_keys(k.lower(), v) for k, v in data.items() if k.lower() in _FIELDS}


def _read_in_child(path: str | Path | None) -> dict[str, Any]:
    """:func:`_read_dynaconf` in a child process (with this environment): dynaconf is
    about 100 modules, used once at start, that would stay in the server's memory
    (~4 MB of its idle RSS, measured)."""
    package_root = str(Path(__file__).resolve().parent.parent)
    search = os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "PYTHONPATH": search}
    code = "from service.settings import _child_main; _child_main()"
    done = subprocess.run([sys.executable, "-c", code, "" if path is None else str(path)],
                          capture_output=True, text=True, env=env, check=False)
    try:
        reply = json.loads(done.stdout)
    except ValueError:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise SettingsError(f"cannot read settings {path}: {last}") from None
    if "error" in reply:
        raise SettingsError(reply["error"])
    return dict(reply["settings"])


def _child_main() -> None:
    """The child of :func:`_read_in_child`: the settings (or the error) as JSON on stdout."""
    reply: dict[str, Any]
    try:
        reply = {"settings": _read_dynaconf(sys.argv[1] or None)}
    except SettingsError as exc:
        reply = {"error": str(exc)}
    print(json.dumps(reply))


_FIELDS = {f.name for f in dataclasses.fields(Settings)}
_TABLES: dict[str, set[str]] = {  # nested tables and their keys, read off the dataclasses
    f.name: {g.name for g in dataclasses.fields(type(getattr(Settings(), f.name)))}
    for f in dataclasses.fields(Settings) if dataclasses.is_dataclass(getattr(Settings(), f.name))
}
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
        except TableProblems as exc:
            problems += [f"{f.name}: {problem}" for problem in exc.problems]
        except (TypeError, ValueError) as exc:
            problems.append(f"{f.name}: {exc}")
    if problems:
        raise SettingsError("; ".join(problems))
    settings = Settings(**values)
    _check(settings)
    return settings


def _convert(name: str, value: Any) -> Any:
    nested = {"limits": Limits, "limits_max": LimitsMax, "auth": AuthSettings,
              "sandbox": SandboxSettings, "pool_max": PoolMax, "capacity": CapacitySettings,
              "connections": ConnectionSettings, "cluster": ClusterSettings,
              "state": StateSettings}
    if name in nested:
        return _nested(nested[name], value, name)
    default = getattr(Settings(), name)
    if isinstance(default, Path):
        if not isinstance(value, str | Path) or not str(value):
            raise TypeError(f"expected a path, got {value!r}")
        return Path(value)
    if isinstance(default, tuple):
        items = [value] if isinstance(value, str | Path) else value
        if not isinstance(items, list | tuple):
            raise TypeError(f"expected a list of paths, got {type(value).__name__}")
        return tuple(Path(str(p)) for p in items)
    return _scalar(default, value, _FLOATS.get(name, False), name in ZERO_ALLOWED)


def _nested(cls: type, value: Any, name: str) -> Any:
    if not isinstance(value, dict):
        raise TypeError(f"expected a table, got {type(value).__name__}")
    value = {k.lower(): v for k, v in value.items()}
    known = {f.name: f for f in dataclasses.fields(cls)}
    problems = [f"unknown key {key!r}" for key in sorted(set(value) - set(known))]
    base = cls()
    converted: dict[str, Any] = {}
    for key, item in value.items():
        if key not in known:
            continue
        try:
            if isinstance(getattr(base, key), tuple):  # tokens, actor ids, origins, hosts
                if not isinstance(item, list | tuple) or not all(isinstance(t, str) for t in item):
                    raise TypeError("expected a list of strings")
                converted[key] = tuple(item)
            else:
                converted[key] = _scalar(getattr(base, key), item, known[key].type == "float",
                                         key in ZERO_ALLOWED)
        except (TypeError, ValueError) as exc:
            problems.append(f"{key}: {exc}")
    if problems:
        raise TableProblems(problems)
    return cls(**converted)


class TableProblems(ValueError):
    """Every problem of one settings table (each is reported, not only the first)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _scalar(default: Any, value: Any, is_float: bool, zero_allowed: bool) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if isinstance(default, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):  # TOML reads nan and inf
            raise ValueError(f"expected a finite number, got {value!r}")
        if value < 0 or (value == 0 and not zero_allowed):
            raise ValueError(f"must be {'0 or more' if zero_allowed else 'positive'}, "
                             f"got {value!r}")
        if is_float:
            return value  # an int stays an int, so 5 is shown as 5, not 5.0
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _check(s: Settings) -> None:
    problems = _choice_problems(s)
    if not 0 < s.port < 65536:
        problems.append(f"port: must be 1-65535, got {s.port}")
    if not 0 <= s.busy_poll_us <= 1000:
        problems.append(f"busy_poll_us: must be 0-1000, got {s.busy_poll_us}")
    problems += _state_problems(s)
    for key in ("cpus", "memory_mb", "timeout_s", "pids", "output_bytes"):
        if getattr(s.limits, key) > getattr(s.limits_max, key):
            problems.append(f"limits.{key}: default is over limits_max.{key}")
    if s.limits.network and not s.limits_max.network:
        problems.append("limits.network: a default of true needs limits_max.network = true")
    if s.limits.memory_mb > s.capacity.memory_mb:
        problems.append("limits.memory_mb: default is over capacity.memory_mb")
    for key, default in POOL_DEFAULTS.items():  # what a manifest without `pool` asks for
        if default > getattr(s.pool_max, key):
            problems.append(f"pool_max.{key}: under the default pool's {key} ({default}), "
                            "which every manifest without it asks for")
    one_answer = 2 * s.limits_max.output_bytes + s.max_message_bytes  # outputs twice, state
    if s.connections.max_response_bytes < one_answer:
        problems.append(f"connections.max_response_bytes: under what one `process` answer may "
                        f"hold (2 x limits_max.output_bytes + max_message_bytes = {one_answer})")
    problems += _token_problems(s.auth) + _cluster_problems(s.cluster)
    problems += _sandbox_problems(s.sandbox)
    if problems:
        raise SettingsError("; ".join(problems))


def _choice_problems(s: Settings) -> list[str]:
    problems = []
    if s.backend not in BACKENDS:
        problems.append(f"backend: must be one of {', '.join(BACKENDS)}, got {s.backend!r}")
    if s.log_level.lower() not in LOG_LEVELS:
        problems.append(f"log_level: must be one of {', '.join(LOG_LEVELS)}")
    if s.log_format not in LOG_FORMATS:
        problems.append(f"log_format: must be one of {', '.join(LOG_FORMATS)}")
    if s.sandbox.gvisor_platform not in GVISOR_PLATFORMS:
        problems.append(f"sandbox.gvisor_platform: must be one of {', '.join(GVISOR_PLATFORMS)}")
    return problems


def _state_problems(s: Settings) -> list[str]:
    url = s.state.redis_url
    if s.state.embedded_max_bytes < s.state.bytes_per_call:
        return ["state.embedded_max_bytes: must be at least state.bytes_per_call"]
    if not url:
        return []
    if not url.startswith(REDIS_SCHEMES):
        return [f"state.redis_url: must start with {', '.join(REDIS_SCHEMES)}"]
    if not _parses(url):  # never shown: it may hold a password
        return ["state.redis_url: not a Redis URL redis-py can read (percent-encode a "
                "password's / ? # @ characters)"]
    if s.cluster.redis_url and same_redis_database(url, s.cluster.redis_url):
        # a state key {namespace}:{actor_id}:{key} could then overwrite the cluster's own keys
        return ["state.redis_url: must not be the cluster's Redis database "
                "(use another database number, e.g. /1)"]
    return []


def _parsed(url: str) -> dict[str, Any] | None:
    """redis-py's reading of a Redis URL; None when it cannot read it."""
    from redis.connection import parse_url  # only with a URL set: redis-py is big

    try:
        parts: dict[str, Any] = parse_url(url)
    except ValueError:
        return None
    return parts


def _parses(url: str) -> bool:
    return _parsed(url) is not None


def same_redis_database(first: str, second: str) -> bool:
    """Do two Redis URLs name the same database of the same server, however written
    (``localhost`` or ``127.0.0.1``, ``/0`` or no database, credentials or none)?"""
    a, b = _parsed(first), _parsed(second)
    if a is None or b is None:
        return first == second
    if a.get("db", 0) != b.get("db", 0):
        return False
    if "path" in a or "path" in b:  # unix sockets
        return os.path.realpath(a.get("path", "")) == os.path.realpath(b.get("path", ""))
    return a.get("port", 6379) == b.get("port", 6379) and bool(
        _addresses(a.get("host", "")) & _addresses(b.get("host", "")))


def _addresses(host: str) -> set[str]:
    """The addresses ``host`` names (every loopback address counts as one: "loopback")."""
    try:
        found = {str(info[4][0])
                 for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except OSError:
        return {host.lower()}
    return {"loopback" if ipaddress.ip_address(a.split("%")[0]).is_loopback else a
            for a in found}


def _cluster_problems(cluster: ClusterSettings) -> list[str]:
    problems = []
    if cluster.role not in CLUSTER_ROLES:
        problems.append(f"cluster.role: must be one of {', '.join(CLUSTER_ROLES)}, "
                        f"got {cluster.role!r}")
    if cluster.worker_timeout_s <= cluster.heartbeat_s:
        problems.append("cluster.worker_timeout_s: must be longer than cluster.heartbeat_s")
    if cluster.redis_url and not _parses(cluster.redis_url):  # never shown: a password
        problems.append("cluster.redis_url: not a Redis URL redis-py can read (percent-encode "
                        "a password's / ? # @ characters)")
    return problems


def _token_problems(auth: AuthSettings) -> list[str]:
    """Empty, short or shared tokens: each one a problem (the token itself is never shown)."""
    problems = []
    for key in ("tokens", "admin_tokens"):
        for i, token in enumerate(getattr(auth, key)):
            if len(token.strip()) < MIN_TOKEN_CHARS:
                problems.append(f"auth.{key}[{i}]: a token must have at least "
                                f"{MIN_TOKEN_CHARS} characters (use a long random string)")
            elif token != token.strip() or not token.isprintable() or not token.isascii():
                # a call token plus a space would otherwise pass as an admin token
                problems.append(f"auth.{key}[{i}]: a token must be printable ASCII, with no "
                                "space at either end")
    if set(auth.tokens) & set(auth.admin_tokens):
        problems.append("auth.admin_tokens: an admin token must differ from every call token")
    return problems


UID_MAX = 4_294_967_294  # (uid_t)-1 means "no change" to the kernel


def _sandbox_problems(sandbox: SandboxSettings) -> list[str]:
    problems = []
    last = sandbox.uid_base + sandbox.uid_count - 1
    if sandbox.uid_base < 1000:
        problems.append(f"sandbox.uid_base: must be 1000 or more (system users and root "
                        f"are below), got {sandbox.uid_base}")
    if last > UID_MAX:
        problems.append(f"sandbox.uid_base + uid_count: the range ends at {last}, past the "
                        f"largest uid {UID_MAX}")
    if sandbox.uid_base <= 65534 <= last:
        problems.append("sandbox.uid_base/uid_count: the range must not hold 65534 (nobody)")
    if sandbox.nofile < 64:
        problems.append(f"sandbox.nofile: must be 64 or more, got {sandbox.nofile}")
    return problems


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


# --- strictness: unknown tables, keys and SERVICE_* variables, and where paths resolve ---


def _known_keys(name: str, value: Any) -> Any:
    if name in _TABLES and isinstance(value, dict):
        return {k: v for k, v in value.items() if k.lower() in _TABLES[name]}
    return value


def _did_you_mean(word: str, choices: Any) -> str:
    import difflib

    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _file_problems(path: str | Path | None) -> list[str]:
    """Keys outside any table, misspelled tables and unknown keys, in every environment."""
    import tomllib

    if path is None or not Path(path).is_file():
        return []  # a missing file is reported by _read_dynaconf
    text = ""
    try:
        text = Path(path).read_text(encoding="utf-8")
        doc = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read settings {path}: {exc}{_key_at(text, exc)}") from exc
    problems: list[str] = []
    for env, table in doc.items():
        if not isinstance(table, dict):
            problems.append(f"{env}: key outside any table (put it under [default])")
        elif env in _FIELDS:
            problems.append(f"[{env}]: unknown table (did you mean [default.{env}]?)")
        elif env != "default" and _did_you_mean(env, ["default"]):
            problems.append(f"[{env}]: unknown table (did you mean [default]?)")
        else:
            problems += _table_problems(env, table)
    return problems + _env_switch_problem(doc)


def _key_at(text: str, exc: Exception) -> str:
    """`` (key 'port')``: the key the line of a TOML error sets, when that line sets one.
    Only its name: the value may be a secret (a token)."""
    match = re.search(r"at line (\d+)", str(exc))
    lines = text.splitlines()
    if match is None or not 0 < int(match.group(1)) <= len(lines):
        return ""
    key = re.match(r"\s*([A-Za-z0-9_.-]+)\s*=", lines[int(match.group(1)) - 1])
    return f" (key {key.group(1)!r})" if key else ""


def _table_problems(env: str, table: dict[str, Any]) -> list[str]:
    problems = []
    for key, value in table.items():
        name = key.lower()
        if name not in _FIELDS:
            problems.append(f"[{env}] {key}: unknown setting{_did_you_mean(name, _FIELDS)}")
        elif name in _TABLES and isinstance(value, dict):
            problems += [f"[{env}.{name}] {k}: unknown key{_did_you_mean(k.lower(), _TABLES[name])}"
                         for k in value if k.lower() not in _TABLES[name]]
    return problems


def _env_switch_problem(doc: dict[str, Any]) -> list[str]:
    env = os.environ.get(f"{ENV_PREFIX}_ENV")
    if env is None or env.lower() in {k.lower() for k in doc}:
        return []
    return [f"{ENV_PREFIX}_ENV={env}: the settings file has no [{env.lower()}] table"]


def _env_problems(environ: Any) -> list[str]:
    """``SERVICE_*`` variables that name no setting: a typo there would be silently ignored."""
    prefix = f"{ENV_PREFIX}_"
    problems = []
    for var in sorted(environ):
        if not var.startswith(prefix) or var == f"{ENV_PREFIX}_ENV":
            continue
        top, _, key = var[len(prefix):].lower().partition("__")
        if top not in _FIELDS:
            close = _did_you_mean(top, _FIELDS)[len(" (did you mean "):-len("?)")]
            hint = f" (did you mean {prefix}{close.upper()}?)" if close else ""
            problems.append(f"environment variable {var}: unknown setting{hint}")
        elif key and (top not in _TABLES or key not in _TABLES[top]):
            hint = _did_you_mean(key, _TABLES.get(top, ()))
            problems.append(f"environment variable {var}: unknown key {key!r} of {top}{hint}")
    return problems


def _resolve_paths(settings: Settings, base: Path | None) -> Settings:
    if base is None:
        return settings
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        value = getattr(settings, f.name)
        if isinstance(value, Path):
            changes[f.name] = value if value.is_absolute() else base / value
        elif isinstance(value, tuple) and value and all(isinstance(p, Path) for p in value):
            changes[f.name] = tuple(p if p.is_absolute() else base / p for p in value)
    return settings.replace(**changes)
