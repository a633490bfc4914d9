"""Write a protocol line nested 20,000 deep to every fd but 0-2 (the harness channel among them).

Valid JSON, but deeper than any decoder's stack: the host's channel reader once died of the
RecursionError and the call got no answer. Must end -32004, never a hang.
"""

import contextlib
import os

DEPTH = 20_000
LINE = (b'{"type":"result","return":' + b"[" * DEPTH + b"]" * DEPTH + b',"state":{}}\n')


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    for fd in sorted(int(n) for n in os.listdir("/proc/self/fd") if int(n) > 2):
        with contextlib.suppress(OSError):
            os.write(fd, LINE)
    return {"ok": True}
