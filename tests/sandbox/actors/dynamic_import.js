#!/usr/bin/env node
// A CommonJS script with a shebang that loads an ES module with import(), as any node
// module may, and declares its process() without exporting it.
async function process(context) {
    const { setTimeout: sleep } = await import('node:timers/promises');
    await sleep(1, null);
    return { slept: true, input: context.getInput('input') };
}
