// Look for file descriptors the host left open in the sandbox (a leaked directory fd is an
// openat escape, as in runc's CVE-2024-21626). Every open fd must be a pipe, a socket, an
// anonymous inode, or a file the sandbox itself can see. Under gVisor the stdio pipes the host
// hands the sandbox show as host:[N]: harmless unless one is a directory.
const fs = require("fs");

const HARMLESS = ["pipe:", "socket:", "anon_inode:", "/dev/null", "/proc/"];
const HOST_FD = "host:["; // gVisor: a host fd given to the sandbox

function leaked(fd, target) {
    if (target.startsWith(HOST_FD)) return fs.statSync(`/proc/self/fd/${fd}`).isDirectory();
    if (HARMLESS.some((prefix) => target.startsWith(prefix))) return false;
    return !fs.existsSync(target) || fs.statSync(`/proc/self/fd/${fd}`).isDirectory();
}

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    const fds = {};
    for (const fd of fs.readdirSync("/proc/self/fd")) {
        try { fds[fd] = fs.readlinkSync(`/proc/self/fd/${fd}`); } catch (err) { /* gone */ }
    }
    const found = Object.entries(fds).filter(([fd, t]) => leaked(fd, t)).map(([fd, t]) => `${fd} -> ${t}`);
    return { blocked: found.length === 0, error: "", leaked: found, fds: Object.values(fds).sort() };
}

module.exports = { process };
