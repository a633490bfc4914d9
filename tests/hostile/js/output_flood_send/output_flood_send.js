// Output flood through sendOutput: 4 KiB values, forever. Must end -32006 output.
async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    const chunk = "x".repeat(4096);
    for (;;) await context.sendOutput("output", chunk);
}

module.exports = { process };
