"""Output flood through send_output: 4 KiB values, forever. Must end -32006 output."""


async def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    chunk = "x" * 4096
    while True:
        await context.send_output("output", chunk)
