// What kernel uid 0 could do even without a capability: open global /proc/sys files and
// /proc/sysrq-trigger for writing, chmod the device nodes (host inodes bound into /dev).
// Every attempt must fail. None changes anything where it succeeds (nothing is written, a
// node gets the mode it has): the row proves the power without damaging a vulnerable host.
const fs = require('fs');

const KNOBS = ['/proc/sys/kernel/core_pattern', '/proc/sys/vm/drop_caches',
    '/proc/sys/kernel/sysrq', '/proc/sysrq-trigger'];
const DEVICES = ['/dev/null', '/dev/zero', '/dev/urandom', '/dev/full'];

async function process(context) {
    if (context.getInput('mode') === 'benign') return { ok: true };
    const done = [];
    const errors = [];
    const attempts = [];
    for (const path of KNOBS) attempts.push([`write ${path}`, () => fs.closeSync(fs.openSync(path, 'r+'))]);
    for (const path of DEVICES) {
        attempts.push([`chmod ${path}`, () => fs.chmodSync(path, fs.statSync(path).mode & 0o7777)]);
    }
    for (const [name, attempt] of attempts) {
        try { attempt(); done.push(name); } catch (err) { errors.push(`${name}: ${err.code}`); }
    }
    return { blocked: done.length === 0, done, error: errors.join('; ') };
}

module.exports = { process };
