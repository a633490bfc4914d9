// Read a host file: it must be unreadable, or not the host's file (another sha256).
// arg: {path, host_sha256}; a relative path is taken from this script's folder.
const crypto = require("crypto");
const fs = require("fs");
const path = require("path");

function read(file) {
    if (fs.statSync(file).isDirectory()) return Buffer.from(fs.readdirSync(file).sort().join("\n"));
    return fs.readFileSync(file);
}

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    const arg = context.getInput("arg");
    let data;
    try {
        data = read(path.resolve(__dirname, arg.path));
    } catch (err) {
        return { blocked: true, error: `${err.code}: ${err.message}` };
    }
    const same = crypto.createHash("sha256").update(data).digest("hex") === arg.host_sha256;
    return { blocked: !same, error: same ? "" : "read, but not the host's file",
             head: data.subarray(0, 80).toString() };
}

module.exports = { process };
