"""Load a manifest into an ActorDef, or report every problem it has.

The manifest format is ``schemas/manifest.schema.json`` at the project root:
one copy, the same file editors and CI use, so it cannot drift. It is read
once per process from the source tree (``Path(__file__).parents[2]``, which
covers a checkout and an editable install), else from ``schemas/`` below the
working directory (a non-editable install run from the project folder, as in
the Docker image). The checks beyond the schema (script, port schemas and their
``$ref``s, limits, examples) run on every part that is well-formed enough, so
one run lists everything wrong, each problem at the YAML node that caused it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import Draft202012Validator, extend

from service.deps.spec import LANGUAGES as DEP_LANGUAGES
from service.deps.spec import Dependencies, Package, SpecError, npm_package, python_package
from service.errors import ManifestError, Problem
from service.manifest.files import FileTooBig, read_bytes
from service.manifest.model import ActorDef, Example, PoolSpec, Port, schema_errors
from service.manifest.schemas import CompiledSchema, compile_schema
from service.manifest.scripts import (
    ScriptPathError,
    check_script,
    extension_issue,
    resolve_script,
)
from service.manifest.validation import ecma_pattern
from service.manifest.yamlnodes import (
    MAX_SOURCE_CHARS,
    Position,
    YamlDoc,
    decode_source,
    escape_pointer_token,
    parse_manifest_yaml,
    pointer,
)
from service.settings import Limits, Settings

log = logging.getLogger(__name__)

MANIFEST_SCHEMA_NAME = Path("schemas", "manifest.schema.json")
MAX_PORTS = 256  # inports, and outports, of one actor
MANIFEST_SUFFIXES = (".yaml", ".yml")
LANGUAGES = ("python", "javascript")
MAX_MANIFEST_BYTES = 4 * MAX_SOURCE_CHARS  # UTF-8 takes at most 4 bytes a character


@functools.cache
def manifest_schema() -> dict[str, Any]:
    """The manifest format as JSON Schema (read once per process)."""
    candidates = [Path(__file__).resolve().parents[2] / MANIFEST_SCHEMA_NAME,
                  Path.cwd() / MANIFEST_SCHEMA_NAME]
    for path in candidates:
        if path.is_file():
            schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return schema
    raise FileNotFoundError(f"{MANIFEST_SCHEMA_NAME} not found in {candidates[0].parents[1]} "
                            "nor in the working directory")


@functools.cache
def _manifest_validator() -> Validator:
    # Its patterns read as ECMA-262 reads them (the YAML language server's reading): with
    # Python's, `$` matched before a final newline, and "doubler\n" passed as an id.
    dialect = extend(Draft202012Validator, {"pattern": ecma_pattern})
    return dialect(manifest_schema())


@dataclass(frozen=True)
class ManifestCheck:
    """The outcome of checking one manifest: an ActorDef when ``problems`` is empty."""

    file: str  # as displayed in problems
    actor: ActorDef | None
    problems: list[Problem]
    actor_id: str | None = None  # when the id itself is valid, even if other things are not
    id_position: Position | None = None


def load_manifest(path: Path | str, settings: Settings) -> ActorDef:
    """Load one manifest; raises ManifestError listing every problem."""
    check = check_manifest(path, settings)
    if check.actor is None:
        raise ManifestError(check.problems)
    return check.actor


def find_manifests(paths: Iterable[Path | str]) -> list[Path]:
    """The manifests among ``paths``: files as given, folders searched recursively.

    Every ``*.yaml``/``*.yml`` below a folder is a manifest, except under hidden
    folders (``.git``, ``.github``...). Sorted, without duplicates. A path that does
    not exist raises FileNotFoundError.
    """
    found: set[Path] = set()
    for given in map(Path, paths):
        if given.is_dir():
            found.update(_walk_manifests(given))
        elif given.exists():  # a file, or a pipe or device: check_manifest says what it is
            found.add(given)
        else:
            raise FileNotFoundError(f"no such file or folder: {given}")
    return sorted(found)


def _walk_manifests(folder: Path) -> Iterable[Path]:
    for parent, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.endswith(MANIFEST_SUFFIXES) and not name.startswith("."):
                yield Path(parent) / name


def display_path(path: Path | str) -> str:
    """``path`` as given, or relative to the working directory when it is absolute below it."""
    given = Path(path)
    if given.is_absolute():
        try:
            return given.relative_to(Path.cwd()).as_posix()
        except ValueError:
            return str(given)
    return given.as_posix()


def check_manifest(path: Path | str, settings: Settings) -> ManifestCheck:
    """Check one manifest and build its ActorDef when nothing is wrong."""
    display = display_path(path)
    try:
        data = read_bytes(path, MAX_MANIFEST_BYTES)
        doc = parse_manifest_yaml(decode_source(data, display), display)
    except FileTooBig:
        return ManifestCheck(display, None, [Problem(
            display, None, None, f"the file is too big: over {MAX_MANIFEST_BYTES} bytes, at "
            f"most {MAX_SOURCE_CHARS} characters")])
    except OSError as exc:  # about the file, not a place in it: no line
        return ManifestCheck(display, None, [Problem(display, None, None, f"cannot read: {exc}")])
    except ManifestError as exc:
        return ManifestCheck(display, None, exc.problems)
    return check_document(doc, display, Path(path).resolve(), settings)


def check_document(doc: YamlDoc, display: str, manifest: Path, settings: Settings) -> ManifestCheck:
    """Check a parsed manifest (``manifest``: its resolved path, whose folder is the root)."""
    doc = dataclasses.replace(doc, value=_integral_as_int(doc.value, manifest_schema()))
    ctx = _Context(display, manifest, doc, settings, list(doc.problems))
    try:
        actor = _check(ctx)
    except (RecursionError, MemoryError):  # a schema or an example nested beyond what we follow
        ctx.add("", "the manifest is nested too deeply to check")
        actor = None
    actor_id = doc.value.get("id")
    valid = isinstance(actor_id, str) and not _field_has_problem(ctx, "/id")
    valid_id = actor_id if valid else None
    found = ctx.problems[len(doc.problems):]  # a value the parser refused is reported once
    problems = sorted([*doc.problems, *(p for p in found if p.path not in doc.refused)],
                      key=_problem_order)
    return ManifestCheck(display, None if problems else actor, problems,
                         valid_id, doc.position("/id") if valid_id else None)


def _integral_as_int(value: Any, schema: Any, root: Any = None) -> Any:
    """``value`` with each integral float where ``schema`` says "integer" made an int.

    JSON Schema counts 128.0 as an integer, so the format check takes it; the model and
    the sandbox need an int (``range()``, cgroup files). Driven by the schema, this covers
    every integer field of the format, today's (limits, pool) and any added later.
    """
    root = schema if root is None else root
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        schema = _local(root, schema["$ref"])  # the manifest schema's refs are all local
    if not isinstance(schema, dict):
        return value
    types = schema.get("type")
    if isinstance(value, float) and value.is_integer() and (
            types == "integer" or (isinstance(types, list) and "integer" in types)):
        return int(value)
    if isinstance(value, dict):
        named, other = schema.get("properties", {}), schema.get("additionalProperties")
        return {k: _integral_as_int(v, named.get(k, other), root) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_as_int(v, schema.get("items"), root) for v in value]
    return value


def _local(root: Any, ref: str) -> Any:
    """The subschema a local ``$ref`` ("#/$defs/x") names in ``root``; None for another."""
    if not ref.startswith("#"):
        return None
    node = root
    for token in filter(None, ref[1:].split("/")):
        token = token.replace("~1", "/").replace("~0", "~")
        node = node.get(token) if isinstance(node, dict) else None
    return node


def _problem_order(p: Problem) -> tuple[str, int, int]:
    return (p.file, p.line or 0, p.column or 0)


def _field_has_problem(ctx: _Context, ptr: str) -> bool:
    return any(p.path == ptr for p in ctx.problems)


@dataclass
class _Context:
    """One manifest being checked, and the problems found so far."""

    file: str
    manifest: Path  # absolute, resolved
    doc: YamlDoc
    settings: Settings
    problems: list[Problem] = field(default_factory=list)
    _seen: set[Problem] = field(default_factory=set)

    @property
    def raw(self) -> dict[str, Any]:
        return self.doc.value

    def add(self, ptr: str, message: str, *, at: str | None = None, key: bool = False) -> None:
        """A problem labelled with ``ptr`` ("limits.cpus: ..."), placed at ``at`` or ``ptr``."""
        line, column = self.doc.position(ptr if at is None else at, key=key)
        label = _label(ptr)
        text = f"{label}: {message}" if label else message
        problem = Problem(self.file, line, column, text, at or ptr)
        if problem not in self._seen:  # (a metaschema can say one thing through many branches)
            self._seen.add(problem)
            self.problems.append(problem)


def _label(ptr: str) -> str:
    """``/examples/0/payload/input`` -> ``examples[0].payload.input``."""
    out = ""
    for token in ptr.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        out += f"[{token}]" if token.isdigit() else f".{token}"
    return out.lstrip(".")


def _check(ctx: _Context) -> ActorDef | None:
    """Every check, in order; the ActorDef is built only when nothing is wrong."""
    _check_format(ctx)
    script = _check_script(ctx)
    inports = _ports(ctx, "inports")
    outports = _ports(ctx, "outports")
    config = _config(ctx)
    limits = _limits(ctx)
    pool = _pool(ctx, limits)
    examples = _examples(ctx, inports, outports, config)
    dependencies = _dependencies(ctx)
    if ctx.problems or script is None:
        return None
    actor = _actor(ctx, script, inports, outports, config, limits, pool, examples)
    return dataclasses.replace(actor, dependencies=dependencies) if dependencies else actor


def _actor(ctx: _Context, script: Path, inports: dict[str, Port], outports: dict[str, Port],
           config: CompiledSchema | None, limits: Limits, pool: PoolSpec,
           examples: tuple[Example, ...]) -> ActorDef:
    raw = ctx.raw
    return ActorDef(
        id=raw["id"], language=raw["language"], script=script, manifest=ctx.manifest,
        manifest_display=ctx.file,
        inports=MappingProxyType(inports), outports=MappingProxyType(outports),
        limits=limits, description=raw.get("description", ""),
        entrypoint=raw.get("entrypoint", "process"),
        config_schema=config.schema if config else None,
        config_validator=config.validator if config else None,
        config_defaults=MappingProxyType(dict(raw.get("config", {}).get("defaults", {}))),
        pool=pool, examples=examples,
        persistent_state=raw.get("state") == "persistent",
    )


# --- the manifest format ---


def _check_format(ctx: _Context) -> None:
    for error in _manifest_validator().iter_errors(ctx.raw):
        _schema_problem(ctx, error)


def _schema_problem(ctx: _Context, error: ValidationError) -> None:
    ptr = pointer(*error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = list(error.schema.get("properties", {})) if isinstance(error.schema, dict) else []
        for extra in sorted(set(error.instance) - set(known)):
            ctx.add(ptr, f"unknown key {extra!r}{_did_you_mean(extra, known)}",
                    at=pointer(*error.absolute_path, extra), key=True)
    elif "propertyNames" in error.absolute_schema_path:
        name = str(error.instance)
        ctx.add(ptr, f"invalid port name {name!r}: {error.message}",
                at=pointer(*error.absolute_path, name), key=True)
    else:
        ctx.add(ptr, error.message)


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- the script ---


def _check_script(ctx: _Context) -> Path | None:
    """The script's resolved path when it exists, fits the language and defines the entrypoint."""
    script, language = ctx.raw.get("script"), ctx.raw.get("language")
    entrypoint = ctx.raw.get("entrypoint", "process")
    if not isinstance(script, str) or not script:
        return None
    try:
        path = resolve_script(ctx.manifest.parent, script)
    except ScriptPathError as exc:
        ctx.add("/script", str(exc))
        return None
    if language not in LANGUAGES or not isinstance(entrypoint, str):
        return path
    wrong_extension = extension_issue(path, language)
    if wrong_extension:
        ctx.add("/script", wrong_extension)
        return None
    found = check_script(path, language, entrypoint, ctx.settings.sandbox.node)
    for issue in found:
        if issue.in_script:
            shown = (Path(ctx.file).parent / script).as_posix()
            ctx.problems.append(Problem(shown, issue.line, issue.column, issue.message, "/script"))
        else:
            ctx.add("/entrypoint" if "entrypoint" in ctx.raw else "/script", issue.message)
    return None if found else path


# --- ports and config ---


def _compile(ctx: _Context, schema: Any, ptr: str) -> CompiledSchema | None:
    compiled, issues = compile_schema(
        schema, ctx.manifest, ctx.settings.schema_roots,
        format_assertion=ctx.settings.schema_format_assertion,
        timeout_s=ctx.settings.validation_timeout_s)
    for issue in issues:
        ctx.add(ptr + issue.pointer, issue.message)
    return compiled


def _ports(ctx: _Context, kind: str) -> dict[str, Port]:
    """The ports of ``kind`` whose schema compiled (none past MAX_PORTS: each costs the
    server a compiled schema, ~3 ms and ~44 KB, at every load and lint)."""
    section = ctx.raw.get(kind)
    ports: dict[str, Port] = {}
    if not isinstance(section, dict):
        return ports
    if len(section) > MAX_PORTS:
        ctx.add(pointer(kind), f"{len(section)} ports; an actor has at most {MAX_PORTS} of each "
                "kind")
        return ports
    for name, spec in section.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict | bool):
            continue  # reported by the format check
        compiled = _compile(ctx, spec["schema"], pointer(kind, name, "schema"))
        if compiled is not None:
            ports[name] = Port(name, compiled.schema, compiled.validator,
                               description=spec.get("description", ""),
                               required=spec.get("required", True) if kind == "inports" else True)
    return ports


def _config(ctx: _Context) -> CompiledSchema | None:
    """The compiled config schema (None without one); checks the defaults against it."""
    section = ctx.raw.get("config")
    if not isinstance(section, dict) or not isinstance(section.get("schema"), dict | bool):
        return None
    compiled = _compile(ctx, section["schema"], "/config/schema")
    # Without defaults, the keys the schema requires are the caller's to give.
    defaults = section.get("defaults")
    if compiled is not None and isinstance(defaults, dict):
        for error in schema_errors(compiled.validator, defaults):
            ctx.add("/config/defaults" + error["path"], error["message"])
    return compiled


# --- limits and pool ---


def _limits(ctx: _Context) -> Limits:
    """The effective limits: the manifest's, else the settings' defaults."""
    section = ctx.raw.get("limits")
    given = section if isinstance(section, dict) else {}
    maxima = ctx.settings.limits_max
    for key, value in given.items():
        most = getattr(maxima, key, None)  # (network is granted, not a number: _check_grants)
        if most is not None and _is_number(most) and _is_number(value) and value > most:
            ctx.add(pointer("limits", key), f"{_num(value)} is over the maximum {_num(most)}")
    defaults = ctx.settings.limits.to_json()
    known = {k: v for k, v in given.items() if k in defaults}
    limits = Limits(**{**defaults, **known})
    _check_grants(ctx, limits)
    return limits


def _check_grants(ctx: _Context, limits: Limits) -> None:
    """What only the operator may grant: network, and memory within the server's capacity."""
    actor_id = ctx.raw.get("id")
    if limits.network is True and not ctx.settings.limits_max.allows_network(actor_id):
        ctx.add("/limits/network", "true is not allowed on this server: the operator grants "
                f"network (settings limits_max.network = true, or {actor_id!r} in "
                "limits_max.network_actors)")
    capacity = ctx.settings.capacity.memory_mb
    memory = limits.memory_mb
    # Over limits_max is reported already; over the capacity is worth saying only below it.
    if _is_number(memory) and capacity < memory <= ctx.settings.limits_max.memory_mb:
        ctx.add("/limits/memory_mb", f"{_num(limits.memory_mb)} MiB is over the server's "
                f"sandbox memory (capacity.memory_mb = {capacity})")


def _pool(ctx: _Context, limits: Limits) -> PoolSpec:
    section = ctx.raw.get("pool")
    given = section if isinstance(section, dict) else {}
    pool = PoolSpec(**{k: v for k, v in given.items() if k in PoolSpec.__dataclass_fields__})
    if _is_number(pool.min_warm) and _is_number(pool.max_workers) and (
            pool.min_warm > pool.max_workers):
        ctx.add("/pool/min_warm", f"{pool.min_warm} is over pool.max_workers {pool.max_workers}")
    maxima = ctx.settings.pool_max
    for key in ("min_warm", "max_workers", "max_queue"):
        value, most = getattr(pool, key), getattr(maxima, key)
        if _is_number(value) and value > most:
            ctx.add(pointer("pool", key), f"{_num(value)} is over the maximum {_num(most)} "
                    f"(settings pool_max.{key})")
    _check_warm_capacity(ctx, pool, limits)
    return pool


def _check_warm_capacity(ctx: _Context, pool: PoolSpec, limits: Limits) -> None:
    """min_warm sandboxes are booted with no call: they must fit in the server's capacity."""
    capacity = ctx.settings.capacity
    if not (_is_number(pool.min_warm) and _is_number(limits.memory_mb)) or pool.min_warm == 0:
        return
    if pool.min_warm > capacity.max_sandboxes:
        ctx.add("/pool/min_warm", f"{pool.min_warm} is over the server's "
                f"capacity.max_sandboxes {capacity.max_sandboxes}")
    elif pool.min_warm * limits.memory_mb > capacity.memory_mb:
        ctx.add("/pool/min_warm", f"{pool.min_warm} warm sandboxes of {_num(limits.memory_mb)} "
                f"MiB are over the server's capacity.memory_mb {capacity.memory_mb}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _num(value: float) -> str:
    """300.0 -> "300", 0.5 -> "0.5", 10**300 -> "1e+300" (numbers fit a double: numbers.py)."""
    if abs(value) >= 1e16:
        return f"{float(value):g}"
    return str(int(value)) if float(value).is_integer() else str(value)


# --- examples ---


def _examples(ctx: _Context, inports: Mapping[str, Port], outports: Mapping[str, Port],
              config: CompiledSchema | None) -> tuple[Example, ...]:
    items = ctx.raw.get("examples")
    if not isinstance(items, list):
        return ()
    names: set[str] = set()
    examples = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        base = pointer("examples", i)
        name = item.get("name")
        if isinstance(name, str) and name in names:
            ctx.add(f"{base}/name", f"another example is already named {name!r}")
        names.add(str(name))
        _example_values(ctx, item.get("payload"), f"{base}/payload", "inports", inports)
        _example_values(ctx, item.get("outputs"), f"{base}/outputs", "outports", outports)
        _example_config(ctx, item.get("config", {}), f"{base}/config", config)
        examples.append(Example(str(name), _dict(item.get("payload")), _dict(item.get("outputs")),
                                _dict(item.get("config")), _dict(item.get("state"))))
    return tuple(examples)


def _example_values(ctx: _Context, values: Any, ptr: str, kind: str,
                    ports: Mapping[str, Port]) -> None:
    """Only declared ports, required inports present, each value valid for its port."""
    if not isinstance(values, dict):
        return
    section = ctx.raw.get(kind)
    declared = section if isinstance(section, dict) else {}
    port_word = kind[:-1]  # "inport" / "outport"
    for name, value in values.items():
        if name not in declared:
            ctx.add(ptr, f"unknown {port_word} {name!r}{_did_you_mean(name, list(declared))}",
                    at=f"{ptr}/{escape_pointer_token(name)}", key=True)
        elif name in ports:
            for error in ports[name].errors(value):
                ctx.add(f"{ptr}/{escape_pointer_token(name)}{error['path']}", error["message"])
    if kind == "inports":
        for name, port in ports.items():
            if port.required and name not in values:
                ctx.add(ptr, f"required inport {name!r} is missing")


def _example_config(ctx: _Context, given: Any, ptr: str, config: CompiledSchema | None) -> None:
    """The example's config merged over the defaults must pass the config schema. A
    default the example leaves as it is was reported at config.defaults already."""
    if config is None or not isinstance(given, dict):
        return
    section = ctx.raw.get("config", {})
    defaults = section.get("defaults", {}) if isinstance(section, dict) else {}
    merged = {**(defaults if isinstance(defaults, dict) else {}), **given}
    for error in schema_errors(config.validator, merged):
        key = error["path"].split("/")[1] if error["path"] else None
        if key is None or key.replace("~1", "/").replace("~0", "~") in given:
            ctx.add(ptr + error["path"], error["message"])


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


# --- dependencies ---


def _dependencies(ctx: _Context) -> Dependencies | None:
    """The declared set of the actor's own language, every specifier pinned exactly."""
    section = ctx.raw.get("dependencies")
    language = ctx.raw.get("language")
    if not isinstance(section, dict) or language not in DEP_LANGUAGES:
        return None
    packages: list[Package] = []
    for kind, declared in section.items():
        if kind not in DEP_LANGUAGES:
            continue  # the schema reports unknown keys
        if kind != language:
            ctx.add(pointer("dependencies", kind), f"a {language} actor cannot use {kind} "
                    "packages", at=pointer("dependencies", kind), key=True)
            continue
        packages += _packages(ctx, kind, declared)
    if not packages:
        return None
    return Dependencies(language, tuple(sorted(packages)),
                        ctx.doc.position("/dependencies", key=True))


def _packages(ctx: _Context, kind: str, declared: Any) -> list[Package]:
    if kind == "python":
        items = list(enumerate(declared)) if isinstance(declared, list) else []
    else:
        items = list(declared.items()) if isinstance(declared, dict) else []
    found: dict[str, str] = {}  # normalized name -> where it was first listed
    packages = []
    for key, value in items:
        ptr = pointer("dependencies", kind, key)
        try:
            if kind == "python":
                if not isinstance(value, str):
                    continue  # the schema reports it
                package = python_package(value)
            else:
                package = npm_package(str(key), value)
        except SpecError as exc:
            ctx.add(ptr, str(exc), at=ptr, key=exc.in_name)
            continue
        if package.name in found:
            ctx.add(ptr, f"{package.name} is listed twice (first as {found[package.name]})")
            continue
        found[package.name] = _label(ptr)
        packages.append(package)
    return packages
