// Output flood through sendOutput, forever. Must end -32006 output.
// arg picks the values: big (default; 4 KiB strings) or tiny (the number 0).
async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    const value = context.getInput("arg") === "tiny" ? 0 : "x".repeat(4096);
    for (;;) await context.sendOutput("output", value);
}

module.exports = { process };
