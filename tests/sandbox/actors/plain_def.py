"""A plain def entrypoint with the whole Python context API."""


def process(context):
    context.send_output("output", context.get_input("input", 0) * context.get_config("factor", 1))
    context.set_state("count", context.get_state("count", 0) + 1)
    print("actor", context.actor_id, "at", context.timestamp)
    return {"payload": context.payload, "config": context.config, "state": context.state}
