// Crash node (and the harness with it), or stop it.
// arg crash: process.abort(); must end -32004. arg stop: SIGSTOP itself; a stopped sandbox
// must still end (-32005), or, where the harness is its namespace's init and so immune to
// its own signals, the call completes.
const proc = require("process");

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    if (context.getInput("arg") === "stop") {
        proc.kill(proc.pid, "SIGSTOP");
        await new Promise((resolve) => setTimeout(resolve, 100));
        return { stopped: false };
    }
    proc.abort();
    return { survived: true };
}

module.exports = { process };
