"""Hostile and failing behaviours, one per payload "mode"; each maps to one wire error.

    ok            -> result {"ok": true}
    loop          -> TimeLimitExceeded
    memory        -> ResourceLimitExceeded memory
    fork          -> ResourceLimitExceeded pids (processes)
    fork_quiet    -> ResourceLimitExceeded pids (a bomb that swallows EAGAIN: ends by time)
    threads       -> ResourceLimitExceeded pids (threads)
    flood_output  -> ResourceLimitExceeded output (send_output)
    flood_print   -> ResourceLimitExceeded output (print)
    flood_raw     -> ResourceLimitExceeded output (os.write on fd 1, bypassing sys.stdout)
    flood_empty_raw -> the same, 64 KiB of newlines at a time
    flood_tiny    -> ResourceLimitExceeded output (send_output(0): each costs its envelope)
    flood_empty   -> ResourceLimitExceeded output (print(): empty lines are not free)
    disk          -> ResourceLimitExceeded disk (/tmp full)
    raise         -> ActorFailed ZeroDivisionError, traceback naming this file
    not_json      -> ActorFailed TypeError (the return value is not JSON)
    exit          -> ActorFailed SandboxCrashed (the interpreter is gone)
    garbage       -> ActorFailed ProtocolError (junk written on the private channel)
"""

import os
import threading
import time


def spin():
    while True:
        pass


def divide(a, b):
    return a / b


def fork_forever():
    while True:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)


def fork_quietly_forever():
    while True:
        try:
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
        except OSError:
            pass  # EAGAIN: keep trying, as a real bomb does


def start_threads_forever():
    while True:
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()


def fill_memory():
    hoard = []
    while True:
        hoard.append(b"x" * (1 << 20))


def fill_tmp():
    with open("/tmp/fill", "wb") as file:
        while True:
            file.write(b"x" * (1 << 20))


def flood_output(context):
    while True:
        context.send_output("output", "y" * 1000)


def flood_print():
    while True:
        print("z" * 1000)


def flood_tiny(context):
    while True:
        context.send_output("output", 0)


def flood_empty():
    while True:
        print()


def flood_raw():
    while True:
        os.write(1, b"r" * 1000 + b"\n")


def flood_empty_raw():
    while True:
        os.write(1, b"\n" * 65536)


def garbage():
    os.write(sys_channel_fd(), b"this is not a protocol message\n")
    time.sleep(5)


def sys_channel_fd():
    import sys

    return sys.stdout._channel.out_fd


BEHAVIOURS = {
    "loop": lambda context: spin(),
    "memory": lambda context: fill_memory(),
    "fork": lambda context: fork_forever(),
    "fork_quiet": lambda context: fork_quietly_forever(),
    "threads": lambda context: start_threads_forever(),
    "flood_output": flood_output,
    "flood_print": lambda context: flood_print(),
    "flood_raw": lambda context: flood_raw(),
    "flood_empty_raw": lambda context: flood_empty_raw(),
    "flood_tiny": flood_tiny,
    "flood_empty": lambda context: flood_empty(),
    "disk": lambda context: fill_tmp(),
    "raise": lambda context: divide(1, 0),
    "not_json": lambda context: {"when": object()},
    "exit": lambda context: os._exit(3),
    "garbage": lambda context: garbage(),
}


async def process(context):
    mode = context.get_input("mode", "ok")
    if mode == "ok":
        await context.send_output("output", "fine")
        return {"ok": True}
    return BEHAVIOURS[mode](context)
