"""Close every file descriptor, the harness channel among them, then return.

Must end -32004 (the harness cannot answer), never a hang or a crash of the server.
"""

import os


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    os.closerange(0, 65536)
    return {"ok": True}
