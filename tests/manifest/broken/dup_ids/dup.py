def process(context):
    return None
