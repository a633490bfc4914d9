// Output that bypasses console: straight to the real stdout/stderr, and from a child process.
const { execFileSync } = require('child_process');

async function process(context) {
  globalThis.process.stdout.write('raw out\n');
  globalThis.process.stderr.write('raw err\n');
  globalThis.process.stdout.write(execFileSync('/usr/bin/echo', ['from a child']));
  return 'done';
}
