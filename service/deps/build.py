"""Build dependency sets into the cache, once each: for the runtime and ``service build``.

``DepsBuilder.ensure`` is the one path (the server's start and ``load``, ``service run``,
``service build``): probe the sandbox interpreter (once), name the entry, refuse it if
another user could have changed it, use it when it verifies, else take its lock, install
into a fresh build folder, seal it and rename it into place. Blocking; the runtime calls
it in a thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from service.deps import cache
from service.deps.install import InstallError, Interpreter, install_set, probe
from service.deps.spec import Dependencies
from service.manifest.model import ActorDef
from service.settings import Settings

log = logging.getLogger(__name__)


class DepsError(Exception):
    """A set could not be built; the message is the installer's (or the cache's) reason."""


@dataclass(frozen=True)
class Built:
    """One set, ready in the cache."""

    name: str  # e.g. python-3f2a...
    entry: Path
    cached: bool  # True: found intact, nothing installed
    seconds: float


class DepsBuilder:
    """Builds sets for one settings; safe to call from several threads and processes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._interpreters: dict[str, Interpreter] = {}
        self._probe_lock = threading.Lock()

    def interpreter(self, language: str) -> Interpreter:
        with self._probe_lock:
            if language not in self._interpreters:
                self._interpreters[language] = probe(language, self.settings)
            return self._interpreters[language]

    def ensure(self, deps: Dependencies) -> Built:
        """The set's entry, built now if it is missing or corrupted; DepsError if it cannot."""
        started = time.monotonic()
        try:
            interpreter = self.interpreter(deps.language)
            root = self.settings.deps_dir.resolve()
            name = cache.entry_name(deps, interpreter.abi)
            # Trusted first (entry.json tells damage, not tampering: the trust is in owners
            # and modes), whether found or about to be replaced; never rebuilt over when not.
            cache.check_root(root)
            cache.check_entry(root / name)
            # Sealed entries never change in place, so an intact one needs no lock (nor
            # write access: a complete cache may be read-only to the server).
            cached = cache.verify(root / name, name) is None
            if not cached:
                cache.prepare_root(root)
                with cache.locked(root, name):  # another builder may have just finished it
                    cached = self._usable(root / name, name, deps)
                    if not cached:
                        self._build(root, name, deps, interpreter)
        except (InstallError, cache.CacheError, OSError) as exc:
            raise DepsError(str(exc)) from exc
        seconds = time.monotonic() - started
        if not cached:
            log.info("dependencies %s: built in %.1f s", name, seconds)
        return Built(name, root / name, cached, seconds)

    async def prepare(self, actor: ActorDef) -> ActorDef:
        """``actor`` with its built entry (unchanged when it declares no dependencies)."""
        if actor.dependencies is None:
            return actor
        built = await asyncio.to_thread(self.ensure, actor.dependencies)
        return dataclasses.replace(actor, deps_entry=built.entry)

    def _usable(self, entry: Path, name: str, deps: Dependencies) -> bool:
        if not entry.exists():
            log.info("dependencies %s: installing %s", name, " ".join(deps.describe()))
            return False
        problem = cache.verify(entry, name)
        if problem is None:
            log.debug("dependencies %s: cached", name)
            return True
        log.warning("dependencies %s: the cache entry is corrupted (%s); building it again",
                    name, problem)
        return False

    def _build(self, root: Path, name: str, deps: Dependencies, interpreter: Interpreter) -> None:
        build = cache.new_build_dir(root, name)
        try:
            installer = install_set(deps, interpreter, build, self.settings,
                                    lambda line: log.info("dependencies %s: %s", name, line))
            cache.seal(build, {"name": name, **deps.to_json(), "interpreter": interpreter.abi,
                               "installer": installer})
            cache.check_entry(build)  # what the installer left passes what a cached entry must
            cache.install(build, root / name)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)


def distinct_sets(actors: Sequence[ActorDef]) -> dict[Dependencies, list[str]]:
    """Each distinct set, with the ids of the actors that use it."""
    sets: dict[Dependencies, list[str]] = {}
    for actor in actors:
        if actor.dependencies is not None:
            sets.setdefault(actor.dependencies, []).append(actor.id)
    return sets


def build_main(paths: Sequence[Path | str], settings: Settings, out: TextIO) -> int:
    """``service build``: every set of the manifests under ``paths``; 0 when all are ready."""
    from service.manifest.lint import check_paths

    actors, problems = check_paths(paths, settings)
    for problem in problems:
        out.write(f"{problem}\n")
    builder = DepsBuilder(settings)
    failed = 0
    for deps, ids in distinct_sets(actors).items():
        try:
            built = builder.ensure(deps)
        except DepsError as exc:
            failed += 1
            out.write(f"FAILED {deps.language} {' '.join(deps.describe())} "
                      f"(actors {', '.join(ids)}): {exc}\n")
            continue
        state = "cached" if built.cached else f"built in {built.seconds:.1f} s"
        out.write(f"{state}: {built.name} {' '.join(deps.describe())} "
                  f"(actors {', '.join(ids)})\n")
        out.flush()
    sets = len(distinct_sets(actors))
    out.write(f"{sets - failed} of {sets} dependency sets ready in {settings.deps_dir}\n")
    return 1 if failed or problems else 0
