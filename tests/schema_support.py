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
