// A worker thread that sleeps through its call and wakes between calls, in a reused worker:
// asleep in Atomics.wait it uses no CPU the idle watch would see, and no timer of the main
// thread is left. arg "arm": start it (by require), wait until it runs, unref it, return.
// arg "nested": the same sleeper started by a worker, which it keeps alive. arg "import":
// started through the ESM import of worker_threads. arg "look" (the next call): how often
// did it wake since? The worker must not be reused: the look runs on a fresh one.
// arg "done": the control, a sleeper stopped (and its end awaited) before the call returns:
// the worker is reused, and the look finds no wake.
const SLEEPER = `
const { workerData, parentPort } = require('worker_threads');
const wakes = new Int32Array(workerData);
parentPort.postMessage('asleep');
for (;;) {
    Atomics.wait(wakes, 1, 0, 50);
    Atomics.add(wakes, 0, 1);
}`;
// The outer worker of "nested": starts the sleeper and passes its first word on; the
// sleeper (not unref'd there) keeps it alive.
const NESTED = `
const { Worker, workerData, parentPort } = require('worker_threads');
new Worker(${JSON.stringify(SLEEPER)}, { eval: true, workerData })
    .once('message', (word) => parentPort.postMessage(word));`;

let wakes = null;
let atReturn = 0;

async function start(arg, shared) {
    const { Worker } = arg === 'import' ? await import('worker_threads') : require('worker_threads');
    const worker = new Worker(arg === 'nested' ? NESTED : SLEEPER, { eval: true, workerData: shared });
    await new Promise((resolve, reject) => {
        worker.once('message', resolve);
        worker.once('error', reject);
    });
    if (arg === 'done') await worker.terminate();
    else worker.unref();
}

async function process(context) {
    if (context.getInput('mode') === 'benign') return { ok: true };
    const arg = context.getInput('arg');
    if (arg === 'look') {
        const since = wakes === null ? 0 : Atomics.load(wakes, 0) - atReturn;
        return { same_worker: wakes !== null, wakes_between_calls: since };
    }
    const shared = new SharedArrayBuffer(8);
    await start(arg, shared);
    wakes = new Int32Array(shared);
    atReturn = Atomics.load(wakes, 0);
    return { armed: true };
}

module.exports = { process };
