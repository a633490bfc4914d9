// Counts the calls its interpreter has served: 1 every time in a fresh sandbox.
// Payload "linger": "timer" or "immediate" leaves work behind that would run in a later call;
// so do "unref_timeout" and "unref_immediate", which node does not count as keeping it alive.
// "cleared" and "fired" leave nothing: a timer cleared, a timer awaited until it fired.
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
    if (linger === 'cleared') clearTimeout(setTimeout(() => {}, 60000));
    if (linger === 'fired') await new Promise((resolve) => setTimeout(resolve, 5));
    return { calls };
}

module.exports = { process };
