// Leave files behind in one call and look for them in the next (same warm worker).
// arg "write": write a marker in every writable scratch place; "look": report which
// markers are still there. A module variable proves the second call ran in the same worker.
const fs = require("fs");
const os = require("os");
const path = require("path");

const PLACES = ["/tmp", "/dev/shm", "/var/tmp", os.homedir()];
const NAME = "hostile-leftover";
const wroteHere = [];

function write() {
    for (const place of PLACES) {
        try {
            fs.writeFileSync(path.join(place, NAME), "left over");
            wroteHere.push(place);
        } catch (err) { /* not writable here */ }
    }
    return { wrote_tmp: wroteHere.includes("/tmp"), wrote: wroteHere };
}

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    if (context.getInput("arg") === "write") return write();
    const found = PLACES.filter((p) => fs.existsSync(path.join(p, NAME)));
    return { found, same_worker: wroteHere.length > 0 };
}

module.exports = { process };
