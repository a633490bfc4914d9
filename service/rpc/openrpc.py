"""The OpenRPC document (schemas/openrpc.json): what rpc.discover returns and params obey."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

OPENRPC_PATH = Path(__file__).resolve().parents[2] / "schemas" / "openrpc.json"
_LOCAL_REF = "#/"


def load_openrpc(path: Path = OPENRPC_PATH) -> dict[str, Any]:
    """Read the OpenRPC document."""
    with path.open(encoding="utf-8") as f:
        doc: dict[str, Any] = json.load(f)
    return doc


def method_entry(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """The Method object named ``name``; KeyError when the document has none."""
    for method in doc["methods"]:
        if method["name"] == name:
            return dict(method)
    raise KeyError(f"method {name!r} is not in the OpenRPC document")


def params_schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """The JSON Schema of a method's params as an object; ``properties`` keep positional order."""
    params = method_entry(doc, name)["params"]
    return {
        "type": "object",
        "properties": {p["name"]: inline_refs(p["schema"], doc) for p in params},
        "required": [p["name"] for p in params if p.get("required", False)],
        "additionalProperties": False,
    }


def result_schema(doc: dict[str, Any], name: str) -> Any:
    """The JSON Schema of a method's result, with the document's own $refs inlined."""
    return inline_refs(method_entry(doc, name)["result"]["schema"], doc)


def inline_refs(node: Any, doc: dict[str, Any]) -> Any:
    """Replace ``{"$ref": "#/..."}`` by its target (the document has no recursive schemas)."""
    if isinstance(node, list):
        return [inline_refs(item, doc) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith(_LOCAL_REF):
        target: Any = doc
        for part in ref[len(_LOCAL_REF):].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return inline_refs(copy.deepcopy(target), doc)
    return {key: inline_refs(value, doc) for key, value in node.items()}
