// Write a protocol line nested 20,000 deep to every fd but 0-2 (the harness channel among them).
// Valid JSON, but deeper than any decoder's stack: the host's channel reader once died of the
// RecursionError and the call got no answer. Must end -32004, never a hang.
const fs = require("fs");

const DEPTH = 20000;
const LINE = '{"type":"result","return":' + "[".repeat(DEPTH) + "]".repeat(DEPTH)
    + ',"state":{}}\n';

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    const fds = fs.readdirSync("/proc/self/fd").map(Number).filter((fd) => fd > 2);
    for (const fd of fds.sort((a, b) => a - b)) {
        try { fs.writeSync(fd, LINE); } catch (err) { /* not writable */ }
    }
    return { ok: true };
}

module.exports = { process };
