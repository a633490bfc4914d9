# ruff: noqa: F821  (`actor` is a builtin the harness provides)
"""The origin's Python example as its scripts were written: with an @actor decorator."""


@actor({"name": "doubler", "inports": ["input"], "outports": ["output"]})
async def process(context):
    value = context.get_input("input", 0)
    await context.send_output("output", value * 2)
    n = context.get_state("count", 0)
    context.set_state("count", n + 1)
    factor = context.get_config("factor", 1)
    print("seen", n)
    return {"status": "completed", "factor": factor}
