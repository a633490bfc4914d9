"""Leave the sandbox's cgroups: move into each hierarchy's root group, reach release_agent.

Every attempt must fail. Only this process is moved; release_agent is opened, never written.
"""

import os

ROOT = "/sys/fs/cgroup"


def _attempts():
    pid = str(os.getpid())
    names = sorted(os.listdir(ROOT)) if os.path.isdir(ROOT) else []
    for name in names:
        yield f"{ROOT}/{name}/cgroup.procs", pid
        yield f"{ROOT}/{name}/release_agent", None
    yield f"{ROOT}/cgroup.procs", pid


def _try(path, text):
    fd = os.open(path, os.O_WRONLY)
    try:
        if text is not None:
            os.write(fd, text.encode())
    finally:
        os.close(fd)


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    done, errors = [], []
    for path, text in _attempts():
        try:
            _try(path, text)
            done.append(path)
        except OSError as exc:
            errors.append(f"{path}: {type(exc).__name__}")
    with open("/proc/self/cgroup") as f:
        cgroups = f.read()
    return {"blocked": not done, "error": "; ".join(errors), "done": done, "cgroups": cgroups}
