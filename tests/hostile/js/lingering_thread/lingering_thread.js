// Work that outlives its call, in a reused worker: a setImmediate chain keeps spinning
// between calls, when no time limit applies. arg "spawn": start it and return; arg "look"
// (the next call, same worker): did it run between the calls, is it still going? It must not.
let ticks = 0;
let atReturn = null;

function spin() {
    ticks += 1;
    setImmediate(spin);
}

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    if (context.getInput("arg") === "spawn") {
        setImmediate(spin);
        atReturn = ticks;
        return { spawned: true };
    }
    const before = ticks;
    await new Promise((resolve) => setTimeout(resolve, 20));
    return { alive: ticks > before, ran_between_calls: atReturn !== null && before > atReturn,
             same_worker: atReturn !== null };
}

module.exports = { process };
