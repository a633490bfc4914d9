// Boundary probes: use a given amount of one resource, then return normally.
// mode alloc (arg MiB held at once), sleep (arg seconds), threads (arg worker_threads
// running at once), output (arg {count, size}: count values of size characters).
const { Worker } = require("worker_threads");

function alloc(mb) {
    const chunks = [];
    for (let i = 0; i < mb; i++) chunks.push(Buffer.alloc(1 << 20, 1));
    return { held_mb: chunks.length };
}

async function threads(n) {
    const code = "require('worker_threads').parentPort.once('message', () => process.exit(0));"
        + "require('worker_threads').parentPort.postMessage('up');";
    const workers = [];
    const up = [];
    for (let i = 0; i < n; i++) {
        const w = new Worker(code, { eval: true });
        up.push(new Promise((resolve, reject) => { w.once("message", resolve); w.once("error", reject); }));
        workers.push(w);
    }
    await Promise.all(up);
    const exits = workers.map((w) => new Promise((resolve) => w.once("exit", resolve)));
    workers.forEach((w) => w.postMessage("go"));
    await Promise.all(exits);
    return { ran: n };
}

async function process(context) {
    const mode = context.getInput("mode");
    const arg = context.getInput("arg");
    if (mode === "alloc") return alloc(arg);
    if (mode === "sleep") {
        await new Promise((resolve) => setTimeout(resolve, arg * 1000));
        return { slept: arg };
    }
    if (mode === "threads") return threads(arg);
    if (mode === "output") {
        for (let i = 0; i < arg.count; i++) await context.sendOutput("output", "x".repeat(arg.size));
        return { sent: arg.count };
    }
    return { ok: true };
}

module.exports = { process };
