"""Counts the calls its interpreter has served: 1 every time in a fresh sandbox."""

CALLS = 0


def process(context):
    global CALLS
    CALLS += 1
    return {"calls": CALLS, "pid": __import__("os").getpid()}
