async function process(context) {
    const value = context.getInput("input", 0);
    // the right-hand side is missing
    const half = ;
    return { status: "completed", half };
}
