// A return value far over output_bytes (8 MiB on one line). Must end -32006 output.
async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    return { blob: "x".repeat(8 << 20) };
}

module.exports = { process };
