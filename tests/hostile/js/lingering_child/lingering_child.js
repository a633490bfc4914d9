// A child process that outlives its call, in a reused worker; the next call looks for it.
// arg "spawn": start a detached child that never exits and keeps a heartbeat file fresh in
// /tmp. arg "look" (the next call, same worker): is the child still running? It must not be.
const { spawn } = require("child_process");
const fs = require("fs");
const proc = require("process");

const HEARTBEAT = "/tmp/lingering-heartbeat";
const spawned = [];
const CHILD = `setInterval(() => { try { require("fs").writeFileSync("${HEARTBEAT}", "x"); }
                                    catch (err) {} }, 50);`;

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    if (context.getInput("arg") === "spawn") {
        const child = spawn(proc.execPath, ["-e", CHILD], { detached: true, stdio: "ignore" });
        child.unref();
        spawned.push(child.pid);
        return { spawned: true };
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
    const alive = fs.existsSync(HEARTBEAT) || spawned.some((pid) => fs.existsSync(`/proc/${pid}`));
    return { alive, same_worker: spawned.length > 0 };
}

module.exports = { process };
