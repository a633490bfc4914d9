// Counts the calls its interpreter has served: 1 every time in a fresh sandbox.
// Payload "linger": "timer" or "immediate" leaves work behind that would run in a later call;
// so do "unref_timeout" and "unref_immediate", which node does not count as keeping it alive,
// and the unref'd timers of timers/promises ("promise_timeout", "promise_immediate", and
// "esm_promise_timeout" through an ESM import) and of AbortSignal.timeout ("abort_timeout").
// "cleared" and "fired" leave nothing: a timer cleared, a timer awaited until it fired.
const promises = require('timers/promises');

let calls = 0;

function spin() {
    setImmediate(spin);
}

async function process(context) {
    calls += 1;
    const linger = context.getInput('linger');
    if (linger === 'timer') setInterval(() => {}, 5);
    if (linger === 'immediate') setImmediate(spin);
    if (linger === 'unref_timeout') setTimeout(() => {}, 60000).unref();
    if (linger === 'unref_immediate') setImmediate(() => {}).unref();
    if (linger === 'promise_timeout') promises.setTimeout(60000, null, { ref: false });
    if (linger === 'promise_immediate') promises.setImmediate(null, { ref: false });
    if (linger === 'esm_promise_timeout') {
        (await import('node:timers/promises')).setTimeout(60000, null, { ref: false });
    }
    if (linger === 'abort_timeout') AbortSignal.timeout(60000).onabort = () => {};
    if (linger === 'cleared') clearTimeout(setTimeout(() => {}, 60000));
    if (linger === 'fired') await new Promise((resolve) => setTimeout(resolve, 5));
    return { calls };
}

module.exports = { process };
