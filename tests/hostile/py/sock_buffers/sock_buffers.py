"""Socket buffers are kernel memory: queue data on loopback TCP connections whose far end
never reads (the sandbox's own network namespace), and keep them open after the call.

Without TCP buffers charged to the sandbox's memory limit, each connection holds several
MB of the host's memory (its send and receive buffers), far past memory_mb, until the
worker goes. Returns whether what the kernel took stayed within twice memory_mb.
"""

import socket
import time

CONNECTIONS = 100
LIMIT = 2 * 64 << 20
_kept = []


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(CONNECTIONS)
    chunk = b"x" * 65536
    queued = 0
    deadline = time.monotonic() + 3
    for _ in range(CONNECTIONS):
        sender = socket.create_connection(listener.getsockname())
        receiver, _ = listener.accept()
        sender.setblocking(False)
        _kept.append((sender, receiver))
        while time.monotonic() < deadline:
            try:
                queued += sender.send(chunk)
            except (BlockingIOError, OSError):
                break
    return {"within_limit": queued < LIMIT, "queued_mb": queued >> 20}
