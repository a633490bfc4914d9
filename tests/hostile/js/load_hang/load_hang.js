// Spin at load, before any call: top-level code runs against the actor's timeout_s (see
// py/load_hang/load_hang.py). Every load is the attack, the benign call's too.
while (true) { /* spin */ }

async function process(context) {
    return { ok: true };
}

module.exports = { process };
