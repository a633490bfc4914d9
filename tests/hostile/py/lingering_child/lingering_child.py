"""A child process that outlives its call, in a reused worker; the next call looks for it.

arg "spawn": fork a child in its own session that never exits and keeps a heartbeat file
fresh in /tmp. arg "look" (the next call, same worker): is the child still running?
It must not be: a new call must not share its sandbox with leftovers of the last one.
"""

import os
import time

HEARTBEAT = "/tmp/lingering-heartbeat"
_spawned = []


def _child():
    os.setsid()
    while True:
        try:
            with open(HEARTBEAT, "w") as f:
                f.write(str(time.time()))
        except OSError:
            pass
        time.sleep(0.05)


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    if context.get_input("arg") == "spawn":
        pid = os.fork()
        if pid == 0:
            _child()
        _spawned.append(pid)
        return {"spawned": True}
    time.sleep(0.3)  # a live child rewrites its heartbeat every 50 ms
    alive = os.path.exists(HEARTBEAT) or any(os.path.exists(f"/proc/{p}") for p in _spawned)
    return {"alive": alive, "same_worker": bool(_spawned)}
