// Output flood through console.log / console.error in a loop that never yields.
// Must end -32006 output.
async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    const line = "x".repeat(4096);
    for (;;) {
        console.log(line);
        console.error(line);
    }
}

module.exports = { process };
