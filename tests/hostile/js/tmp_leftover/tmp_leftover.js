// Leave files behind in one call and look for them in the next (same warm worker).
// arg "write": write a marker in every writable scratch place; "look": report which
// markers are still there; "stealth": write them, then set /tmp's times back to what they
// were (a harness that trusted the folder's mtime would not wipe it). A module variable proves the second call ran in the same worker.
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

function stealth() {
    const before = fs.statSync("/tmp");
    const wrote = write();
    try { // gVisor's /tmp is not the sandbox user's: setting its times is refused there
        fs.utimesSync("/tmp", before.atime, before.mtime);
    } catch (err) {
        return { ...wrote, times_set: false };
    }
    return { ...wrote, times_set: true };
}

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    if (context.getInput("arg") === "write") return write();
    if (context.getInput("arg") === "stealth") return stealth();
    const found = PLACES.filter((p) => fs.existsSync(path.join(p, NAME)));
    return { found, same_worker: wroteHere.length > 0 };
}

module.exports = { process };
