// Look for the server's environment: a canary variable the test sets on the host.
// Searches process.env and every /proc/*/environ this sandbox can read. arg: its name.
const fs = require("fs");
const proc = require("process");

function procHits(name) {
    const hits = [];
    for (const pid of fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
        try {
            if (fs.readFileSync(`/proc/${pid}/environ`).includes(`${name}=`)) {
                hits.push(`/proc/${pid}/environ`);
            }
        } catch (err) { /* gone or not readable */ }
    }
    return hits;
}

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    const name = context.getInput("arg");
    const found = procHits(name).concat(name in proc.env ? ["process.env"] : []);
    return { blocked: found.length === 0, error: "", found };
}

module.exports = { process };
