import json

async def process(context):
    # Get input from a port
    value = context.get_input("input", 0)
    
    # Process the value
    result = value * 2
    
    # Send output to a port (via WebSocket RPC back to host)
    await context.send_output("output", result)
    
    return {"status": "completed"}
