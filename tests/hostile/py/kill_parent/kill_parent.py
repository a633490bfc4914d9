"""Kill or signal what is above the script: its parent, pid 1, every process, its group.

The server must survive; the call errors cleanly (-32004) or completes.
arg: {"how": "ppid" | "init" | "all" | "group", "host_pid": the test's pid}.

Safety: kill(-1) / kill(0) in a sandbox that shares the host's pid namespace would hit
the host, so the script refuses (and the test then fails) when it can see the host:
more processes than its pids limit allows, or the test process itself.
"""

import os
import signal


def _host_visible(host_pid):
    visible = [p for p in os.listdir("/proc") if p.isdigit()]
    if len(visible) > 64:
        return f"{len(visible)} processes visible"
    try:
        with open(f"/proc/{host_pid}/cmdline", "rb") as f:
            if b"pytest" in f.read():
                return "the host test process is visible"
    except OSError:
        pass
    return ""


def _target(how):
    return {"ppid": os.getppid(), "init": 1, "all": -1, "group": 0}[how]


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    arg = context.get_input("arg")
    refused = _host_visible(arg["host_pid"])
    if refused:
        return {"signalled": False, "refused": refused}
    os.kill(_target(arg["how"]), signal.SIGKILL)
    return {"signalled": True}
