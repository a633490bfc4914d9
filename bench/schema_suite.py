"""The official JSON Schema Test Suite, run through the manifest loader: an outside check.

``python -m bench.schema_suite [--suite DIR] [--draft draft2020-12 ...] [--optional]
[--format-assertion]``

Each test group becomes a manifest (its schema as the ``input`` port), loaded the
way the server loads it; each test's data is then checked with the port's
validator, the code a ``process`` call runs. A test counts as right when the
verdict is the suite's. Groups the loader refuses because they need a remote
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
import json
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jsonschema
import referencing.jsonschema
import yaml
from jsonschema.validators import validator_for
from referencing import Registry, Resource

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


def run_file(path: Path, draft: str, folder: Path, remotes: Registry[Any], score: Score,
             format_assertion: bool = False) -> None:
    for i, group in enumerate(json.loads(path.read_text())):
        schema = group["schema"]
        if isinstance(schema, dict) and "$schema" not in schema:
            schema = {"$schema": DIALECTS[draft], **schema}
        elif schema is True or schema is False:
            schema = {"$schema": DIALECTS[draft], "allOf": [schema]}
        manifest = folder / f"g{i}.yaml"
        manifest.write_text(yaml.safe_dump({  # YAML, not JSON: PyYAML reads 1e-08 as a string
            "id": f"g{i}", "language": "python", "script": "actor.py",
            "inports": {"input": {"schema": schema}}}))
        dialect = validator_for(schema, default=jsonschema.Draft202012Validator)
        checker = dialect.FORMAT_CHECKER if format_assertion else None
        reference = dialect(schema, registry=remotes, format_checker=checker)
        name = f"{path.name}: {group['description']}"
        try:
            settings = Settings(schema_roots=(), schema_format_assertion=format_assertion)
            port = load_manifest(manifest, settings).inports["input"]
        except Exception as exc:  # ManifestError, or a crash of the loader
            if not isinstance(exc, ManifestError):
                score.wrong += [f"{name} / {t['description']} (load crashed: {exc!r})"
                                for t in group["tests"]]
                continue
            text = "; ".join(str(p) for p in exc.problems)
            if REMOTE_WORDS in text or UNKNOWN_DIALECT in text:
                score.remote += len(group["tests"])
                score.remote_groups.append(f"{name}: {text}")
            else:
                score.refused.append(f"{name}: {text}")
                for test in group["tests"]:
                    _miss(score, reference, test, f"{name} / {test['description']} (refused)")
            continue
        for test in group["tests"]:
            try:
                ours = port.errors(test["data"]) == []
            except Exception:  # a call would answer -32603: wrong whatever the test says
                score.wrong.append(f"{name} / {test['description']} (internal error)")
                continue
            if ours == test["valid"]:
                score.right += 1
            else:
                _miss(score, reference, test, f"{name} / {test['description']}")


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
    parser.add_argument("-v", "--verbose", action="store_true", help="list every miss")
    args = parser.parse_args(argv)
    suite = args.suite or fetch_suite()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "actor.py").write_text("async def process(context):\n    return None\n")
        for draft in args.draft or DRAFTS:
            score, remotes = Score(), remotes_registry(suite, draft)
            pattern = "**/*.json" if args.optional else "*.json"
            paths = sorted((suite / draft).glob(pattern))
            if args.format_assertion:  # the other tests expect format to be an annotation
                paths = sorted((suite / draft / "optional" / "format").glob("*.json"))
            for path in paths:
                if path.parent.name == "format" and not args.format_assertion:
                    continue  # format assertion is off by default: an annotation
                run_file(path, draft, folder, remotes, score, args.format_assertion)
            print(score.line(draft))
            for miss in score.wrong if args.verbose else score.wrong[:10]:
                print("   ", miss)
            for refusal in score.refused[:10]:
                print("    refused:", refusal)
            for refusal in score.remote_groups if args.verbose else ():
                print("    remote:", refusal)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
