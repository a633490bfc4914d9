// Loaded once per worker: a worker thread that spins for ever starts at load, before any
// call, so a warm worker booted by min_warm burns CPU while it waits. The host must see it.
const { Worker } = require('worker_threads');

new Worker('for (;;) {}', { eval: true }).unref();

async function process(context) {
    return { ok: true };
}

module.exports = { process };
