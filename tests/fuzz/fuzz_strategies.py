"""Hypothesis strategies: JSON values, JSON-RPC shapes, params for every method, frames.

Known bug triggers are left out until their pinned tests pass (see test_protocol_fuzz):
lone surrogates (\\ud800) in data for a sandbox, and NUL characters or over-long names
in `load` paths.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fuzz_oracle import ABSENT, PARAM_NAMES, SCRIPT_SUFFIXES
from hypothesis import strategies as st

METHODS = sorted(PARAM_NAMES)
ACTOR_IDS = ["doubler", "doubler_js", "counter", "ticker", "order_total", "fuzz_doubler",
             "fuzz_twin", "ghost", "", "Doubler", "doubler ", "../doubler", "secret_actor"]
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),  # no surrogate
               max_size=12) | st.sampled_from(
    ["", "null", "2.0", "\u2028", "\ufeff", "\U0001f980", "é", "\x7f", " "])
KEYS = TEXT | st.sampled_from(["__proto__", "constructor", "toString", "count", "input",
                               "value", "factor", "order"])
INTS = st.integers(min_value=-(2**64), max_value=2**64) | st.sampled_from(
    [0, -1, 2**53, 2**53 + 1, -(2**63), 2**63 - 1, 10**30])
FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [0.5, -0.0, 1e308, -1e308, 5e-324, 1.7976931348623157e308, 1e16])
NUMBERS = INTS | FLOATS
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(KEYS, inner, max_size=4), max_leaves=12)
OBJECTS = st.dictionaries(KEYS, JSON, max_size=4)
SURROGATES = st.sampled_from(["\ud800", "a\udfff", "\udbff\udc00"])  # ids only: see above
VALID_IDS = st.none() | INTS | FLOATS | TEXT | SURROGATES
IDS = VALID_IDS | st.booleans() | st.lists(SCALARS, max_size=2) | st.dictionaries(
    KEYS, SCALARS, max_size=2)
JSONRPC = st.sampled_from(["2.0"] * 8 + ["1.0", "2", "2.0 ", 2.0, 2, None, "", ABSENT])


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``strategy``, or the member left out."""
    return st.just(ABSENT) | strategy


@st.composite
def messages(draw: st.DrawFn, method: st.SearchStrategy[Any] | None = None,
             params: st.SearchStrategy[Any] | None = None,
             ids: st.SearchStrategy[Any] | None = None) -> dict[str, Any]:
    """A JSON-RPC-shaped object; each member may be valid, wrong or absent."""
    members = [
        ("jsonrpc", draw(JSONRPC)),
        ("method", draw(method if method is not None else (
            st.sampled_from(METHODS) | st.sampled_from(["rpc.", "List", "process "]) | JSON))),
        ("params", draw(params if params is not None else maybe(JSON))),
        ("id", draw(ids if ids is not None else maybe(IDS))),
    ]
    order = draw(st.permutations(members))
    return {name: value for name, value in order if value is not ABSENT}


def requests(method: str, params: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Well-formed requests (or notifications) of ``method`` with the given params."""
    return messages(method=st.just(method), params=params, ids=maybe(VALID_IDS)).filter(
        lambda m: m.get("jsonrpc") == "2.0") | st.builds(
        lambda p, i: _request(method, p, i), params, maybe(VALID_IDS))


def _request(method: str, params: Any, request_id: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not ABSENT:
        message["params"] = params
    if request_id is not ABSENT:
        message["id"] = request_id
    return message


def by_name_or_position(method: str, fields: dict[str, st.SearchStrategy[Any]],
                        ) -> st.SearchStrategy[Any]:
    """Params of ``method`` as an object or an array, members maybe left out or extra."""
    names = PARAM_NAMES[method]

    def build(values: dict[str, Any], positional: bool, extra: dict[str, Any]) -> Any:
        present = {k: v for k, v in values.items() if v is not ABSENT}
        if positional:
            cut = max((names.index(k) + 1 for k in present), default=0)
            return [values.get(n) if values.get(n) is not ABSENT else None for n in names[:cut]]
        return {**present, **extra}

    members = st.fixed_dictionaries({name: maybe(s) for name, s in fields.items()})
    extras: st.SearchStrategy[dict[str, Any]] = st.just({}) | st.dictionaries(KEYS, JSON,
                                                                              max_size=1)
    return st.builds(build, members, st.booleans(), extras) | maybe(JSON)


def no_params() -> st.SearchStrategy[Any]:
    return st.sampled_from([ABSENT, {}, []]) | JSON


def describe_params() -> st.SearchStrategy[Any]:
    return by_name_or_position("describe", {"actor_id": st.sampled_from(ACTOR_IDS) | TEXT | JSON})


def cancel_params() -> st.SearchStrategy[Any]:
    return by_name_or_position("cancel", {"request_id": IDS})


def process_params() -> st.SearchStrategy[Any]:
    """Mostly runnable calls of the example actors, with every part sometimes wrong."""
    payloads = (st.builds(lambda v: {"input": v}, NUMBERS | JSON)
                | st.builds(lambda v: {"value": v}, NUMBERS | JSON)
                | st.builds(lambda v: {"count": v}, st.integers(-2, 40) | st.sampled_from(
                    [3.0, 1001, True]) | JSON)
                | st.builds(lambda v: {"order": v}, JSON | st.just(
                    {"id": "A-1", "lines": [{"sku": "pen", "quantity": 2, "unit_price": 1.5}]}))
                | OBJECTS)
    states = (st.fixed_dictionaries({"count": st.integers(-2, 10**6) | JSON}) | OBJECTS)
    configs: st.SearchStrategy[Any] = (st.just({}) | st.builds(lambda f: {"factor": f},
                                                                NUMBERS | JSON) | OBJECTS | JSON)
    fields = {"actor_id": st.sampled_from(ACTOR_IDS[:7]) | st.sampled_from(ACTOR_IDS) | JSON,
              "payload": payloads | JSON, "config": configs, "state": states | JSON,
              "timestamp": NUMBERS | JSON}
    return by_name_or_position("process", fields)


def load_paths(root: Path, outside: Path) -> st.SearchStrategy[str]:
    """Paths inside and outside the allowed root, spelled many ways, and random text."""
    inside = [root / p for p in (
        "good/fuzz_doubler.yaml", "good/fuzz_twin.yml", "good/fuzz_doubler.py",
        "good/fuzz_twin.py", "good/fuzz_doubler.js", "broken/syntax.yaml",
        "broken/unknown_key.yaml", "broken/escape.yaml", "broken/absolute.yaml",
        "broken/linked.yaml", "broken/linked.py", "broken/no_process.yaml",
        "links/manifest_out.yaml", "links/dir_out/secret.yaml", "links/dir_out/secret.py",
        "links/loop.yaml", "notes.txt", "good", "missing.yaml", "good/.yaml")]
    elsewhere = [outside / "secret.yaml", outside / "secret.py", outside / "secret.json",
                 Path("/etc/passwd"), Path("/proc/self/environ"), Path("/dev/zero"),
                 Path("manifests/doubler/doubler.yaml"), root, Path("/")]
    bases = st.sampled_from([str(p) for p in inside + elsewhere])
    spelled = st.builds(_spell, bases, st.sampled_from(_SPELLINGS), st.just(root))
    no_nul = st.characters(exclude_characters="\x00")
    return (spelled | st.text(alphabet=no_nul, max_size=30)
            | st.builds(lambda t: f"{root}/{t}", st.text(alphabet=no_nul, max_size=20)))


_SPELLINGS = ("as is", "relative", "dot", "double slash", "up and down", "trailing slash",
              "upper suffix", "file url", "long")


def _spell(path: str, how: str, root: Path) -> str:
    """One way of writing ``path`` (the server must resolve every one the same way)."""
    head, _, tail = path.rpartition("/")
    spelled = {
        "as is": path,
        "relative": os.path.relpath(path),
        "dot": f"{head}/./{tail}",
        "double slash": f"{head}//{tail}",
        "up and down": f"{root}/good/../../{os.path.relpath(path, root.parent)}",
        "trailing slash": f"{path}/",
        "upper suffix": path.upper() if "." not in tail else f"{path[:-4]}{path[-4:].upper()}",
        "file url": f"file://{path}",
        # a script's name too long is a known bug (test_unusable_load_path_is_not_found)
        "long": path if Path(tail).suffix in SCRIPT_SUFFIXES else f"{head}/{'x' * 300}/../{tail}",
    }
    return spelled[how]


def load_params(root: Path, outside: Path) -> st.SearchStrategy[Any]:
    return by_name_or_position("load", {"file_path": load_paths(root, outside) | JSON})


def encode(message: Any, style: str) -> str | bytes:
    """A message as a frame: compact, spaced, non-ASCII kept, or as UTF-8 bytes.

    A lone surrogate cannot be written as UTF-8: such a message stays escaped (ASCII).
    """
    if style in ("binary", "unicode"):
        text = json.dumps(message, ensure_ascii=False)
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(message)
            data = text.encode("ascii")
        return data if style == "binary" else text
    return json.dumps(message, separators=(",", ":") if style == "compact" else None)


STYLES = st.sampled_from(["compact", "spaced", "unicode", "binary"])


def frames(message: st.SearchStrategy[Any]) -> st.SearchStrategy[str | bytes]:
    return st.builds(encode, message, STYLES)


@st.composite
def mangled(draw: st.DrawFn) -> str:
    """Almost JSON: a request's text with a slice cut out or junk put in."""
    text = json.dumps(draw(messages()))
    start = draw(st.integers(0, len(text)))
    end = draw(st.integers(start, len(text)))
    junk = draw(st.sampled_from(["", "{", "]", '"', ",", "\\", "NaN", "Infinity", "1e999",
                                 "\\ud800", "//", "\x00"]))
    return text[:start] + junk + text[end:]


@st.composite
def broken_utf8(draw: st.DrawFn) -> bytes:
    """A request's UTF-8 with invalid bytes put in (lone continuation, overlong, surrogate)."""
    data = json.dumps(draw(messages())).encode("utf-8")
    at = draw(st.integers(0, len(data)))
    bad = draw(st.sampled_from([b"\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                                b"\xe2\x82", b"\xef\xbb\xbf"]))
    return data[:at] + bad + data[at:]
