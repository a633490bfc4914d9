"""Looks around the sandbox and reports what it could reach; payload "mode" picks the probe."""

import os
import socket
import subprocess
import sys


def attempt(action):
    """"ok" when ``action`` worked, else the exception's type and message."""
    try:
        action()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def read(path):
    with open(path, "rb") as file:
        return file.read()


def write(path):
    with open(path, "w") as file:
        file.write("x")


def connect(host, port):
    with socket.socket() as sock:
        sock.settimeout(2)
        sock.connect((host, port))


def files(context):
    paths = ["/etc/shadow", "/etc/passwd", "/root", "/home", context.get_input("host_file")]
    found = {path: attempt(lambda p=path: read(p) if os.path.isfile(p) else os.listdir(p))
             for path in paths}
    return {"read": found, "root": sorted(os.listdir("/"))}


def environment(context):
    return {"environ": dict(os.environ), "proc1": read("/proc/1/environ").decode(),
            "self": read("/proc/self/environ").decode()}


def writes(context):
    paths = ["/actor/new", "/new", "/usr/new", "/etc/new", "/dev/new", "/dev/shm/new",
             "/dev/pts/new", "/tmp/new"]
    return {path: attempt(lambda p=path: write(p)) for path in paths}


def terminals(context):
    return {"openpty": attempt(os.openpty), "ptmx": attempt(lambda: read("/dev/ptmx")),
            "pts": sorted(os.listdir("/dev/pts"))}


def network(context):
    targets = [("127.0.0.1", context.get_input("port")), ("1.1.1.1", 53)]
    if context.get_input("local_only"):
        targets = targets[:1]
    return {f"{host}:{port}": attempt(lambda h=host, p=port: connect(h, p))
            for host, port in targets}


def leave_traces(context):
    os.makedirs("/tmp/dir/sub")
    write("/tmp/dir/sub/secret")
    os.chmod("/tmp/dir", 0)  # a script may lock its own files away from the wipe
    subprocess.Popen(["/usr/bin/sleep", "60"])  # a stray process that outlives the call
    return sorted(os.listdir("/tmp"))


def look(context):
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    return {"tmp": sorted(os.listdir("/tmp")), "pids": pids, "me": os.getpid(),
            "uid": os.getuid()}


def hide_in_tmp(context):
    """Switch the harness's /tmp wipe off (it is this process's __main__), then leave a file
    there: only the host's own check between calls can find it."""
    sys.modules["__main__"].TmpWatch.wipe = lambda self: None
    write("/tmp/hidden")
    return "hidden"


def raw_writes(context):
    print("printed")
    os.write(1, b"raw out\n")
    os.write(2, b"raw err\n")
    subprocess.run(["/usr/bin/echo", "from a child"], check=True)
    return "done"


PROBES = {"files": files, "environment": environment, "writes": writes, "network": network,
          "leave_traces": leave_traces, "look": look, "raw_writes": raw_writes,
          "hide_in_tmp": hide_in_tmp, "terminals": terminals}


def process(context):
    return PROBES[context.get_input("mode")](context)
