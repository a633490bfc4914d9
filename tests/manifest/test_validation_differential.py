"""Random schemas and values: the service's verdict is the reference library's.

The official suite has one or two tests per rule; the verdict here comes from two engines
(jsonschema-rs decides, jsonschema explains and has the last word), so what needs checking
is every keyword in combination with the others, and the values where the engines could
part: 1 and 1.0 and true, -0.0, integers past 2**53 and 2**64, astral characters, lone
surrogates, empty keys. Each seed builds schemas of up to three levels from every keyword
of its draft and checks values against them; a difference names the seed, the draft, the
schema and the value.

Patterns stay where ECMA-262 and Python's ``re`` agree (no ``\\w``, ``\\d``, ``\\b``):
the service reads patterns as ECMA-262 and jsonschema as Python (tests/manifest/test_ecma.py
covers that difference on its own).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from jsonschema.protocols import Validator

from service.manifest.validation import SchemaValidator

SEEDS = range(16)
SCHEMAS_PER_SEED = 60
VALUES_PER_SCHEMA = 15
DRAFTS: dict[str, type[Validator]] = {
    "2020-12": jsonschema.Draft202012Validator,
    "2019-09": jsonschema.Draft201909Validator,
    "7": jsonschema.Draft7Validator,
    "6": jsonschema.Draft6Validator,
    "4": jsonschema.Draft4Validator,
}
MODERN = {"2020-12", "2019-09"}
SCALARS = [0, 1, 1.0, -0.0, 1.5, -1, 2, 3, 2**53, 2**53 + 1, 2**63, 2**64, 10**30, 1e308,
           1e-300, 0.1, 0.3, 3.0, 7.5, -2.5, True, False, None, "", "a", "ab", "abc", "é",
           "😀", "a😀", "\u0000", "1", "true", "aaaaaaaaaa", "B", "\ud800"]
NUMBERS = [0, 1, 2, 3, 0.5, 1.5, 2.5, 0.1, 0.01, 1e-5, 1e308, 2**53, 2**64, -1, -1.5, 10, 7]
DIVISORS = [0.5, 1, 2, 3, 0.1, 0.01, 1e-5, 1.5, 2**64, 7]
TYPES = ["string", "number", "integer", "object", "array", "boolean", "null"]
NAMES = ["a", "b", "c", "", "aa", "1", "é"]
PATTERNS = ["^a", "b", "^$", "^[a-c]*$", "é", "^.$", "^[^a]", "a{2}"]


class Schemas:
    """A random schema generator for one draft; ``$ref`` targets go to the root's $defs."""

    def __init__(self, rnd: random.Random, draft: str) -> None:
        self.rnd = rnd
        self.draft = draft
        self.defs: dict[str, Any] = {}

    def root(self) -> Any:
        schema = self.schema(0)
        if not self.defs:
            return schema
        if not isinstance(schema, dict):
            schema = {"allOf": [schema]}
        return {**schema, "$defs": self.defs}

    def schema(self, depth: int) -> Any:
        rnd = self.rnd
        if depth > 2 or rnd.random() < 0.15:
            return rnd.choice([True, False]) if self.draft != "4" and rnd.random() < 0.3 else {}
        schema: dict[str, Any] = {}
        for _ in range(rnd.randint(1, 3)):
            name = rnd.choice(list(KEYWORDS))
            schema.update(KEYWORDS[name](self, name, depth + 1))
        return schema

    def value(self, depth: int = 0) -> Any:
        rnd = self.rnd
        kind = rnd.random()
        if depth > 2 or kind < 0.5:
            return rnd.choice(SCALARS)
        if kind < 0.75:
            return [self.value(depth + 1) for _ in range(rnd.randint(0, 4))]
        return {rnd.choice(NAMES): self.value(depth + 1) for _ in range(rnd.randint(0, 4))}

    def ref(self, depth: int) -> dict[str, Any]:
        if self.draft not in MODERN:  # beside $ref, the older drafts ignore every keyword
            return {}
        target = f"d{len(self.defs)}"
        self.defs[target] = {}  # taken before the target's own refs are made
        self.defs[target] = self.schema(depth)
        return {"$ref": f"#/$defs/{target}"}


# Each keyword with a random value, as the generator's draft spells it ({}: it has none).
Keyword = Callable[[Schemas, str, int], dict[str, Any]]


def _exclusive(g: Schemas, name: str, depth: int) -> dict[str, Any]:
    if g.draft == "4":  # a boolean beside minimum / maximum
        return {name[9:].lower(): g.rnd.choice(NUMBERS), name: g.rnd.random() < 0.5}
    return {name: g.rnd.choice(NUMBERS)}


def _enum(g: Schemas, name: str, depth: int) -> dict[str, Any]:
    values = [g.value(2) for _ in range(g.rnd.randint(1, 3))]
    return {name: values if name == "enum" else values[0]}


def _items(g: Schemas, name: str, depth: int) -> dict[str, Any]:
    if g.draft not in MODERN and g.rnd.random() < 0.3:
        return {name: [g.schema(depth) for _ in range(2)], "additionalItems": g.schema(depth)}
    return {name: g.schema(depth)}


def _if(g: Schemas, name: str, depth: int) -> dict[str, Any]:
    branches = {"then": g.schema(depth), "else": g.schema(depth)}
    return {"if": g.schema(depth), **{k: v for k, v in branches.items() if g.rnd.random() < 0.7}}


def _dependencies(g: Schemas, name: str, depth: int) -> dict[str, Any]:
    names = g.rnd.sample(["b", "c"], g.rnd.randint(1, 2))
    if g.draft in MODERN:
        return {"dependentRequired": {"a": names}, "dependentSchemas": {"b": g.schema(depth)}}
    return {name: {"a": names, "b": g.schema(depth)}}


def _since(drafts: set[str], keyword: Keyword) -> Keyword:
    """``keyword`` in ``drafts`` only."""
    return lambda g, name, depth: keyword(g, name, depth) if g.draft in drafts else {}


def _one(choices: list[Any]) -> Keyword:
    return lambda g, name, depth: {name: g.rnd.choice(choices)}


def _sub(g: Schemas, name: str, depth: int) -> dict[str, Any]:
    return {name: g.schema(depth)}


def _subs(g: Schemas, name: str, depth: int) -> dict[str, Any]:
    return {name: [g.schema(depth) for _ in range(g.rnd.randint(1, 3))]}


def _sub_or_false(g: Schemas, name: str, depth: int) -> dict[str, Any]:
    return {name: g.schema(depth) if g.rnd.random() < 0.6 else False}


def _count(g: Schemas, name: str, depth: int) -> dict[str, Any]:
    return {name: g.rnd.randint(0, 3)}


NOT_4 = set(DRAFTS) - {"4"}
KEYWORDS: dict[str, Keyword] = {
    "type": lambda g, name, depth: {name: g.rnd.choice(TYPES) if g.rnd.random() < 0.7
                                    else g.rnd.sample(TYPES, g.rnd.randint(1, 3))},
    "minimum": _one(NUMBERS), "maximum": _one(NUMBERS),
    "exclusiveMinimum": _exclusive, "exclusiveMaximum": _exclusive,
    "multipleOf": _one(DIVISORS),
    **dict.fromkeys(["minLength", "maxLength", "minItems", "maxItems", "minProperties",
                     "maxProperties"], _count),
    "enum": _enum, "const": _since(NOT_4, _enum),
    "uniqueItems": lambda g, name, depth: {name: g.rnd.random() < 0.7},
    "items": _items, "prefixItems": _since({"2020-12"}, _subs),
    "contains": _since(NOT_4, _sub),
    "minContains": _since(MODERN, _count), "maxContains": _since(MODERN, _count),
    "properties": lambda g, name, depth: {name: {n: g.schema(depth) for n in
                                                 g.rnd.sample(NAMES, g.rnd.randint(1, 2))}},
    "patternProperties": lambda g, name, depth: {name: {g.rnd.choice(PATTERNS):
                                                        g.schema(depth)}},
    "additionalProperties": _sub_or_false,
    "required": lambda g, name, depth: {name: g.rnd.sample(
        NAMES[:3], g.rnd.randint(1 if g.draft == "4" else 0, 2))},
    "propertyNames": _since(NOT_4, _sub),
    "allOf": _subs, "anyOf": _subs, "oneOf": _subs, "not": _sub,
    "if": _since(MODERN | {"7"}, _if),
    "dependencies": _dependencies,
    "unevaluatedProperties": _since(MODERN, _sub_or_false),
    "unevaluatedItems": _since(MODERN, _sub_or_false),
    "pattern": _one(PATTERNS),
    "$ref": lambda g, name, depth: g.ref(depth),
}


@pytest.mark.parametrize("seed", SEEDS)
def test_the_verdict_is_the_reference_s(seed: int) -> None:
    rnd = random.Random(seed)
    checked, differences = 0, []
    for _ in range(SCHEMAS_PER_SEED):
        draft = rnd.choice(list(DRAFTS))
        generator = Schemas(rnd, draft)
        schema = generator.root()
        dialect = DRAFTS[draft]
        dialect.check_schema(schema)
        ours, reference = SchemaValidator(schema, dialect), dialect(schema)
        for _ in range(VALUES_PER_SCHEMA):
            value = generator.value()
            errors = ours.errors(value)  # never raises, even where the reference does
            try:
                expected = reference.is_valid(value)
            except TypeError:  # its draft 2019-09 unevaluatedItems, on a boolean items
                continue
            checked += 1
            if (not errors) != expected:
                differences.append(f"draft {draft}: reference says {expected}, errors {errors}"
                                   f"\n  schema {json.dumps(schema)}\n  value {value!r}")
    assert not differences, f"seed {seed}, {len(differences)} of {checked}:\n" + \
        "\n".join(differences[:5])
