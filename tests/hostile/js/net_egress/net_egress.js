// Network egress from an actor with network: false. Must be blocked inside the script.
// arg: tcp (connect to the public IP literal 1.1.1.1:80), dns (lookup "example.com"),
// {loopback: port} (a listener the test runs on the host's 127.0.0.1), or {abstract: name}
// (an abstract unix socket the test listens on: those belong to the network namespace).
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

function connect(where) {
    return new Promise((resolve, reject) => {
        const socket = net.connect({ ...where, timeout: 1000 });
        socket.on("connect", () => { socket.destroy(); resolve(); });
        socket.on("timeout", () => { socket.destroy(); reject(new Error("ETIMEDOUT")); });
        socket.on("error", reject);
    });
}

async function attempt(kind) {
    if (typeof kind === "object" && kind.abstract) return connect({ path: `\0${kind.abstract}` });
    if (typeof kind === "object") return connect({ host: "127.0.0.1", port: kind.loopback });
    const seen = visibleNetwork();
    if (seen) return { notIsolated: seen };
    if (kind === "tcp") return connect({ host: "1.1.1.1", port: 80 });
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
