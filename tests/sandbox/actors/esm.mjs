export async function process(context) {
    await context.sendOutput("output", "esm");
    return { kind: "module" };
}
