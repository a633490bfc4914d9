"""Reports which kernel it runs on and what that kernel lets it do (the gVisor tests)."""

import os
import resource


def process(context):
    with open("/proc/version") as file:
        version = file.read().strip()
    return {"version": version, "release": os.uname().release, "uid": os.getuid(),
            "pid": os.getpid(), "nproc": resource.getrlimit(resource.RLIMIT_NPROC)[0],
            "fsize": resource.getrlimit(resource.RLIMIT_FSIZE)[0],
            "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}
