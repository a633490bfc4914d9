"""A return value far over output_bytes (8 MiB on one line). Must end -32006 output."""


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    return {"blob": "x" * (8 << 20)}
