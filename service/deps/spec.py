"""What a manifest's ``dependencies`` declares, parsed, checked and normalized.

Python requirements are PEP 508 strings parsed with ``packaging``; each must be
``name==version`` (extras allowed), with no URL, path, wildcard or environment marker,
since the set is built for one interpreter and must mean the same thing every time.
JavaScript dependencies map an npm package name to one exact semver version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LANGUAGES = ("python", "javascript")
# npm's rules for a package name (validate-npm-package-name): lower case, URL-safe,
# starting with a letter or digit, an optional @scope/, 214 characters at most, and not
# one of the names npm reserves.
NPM_NAME = re.compile(r"(?:@[a-z0-9-~][a-z0-9-._~]*/)?[a-z0-9][a-z0-9-._~]*")
NPM_RESERVED = frozenset({"node_modules", "favicon.ico"})
NPM_NAME_MAX = 214
# Semantic Versioning 2.0.0, the exact form only (semver.org's regular expression).
SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?")


class SpecError(ValueError):
    """One declared dependency is not acceptable; the message says why and what to write."""

    def __init__(self, message: str, *, in_name: bool = False) -> None:
        super().__init__(message)
        self.in_name = in_name  # the package name is wrong, not the version


@dataclass(frozen=True, order=True)
class Package:
    """One pinned package: its normalized name, exact version and extras."""

    name: str
    version: str
    extras: tuple[str, ...] = ()

    def python_requirement(self) -> str:
        extras = f"[{','.join(self.extras)}]" if self.extras else ""
        return f"{self.name}{extras}=={self.version}"

    def npm_spec(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class Dependencies:
    """An actor's dependency set: one language, packages sorted by name."""

    language: str
    packages: tuple[Package, ...]
    # Where the manifest declares it (1-based line, column), to place install failures.
    position: tuple[int, int] | None = field(default=None, compare=False)

    def describe(self) -> list[str]:
        """The set as the installer is given it: ``name==version`` or ``name@version``."""
        if self.language == "python":
            return [p.python_requirement() for p in self.packages]
        return [p.npm_spec() for p in self.packages]

    def to_json(self) -> dict[str, object]:
        return {"language": self.language, "packages": self.describe()}


def python_package(text: str) -> Package:
    """Parse one Python requirement, which must pin one exact version from the index."""
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise SpecError(f"{text!r} is not a valid requirement: {_first_line(exc)}") from None
    if req.url:
        raise SpecError(f"{text!r} installs from a URL or path; "
                        f"give {req.name}==VERSION from the package index")
    if req.marker is not None:
        raise SpecError(f"{text!r} has an environment marker; the set is built for one "
                        "interpreter, so list only what it needs")
    pins = list(req.specifier)
    if len(pins) != 1 or pins[0].operator != "==" or pins[0].version.endswith(".*"):
        raise SpecError(f"{text!r} is not pinned to one version: write {req.name}==VERSION")
    try:
        version = Version(pins[0].version)
    except ValueError:  # InvalidVersion, or a release number of over 4300 digits (int())
        raise SpecError(f"{text!r}: {pins[0].version!r} is not a valid version") from None
    extras = tuple(sorted(canonicalize_name(e) for e in req.extras))
    return Package(canonicalize_name(req.name), str(version), extras)


def npm_package(name: str, version: object) -> Package:
    """Check one npm dependency: a valid package name and one exact semver version."""
    if len(name) > NPM_NAME_MAX or not NPM_NAME.fullmatch(name) or name in NPM_RESERVED:
        raise SpecError(f"{name!r} is not a valid npm package name", in_name=True)
    if not isinstance(version, str) or not SEMVER.fullmatch(version):
        raise SpecError(f"{name}: {version!r} is not an exact version; write X.Y.Z "
                        "(no range, tag, URL, path or git reference)")
    return Package(name, version)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
