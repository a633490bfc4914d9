"""Output flood through the script's stdout/stderr, forever. Must end -32006 output.

arg picks the way: print (default; print() to stdout and stderr), fd (os.write on fd 1,
under sys.stdout), child (a `yes` child process writing to the inherited stdout),
empty (print() of empty lines: many log events carrying no bytes at all), newlines
(1 MiB of bare newlines in one os.write on fd 1: each a log notification of its own).
"""

import os
import subprocess
import sys


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    how = context.get_input("arg", "print")
    line = "x" * 4096
    if how == "child":
        subprocess.Popen(["yes", line]).wait()
    if how == "newlines":
        os.write(1, b"\n" * (1 << 20))
    while True:
        if how == "fd":
            os.write(1, line.encode() + b"\n")
        elif how == "empty":
            print()
        else:
            print(line)
            print(line, file=sys.stderr)
