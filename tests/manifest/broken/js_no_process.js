// `handle` only appears in a comment and inside another function.
// function handle(context) {}
async function process(context) {
    function handle() { return 1; }
    return { status: handle() };
}
