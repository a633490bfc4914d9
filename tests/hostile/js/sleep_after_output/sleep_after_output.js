// Send one output, then wait forever (a timer keeps node alive). Must end -32005,
// the output already delivered.
async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    await context.sendOutput("output", { sent: true });
    await new Promise(() => setInterval(() => {}, 1000));
}

module.exports = { process };
