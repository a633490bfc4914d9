async function process(context) {
    // Get input from a port
    const value = context.getInput("input", 0);
    
    // Process the value
    const result = value * 2;
    
    // Send output to a port (via WebSocket RPC back to host)
    await context.sendOutput("output", result);
    
    return { status: "completed" };
}
