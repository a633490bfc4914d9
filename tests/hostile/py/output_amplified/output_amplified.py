"""An output whose JSON decodes to ~25 times its size: one dict, a million times over.

The sandbox holds one dict and a list of references (~10 MB); its JSON is 3.6 MB, within
output_bytes; decoded in the server it is 1.2 million dicts (~150 MB), held until the call
answers. Four such calls at once took the server to 1.5 GB. Refused before it is decoded:
-32006 memory.
"""


async def process(context):
    if context.get_input("mode") == "benign":
        await context.send_output("output", [{}] * 10)
        return {"ok": True}
    await context.send_output("output", [{}] * 1_200_000)
    return {"sent": True}
