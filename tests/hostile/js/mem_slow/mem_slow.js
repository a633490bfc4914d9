// Slow growth: keep 1 MiB Buffers, a few milliseconds apart. Must end -32006 memory.
async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    const chunks = [];
    for (;;) {
        chunks.push(Buffer.alloc(1 << 20, 1));
        await new Promise((resolve) => setTimeout(resolve, 2));
    }
}

module.exports = { process };
