// Write garbage to every open file descriptor, the harness channel among them.
// Must end -32004, never a hang or a crash of the server.
const fs = require("fs");

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    const garbage = Buffer.from("\x00\xffnot json {{{\n]]\n", "latin1");
    for (const fd of fs.readdirSync("/proc/self/fd").map(Number).sort((a, b) => a - b)) {
        try { fs.writeSync(fd, garbage); } catch (err) { /* not writable */ }
    }
    return { ok: true };
}

module.exports = { process };
