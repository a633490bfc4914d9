"""Write garbage to every open file descriptor, the harness channel among them.

Must end -32004 (the host sees a broken line protocol), never a hang or a crash of the server.
"""

import contextlib
import os

GARBAGE = b"\x00\xffnot json {{{\n]]\n"


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    for fd in sorted(int(n) for n in os.listdir("/proc/self/fd")):
        with contextlib.suppress(OSError):
            os.write(fd, GARBAGE)
    return {"ok": True}
