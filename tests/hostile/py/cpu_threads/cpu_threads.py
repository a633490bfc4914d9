"""Spin every core: threads hashing (hashlib drops the GIL), forever. Must end -32005.

Before spinning forever it reports the CPU it got over half a second (CPU time /
wall time, all threads together) so the test can see the cpus quota at work.
"""

import hashlib
import threading
import time

THREADS = 4


def spin(buf):
    while True:
        hashlib.sha256(buf).digest()


async def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    buf = b"x" * (1 << 20)
    threads = [threading.Thread(target=spin, args=(buf,), daemon=True) for _ in range(THREADS)]
    for t in threads:
        t.start()
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(0.5)
    ratio = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    await context.send_output("output", {"cpu_ratio": round(ratio, 3), "threads": THREADS})
    for t in threads:
        t.join()
