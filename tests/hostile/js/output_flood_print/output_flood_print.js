// Output flood through the script's stdout/stderr in a loop that never yields.
// Must end -32006 output. arg picks the way: print (default; console.log and
// console.error), fd (fs.writeSync on fd 1, under console), empty (empty lines),
// newlines (1 MiB of bare newlines in one write on fd 1: each a log notification).
const fs = require("fs");

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    const how = context.getInput("arg", "print");
    const line = "x".repeat(4096);
    if (how === "newlines") fs.writeSync(1, "\n".repeat(1 << 20));
    for (;;) {
        if (how === "fd") {
            fs.writeSync(1, line + "\n");
        } else if (how === "empty") {
            console.log("");
        } else {
            console.log(line);
            console.error(line);
        }
    }
}

module.exports = { process };
