"""A thread that outlives its call, in a reused worker: it keeps spinning between calls,
when no time limit applies. arg "spawn": start it and return; arg "look" (the next call,
same worker): did it run between the calls, and is it still alive? It must not be.
"""

import threading

_ticks = [0]
_at_return = []
_threads = []


def _spin():
    while True:
        _ticks[0] += 1


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    if context.get_input("arg") == "spawn":
        thread = threading.Thread(target=_spin, daemon=True)
        thread.start()
        _threads.append(thread)
        _at_return.append(_ticks[0])
        return {"spawned": True}
    ran_between = bool(_at_return) and _ticks[0] > _at_return[0]
    alive = any(t.is_alive() for t in _threads)
    return {"alive": alive, "ran_between_calls": ran_between, "same_worker": bool(_threads)}
