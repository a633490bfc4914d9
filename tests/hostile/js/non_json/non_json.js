// Values that are not JSON, returned or sent. Must end -32004.
// arg picks the value: bigint, function (JSON.stringify would silently drop it),
// send_bigint (a BigInt through sendOutput).
async function process(context) {
    if (context.getInput("mode") === "benign") return { ok: true };
    const kind = context.getInput("arg");
    if (kind === "send_bigint") {
        await context.sendOutput("output", { n: 10n });
        return { sent: true };
    }
    if (kind === "function") return () => 42;
    return { value: 10n };
}

module.exports = { process };
