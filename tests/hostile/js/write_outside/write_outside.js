// Write outside /tmp: into the actor's own folder, /actor, /etc, /usr. Every write must fail.
// arg: the file name to create in each place (the test checks the host afterwards).
const fs = require("fs");
const path = require("path");

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    const name = context.getInput("arg");
    const targets = [path.join(__dirname, name), `/actor/${name}`, `/etc/${name}`,
                     `/usr/${name}`, `/usr/lib/${name}`];
    const written = [];
    const errors = [];
    for (const target of targets) {
        try {
            fs.writeFileSync(target, "hostile");
            written.push(target);
        } catch (err) {
            errors.push(`${target}: ${err.code}`);
        }
    }
    return { blocked: written.length === 0, error: errors.join("; "), written };
}

module.exports = { process };
