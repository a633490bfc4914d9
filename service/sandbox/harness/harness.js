'use strict';
// Harness for JavaScript actors; runs INSIDE the sandbox under node 20 (no npm packages).
//
//     node harness.js IN_FD OUT_FD SCRIPT ENTRYPOINT [--own-pidns] [--self-reset]
//
// Says {"type": "loading"} on OUT_FD just before the script's own code runs (the host times
// the script's load from there, against the actor's timeout_s), loads SCRIPT once, says
// {"type": "ready"}, then serves calls read from IN_FD,
// one JSON object per line each way (the protocol of service/sandbox/base.py).
// {"type": "reset"} wipes /tmp (and, with --own-pidns, kills every other process of the
// sandbox's pid namespace) and answers "ready". With --self-reset it does the same by itself
// after each call, before its reply, and sends "ready" unasked in the same write as the
// reply: a round trip saved. The host checks from outside that the reset really happened.
// Never run it outside a sandbox: a reset wipes whatever /tmp it sees, and with
// --own-pidns it kills every process it may signal.
//
// The script may declare a top-level `async function process(context)` with no exports
// (as in the origin README), or export it with `module.exports = { process }`,
// `exports.process = ...`, or `export async function process` in an .mjs file.

const fs = require('fs');
const path = require('path');
const { StringDecoder } = require('string_decoder');
const util = require('util');
const { Console } = require('console');
const Module = require('module');
const { pathToFileURL } = require('url');

const ERRNO_DISK = new Set(['ENOSPC', 'EFBIG', 'EDQUOT']);
const PARTIAL_LINE_MAX = 65536; // an unterminated write longer than this is sent as it stands (a piece)
const TMP = '/tmp';
const READY = '{"type":"ready"}\n';
const LOADING = '{"type":"loading"}\n';
const IDENTIFIER = /^[A-Za-z_$][\w$]*$/;
// The persistent store's rules (service/state/session.py, base.py), with its words, for the
// inline handle to apply the same ones.
const KEY_MAX_BYTES = 1024;
const KEY_CONTROL = /[\x00-\x1f\x7f-\x9f]/;
const KEY_SURROGATE = /[\ud800-\udfff]/u; // with /u a pair is one character: only lone ones match
const INT64_MIN = -(2 ** 63); // both bounds are exact as numbers (2 ** 63 - 1 is not one)
const INT64_END = 2 ** 63;
const NOT_AN_INTEGER = 'value is not an integer or out of range';
const WOULD_OVERFLOW = 'increment or decrement would overflow';
const NOT_A_LIST = 'the value under this key is not a list';
// JSON.stringify writes these as {} whatever they hold (an Error's message and stack are not
// enumerable). A typed array is written as an object of its indices: lossy, but its data.
const OPAQUE = [Map, Set, WeakMap, WeakSet, WeakRef, Promise, RegExp, Error, ArrayBuffer,
  SharedArrayBuffer, DataView];
const KINDS = { function: 'a function', symbol: 'a symbol', bigint: 'a BigInt' };

function encode(message) {
  // The harness's own messages; a value of the script goes through strictJson.
  return JSON.stringify(message) + '\n';
}

function strictJson(value, what) {
  // JSON.stringify, refusing what it would change without a word (NaN and Infinity -> null,
  // boxed ones too, undefined or a function in an array -> null, a function in an object ->
  // dropped, a Map or a RegExp -> {}), as the Python harness refuses them: TypeError
  // "<what>: NaN at /a/0". An object's property that is undefined is dropped, as
  // JSON.stringify drops it. One walk: the replacer sees each value (after its toJSON) and
  // keeps the holders above it, whose keys make the path.
  const holders = [];
  const keys = [];
  let problem = null;
  function check(key, item) {
    while (holders.length > 0 && holders[holders.length - 1] !== this) {
      holders.pop();
      keys.pop();
    }
    switch (typeof item) {
      case 'string':
      case 'boolean':
        return item;
      case 'number':
        if (Number.isFinite(item)) return item;
        problem = String(item);
        break;
      case 'object':
        if (item === null) return item;
        // Plain objects and arrays, most values, need no other test
        if (!Array.isArray(item) && Object.getPrototypeOf(item) !== Object.prototype) {
          // JSON.stringify would unbox it after this: the number it writes is what is checked
          if (util.types.isNumberObject(item)) return check.call(this, key, Number(item));
          problem = opaqueKind(item);
          if (problem) break;
        }
        holders.push(item);
        keys.push(key);
        return item;
      case 'undefined':
        if (!Array.isArray(this)) return item;
        problem = 'undefined';
        break;
      default:
        problem = KINDS[typeof item];
    }
    const at = holders.length > 0 ? ` at ${pointer(keys.slice(1).concat(key))}` : '';
    throw new TypeError(`${what}: ${problem}${at}`);
  }
  let text;
  try {
    text = JSON.stringify(value, check);
  } catch (err) {
    // JSON.stringify's own (a cycle); the script's (a throwing toJSON or getter) stay its own
    if (problem === null && err instanceof TypeError) throw new TypeError(`${what}: ${err.message}`);
    throw err;
  }
  if (text === undefined) throw new TypeError(`${what}: undefined`);
  return text;
}

function opaqueKind(item) {
  for (const type of OPAQUE) {
    if (item instanceof type) return `${/^[AEIOU]/.test(type.name) ? 'an' : 'a'} ${type.name}`;
  }
  return null;
}

function pointer(keys) {
  // A JSON pointer (RFC 6901): "/" between keys, "~" and "/" in a key escaped.
  return keys.map((key) => `/${key.replace(/~/g, '~0').replace(/\//g, '~1')}`).join('');
}

class Channel {
  // The private line channel to the host. It is read synchronously: between calls the
  // harness blocks in read(2) and nothing of the script runs (the event loop does not turn
  // until the next call awaits); a state operation waits for its answer the same way. No
  // `net` either: node compiles it afresh at every start under a heap-size flag (~7 ms).
  constructor(inFd, outFd) {
    this.inFd = inFd;
    this.outFd = outFd;
    this.buffer = Buffer.alloc(65536);
    this.decoder = new StringDecoder('utf8');
    this.pending = '';
  }

  readLine() {
    // The next line from the host, without its newline; null once the host closed the channel.
    let end;
    while ((end = this.pending.indexOf('\n')) < 0) {
      let count;
      try {
        count = fs.readSync(this.inFd, this.buffer, 0, this.buffer.length, null);
      } catch (err) {
        if (err.code === 'EINTR') continue; // libuv does not restart a read a signal broke
        throw err;
      }
      if (count === 0) return null;
      this.pending += this.decoder.write(this.buffer.subarray(0, count));
    }
    const line = this.pending.slice(0, end);
    this.pending = this.pending.slice(end + 1);
    return line;
  }

  send(message) {
    this.sendLine(encode(message)); // encoded first: a bad value writes nothing
  }

  sendLine(line) {
    const data = Buffer.from(line, 'utf8');
    let offset = 0;
    while (offset < data.length) {
      offset += fs.writeSync(this.outFd, data, offset); // blocking pipe: the host's pace
    }
  }
}

const STATE_ERRORS = { TypeError, RangeError, ValueError: TypeError, OverflowError: RangeError };

class StateRequests {
  // State operations of the running call (base.py protocol): each waits for its reply, which
  // is the next line the host sends.
  constructor(channel) {
    this.channel = channel;
    this.nextId = 0;
  }

  request(op, key, fields) {
    // The reply, or the error the store refused with, thrown. fields: the rest of the
    // message, already JSON (',"value":...'), each value encoded once and strictly by its
    // operation: one that is not JSON throws there, in the script.
    const id = ++this.nextId;
    const head = JSON.stringify({ type: 'state', id, op, key }); // an object: ends with }
    this.channel.sendLine(`${head.slice(0, -1)}${fields}}\n`);
    const line = this.channel.readLine();
    if (line === null) process.exit(0); // the host closed the channel
    const reply = JSON.parse(line);
    if (reply.type !== 'state_reply' || reply.id !== id) {
      throw new Error(`state: the host answered ${line.slice(0, 200)}`);
    }
    if (reply.ok) return reply;
    throw new (STATE_ERRORS[reply.error_type] || Error)(String(reply.message));
  }
}

class StoreState {
  // context.getState() on persistent state: every method returns a promise from the host.
  // What the host checks again is checked here too where JSON would hide it (a function as
  // the amount would be dropped and count as 1), so both handles refuse alike. An amount
  // goes as its exact digits (BigInt): JSON.stringify writes a number beyond 2 ** 53 in its
  // shortest form (-(2 ** 63) as -9223372036854776000, out of the 64-bit range).
  constructor(requests) {
    Object.defineProperty(this, 'requests', { value: requests, enumerable: false });
  }

  async op(op, key, fields = '') {
    return this.requests.request(op, key, fields);
  }

  read(key, fallback = null) {
    // getState(key, fallback): answered at once (the channel is read synchronously).
    const reply = this.requests.request('get', key, '');
    return reply.found ? reply.value : fallback;
  }

  write(key, value, what) {
    this.requests.request('set', key, `,"value":${valueJson(what, value)}`);
  }

  async get(key, fallback = null) { return this.read(key, fallback); }
  async set(key, value) { this.write(key, value, 'set'); }
  async delete(key) { return (await this.op('delete', key)).value; }

  async increment(key, amount = 1) {
    amountOf(amount, 1);
    return (await this.op('increment', key, `,"amount":${BigInt(amount)}`)).value;
  }

  async decrement(key, amount = 1) {
    amountOf(amount, -1);
    return (await this.op('decrement', key, `,"amount":${BigInt(amount)}`)).value;
  }

  async push(key, value) { return (await this.op('push', key, `,"value":${valueJson('push', value)}`)).value; }
  async pop(key) { return (await this.op('pop', key)).value; }

  async extend(key, values) {
    const text = strictJson(listOf(values), 'extend: values is not JSON');
    return (await this.op('extend', key, `,"values":${text}`)).value;
  }
}

class InlineState {
  // context.getState() on inline state: the same methods over the call's state object, with
  // the store's rules and errors, so one script works both ways. Each value is kept as the
  // store would give it back (a copy, as its JSON reads), and an operation that fails
  // changes nothing: every check comes before the write.
  constructor(state) {
    Object.defineProperty(this, 'state', { value: state, enumerable: false });
  }

  async get(key, fallback = null) {
    const name = stateKey(key);
    return has(this.state, name) ? this.state[name] : fallback;
  }

  async set(key, value) {
    const copy = JSON.parse(valueJson('set', value));
    put(this.state, stateKey(key), copy);
  }

  async delete(key) {
    const name = stateKey(key);
    if (!has(this.state, name)) return false;
    delete this.state[name];
    return true;
  }

  async increment(key, amount = 1) { return this.add(key, amountOf(amount, 1)); }
  async decrement(key, amount = 1) { return this.add(key, amountOf(amount, -1)); }
  async push(key, value) { return this.append(key, [JSON.parse(valueJson('push', value))]); }

  async extend(key, values) {
    return this.append(key, JSON.parse(strictJson(listOf(values), 'extend: values is not JSON')));
  }

  async pop(key) {
    const name = stateKey(key);
    if (!has(this.state, name)) return null;
    const items = this.state[name];
    if (!Array.isArray(items)) throw new TypeError(NOT_A_LIST);
    return items.length ? items.shift() : null;
  }

  add(key, amount) {
    const name = stateKey(key);
    const current = has(this.state, name) ? this.state[name] : 0;
    if (!isInt64(current)) throw new TypeError(NOT_AN_INTEGER);
    const total = addIntegers(current, amount);
    put(this.state, name, total);
    return total;
  }

  append(key, values) {
    const name = stateKey(key);
    const items = has(this.state, name) ? this.state[name] : [];
    if (!Array.isArray(items)) throw new TypeError(NOT_A_LIST);
    for (const value of values) items.push(value); // no spread: a long list would overflow the stack
    put(this.state, name, items);
    return items.length;
  }
}

function put(object, key, value) {
  // An own data property: an assignment to "__proto__" would set the prototype instead.
  Object.defineProperty(object, key, { value, writable: true, enumerable: true, configurable: true });
}

function valueJson(op, value) {
  return strictJson(value === undefined ? null : value, `${op}: value is not JSON`);
}

function stateKey(key) {
  // session.py _key, with its words; its ValueErrors are TypeErrors here (STATE_ERRORS).
  if (typeof key !== 'string' || key === '') throw new TypeError('a state key must be a non-empty string');
  if (Buffer.byteLength(key, 'utf8') > KEY_MAX_BYTES) {
    throw new TypeError(`a state key is at most ${KEY_MAX_BYTES} bytes`);
  }
  if (KEY_CONTROL.test(key)) throw new TypeError('a state key must not contain control characters');
  if (KEY_SURROGATE.test(key)) {
    throw new TypeError('a state key must not contain lone surrogates (text that has no UTF-8 form)');
  }
  return key;
}

function amountOf(amount, sign) {
  // session.py _amount: what increment adds, an integer whose signed value is a 64-bit one.
  if (typeof amount !== 'number' || !Number.isInteger(amount)) throw new TypeError('amount must be an integer');
  const signed = sign * amount;
  if (!isInt64(signed)) throw new RangeError('amount is out of the 64-bit range');
  return signed;
}

function isInt64(value) {
  // The bounds are exact numbers, so the range check is exact even where the integer is not.
  return typeof value === 'number' && Number.isInteger(value) && value >= INT64_MIN && value < INT64_END;
}

function addIntegers(current, amount) {
  // base.py add_integers. A sum that is a safe integer is exact; beyond 2 ** 53 numbers are
  // not, so the range is checked on the exact sum (BigInt) and the nearest number is kept.
  const total = current + amount;
  if (Number.isSafeInteger(total)) return total;
  const exact = BigInt(current) + BigInt(amount);
  if (exact < BigInt(INT64_MIN) || exact >= BigInt(INT64_END)) throw new RangeError(WOULD_OVERFLOW);
  return Number(exact);
}

function listOf(values) {
  // What extend takes: an array, or an iterable object (a Set...) as Python's list() does.
  if (Array.isArray(values)) return values;
  if (values !== null && typeof values === 'object' && typeof values[Symbol.iterator] === 'function') {
    return Array.from(values);
  }
  throw new TypeError('extend takes a list of values');
}

class LogSink {
  // A stream for console.*: every complete line becomes a `log` event, in order with outputs.
  constructor(channel, stream) {
    this.channel = channel;
    this.stream = stream;
    this.buffer = '';
    this.split = false; // the last line went out in pieces: its newline is no empty line
  }

  write(chunk) {
    let text = String(chunk);
    if (this.split && text) {
      this.split = false;
      if (text[0] === '\n') text = text.slice(1);
    }
    const lines = (this.buffer + text).split('\n');
    this.buffer = lines.pop();
    if (this.buffer.length > PARTIAL_LINE_MAX) {
      lines.push(this.buffer);
      this.buffer = '';
      this.split = true;
    }
    for (const line of lines) this.emit(line);
    return true;
  }

  end() {
    if (this.buffer) this.emit(this.buffer);
    this.buffer = '';
    this.split = false;
  }

  emit(line) {
    this.channel.send({ type: 'log', stream: this.stream, message: line });
  }
}

class Context {
  // The `context` an entrypoint receives (protocol.md, "The actor API").
  constructor(channel, request, requests) {
    this.actorId = request.actor_id;
    this.timestamp = request.timestamp;
    this.payload = request.payload || {};
    this.config = request.config || {};
    this.state = request.state || {};
    Object.defineProperty(this, 'channel', { value: channel, enumerable: false });
    const store = request.persistent === true && requests ? new StoreState(requests) : new InlineState(this.state);
    Object.defineProperty(this, 'store', { value: store, enumerable: false });
  }

  getPayload() {
    return this.payload;
  }

  hasInput(port) {
    return has(this.payload, port);
  }

  getInput(port, fallback) {
    return has(this.payload, port) ? this.payload[port] : fallback;
  }

  getConfig(key, fallback) {
    return has(this.config, key) ? this.config[key] : fallback;
  }

  getState(key, fallback) {
    // getState(): the state store handle. getState(key, fallback) and setState(key, value)
    // answer at once on persistent state too, as in Python: the origin's
    // `context.setState("count", context.getState("count", 0) + 1)` works unawaited (and
    // awaiting a value is harmless). A refused operation throws where it is called.
    if (arguments.length === 0) return this.store;
    if (this.store instanceof StoreState) return this.store.read(key, fallback === undefined ? null : fallback);
    return has(this.state, key) ? this.state[key] : fallback;
  }

  setState(key, value) {
    if (this.store instanceof StoreState) {
      this.store.write(key, value, 'setState');
      return undefined;
    }
    valueJson('setState', value); // refused at once, as the store refuses it (kept as given)
    put(this.state, stateKey(key), value);
    return undefined;
  }

  sendOutput(port, data) {
    // Sent now; the promise is for scripts that await it. Data that is not JSON throws here.
    if (typeof port !== 'string') throw new TypeError('sendOutput: port must be a string');
    const text = strictJson(data === undefined ? null : data, 'sendOutput: data is not JSON');
    this.channel.sendLine(`{"type":"output","port":${JSON.stringify(port)},"data":${text}}\n`);
    return Promise.resolve();
  }
}

function has(object, key) {
  return Object.prototype.hasOwnProperty.call(object, key);
}

async function loadEntry(script, entrypoint) {
  if (!IDENTIFIER.test(entrypoint)) throw new TypeError(`invalid entrypoint ${entrypoint}`);
  if (script.endsWith('.mjs')) {
    const ns = await import(pathToFileURL(script).href);
    return pick(script, entrypoint, ns.default, ns[entrypoint]);
  }
  // A CommonJS module whose body also hands back a top-level `function <entrypoint>`: the
  // origin's scripts declare it without exporting it. The entrypoint is a checked identifier.
  // Compiled as node compiles any module, so that require() and import() work as usual.
  const source = fs.readFileSync(script, 'utf8');
  const body = `${source}\n;return typeof ${entrypoint} === "function" ? ${entrypoint} : undefined;`;
  const mod = new Module(script, null);
  mod.filename = script;
  mod.paths = Module._nodeModulePaths(path.dirname(script));
  const declared = mod._compile(body, script);
  const exported = mod.exports;
  const named = exported && typeof exported[entrypoint] === 'function' ? exported[entrypoint] : undefined;
  return pick(script, entrypoint, exported, named || declared);
}

function pick(script, entrypoint, whole, named) {
  if (typeof named === 'function') return named;
  if (entrypoint === 'process' && typeof whole === 'function') return whole;
  if (whole && typeof whole[entrypoint] === 'function') return whole[entrypoint];
  throw new TypeError(`${path.basename(script)} defines no function ${entrypoint}`);
}

function resourceOf(err) {
  if (!err || typeof err !== 'object') return undefined;
  if (ERRNO_DISK.has(err.code)) return 'disk';
  if (err.code === 'EAGAIN' || err.message === 'EAGAIN') return 'pids'; // new Worker(): no code
  if (err instanceof RangeError && /allocation failed|Invalid (array|string|typed array) length/.test(err.message)) {
    return 'memory';
  }
  return undefined;
}

function errorReply(err) {
  const isError = err instanceof Error;
  const stack = isError && typeof err.stack === 'string' ? err.stack : '';
  const reply = {
    type: 'error',
    error_type: isError ? err.name : typeof err,
    message: isError ? err.message : String(err),
    // The harness's own frames say nothing to the script's author.
    traceback: stack.split('\n').filter((l) => !l.includes(__filename)).join('\n'),
  };
  const resource = resourceOf(err);
  if (resource) reply.resource = resource;
  return reply;
}

// Every timer and immediate started, by any path (the globals, the `timers` and
// `timers/promises` modules, ESM imports, AbortSignal.timeout), unref'd ones included: node
// lists only ref'd ones as active. One still pending when its call returns would run inside
// a later call, since between calls the event loop stands still (the harness blocks reading
// its channel). Every Timeout sets `_idleStart` in its constructor and every Immediate calls
// `ref()`: an accessor and a wrapper on their prototypes see each one at no cost to anything
// else. A node where that does not hold (checked at start) gets async_hooks instead, which
// sees the same resources but slows every promise.
const timersStarted = new Set();
const TIMER_TYPES = new Set(['Timeout', 'Immediate']);
let pruneAt = 1024; // a long call starting many timers holds only the pending ones

function timerStarted(handle) {
  timersStarted.add(handle);
  if (timersStarted.size < pruneAt) return;
  timersPending();
  pruneAt = Math.max(1024, 2 * timersStarted.size);
}

function trackTimers() {
  if (watchTimerPrototypes()) return;
  require('async_hooks').createHook({
    init(asyncId, type, triggerAsyncId, resource) {
      if (TIMER_TYPES.has(type)) timerStarted(resource);
    },
  }).enable();
}

function watchTimerPrototypes() {
  const timeout = setTimeout(() => {}, 0);
  const immediate = setImmediate(() => {});
  clearTimeout(timeout);
  clearImmediate(immediate);
  const slot = Symbol('idleStart');
  const immediateProto = Object.getPrototypeOf(immediate);
  const ref = immediateProto.ref;
  try {
    Object.defineProperty(Object.getPrototypeOf(timeout), '_idleStart', {
      configurable: true,
      get() { return this[slot]; },
      set(value) { timerStarted(this); this[slot] = value; },
    });
    immediateProto.ref = function () {
      timerStarted(this);
      return Reflect.apply(ref, this, []);
    };
  } catch (err) {
    return false;
  }
  clearTimeout(setTimeout(() => {}, 0));
  clearImmediate(setImmediate(() => {}));
  const seen = timersStarted.size;
  timersStarted.clear();
  return seen === 2;
}

function timersPending() {
  for (const handle of timersStarted) {
    if (handle._destroyed) timersStarted.delete(handle); // it ran, or was cleared
  }
  return timersStarted.size > 0;
}

// Every worker thread this thread starts, by any path (require or import of worker_threads,
// a subclass of Worker), until its 'exit': one alive when its call returns goes on between
// calls, unref'd or not, asleep or not. Seen through the diagnostics channel that Worker's
// constructor publishes to, at once: the process 'worker' event comes a tick later, which
// may be after the result of a call that returns right away. A worker's own workers are
// not seen here, but node stops them when it ends: while one runs, its parent (or the
// parent's parent...) is still counted here. A worker told to stop (terminate() not
// awaited) counts until its 'exit' arrives: the sandbox is then replaced for nothing. As
// with timers, a hostile script can defeat this (unsubscribing); see docs/backends.md.
const workersAlive = new Set();

function trackWorkers() {
  require('diagnostics_channel').subscribe('worker_threads', ({ worker }) => {
    workersAlive.add(worker);
    worker.once('exit', () => workersAlive.delete(worker));
  });
}

function jsonOf(what, item) {
  return strictJson(item, `process() ${what} is not JSON-serializable`);
}

function resultLine(value, state) {
  // What encode({type, return, state[, lingering]}) writes, from the two texts checked: each
  // value is encoded once.
  const ret = jsonOf('return value', value === undefined ? null : value);
  const goesOn = timersPending() || workersAlive.size > 0; // it would run in a later call
  const lingering = goesOn ? ',"lingering":true' : '';
  return `{"type":"result","return":${ret},"state":${jsonOf('state', state)}${lingering}}\n`;
}

function writeFences(fence) {
  // Mark the end of the call on the real stdout/stderr so the host knows it read all of them.
  for (const fd of [1, 2]) {
    try {
      fs.writeSync(fd, `${fence}\n`);
    } catch (err) {
      // the script closed it; the host stops waiting after a grace period
    }
  }
}

function wipe(dir) {
  // Delete everything below dir (a script may have made dirs unreadable: fix that first).
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) {
      fs.chmodSync(full, 0o700);
      wipe(full);
      fs.rmdirSync(full);
    } else {
      fs.unlinkSync(full);
    }
  }
}

class Harness {
  constructor(channel, script, ownPidns, selfReset) {
    this.channel = channel;
    this.script = script;
    this.ownPidns = ownPidns;
    this.selfReset = selfReset;
    this.sinks = [new LogSink(channel, 'stdout'), new LogSink(channel, 'stderr')];
    globalThis.console = new Console({ stdout: this.sinks[0], stderr: this.sinks[1], ignoreErrors: false });
    this.entry = null;
    this.loadError = null;
    this.failCall = null; // rejects the running call on an uncaught error of the script
    this.stateRequests = new StateRequests(channel);
    this.tmpClean = null; // /tmp's stamp when it was last left empty
    process.on('uncaughtException', (err) => this.uncaught(err));
    trackTimers();
    trackWorkers();
  }

  async load(entrypoint) {
    this.channel.sendLine(LOADING); // what runs from here on is the script's: its time limit
    try {
      this.entry = await loadEntry(this.script, entrypoint);
    } catch (err) {
      this.loadError = errorReply(err); // reported to every call instead of killing the worker
    }
  }

  async serve() {
    this.channel.send({ type: 'ready' });
    for (let line; (line = this.channel.readLine()) !== null;) {
      try {
        await this.handle(line);
      } catch (err) {
        this.channel.send({ type: 'error', error_type: 'ProtocolError', message: String(err), traceback: '' });
      }
    }
    process.exit(0); // the host closed the channel
  }

  async handle(line) {
    const message = JSON.parse(line);
    if (message.type === 'call') return this.call(message);
    if (message.type === 'reset') return this.reset();
    this.channel.send({ type: 'error', error_type: 'ProtocolError', message: `unknown message ${message.type}`, traceback: '' });
  }

  async call(request) {
    const reply = await this.run(request);
    for (const sink of this.sinks) sink.end();
    if (typeof request.fence === 'string' && /^[A-Za-z0-9]+$/.test(request.fence)) {
      writeFences(request.fence);
    }
    if (!this.selfReset) {
      this.channel.sendLine(reply);
      return;
    }
    try { // before the next message is handled: no call ever sees what an earlier one left
      this.clean();
    } catch (err) { // a sandbox that cannot be cleaned must not serve again
      this.channel.sendLine(reply);
      fs.writeSync(2, `harness: reset after the call failed: ${util.inspect(err)}\n`);
      process.exit(70);
    }
    // The reply and the ready in one write: the host checks the sandbox from outside now
    this.channel.sendLine(reply + READY);
  }

  async run(request) {
    if (this.loadError) return encode(this.loadError);
    const context = new Context(this.channel, request, this.stateRequests);
    const failed = new Promise((resolve, reject) => { this.failCall = reject; });
    try {
      const value = await Promise.race([this.entry(context), failed]);
      return resultLine(value, context.state);
    } catch (err) {
      return encode(errorReply(err));
    } finally {
      this.failCall = null;
    }
  }

  uncaught(err) {
    // A callback or rejected promise of the script failed outside the awaited chain.
    if (this.failCall) this.failCall(err);
    else this.sinks[1].write(`uncaught between calls: ${util.inspect(err)}\n`);
  }

  reset() {
    try {
      this.clean();
      this.channel.send({ type: 'ready' });
    } catch (err) {
      this.channel.send(errorReply(err));
    }
  }

  clean() {
    // Kill the script's leftover processes and wipe /tmp.
    if (this.ownPidns) {
      try {
        process.kill(-1, 'SIGKILL'); // everyone in our pid namespace but us and init
      } catch (err) {
        if (err.code !== 'ESRCH') throw err;
      }
    }
    // Adding, removing or renaming an entry, or setting its times, moves the folder's
    // ctime (to a clock the script cannot set): unchanged since the last wipe, /tmp is
    // still empty, and one stat replaces a listing.
    if (this.tmpClean !== null && tmpStamp(false) === this.tmpClean) return;
    wipe(TMP);
    this.tmpClean = tmpStamp(true);
  }
}

// Before Linux 6.13, tmpfs takes its times from a clock that ticks once a jiffy: a change in
// the same tick as the wipe would leave them unchanged. A stamp whose ctime is not older than
// any tick is null (not to be trusted) when `settled` is asked for.
const SETTLE_NS = 50000000n;

function tmpStamp(settled) {
  const st = fs.statSync(TMP, { bigint: true });
  if (settled && BigInt(Date.now()) * 1000000n - st.ctimeNs < SETTLE_NS) return null;
  return `${st.ctimeNs} ${st.mtimeNs} ${st.ino}`;
}

async function main(argv) {
  if (argv.length < 4) {
    fs.writeSync(2, 'usage: harness.js IN_FD OUT_FD SCRIPT ENTRYPOINT [--own-pidns] [--self-reset]\n');
    process.exit(2);
  }
  const [inFd, outFd] = [Number(argv[0]), Number(argv[1])];
  const flags = argv.slice(4);
  const harness = new Harness(new Channel(inFd, outFd), argv[2], flags.includes('--own-pidns'),
    flags.includes('--self-reset'));
  await harness.load(argv[3]);
  await harness.serve();
}

main(process.argv.slice(2));
