// A busy loop that never yields. Must end -32005.
async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    for (;;) { /* spin */ }
}

module.exports = { process };
