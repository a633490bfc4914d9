"""Work that goes on after the call returned, hidden from the in-sandbox reset.

The harness is this process's __main__, so a script can patch it: no lingering report,
no stray-process kill, no /tmp wipe. Whatever the harness says, the host must see it.

arg "itimer": a SIGALRM interval timer whose handler burns CPU (no thread to report).
arg "patch": patch the harness's reset away, then leave a spinning thread, a sleeping
child and a /tmp file for the next caller.
arg "flood": patch, then a thread floods the channel and raw stderr once the call is over.
arg "sleeper": patch, then leave a thread that only sleeps (no CPU, no byte): it would
wake up inside a later call, with that caller's data.
arg "quiet": patch, then leave only a sleeping child and a /tmp file (no CPU, no byte).
arg "late_ready": patch the harness to answer first, then compute for 1.5 s of CPU (past
its timeout_s, out of the call's clock) before its ready.
arg "look": what this call finds of earlier ones.
"""

import os
import signal
import sys
import threading
import time

_earlier = []


def _burn(signum, frame):
    end = time.process_time() + 0.004
    while time.process_time() < end:
        pass


def _patch_harness():
    harness = sys.modules["__main__"]
    harness.Threads.count = lambda self: 1
    harness.kill_others = lambda: None
    harness.TmpWatch.wipe = lambda self: None


def _spin():
    while True:
        pass


def _flood(channel_send):
    time.sleep(0.3)  # the call is over by now
    line = "y" * (1 << 20)
    for _ in range(400):  # 400 MiB if nobody stops it
        try:
            channel_send({"type": "output", "port": "output", "data": line})
            os.write(2, line.encode() + b"\n")
        except OSError:
            return


def _answer_then_compute(self, request):
    reply = self.run(request)
    for stream in self.streams:
        stream.end()
    self.channel.send_bytes(reply)
    end = time.process_time() + 1.5
    while time.process_time() < end:
        pass
    self.clean()
    self.channel.send_bytes(sys.modules["__main__"].READY)


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    arg = context.get_input("arg")
    if arg == "look":
        return {"tmp": sorted(os.listdir("/tmp")), "same_worker": bool(_earlier)}
    _earlier.append(arg)
    if arg == "itimer":
        signal.signal(signal.SIGALRM, _burn)
        signal.setitimer(signal.ITIMER_REAL, 0.005, 0.005)
        return {"armed": True}
    if arg == "late_ready":
        sys.modules["__main__"].Harness.call = _answer_then_compute
        return {"armed": True}
    _patch_harness()
    if arg == "sleeper":
        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
        return {"armed": True}
    if arg in ("patch", "quiet"):
        if arg == "patch":
            threading.Thread(target=_spin, daemon=True).start()
        if os.fork() == 0:
            os.setsid()
            time.sleep(3600)
            os._exit(0)
        with open("/tmp/left-for-the-next-caller", "w") as f:
            f.write("secret of an earlier call")
        return {"armed": True}
    threading.Thread(target=_flood, args=(context._channel.send,), daemon=True).start()
    return {"armed": True}
