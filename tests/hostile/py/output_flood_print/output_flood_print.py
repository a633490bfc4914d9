"""Output flood through print (stdout and stderr), forever. Must end -32006 output."""

import sys


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    line = "x" * 4096
    while True:
        print(line)
        print(line, file=sys.stderr)
