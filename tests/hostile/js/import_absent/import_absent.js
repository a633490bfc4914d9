// Require a module that does not exist. Must end -32004 with type Error.
async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    require("no-such-module-for-hostile-tests");
    return { imported: true };
}

module.exports = { process };
