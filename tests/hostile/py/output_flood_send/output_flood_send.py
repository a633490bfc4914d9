"""Output flood through send_output, forever. Must end -32006 output.

arg picks the values: big (default; 4 KiB strings) or tiny (the number 0: a notification
each, almost no bytes of data).
"""


async def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    value = 0 if context.get_input("arg") == "tiny" else "x" * 4096
    while True:
        await context.send_output("output", value)
