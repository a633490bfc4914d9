"""One huge allocation: 1 GiB, zero-filled (so every page is touched). Must end -32006 memory."""


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    data = bytearray(1 << 30)
    return {"allocated": len(data)}
