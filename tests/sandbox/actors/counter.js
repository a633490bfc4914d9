// Counts the calls its interpreter has served: 1 every time in a fresh sandbox.
// Payload "linger": "timer" or "immediate" leaves work behind that would run between calls.
let calls = 0;

function spin() {
    setImmediate(spin);
}

async function process(context) {
    calls += 1;
    const linger = context.getInput('linger');
    if (linger === 'timer') setInterval(() => {}, 5);
    if (linger === 'immediate') setImmediate(spin);
    return { calls };
}

module.exports = { process };
