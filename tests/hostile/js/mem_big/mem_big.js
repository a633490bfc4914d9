// One huge allocation: a 1 GiB Buffer filled with ones (every page touched).
// Must end -32006 memory.
async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    const data = Buffer.alloc(1 << 30, 1);
    return { allocated: data.length };
}

module.exports = { process };
