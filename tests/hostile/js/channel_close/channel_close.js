// Close every file descriptor, the harness channel among them, then return.
// Must end -32004, never a hang or a crash of the server.
const fs = require("fs");

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    for (const fd of fs.readdirSync("/proc/self/fd").map(Number)) {
        try { fs.closeSync(fd); } catch (err) { /* already gone */ }
    }
    return { ok: true };
}

module.exports = { process };
