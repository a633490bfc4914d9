"""Schemas the validation tests share."""

from __future__ import annotations

from typing import Any


def nested_unevaluated(levels: int, applicator: str = "anyOf") -> dict[str, Any]:
    """``levels`` of unevaluatedProperties, each beside an applicator over the level below:
    each level evaluates the ones below it again, so a verdict's cost grows ~2.7x per level."""
    schema: dict[str, Any] = {"type": "object", "properties": {"a": {"type": "integer"}}}
    for level in range(levels):
        schema = {applicator: [schema, {"properties": {f"b{level}": {"type": "string"}}}],
                  "unevaluatedProperties": False}
    return schema


def shared_levels(levels: int, applicator: str = "anyOf", below: str = "") -> dict[str, Any]:
    """``levels`` definitions, each naming the next one twice under ``applicator`` (in place,
    or at the items of an array with ``below="items"``): a location is evaluated 2**levels
    times; a one-character value cost jsonschema-rs 0.4 s at 24 levels, twice that at 25."""
    defs: dict[str, Any] = {f"l{levels}": {"type": "integer"}}
    for level in range(levels):
        ref: dict[str, Any] = {"$ref": f"#/$defs/l{level + 1}"}
        if below:
            ref = {"type": "array", below: ref}
        defs[f"l{level}"] = {applicator: [ref, dict(ref)]}
    return {"$defs": defs, "$ref": "#/$defs/l0"}


# A recursion entered twice at each level: jsonschema-rs's error list evaluates both
# branches at each level of [[...["x"]...]] again (2**16 evaluations for 16 levels: 31 s)
TWICE_RECURSIVE = {"anyOf": [{"type": "array", "items": {"$ref": "#"}},
                             {"type": "array", "items": {"$ref": "#"}, "maxItems": 3},
                             {"type": "integer"}]}


def nested(levels: int, leaf: Any = "x") -> Any:
    """``leaf`` inside ``levels`` arrays of one item."""
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


# Order lines against a pattern: 9000 of them (900 KB) are over the event loop's budget for
# jsonschema-rs, and valid; jsonschema took ~1 s for them.
SKUS = {"type": "array", "items": {"type": "object", "required": ["sku"],
                                   "properties": {"sku": {"type": "string",
                                                          "pattern": "^sku-[0-9]+$"}}}}


def sku_lines(count: int) -> list[dict[str, Any]]:
    return [{"sku": f"sku-{i}", "note": "a line of an order, " * 4} for i in range(count)]
