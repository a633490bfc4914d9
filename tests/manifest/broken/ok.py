async def process(context):
    return {"status": "completed"}
