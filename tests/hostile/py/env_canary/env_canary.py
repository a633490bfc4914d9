"""Look for the server's environment: a canary variable the test sets on the host.

Searches os.environ and every /proc/*/environ this sandbox can read.
arg: the canary variable's name.
"""

import os


def _proc_hits(name):
    needle = name.encode() + b"="
    hits = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read():
                    hits.append(f"/proc/{pid}/environ")
        except OSError:
            pass
    return hits


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    name = context.get_input("arg")
    found = _proc_hits(name) + (["os.environ"] if name in os.environ else [])
    return {"blocked": not found, "error": "", "found": found}
