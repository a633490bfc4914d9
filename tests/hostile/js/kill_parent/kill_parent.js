// Kill what is above the script: its parent, pid 1, every process, its group.
// The server must survive; the call errors cleanly (-32004) or completes.
// arg: {how: "ppid" | "init" | "all" | "group", host_pid}. Safety: refuses (and the test
// then fails) when the sandbox can see the host's processes, so kill(-1) never hits the host.
const fs = require("fs");
const proc = require("process");

function hostVisible(hostPid) {
    const visible = fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p));
    if (visible.length > 64) return `${visible.length} processes visible`;
    try {
        if (fs.readFileSync(`/proc/${hostPid}/cmdline`).includes("pytest")) {
            return "the host test process is visible";
        }
    } catch (err) { /* not visible: good */ }
    return "";
}

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    const arg = context.getInput("arg");
    const refused = hostVisible(arg.host_pid);
    if (refused) return { signalled: false, refused };
    const target = { ppid: proc.ppid, init: 1, all: -1, group: 0 }[arg.how];
    proc.kill(target, "SIGKILL");
    return { signalled: true };
}

module.exports = { process };
