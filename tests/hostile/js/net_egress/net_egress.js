// Network egress from an actor with network: false. Must be blocked inside the script.
// arg: tcp (connect to the public IP literal 1.1.1.1:80), dns (lookup "example.com"),
// or {loopback: port} (a listener the test runs on the host's 127.0.0.1).
// Safety: tcp and dns are attempted only when the sandbox sees no route and no
// interface but lo, so a sandbox with the host's network never sends anything out.
const dns = require("dns");
const fs = require("fs");
const net = require("net");

function visibleNetwork() {
    const routes = fs.readFileSync("/proc/net/route", "utf8").trim().split("\n").slice(1);
    const devs = fs.readFileSync("/proc/net/dev", "utf8").trim().split("\n").slice(2)
        .map((line) => line.split(":")[0].trim()).filter((d) => d !== "lo");
    return routes.length || devs.length ? `routes=${routes} devices=${devs}` : "";
}

function connect(host, port) {
    return new Promise((resolve, reject) => {
        const socket = net.connect({ host, port, timeout: 1000 });
        socket.on("connect", () => { socket.destroy(); resolve(); });
        socket.on("timeout", () => { socket.destroy(); reject(new Error("ETIMEDOUT")); });
        socket.on("error", reject);
    });
}

async function attempt(kind) {
    if (typeof kind === "object") return connect("127.0.0.1", kind.loopback);
    const seen = visibleNetwork();
    if (seen) return { notIsolated: seen };
    if (kind === "tcp") return connect("1.1.1.1", 80);
    return dns.promises.lookup("example.com");
}

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    try {
        const done = await attempt(context.getInput("arg"));
        if (done && done.notIsolated) {
            return { blocked: false, error: `network visible, not attempted: ${done.notIsolated}` };
        }
    } catch (err) {
        return { blocked: true, error: `${err.code || err.name}: ${err.message}` };
    }
    return { blocked: false, error: "" };
}

module.exports = { process };
