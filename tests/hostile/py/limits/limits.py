"""Boundary probes: use a given amount of one resource, then return normally.

mode alloc (arg MiB held at once), sleep (arg seconds), threads / processes (arg: how
many run at once), output (arg {"count", "size"}: count values of size characters).
"""

import os
import threading
import time


def _alloc(mb):
    chunks = [b"x" * (1 << 20) for _ in range(mb)]
    return {"held_mb": len(chunks)}


def _threads(n):
    gate = threading.Event()
    threads = [threading.Thread(target=gate.wait) for _ in range(n)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    return {"ran": n}


def _processes(n):
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            time.sleep(0.3)
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    return {"ran": n}


async def _output(context, count, size):
    for _ in range(count):
        await context.send_output("output", "x" * size)
    return {"sent": count}


async def process(context):
    mode, arg = context.get_input("mode"), context.get_input("arg")
    if mode == "alloc":
        return _alloc(arg)
    if mode == "sleep":
        time.sleep(arg)
        return {"slept": arg}
    if mode == "threads":
        return _threads(arg)
    if mode == "processes":
        return _processes(arg)
    if mode == "output":
        return await _output(context, arg["count"], arg["size"])
    return {"ok": True}
