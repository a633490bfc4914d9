"""Fill /tmp with 1 MiB writes until the disk is full; the error is not caught.

Must end -32006 disk.
"""


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    chunk = b"x" * (1 << 20)
    with open("/tmp/fill", "wb") as f:
        while True:
            f.write(chunk)
            f.flush()
