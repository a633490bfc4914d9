"""The fast params check of the core agrees with jsonschema on every method's params schema."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from service.manifest.model import schema_errors
from service.rpc.core import flat_params_check
from service.rpc.openrpc import load_openrpc, params_schema

DOC = load_openrpc()
METHODS = [m["name"] for m in DOC["methods"]]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                max_size=3),
    max_leaves=6)
TYPED = {"string": st.text(max_size=5), "number": st.integers() | st.floats(allow_nan=False),
         "object": st.dictionaries(st.text(max_size=3), json_values, max_size=3),
         "null": st.none()}


def params_for(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Params that are valid about half the time: each property usually present and usually
    of its declared type, sometimes anything; sometimes an undeclared one."""
    values = {}
    for name, prop in schema["properties"].items():
        types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
        values[name] = st.one_of(*(TYPED[t] for t in types)) | json_values
    optional = {**values, "extra": json_values}
    return st.fixed_dictionaries({}, optional=optional) | st.fixed_dictionaries(values)


@pytest.mark.parametrize("method", METHODS)
@given(data=st.data())
def test_agrees_with_jsonschema(method: str, data: st.DataObject) -> None:
    schema = params_schema(DOC, method)
    check = flat_params_check(schema)
    assert check is not None  # every method's schema has the flat shape
    params = data.draw(params_for(schema))
    assert check(params) == (schema_errors(Draft202012Validator(schema), params) == [])


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {"type": "number", "minimum": 0}},
     "additionalProperties": False},
    {"type": "object", "properties": {"a": {"type": "number"}}},
    {"type": "object", "properties": {"a": {"type": "decimal"}}, "additionalProperties": False},
    {"type": "object", "properties": {"a": {}}, "additionalProperties": False},
    {"type": "object", "properties": {}, "additionalProperties": False, "minProperties": 1},
])
def test_other_shapes_are_left_to_jsonschema(schema: dict[str, Any]) -> None:
    assert flat_params_check(schema) is None


def test_integer_is_stricter_than_jsonschema() -> None:
    check = flat_params_check({"type": "object", "properties": {"n": {"type": "integer"}},
                               "required": ["n"], "additionalProperties": False})
    assert check is not None
    assert check({"n": 3}) is True
    assert check({"n": 3.0}) is False  # valid for jsonschema, which then decides
    assert check({"n": True}) is False
    assert check({}) is False
