"""Read host files: each must be unreadable, or not the host's file (another sha256).

arg: {"path": ..., "host_sha256": ...}; a relative path is taken from this script's
folder (the test plants symlinks there that point out of it).
"""

import hashlib
import os


def _read(path):
    if os.path.isdir(path):
        return "\n".join(sorted(os.listdir(path))).encode()
    with open(path, "rb") as f:
        return f.read()


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    arg = context.get_input("arg")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), arg["path"])
    try:
        data = _read(path)
    except OSError as exc:
        return {"blocked": True, "error": f"{type(exc).__name__}: {exc}"}
    same = hashlib.sha256(data).hexdigest() == arg["host_sha256"]
    return {"blocked": not same, "error": "" if same else "read, but not the host's file",
            "head": data[:80].decode("utf-8", "replace")}
