"""Forge lines on the harness channel itself: its fd is on the harness's command line.

    state_flood  `state` requests with 256 KiB ids, never reading the host's replies
                 (the server grew ~210 MB/s, for the whole call): -32004
    state_small  the same with small ids (the server's CPU at 100 %): -32004
    nan_output   an output of NaN on a {type: number} port (was -32603): -32004
    inf_result   a result of Infinity (was -32603, logged as ok): -32004
    big_error    an error of 1 MB, message and traceback, against output_bytes of 64 KiB:
                 -32006 output
"""

import json
import os
import time


def out_fd():
    with open("/proc/self/cmdline", "rb") as cmdline:
        argv = cmdline.read().split(b"\0")
    return int(argv[[a.endswith(b"harness.py") for a in argv].index(True) + 2])


def write(fd, data):
    view = memoryview(data)
    while view:  # a pipe may take a long line in parts
        view = view[os.write(fd, view):]


def flood(fd, line, seconds):
    block = line * max(1, 65536 // len(line))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        write(fd, block)


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    fd, how = out_fd(), context.get_input("arg")
    if how == "state_flood":
        flood(fd, b'{"type":"state","id":"' + b"i" * 262144 + b'"}\n', 2)
    elif how == "state_small":
        flood(fd, b'{"type":"state","id":1}\n', 2)
    elif how == "nan_output":
        write(fd, b'{"type":"output","port":"output","data":NaN}\n')
    elif how == "inf_result":
        write(fd, b'{"type":"result","return":Infinity,"state":{}}\n')
        time.sleep(1)
    elif how == "big_error":
        write(fd, json.dumps({"type": "error", "error_type": "E", "message": "m" * 500_000,
                              "traceback": "t" * 500_000}).encode() + b"\n")
        time.sleep(1)
    return {"returned": True}
