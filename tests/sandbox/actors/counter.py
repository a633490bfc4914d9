"""Counts the calls its interpreter has served: 1 every time in a fresh sandbox.

Payload "linger": true leaves a spinning thread behind (it would run between calls).
"""

import threading

CALLS = 0


def spin():
    while True:
        pass


def process(context):
    global CALLS
    CALLS += 1
    if context.get_input("linger"):
        threading.Thread(target=spin, daemon=True).start()
    return {"calls": CALLS, "pid": __import__("os").getpid()}
