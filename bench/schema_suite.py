"""The official JSON Schema Test Suite, run through the manifest loader or a live server:
an outside check.

``python -m bench.schema_suite [--suite DIR] [--draft draft2020-12 ...] [--optional]
[--format-assertion] [--live]``

Each test group becomes a manifest (its schema as the ``input`` inport and the
``output`` outport), loaded the way the server loads it; each test's data is then
checked with the inport's validator, the code a ``process`` call runs. With ``--live``,
a server runs (``python -m service``, process backend): each manifest is loaded with
``load``, each test's data is sent with ``process`` on the inport, and again for the
script to send to the outport; the two verdicts must agree. A test counts as right
when the verdict is the suite's. Groups the loader refuses because they need a remote
document (``http://localhost:1234/...``: nothing is fetched, by design) are
counted apart. The reference library (jsonschema, given the suite's remote
documents) runs beside, so that each miss shows whether it is ours alone.
``--format-assertion`` runs the ``optional/format`` tests alone, with the setting
``schema_format_assertion`` on (and the reference's format checker).

The suite ships inside the jsonschema source distribution on PyPI; without
``--suite``, it is fetched with ``pip download`` into ``.cache/`` once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import referencing.jsonschema
import yaml
from jsonschema.validators import validator_for
from referencing import Registry, Resource

from bench import servers
from service.errors import ManifestError
from service.manifest.loader import load_manifest
from service.settings import Settings

DRAFTS = ("draft2020-12", "draft2019-09", "draft7", "draft6", "draft4")
DIALECTS = {
    "draft2020-12": "https://json-schema.org/draft/2020-12/schema",
    "draft2019-09": "https://json-schema.org/draft/2019-09/schema",
    "draft7": "http://json-schema.org/draft-07/schema#",
    "draft6": "http://json-schema.org/draft-06/schema#",
    "draft4": "http://json-schema.org/draft-04/schema#",
}
CACHE = Path(".cache/json-schema-test-suite")
REMOTE_WORDS = "remote documents are never fetched"
UNKNOWN_DIALECT = "unknown $schema 'http://localhost:1234/"  # a custom metaschema: remote too


@dataclass
class Score:
    right: int = 0
    wrong: list[str] = field(default_factory=list)  # the reference library right, us not
    both_wrong: int = 0  # the reference library wrong too
    remote: int = 0  # refused at load: needs a remote document
    refused: list[str] = field(default_factory=list)  # refused at load for another reason
    remote_groups: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.right + len(self.wrong) + self.both_wrong + self.remote

    def line(self, name: str) -> str:
        counted = self.total - self.remote
        return (f"{name}: {self.right}/{counted} right ({100 * self.right / max(counted, 1):.1f}%)"
                f", {len(self.wrong)} wrong where jsonschema is right, {self.both_wrong} wrong "
                f"like jsonschema, {self.remote} need a remote document (refused at load)")


def fetch_suite() -> Path:
    """The suite's tests/ folder, from the jsonschema sdist (pip download, cached)."""
    tests = CACHE / "json" / "tests"
    if tests.is_dir():
        return tests
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", "-d", tmp, f"jsonschema=={version('jsonschema')}"],
                       check=True, capture_output=True)
        sdist = next(Path(tmp).glob("jsonschema-*.tar.gz"))
        with tarfile.open(sdist) as tar:  # regular files only, never outside CACHE/json
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if len(parts) > 2 and parts[1] == "json" and member.isfile() \
                        and ".." not in parts:
                    target = CACHE / "json" / Path(*parts[2:])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None  # a regular file
                    target.write_bytes(source.read())
    return tests


def remotes_registry(suite: Path, draft: str) -> Registry[Any]:
    """The suite's remote documents at their http://localhost:1234/ URIs (reference only)."""
    spec = referencing.jsonschema.specification_with(DIALECTS[draft])
    registry: Registry[Any] = Registry()
    root = suite.parent / "remotes"
    for path in root.rglob("*.json"):
        uri = "http://localhost:1234/" + path.relative_to(root).as_posix()
        resource = Resource.from_contents(json.loads(path.read_text()), default_specification=spec)
        registry = registry.with_resource(uri, resource)
    return registry


# The actor of every group: the `output` outport checks what the `raw` inport carries.
SCRIPT = """async def process(context):
    raw = context.get_input("raw")
    if raw is not None:
        await context.send_output("output", raw["value"])
    return None
"""

# What a judge gives for one group: the loader's refusal (its messages), or a verdict per
# test (None: the call could not judge, e.g. an internal error).
Verdicts = str | list[bool | None]
Judge = Callable[[Path, list[dict[str, Any]]], Awaitable[Verdicts]]


async def run_file(path: Path, draft: str, folder: Path, remotes: Registry[Any], score: Score,
                   judge: Judge, format_assertion: bool = False) -> None:
    for i, group in enumerate(json.loads(path.read_text())):
        schema = group["schema"]
        if isinstance(schema, dict) and "$schema" not in schema:
            schema = {"$schema": DIALECTS[draft], **schema}
        elif schema is True or schema is False:
            schema = {"$schema": DIALECTS[draft], "allOf": [schema]}
        manifest = folder / f"g{i}.yaml"
        manifest.write_text(yaml.safe_dump({  # YAML, not JSON: PyYAML reads 1e-08 as a string
            "id": f"g{i}", "language": "python", "script": "actor.py",
            "inports": {"input": {"required": False, "schema": schema},
                        "raw": {"required": False, "schema": True}},
            "outports": {"output": {"schema": schema}}}))
        dialect = validator_for(schema, default=jsonschema.Draft202012Validator)
        checker = dialect.FORMAT_CHECKER if format_assertion else None
        reference = dialect(schema, registry=remotes, format_checker=checker)
        name = f"{path.name}: {group['description']}"
        try:
            verdicts = await judge(manifest, group["tests"])
        except Exception as exc:  # a crash of the loader
            score.wrong += [f"{name} / {t['description']} (load crashed: {exc!r})"
                            for t in group["tests"]]
            continue
        if isinstance(verdicts, str):
            if REMOTE_WORDS in verdicts or UNKNOWN_DIALECT in verdicts:
                score.remote += len(group["tests"])
                score.remote_groups.append(f"{name}: {verdicts}")
            else:
                score.refused.append(f"{name}: {verdicts}")
                for test in group["tests"]:
                    _miss(score, reference, test, f"{name} / {test['description']} (refused)")
            continue
        for test, ours in zip(group["tests"], verdicts, strict=True):
            if ours is None:  # -32603 (or ports that disagree): wrong whatever the test says
                score.wrong.append(f"{name} / {test['description']} (internal error)")
            elif ours == test["valid"]:
                score.right += 1
            else:
                _miss(score, reference, test, f"{name} / {test['description']}")


def loader_judge(format_assertion: bool) -> Judge:
    """Each manifest loaded as the server loads it; each test's data checked with the
    ``input`` port's validator, the code a ``process`` call runs."""
    settings = Settings(schema_roots=(), schema_format_assertion=format_assertion)

    async def judge(manifest: Path, tests: list[dict[str, Any]]) -> Verdicts:
        try:
            port = load_manifest(manifest, settings).inports["input"]
        except ManifestError as exc:
            return "; ".join(str(p) for p in exc.problems)
        verdicts: list[bool | None] = []
        for test in tests:
            try:
                verdicts.append(await port.check(test["data"]) == [])
            except Exception:
                verdicts.append(None)
        return verdicts

    return judge


class LiveJudge:
    """The suite through a running server: ``load`` for each manifest, then ``process``
    for each test twice, its data on the ``input`` inport (refused: -32002) and sent by
    the script to the ``output`` outport (refused: -32003). A test is judged when both
    agree; any other answer is an internal error."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def __call__(self, manifest: Path, tests: list[dict[str, Any]]) -> Verdicts:
        loaded = await self.call("load", {"file_path": str(manifest)})
        if "error" in loaded:
            problems = loaded["error"].get("data", {}).get("errors", [])
            return "; ".join(p["message"] for p in problems) or loaded["error"]["message"]
        actor = loaded["result"]["actor"]["id"]
        verdicts: list[bool | None] = []
        for test in tests:
            inport = await self.call("process", {"actor_id": actor,
                                                 "payload": {"input": test["data"]}})
            outport = await self.call("process", {"actor_id": actor,
                                                  "payload": {"raw": {"value": test["data"]}}})
            got = {_verdict(inport, -32002), _verdict(outport, -32003)}
            verdicts.append(got.pop() if len(got) == 1 else None)
        return verdicts

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        request_id = next(self.ids)
        await self.ws.send_str(json.dumps({"jsonrpc": "2.0", "id": request_id,
                                           "method": method, "params": params}))
        while True:  # notifications (the outputs) come first
            message: dict[str, Any] = json.loads(await self.ws.receive_str())
            if message.get("id") == request_id:
                return message


def _verdict(response: dict[str, Any], refused: int) -> bool | None:
    if "result" in response:
        return True
    return False if response["error"]["code"] == refused else None


@contextlib.asynccontextmanager
async def live_judge(folder: Path, format_assertion: bool) -> AsyncIterator[Judge]:
    """A server (``python -m service``, process backend) that may load from ``folder``."""
    port = servers.free_port()
    empty = folder / "no-actors"
    empty.mkdir()
    command = [sys.executable, "-m", "service", "--config",
               str(servers.ROOT / "config" / "settings.toml"), "--host", "127.0.0.1",
               "--port", str(port), "--backend", "process", "--actors", str(empty)]
    env = {"SERVICE_ALLOWED_ROOTS": json.dumps([str(folder)]),
           "SERVICE_SCHEMA_FORMAT_ASSERTION": json.dumps(format_assertion)}
    async with servers.running(command, port, "schema-suite", env=env) as server, \
            aiohttp.ClientSession() as session, \
            session.ws_connect(server.url, max_msg_size=0) as ws:
        yield LiveJudge(ws)


def _miss(score: Score, reference: Any, test: dict[str, Any], what: str) -> None:
    """Counts a test we got wrong (or refused): ours alone, or the reference's too (a
    reference that cannot compile the schema, e.g. Python's re on \\p{Letter}, is wrong)."""
    try:
        reference_right = reference.is_valid(test["data"]) == test["valid"]
    except Exception:
        reference_right = False
    if reference_right:
        score.wrong.append(what)
    else:
        score.both_wrong += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, help="the suite's tests/ folder")
    parser.add_argument("--draft", action="append", choices=DRAFTS)
    parser.add_argument("--optional", action="store_true", help="include tests/*/optional")
    parser.add_argument("--format-assertion", action="store_true",
                        help="run tests/*/optional/format alone, with format assertion on")
    parser.add_argument("--live", action="store_true",
                        help="through a running server: load, then process on an inport "
                             "and through an outport")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every miss")
    args = parser.parse_args(argv)
    asyncio.run(_run(args, args.suite or fetch_suite()))
    return 0


async def _run(args: argparse.Namespace, suite: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "actor.py").write_text(SCRIPT)
        async with contextlib.AsyncExitStack() as stack:
            judge = await stack.enter_async_context(
                live_judge(folder, args.format_assertion)) if args.live \
                else loader_judge(args.format_assertion)
            for draft in args.draft or DRAFTS:
                score, remotes = Score(), remotes_registry(suite, draft)
                pattern = "**/*.json" if args.optional else "*.json"
                paths = sorted((suite / draft).glob(pattern))
                if args.format_assertion:  # the other tests expect format to be an annotation
                    paths = sorted((suite / draft / "optional" / "format").glob("*.json"))
                for path in paths:
                    if path.parent.name == "format" and not args.format_assertion:
                        continue  # format assertion is off by default: an annotation
                    await run_file(path, draft, folder, remotes, score, judge,
                                   args.format_assertion)
                _report(draft, score, args.verbose)


def _report(draft: str, score: Score, verbose: bool) -> None:
    print(score.line(draft), flush=True)
    for miss in score.wrong if verbose else score.wrong[:10]:
        print("   ", miss)
    for refusal in score.refused[:10]:
        print("    refused:", refusal)
    for refusal in score.remote_groups if verbose else ():
        print("    remote:", refusal)


if __name__ == "__main__":
    raise SystemExit(main())
