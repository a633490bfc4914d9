"""Every wire error's CODE, pinned to the protocol's error table (and to our own documents)."""

from __future__ import annotations

import re

import pytest
from server_support import REPO

from service import errors
from service.rpc.openrpc import load_openrpc

SPEC = REPO.parent / "shared" / "spec" / "protocol.md"  # the contract, beside the checkout
DOCS = REPO / "docs" / "protocol.md"

# The spec's table as of protocol version 1, used when the spec file is not on this machine.
LITERAL_TABLE = {
    "parse error": -32700, "invalid request": -32600, "method not found": -32601,
    "invalid params": -32602, "internal error": -32603, "actor not found": -32001,
    "payload invalid": -32002, "output invalid": -32003, "actor failed": -32004,
    "time limit exceeded": -32005, "resource limit exceeded": -32006,
    "manifest invalid": -32007, "busy": -32008, "sandbox unavailable": -32009,
    "cancelled": -32010, "path not allowed or not found": -32011,
}

# Each class, by the meaning the spec gives its code.
MEANINGS = {
    errors.ParseError: "parse error", errors.InvalidRequest: "invalid request",
    errors.MethodNotFound: "method not found", errors.InvalidParams: "invalid params",
    errors.InternalError: "internal error", errors.ActorNotFound: "actor not found",
    errors.PayloadInvalid: "payload invalid", errors.OutputInvalid: "output invalid",
    errors.ActorFailed: "actor failed", errors.TimeLimitExceeded: "time limit exceeded",
    errors.ResourceLimitExceeded: "resource limit exceeded",
    errors.ManifestInvalid: "manifest invalid", errors.Busy: "busy",
    errors.SandboxUnavailable: "sandbox unavailable", errors.Cancelled: "cancelled",
    errors.PathNotAllowed: "path not allowed or not found",
}


def parse_table(text: str) -> dict[str, int]:
    """meaning -> code, from the `| -32001 | actor not found | ...` rows and the
    `Standard: -32700 Parse error (...), -32600 Invalid Request, ...` sentence."""
    table: dict[str, int] = {}
    for code, meaning in re.findall(r"^\|\s*`?(-32\d{3})`?\s*\|\s*([^|]+?)\s*\|", text, re.M):
        table[meaning.split(":")[0].strip().lower()] = int(code)
    standard = re.search(r"Standard:(.*?)\n\n", text, re.S)
    if standard:
        for code, meaning in re.findall(r"(-32\d{3}) ([A-Za-z ]+?)\s*[(,]", standard.group(1)):
            table[meaning.strip().lower()] = int(code)
    return table


def spec_table() -> dict[str, int]:
    return parse_table(SPEC.read_text()) if SPEC.is_file() else LITERAL_TABLE


def test_the_spec_table_parses_to_every_code() -> None:
    assert spec_table() == LITERAL_TABLE


@pytest.mark.parametrize("cls", sorted(MEANINGS, key=lambda c: c.CODE), ids=lambda c: c.__name__)
def test_code_matches_the_spec(cls: type[errors.RpcError]) -> None:
    expected = spec_table()[MEANINGS[cls]]
    assert expected == cls.CODE


def test_every_wire_error_class_is_pinned() -> None:
    classes = {c for c in vars(errors).values() if isinstance(c, type)
               and issubclass(c, errors.RpcError) and c is not errors.RpcError}
    assert classes == set(MEANINGS)


def test_codes_are_unique() -> None:
    codes = [cls.CODE for cls in MEANINGS]
    assert len(codes) == len(set(codes))


def test_openrpc_errors_match_the_classes() -> None:
    documented = load_openrpc()["components"]["errors"]
    by_name = {cls.__name__: cls for cls in MEANINGS}
    assert {name: e["code"] for name, e in documented.items()} == {
        name: by_name[name].CODE for name in documented}
    assert len(documented) == 11  # every server error -32001..-32011


def test_docs_table_matches_the_classes() -> None:
    assert parse_table(DOCS.read_text()) == LITERAL_TABLE
