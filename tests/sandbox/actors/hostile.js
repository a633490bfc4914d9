// Hostile and failing behaviours, one per payload "mode" (see hostile.py for the table).
const fs = require('fs');
const childProcess = require('child_process');

const behaviours = {
  loop: () => { for (;;) { /* spin */ } },
  memory: () => { const hoard = []; for (;;) hoard.push(new Array(1 << 20).fill(7)); },
  fork: async () => {
    for (;;) {
      const child = childProcess.spawn('/usr/bin/sleep', ['30']);
      await new Promise((resolve, reject) => { child.once('spawn', resolve); child.once('error', reject); });
    }
  },
  fork_quiet: async () => { // a bomb that swallows EAGAIN: it ends by the time limit
    for (;;) {
      try {
        childProcess.spawn('/usr/bin/sleep', ['30']).on('error', () => {});
      } catch (err) {
        // EAGAIN: keep trying
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
  },
  flood_output: async (context) => { for (;;) await context.sendOutput('output', 'y'.repeat(1000)); },
  flood_print: () => { for (;;) console.log('z'.repeat(1000)); },
  flood_raw: () => { for (;;) fs.writeSync(1, 'r'.repeat(1000) + '\n'); },
  flood_tiny: async (context) => { for (;;) await context.sendOutput('output', 0); },
  flood_empty: () => { for (;;) console.log(); },
  disk: () => { const fd = fs.openSync('/tmp/fill', 'w'); for (;;) fs.writeSync(fd, Buffer.alloc(1 << 20, 120)); },
  raise: () => { throw new TypeError('bad input'); },
  not_json: () => ({ big: 10n }),
  exit: () => globalThis.process.exit(3), // `process` here is the entrypoint below
  async_throw: () => {
    setTimeout(() => { throw new RangeError('thrown in a timer'); }, 10);
    return new Promise(() => {}); // never settles: only the timer's error ends the call
  },
};

async function process(context) {
  const mode = context.getInput('mode', 'ok');
  if (mode === 'ok') {
    await context.sendOutput('output', 'fine');
    return { ok: true };
  }
  return behaviours[mode](context);
}
