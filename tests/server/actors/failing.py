def process(context):
    value = context.get_input("input", 0)
    return value / 0
