"""Loaded once per worker: a thread that spins for ever starts at load, before any call,
so a warm worker booted by min_warm burns CPU while it waits. The host must see it."""

import threading


def _spin():
    while True:
        pass


threading.Thread(target=_spin, daemon=True).start()


def process(context):
    return {"ok": True}
