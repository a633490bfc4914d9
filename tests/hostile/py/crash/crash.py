"""Crash the interpreter (and the harness with it), or stop it.

arg crash: read address 1 through ctypes, a real segfault; must end -32004.
arg stop: SIGSTOP itself; a stopped sandbox must still end (-32005), or, where the
harness is its namespace's init and so immune to its own signals, the call completes.
"""

import ctypes
import os
import signal


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    if context.get_input("arg") == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
        return {"stopped": False}
    return {"read": ctypes.c_char.from_address(1).value.decode()}
