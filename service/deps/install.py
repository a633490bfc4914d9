"""Run pip or npm for one dependency set, in a bubblewrap sandbox of its own.

Least privilege that still installs: the installer runs in new namespaces with every
capability dropped, as host uid 65534 when the server is root (else as the server's own
unprivileged user), sees the system read-only, a private /tmp (its caches) and exactly
one writable folder, the build folder of its cache entry (at /entry). It shares the
host's network: the only step that ever does. Neither installer runs package code:
pip installs wheels only (``--only-binary=:all:``), npm runs with ``--ignore-scripts``.

pip is the service's own (``pip`` of this virtualenv, run by the *sandbox* interpreter
so that wheels are chosen for it), installing with ``--no-deps``: the manifest lists the
whole set, checked afterwards against each package's declared requirements, so the
same set always installs the same files. npm resolves the dependencies of the declared
packages itself; its ``package-lock.json`` stays in the entry as the record.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import Any

from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from service.deps.spec import Dependencies
from service.settings import Settings

log = logging.getLogger(__name__)

INSTALLER_UID = 65534
INSTALL_TIMEOUT_S = 600.0
PROBE_TIMEOUT_S = 30.0
TMP_MB = 1024  # the installer's private /tmp: downloads and caches
OUTPUT_TAIL = 200
GUEST_ENTRY = "/entry"
GUEST_PIP = "/installer/pip"
SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# What name resolution, TLS and user lookups need; nothing else of /etc.
ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives", "/etc/resolv.conf",
             "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/host.conf",
             "/etc/ssl", "/etc/ca-certificates", "/etc/passwd", "/etc/group")
# Registry, proxy and CA settings of the environment the build runs in (a mirror, a
# corporate proxy): passed on as they are. Nothing else of the environment is.
PASSED_ENV = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_CERT",
              "PIP_CLIENT_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_RETRIES",
              "NPM_CONFIG_REGISTRY", "npm_config_registry", "NPM_CONFIG_CAFILE",
              "npm_config_cafile", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "SSL_CERT_DIR",
              "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
              "http_proxy", "https_proxy", "no_proxy", "all_proxy")
PYTHON_PROBE = r"""
import json, os, platform, sys
i = sys.implementation.version
v = "%d.%d.%d" % (i.major, i.minor, i.micro)
if i.releaselevel != "final":
    v += i.releaselevel[0] + str(i.serial)
print(json.dumps({
    "implementation_name": sys.implementation.name, "implementation_version": v,
    "os_name": os.name, "platform_machine": platform.machine(),
    "platform_release": platform.release(), "platform_system": platform.system(),
    "platform_version": platform.version(), "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform, "libc": " ".join(platform.libc_ver())}))
"""
NPM_REGISTRY = "https://registry.npmjs.org/"
NPM_REGISTRY_ENV = ("npm_config_registry", "NPM_CONFIG_REGISTRY")
# npm's options refusing dependencies that are not registry packages, where it has them.
NPM_SOURCE_OPTIONS = ("allow-git", "allow-remote", "allow-file", "allow-directory")
NPM_DEFINITIONS = "node_modules/@npmcli/config/lib/definitions/definitions.js"
NODE_PROBE = ("console.log(JSON.stringify({version: process.version, arch: process.arch, "
              "platform: process.platform, modules: process.versions.modules}))")


class InstallError(Exception):
    """A set could not be installed; the message is the installer's own, shortened."""


@dataclass(frozen=True)
class Interpreter:
    """The sandbox interpreter a set is built for, as it describes itself."""

    language: str
    program: str
    environment: dict[str, str]

    @property
    def abi(self) -> dict[str, str]:
        """What decides whether a built set fits: part of the cache key."""
        env = self.environment
        if self.language == "python":
            return {k: env[k] for k in ("implementation_name", "python_version",
                                        "platform_machine", "sys_platform", "libc")}
        return {"node": env["version"].lstrip("v").split(".")[0], "modules": env["modules"],
                "arch": env["arch"], "platform": env["platform"]}


def probe(language: str, settings: Settings) -> Interpreter:
    """Ask the sandbox interpreter what it is (version, machine...)."""
    if language == "python":
        program = settings.sandbox.python
        argv = [program, "-I", "-S", "-c", PYTHON_PROBE]
    else:
        program = settings.sandbox.node
        argv = [program, "-e", NODE_PROBE]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                              check=False, env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"cannot run the sandbox interpreter {program}: {exc}") from None
    if done.returncode != 0:
        raise InstallError(f"{program} failed: {done.stderr.strip()[-500:]}")
    return Interpreter(language, program, json.loads(done.stdout))


def install_set(deps: Dependencies, interpreter: Interpreter, build: Path, settings: Settings,
                progress: Callable[[str], None]) -> str:
    """Install ``deps`` into ``build`` and check the result; returns the installer's name."""
    if deps.language == "python":
        pip = _pip_dir()
        argv = [interpreter.program, "-I", GUEST_PIP, "install", "--no-deps",
                "--only-binary=:all:", "--no-input", "--disable-pip-version-check",
                "--no-cache-dir", "--progress-bar", "off", "--no-warn-script-location",
                "--target", f"{GUEST_ENTRY}/lib", "--", *deps.describe()]
        _run(argv, build, [(pip, GUEST_PIP)], progress, "pip")
        check_python_set(build / "lib", deps, interpreter.environment)
        return f"pip {_pip_version(pip)}"
    npm = _npm_cli(settings)
    registry = npm_registry()
    _write_package_json(build, deps)
    argv = [interpreter.program, str(npm), "install", "--prefix", GUEST_ENTRY,
            "--ignore-scripts", "--no-audit", "--no-fund", "--no-update-notifier",
            "--omit=dev", "--no-progress", *_npm_source_options(npm)]
    _run(argv, build, [(npm.parents[1], str(npm.parents[1]))], progress, "npm")
    check_npm_set(build / "node_modules", deps)
    check_npm_lock(build / "package-lock.json", registry)
    return f"npm {_npm_version(npm)}"


# --- running the installer ---


def _run(argv: list[str], build: Path, binds: list[tuple[Path, str]],
         progress: Callable[[str], None], name: str) -> None:
    """Run ``argv`` in the installer sandbox; InstallError with its message if it fails."""
    bwrap = shutil.which("bwrap") or "/usr/bin/bwrap"
    # As root: run as host uid 65534, owning only the build folder. Where that uid cannot
    # reach the folder (a cache under /root), stay root, mapped to 65534 without capabilities.
    drop = os.geteuid() == 0 and all(_traversable(p) for p in (build, *(s for s, _ in binds)))
    if drop:
        for path in (build, *build.iterdir()):
            os.chown(path, INSTALLER_UID, INSTALLER_UID)
    elif os.geteuid() == 0:
        log.warning("%s is not reachable by uid %s: the installer runs as root, mapped to %s",
                    build, INSTALLER_UID, INSTALLER_UID)
    command = [bwrap, *_sandbox_options(build, binds, argv[0]), "--", *argv]
    # user/group/extra_groups: set by the child between fork and exec, without Python code
    ids: dict[str, Any] = ({"user": INSTALLER_UID, "group": INSTALLER_UID, "extra_groups": []}
                           if drop else {})
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace",
                                   env={"PATH": "/usr/bin:/bin"}, start_new_session=True, **ids)
    except OSError as exc:
        raise InstallError(f"cannot start bubblewrap for {name}: {exc}") from None
    with process:  # closes its pipe
        tail = _follow(process, progress)
    if process.returncode != 0:
        raise InstallError(f"{name} failed (exit {process.returncode}): {_reason(tail)}")


def _follow(process: subprocess.Popen[str], progress: Callable[[str], None]) -> list[str]:
    """Pass each output line to ``progress`` until the installer ends (or its time is up)."""
    timer = threading.Timer(INSTALL_TIMEOUT_S, process.kill)
    timer.start()
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            if line:
                tail.append(line)
                progress(line)
        process.wait()
    finally:
        timer.cancel()
    if process.returncode == -9:
        tail.append(f"ERROR: killed after {INSTALL_TIMEOUT_S:g} s")
    return list(tail)


def _reason(tail: list[str]) -> str:
    """The installer's own error lines (pip: ``ERROR:``; npm: ``npm error``), else its tail."""
    errors = [ln for ln in tail if ln.startswith(("ERROR:", "npm error", "npm ERR!", "bwrap:"))]
    errors = [ln for ln in errors if not ln.startswith(("npm error A complete log",
                                                       "npm error   /"))]
    chosen = errors or tail[-5:] or ["no output"]
    return " | ".join(dict.fromkeys(chosen))[-2000:]


def _traversable(path: Path) -> bool:
    """Can any user reach ``path`` (o+x on every folder above it, and on it if a folder)?"""
    try:
        return all(folder.stat().st_mode & 0o001 for folder in (path, *path.parents)
                   if folder.is_dir())
    except OSError:
        return False


def _sandbox_options(build: Path, binds: list[tuple[Path, str]], program: str) -> list[str]:
    options = ["--unshare-all", "--share-net", "--unshare-user", "--disable-userns",
               "--die-with-parent", "--new-session", "--cap-drop", "ALL",
               "--uid", str(INSTALLER_UID), "--gid", str(INSTALLER_UID),
               "--hostname", "installer", "--clearenv", "--ro-bind", "/usr", "/usr"]
    for name in SYSTEM_DIRS:
        path = Path("/", name)
        if path.is_symlink():
            options += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            options += ["--ro-bind", str(path), str(path)]
    prefix = Path(program).resolve().parents[1]
    if not prefix.is_relative_to("/usr") and prefix != Path("/"):
        options += ["--ro-bind", str(prefix), str(prefix)]  # e.g. /opt/node
    for file in ETC_FILES:
        options += ["--ro-bind-try", file, file]
    for source, target in binds:
        if not source.is_relative_to("/usr") or source.as_posix() != target:
            options += ["--ro-bind", str(source), target]
    options += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777",
                "--size", str(TMP_MB << 20), "--tmpfs", "/tmp",
                "--bind", str(build), GUEST_ENTRY, "--chdir", GUEST_ENTRY]
    # SOURCE_DATE_EPOCH: pip byte-compiles into hash-checked .pyc files, valid whatever the
    # files' mtimes become (an entry copied into an image or onto another machine).
    env = {"HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8", "SOURCE_DATE_EPOCH": "315532800",
           "PATH": f"{Path(program).parent}:/usr/local/bin:/usr/bin:/bin",
           **{k: v for k, v in os.environ.items() if k in PASSED_ENV}}
    for key, value in env.items():
        options += ["--setenv", key, value]
    return [*options, "--remount-ro", "/"]


# --- pip ---


def _pip_dir() -> Path:
    try:
        import pip
    except ImportError:
        raise InstallError("pip is not installed beside the service "
                           "(it installs Python dependencies)") from None
    return Path(pip.__file__).resolve().parent


def _pip_version(pip: Path) -> str:
    import pip as module

    return str(getattr(module, "__version__", "?"))


def check_python_set(lib: Path, deps: Dependencies, environment: dict[str, str]) -> None:
    """Every declared package installed at its version, and each one's requirements met
    by the set itself (pip ran with --no-deps); InstallError naming what is missing."""
    installed = _installed(lib)
    problems = [f"{p.python_requirement()} was not installed" for p in deps.packages
                if installed.get(p.name, (None, []))[0] != Version(p.version)]
    wanted = {p.name: set(p.extras) for p in deps.packages}
    for _ in range(len(installed) + 1):  # extras asked by one package widen another's needs
        found, more = _unmet(installed, wanted, environment)
        if not more:
            break
    problems += found
    if problems:
        raise InstallError("the set is incomplete: " + "; ".join(dict.fromkeys(problems)))


def _installed(lib: Path) -> dict[str, tuple[Version | None, list[str]]]:
    """Canonical name -> (version, Requires-Dist lines) of every distribution in ``lib``."""
    found: dict[str, tuple[Version | None, list[str]]] = {}
    for info in lib.glob("*.dist-info"):
        try:
            meta = Parser().parsestr((info / "METADATA").read_text(encoding="utf-8"))
            version: Version | None = Version(str(meta["Version"]))
        except (OSError, UnicodeDecodeError, InvalidVersion):
            continue
        found[canonicalize_name(str(meta["Name"]))] = (version, meta.get_all("Requires-Dist") or [])
    return found


def _unmet(installed: dict[str, tuple[Version | None, list[str]]], wanted: dict[str, set[str]],
           environment: dict[str, str]) -> tuple[list[str], bool]:
    """Requirements of installed packages the set does not satisfy; whether extras grew."""
    problems: list[str] = []
    grew = False
    for name, (version, requires) in installed.items():
        for line in requires:
            req = _requirement(line)
            if req is None or not _applies(req, wanted.get(name, set()), environment):
                continue
            target = canonicalize_name(req.name)
            if not req.extras <= wanted.setdefault(target, set()):
                wanted[target] |= req.extras
                grew = True
            have = installed.get(target, (None, []))[0]
            if have is None:
                problems.append(f"{name} {version} needs {req.name}{req.specifier}, which the "
                                f"set does not include: add {target}==VERSION")
            elif not req.specifier.contains(have, prereleases=True):
                problems.append(f"{name} {version} needs {req.name}{req.specifier}, "
                                f"but the set pins {target}=={have}")
    return problems, grew


def _requirement(line: str) -> Requirement | None:
    try:
        return Requirement(line)
    except InvalidRequirement:
        return None


def _applies(req: Requirement, extras: set[str], environment: dict[str, str]) -> bool:
    if req.marker is None:
        return True
    try:
        return any(req.marker.evaluate({**environment, "extra": extra})
                   for extra in ("", *sorted(extras)))
    except UndefinedEnvironmentName:
        return False


# --- npm ---


def _npm_cli(settings: Settings) -> Path:
    beside = Path(settings.sandbox.node).parent / "npm"
    found = beside if beside.exists() else shutil.which("npm")
    if found is None:
        raise InstallError("npm is not installed (it installs JavaScript dependencies)")
    return Path(found).resolve()  # npm-cli.js, in <npm root>/bin/


def _npm_version(npm: Path) -> str:
    try:
        return str(json.loads((npm.parents[1] / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "?"


def _npm_source_options(npm: Path) -> list[str]:
    """``--allow-git=none`` and its siblings, those this npm knows (npm 11.10 and later
    have some or all; older ones would warn about, or one day refuse, an unknown option)."""
    definitions = npm.parents[1] / NPM_DEFINITIONS
    try:
        text = definitions.read_text(encoding="utf-8")
    except OSError:
        return []
    return [f"--{option}=none" for option in NPM_SOURCE_OPTIONS if f"'{option}'" in text]


def npm_registry() -> str:
    """The registry npm installs from: the one of the environment (a mirror), else npm's;
    InstallError when it is not https (whoever is on the way could change the packages)."""
    registry = next((os.environ[k] for k in NPM_REGISTRY_ENV if os.environ.get(k)),
                    NPM_REGISTRY)
    if not registry.startswith("https://"):
        raise InstallError(f"the npm registry {registry} is not an https URL")
    return registry if registry.endswith("/") else registry + "/"


def _write_package_json(build: Path, deps: Dependencies) -> None:
    package = {"name": "actor-dependencies", "version": "0.0.0", "private": True,
               "license": "UNLICENSED",
               "dependencies": {p.name: p.version for p in deps.packages}}
    (build / "package.json").write_text(json.dumps(package, indent=2) + "\n", encoding="utf-8")


def check_npm_set(modules: Path, deps: Dependencies) -> None:
    """Each declared package installed at exactly its version."""
    problems = []
    for package in deps.packages:
        try:
            meta = json.loads((modules / package.name / "package.json").read_text())
            version = meta.get("version")
        except (OSError, ValueError):
            version = None
        if version != package.version:
            problems.append(f"{package.npm_spec()} was not installed (found {version})")
    if problems:
        raise InstallError("; ".join(problems))


def check_npm_lock(lock: Path, registry: str) -> None:
    """Every package of the lock downloaded over https from ``registry``, with an integrity
    hash: never a git repository, another host, a local file or folder (npm resolves the
    indirect dependencies, which may name any of those)."""
    try:
        packages = json.loads(lock.read_text(encoding="utf-8")).get("packages")
    except (OSError, ValueError, AttributeError) as exc:
        raise InstallError(f"npm's {lock.name} is unreadable: {exc}") from None
    if not isinstance(packages, dict):
        raise InstallError(f"npm's {lock.name} lists no packages")
    problems = [problem for key, meta in packages.items() if key
                if (problem := _npm_source_problem(key, meta, registry))]
    if problems:
        raise InstallError("npm resolved packages from outside the registry (only registry "
                           "packages are installed): " + "; ".join(problems))


def _npm_source_problem(key: str, meta: Any, registry: str) -> str | None:
    """What is wrong with where one package of the lock (at ``key``) came from."""
    name = key.rpartition("node_modules/")[2] or key
    if not isinstance(meta, dict):
        return f"{name} ({key}) has no lock record"
    if meta.get("inBundle") is True and "resolved" not in meta:
        return None  # inside its parent's tarball, which the integrity of that one covers
    resolved = meta.get("resolved")
    if meta.get("link") or not isinstance(resolved, str) or not resolved.startswith(registry):
        return f"{name} comes from {resolved!r}, not from the registry {registry}"
    if not meta.get("integrity"):
        return f"{name} ({resolved}) has no integrity hash"
    return None
