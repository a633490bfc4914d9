// Work that goes on after the call returned, hidden from the in-sandbox reset.
// arg "interval": an unref'd interval burning CPU (no handle keeps the loop alive).
// arg "worker": a worker thread spinning for ever, unref'd.
// arg "flood": an unref'd timer that floods raw stderr once the call is over.
// arg "promise": an unref'd timers/promises timer left pending: it goes on in a later call.
// arg "look": what this call finds of earlier ones.
const fs = require('fs');
const { Worker } = require('worker_threads');

const earlier = [];

function burn() {
    const end = Date.now() + 4;
    while (Date.now() < end) { /* spin */ }
}

async function process(context) {
    if (context.getInput('mode') === 'benign') return { ok: true };
    const arg = context.getInput('arg');
    if (arg === 'look') return { tmp: fs.readdirSync('/tmp').sort(), same_worker: earlier.length > 0 };
    earlier.push(arg);
    if (arg === 'interval') {
        setInterval(burn, 5).unref();
    } else if (arg === 'promise') {
        require('timers/promises').setTimeout(50, null, { ref: false }).then(() => { earlier.push('late'); });
    } else if (arg === 'worker') {
        new Worker('for (;;) {}', { eval: true }).unref();
    } else {
        const line = 'y'.repeat(1 << 20) + '\n';
        setTimeout(() => {
            for (let i = 0; i < 400; i += 1) {
                try { fs.writeSync(2, line); } catch (err) { return; }
            }
        }, 300).unref();
    }
    return { armed: true };
}

module.exports = { process };
