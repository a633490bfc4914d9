// Forge lines on the harness channel itself: its fd is on the harness's command line
// (node harness.js IN_FD OUT_FD ...). The modes of py/channel_forge/channel_forge.py.
const fs = require("fs");

function write(fd, data) {
    let offset = 0;
    while (offset < data.length) offset += fs.writeSync(fd, data, offset);
}

function flood(fd, line, seconds) {
    const block = Buffer.from(line.repeat(Math.max(1, Math.floor(65536 / line.length))));
    const end = Date.now() + seconds * 1000;
    while (Date.now() < end) write(fd, block);
}

function sleep(ms) {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    const fd = Number(globalThis.process.argv[3]);
    const how = context.getInput("arg");
    if (how === "state_flood") {
        flood(fd, '{"type":"state","id":"' + "i".repeat(262144) + '"}\n', 2);
    } else if (how === "state_small") {
        flood(fd, '{"type":"state","id":1}\n', 2);
    } else if (how === "nan_output") {
        write(fd, Buffer.from('{"type":"output","port":"output","data":NaN}\n'));
    } else if (how === "inf_result") {
        write(fd, Buffer.from('{"type":"result","return":Infinity,"state":{}}\n'));
        sleep(1000);
    } else if (how === "big_error") {
        write(fd, Buffer.from(JSON.stringify({ type: "error", error_type: "E",
            message: "m".repeat(500000), traceback: "t".repeat(500000) }) + "\n"));
        sleep(1000);
    }
    return { returned: true };
}

module.exports = { process };
