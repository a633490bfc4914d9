"""Values that are not JSON, returned or sent. Must end -32004.

arg picks the value: set, object, nan (json.dumps would write NaN, which is not JSON),
send_set (a set through send_output).
"""


def _value(kind):
    return {"set": {1, 2}, "object": object(), "nan": float("nan")}[kind]


async def process(context):
    if context.get_input("mode") == "benign":
        return {"ok": True}
    kind = context.get_input("arg")
    if kind == "send_set":
        await context.send_output("output", {1, 2})
        return {"sent": True}
    return {"value": _value(kind)}
