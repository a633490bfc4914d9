// The module.exports form, with the rest of the JavaScript context API.
async function process(context) {
    await context.sendOutput("output", context.getInput("input", 0) * context.getConfig("factor", 1));
    context.setState("count", context.getState("count", 0) + 1);
    console.log("actor", context.actorId, "at", context.timestamp);
    console.error("to stderr");
    return { payload: context.payload, config: context.config, state: context.state };
}

module.exports = { process };
