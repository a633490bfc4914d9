"""Defines a helper called process only inside a class, and `run` at the top: not enough."""


class Handler:
    async def process(self, context):
        return None


async def run(context):
    return await Handler().process(context)
