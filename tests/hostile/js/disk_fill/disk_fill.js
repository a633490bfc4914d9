// Fill /tmp with 1 MiB writes until the disk is full; the error is not caught.
// Must end -32006 disk.
const fs = require("fs");

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    const chunk = Buffer.alloc(1 << 20, 120);
    const fd = fs.openSync("/tmp/fill", "w");
    for (;;) fs.writeSync(fd, chunk);
}

module.exports = { process };
