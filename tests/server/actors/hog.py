def process(context):
    chunks = []
    for _ in range(context.get_input("megabytes", 0)):
        chunks.append(bytearray(1024 * 1024))
    return len(chunks)
