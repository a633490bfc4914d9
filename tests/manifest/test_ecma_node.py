"""Patterns against a real ECMA-262 engine: node's RegExp with the u flag decides, for
random patterns and texts, whether a pattern is valid and what it matches."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from typing import Any

import pytest
import re2

from service.manifest import ecma

NODE = shutil.which("node")
ORACLE = """
const lines = require('fs').readFileSync(0, 'utf8').split('\\n').filter(Boolean);
for (const line of lines) {
  const [pattern, texts] = JSON.parse(line);
  let re = null;
  try { re = new RegExp(pattern, 'u'); } catch (err) { /* a SyntaxError: null */ }
  console.log(JSON.stringify(re && texts.map((t) => re.test(t))));
}
"""
# Atoms of the grammar, Annex B's leniencies left out (node refuses them with the u flag),
# and so are backreferences (ECMA-262 clears a repeated group's captures at each
# iteration, the engines here do not) and modifiers (node 20 lacks them).
ATOMS = ["a", "b", "\u00e9", "\U0001f600", ".", r"\d", r"\D", r"\w", r"\W", r"\s", r"\S", r"\b",
         r"\B", "^", "$", r"\n", r"\r", r"\t", r"\u00e9", r"\u{1F600}", r"\x41", r"\cJ", r"\0",
         r"\.", r"\/", "[a-c]", "[^a]", r"[\d\s]", r"[^\S]", r"[\w-]", "[]", "[^]",
         "[\u00e9-\u00fc]", r"\p{L}", r"\P{L}", r"\p{Lu}", r"\p{Nd}", r"[\p{L}\d]", r"\u2028",
         r"\ufeff", " ", "-", r"\p{Letter}", r"\p{Script=Greek}", "\u03b1", r"\u0085", r"\f",
         r"\v", r"[\b]", "a{", "{1}", "*", "(?<n>a)"]
QUANTIFIERS = ["", "", "", "*", "+", "?", "{2}", "{1,3}", "*?", "{0,}", "+?"]
GROUPS = ["(", "(?:", "(?=", "(?!", "(?<=", "(?<!"]
CHARACTERS = ["a", "b", "A", "\u00e9", "\u00c9", "\U0001f600", "1", "\u0663", "\n", "\r", "\u2028",
              "\u00a0", "\u0085", "\ufeff", " ", "\t", "-", "_", "\u03b1", "\x0b", "\x08", "\x00",
              "]", "/", ".", "\u3000", "\u00fc", "{"]


def _pattern(rng: random.Random, depth: int = 0) -> str:
    parts = []
    for _ in range(rng.randrange(1, 5)):
        roll = rng.random()
        if roll < 0.15 and depth < 2:
            parts.append(rng.choice(GROUPS) + _pattern(rng, depth + 1) + ")"
                         + rng.choice(QUANTIFIERS))
        elif roll < 0.2 and depth < 2:
            parts.append(_pattern(rng, depth + 1) + "|" + _pattern(rng, depth + 1))
        else:
            parts.append(rng.choice(ATOMS) + rng.choice(QUANTIFIERS))
    return "".join(parts)


def _cases(seed: int, count: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    patterns = list(dict.fromkeys(_pattern(rng) for _ in range(count)))
    return [(p, ["".join(rng.choice(CHARACTERS) for _ in range(rng.randrange(6)))
                 for _ in range(12)]) for p in patterns]


def _ours(pattern: str, texts: list[str]) -> list[bool] | None:
    try:
        compiled = ecma.compiled(pattern)
    except ecma.PatternError:
        return None
    if isinstance(compiled, re2._Regexp):
        return [compiled.search(t) is not None for t in texts]
    return [compiled.search(t, timeout=5) is not None for t in texts]


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_random_patterns_read_as_node_reads_them() -> None:
    cases = _cases(seed=2026, count=3000)
    lines = "\n".join(json.dumps(case) for case in cases) + "\n"
    answers = subprocess.run([str(NODE), "-e", ORACLE], input=lines, capture_output=True,
                             text=True, check=True, timeout=60).stdout.splitlines()
    differences: list[Any] = []
    for (pattern, texts), answer in zip(cases, answers, strict=True):
        node = json.loads(answer)
        ours = _ours(pattern, texts)
        if ours != node:
            differences.append((pattern, texts, node, ours))
    assert differences == []
