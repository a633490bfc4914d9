"""A busy loop that never returns. Must end -32005."""


def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    while True:
        pass
