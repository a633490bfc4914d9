"""The `service` command: serve (default), worker, lint, build, test, run, doctor.

``main(argv) -> int`` is the whole CLI; ``__main__`` only calls it. Exit codes:
0 success, 1 failure (a lint problem, a failed example, a call error...),
2 usage error or invalid settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from service import eventloop
from service.errors import ManifestError, RpcError, SettingsError
from service.log import setup_logging
from service.settings import BACKENDS, Settings, load_settings

DEFAULT_CONFIG = Path("config/settings.toml")
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

Command = Callable[[argparse.Namespace, Settings], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: sys.argv[1:]); returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in TOP_LEVEL_FLAGS):
        args_list.insert(0, "serve")  # `service --port 5556` means `service serve --port 5556`
    try:
        args = build_parser().parse_args(args_list)
    except SystemExit as exc:  # argparse has printed the usage error (or --help, --version)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        settings = _settings(args)
    except SettingsError as exc:
        print(f"error: invalid settings: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(_log_level(args, settings), settings.log_format)
    command: Command = args.command
    return command(args, settings)


TOP_LEVEL_FLAGS = ("-h", "--help", "--version")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None, metavar="PATH",
                        help=f"settings file (default: {DEFAULT_CONFIG} in the working folder "
                             "or the nearest folder above it that has one)")
    common.add_argument("--backend", choices=BACKENDS, default=None,
                        help="where actors run (overrides the `backend` setting)")
    common.add_argument("--debug", action="store_true", help="log at debug level")
    parser = argparse.ArgumentParser(prog="service", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[common], help="run the WebSocket server (default)")
    serve.add_argument("--host", default=None, help="address to listen on (setting `host`)")
    serve.add_argument("--port", type=int, default=None, help="TCP port (setting `port`)")
    serve.add_argument("--actors", type=Path, action="append", default=[], metavar="PATH",
                       help="a manifest or folder to load in addition to manifest_paths "
                            "(repeatable)")
    serve.set_defaults(command=cmd_serve)

    worker = sub.add_parser("worker", parents=[common],
                            help="run a cluster worker (needs cluster.redis_url)")
    worker.add_argument("--host", default=None, help="where /healthz and /metrics listen")
    worker.add_argument("--port", type=int, default=None,
                        help="TCP port of /healthz and /metrics (setting `port`)")
    worker.add_argument("--actors", type=Path, action="append", default=[], metavar="PATH",
                        help="a manifest or folder to load in addition to manifest_paths")
    worker.set_defaults(command=cmd_worker)

    lint = sub.add_parser("lint", parents=[common], help="check manifests")
    lint.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                      help="manifests or folders (default: the manifest_paths setting)")
    lint.add_argument("--format", choices=("text", "json", "github"), default="text",
                      help="text (FILE:LINE:COL: message), json, or github annotations")
    lint.add_argument("--allow-empty", action="store_true",
                      help="exit 0 when the paths hold no manifest (default: exit 1)")
    lint.add_argument("--strict", action="store_true", help="warnings fail too (exit 1)")
    lint.set_defaults(command=cmd_lint)

    build = sub.add_parser("build", parents=[common],
                           help="install the manifests' dependencies into the cache")
    build.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                       help="manifests or folders (default: the manifest_paths setting)")
    build.set_defaults(command=cmd_build)

    test = sub.add_parser("test", parents=[common], help="run every manifest's examples")
    test.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                      help="manifests or folders (default: the manifest_paths setting)")
    test.set_defaults(command=cmd_test)

    run = sub.add_parser("run", parents=[common], help="run one call without a server")
    run.add_argument("manifest", type=Path, metavar="MANIFEST", help="the actor's manifest")
    run.add_argument("--payload", type=_json_object, required=True, metavar="JSON",
                     help="the call's payload, a JSON object keyed by inport")
    run.add_argument("--call-config", dest="actor_config", type=_json_object, default=None,
                     metavar="JSON", help="the call's config, a JSON object")
    run.add_argument("--state", type=_json_object, default=None, metavar="JSON",
                     help="the call's state, a JSON object")
    # --settings was the settings file of `run` before --config meant it everywhere.
    run.add_argument("--settings", dest="config", type=Path, help=argparse.SUPPRESS)
    run.set_defaults(command=cmd_run)

    doctor = sub.add_parser("doctor", parents=[common], help="check which backends work here")
    doctor.set_defaults(command=cmd_doctor)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("actor-sandbox-service")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _settings(args: argparse.Namespace) -> Settings:
    path = args.config
    if path is not None and str(path).lstrip().startswith("{"):
        raise SettingsError("--config is the settings file; the call's config is --call-config")
    base = None  # relative paths: from the working directory (manifest.md)
    if path is None and (path := find_default_config(Path.cwd())) is not None:
        base = path.parents[1]  # found from a folder below: its project's root, as if run there
    return load_settings(
        path,
        base=base,
        isolated=args.subcommand in ("serve", "worker"),  # long-running: no dynaconf kept
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        backend=args.backend,
        log_level="debug" if args.debug else None,
    )


def find_default_config(start: Path) -> Path | None:
    """``config/settings.toml`` in ``start`` or the nearest folder above it (like git's .git)."""
    for folder in (start, *start.parents):
        candidate = folder / DEFAULT_CONFIG
        if candidate.is_file():
            return candidate
    return None


def _log_level(args: argparse.Namespace, settings: Settings) -> str:
    """The settings' level for `serve`; one-shot commands keep stderr for their own output."""
    # serve, worker: the settings' level; build: its progress is the point
    if args.subcommand in ("serve", "worker", "build") or args.debug:
        return settings.log_level
    return "error" if settings.log_level == "error" else "warning"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _report_manifest_error(exc: ManifestError) -> int:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    return EXIT_FAILURE


# --- serve ---


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from service.server import serve

    if settings.cluster.enabled and settings.cluster.role == "worker":
        return cmd_worker(args, settings)
    return _serving(serve(settings, args.actors), settings)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from service.cluster.node import serve_worker

    if not settings.cluster.enabled:
        print("error: a worker needs cluster.redis_url (e.g. SERVICE_CLUSTER__REDIS_URL)",
              file=sys.stderr)
        return EXIT_USAGE
    return _serving(serve_worker(settings, args.actors), settings)


def _serving(server: Coroutine[Any, Any, None], settings: Settings) -> int:
    """Run a server coroutine until it stops; its start-up errors become exit codes."""
    try:
        eventloop.run(server, settings.busy_poll_us)
    except SettingsError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except ManifestError as exc:
        return _report_manifest_error(exc)
    except (RpcError, OSError) as exc:  # no sandbox backend, port in use...
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


# --- lint ---


def cmd_lint(args: argparse.Namespace, settings: Settings) -> int:
    from service.manifest.lint import lint_main

    paths = list(args.paths) or list(settings.manifest_paths)
    return lint_main(paths, settings, args.format, sys.stdout, strict=args.strict,
                     allow_empty=args.allow_empty)


# --- build ---


def cmd_build(args: argparse.Namespace, settings: Settings) -> int:
    from service.deps.build import build_main

    paths = list(args.paths) or list(settings.manifest_paths)
    return build_main(paths, settings, sys.stdout)


# --- test ---


def cmd_test(args: argparse.Namespace, settings: Settings) -> int:
    if args.paths:
        settings = settings.replace(manifest_paths=tuple(args.paths))
    try:
        return asyncio.run(_run_examples(settings))
    except ManifestError as exc:
        return _report_manifest_error(exc)
    except RpcError as exc:  # no sandbox backend
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE


async def _run_examples(settings: Settings) -> int:
    from service.runtime import open_runtime

    passed = failed = 0
    async with open_runtime(settings) as runtime:
        for actor_id, reason in sorted(runtime.unavailable.items()):
            failed += 1  # an actor that could not even load fails its examples
            print(f"FAIL {actor_id}: {reason}")
        for actor in runtime.actors():
            for example in actor.examples:
                problem = await _example_problem(runtime, actor.id, example)
                if problem is None:
                    passed += 1
                    print(f"PASS {actor.id}: {example.name}")
                else:
                    failed += 1
                    print(f"FAIL {actor.id}: {example.name}: {problem}")
    print(f"{passed} passed, {failed} failed")
    return EXIT_FAILURE if failed else EXIT_OK


async def _example_problem(runtime: Any, actor_id: str, example: Any) -> str | None:
    """Why the example fails (None when it passes): its outputs must match exactly."""
    try:
        result = await runtime.process(actor_id, example.payload, example.config, example.state)
    except RpcError as exc:
        return f"error {exc.CODE}: {exc.message}"
    if not json_equal(result["outputs"], example.outputs):
        return f"expected outputs {_dump(example.outputs)}, got {_dump(result['outputs'])}"
    return None


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: 1 == 1.0 (one number type), but true != 1 and order matters."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


# --- run ---


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    manifest: Path = args.manifest
    # Only the given manifest: nothing from manifest_paths, and `load` may read its folder.
    settings = settings.replace(manifest_paths=(), allowed_roots=(manifest.resolve().parent,))
    try:
        return asyncio.run(_run_one(settings, args))
    except RpcError as exc:
        print(f"error {exc.CODE}: {exc.message}", file=sys.stderr)
        if exc.data is not None:
            print(json.dumps(exc.data, indent=2), file=sys.stderr)
        return EXIT_FAILURE


async def _run_one(settings: Settings, args: argparse.Namespace) -> int:
    from service.runtime import open_runtime

    async def emit(kind: str, params: dict[str, Any]) -> None:
        print(json.dumps({kind: params}), flush=True)

    async with open_runtime(settings) as runtime:
        actor, _ = await runtime.load(str(args.manifest))
        result = await runtime.process(actor.id, args.payload, args.actor_config, args.state,
                                       emit=emit)
    print(json.dumps({"result": result}), flush=True)
    return EXIT_OK


# --- doctor ---


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_doctor(settings))


async def _doctor(settings: Settings) -> int:
    from service.sandbox.select import all_backends

    print(f"backend setting: {settings.backend}")
    working = []
    for backend in all_backends(settings):
        try:
            availability = await backend.availability()
        finally:
            await backend.aclose()
        status = "ok" if availability.ok else f"unavailable: {availability.reason}"
        print(f"{availability.backend}: {status}")
        for key, value in availability.details.items():
            print(f"  {key}: {value}")
        if availability.ok:
            working.append(availability.backend)
    store_ok = await _doctor_state(settings)
    print(f"working backends: {', '.join(working) or 'none'}")
    return EXIT_OK if working and store_ok else EXIT_FAILURE


async def _doctor_state(settings: Settings) -> bool:
    """Report the persistent state store (settings [state]); whether it answers."""
    from service.state.base import StoreDown
    from service.state.select import open_store

    store = open_store(settings.state)
    try:
        report = await store.check()
    except StoreDown as exc:
        print(f"state store: unavailable: {exc}")
        return False
    finally:
        await store.aclose()
    print(f"state store: ok ({store.name})")
    for key, value in report.items():
        if key != "store":
            print(f"  {key}: {value}")
    return True
