"""Streams 1..count on the "tick" port; written in the origin style, with @actor."""


# `actor` is provided by the runtime (a no-op kept for origin scripts).
@actor({"inports": ["count"], "outports": ["tick"]})  # noqa: F821
async def process(context):
    count = context.get_input("count", 0)
    for n in range(1, count + 1):
        await context.send_output("tick", n)
    return {"status": "completed", "sent": count}
