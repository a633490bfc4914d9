"""Slow growth: keep 1 MiB chunks, a few milliseconds apart. Must end -32006 memory."""

import time


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    chunks = []
    while True:
        chunks.append(b"x" * (1 << 20))
        time.sleep(0.002)
