'use strict';
// WebAssembly guests under Node: the same "realm" imports as the Python host (realm_embed.wasm),
// implemented over the C ABI, so one .wasm runs in both.  See bindings/wasm/realm_guest.h.
//
//   const { GuestHost, Model, Realm, runGuest } = require('realm-embed');
//   const r = await runGuest('generate', { prompt: 'What is the capital of France?', maxTokens: 32,
//                                         onText: (t) => process.stdout.write(t) });
//
//   Realm.init();
//   const model = Model.storeDefault();
//   const host = new GuestHost({ precision: 'fast' });   // every guest session: 4-bit weights
//   const t = await host.tenant('generate', model, { memoryMiB: 16, timeoutMs: 10000 });
//   const out = await t.generate('What is the capital of France?', { maxTokens: 32, fused: true });
//   await t.close(); await host.close();
//
// Each tenant runs its guest in its own worker_thread (lib/guest_worker.cjs): its own instance,
// memory, handle table and sessions on the shared model (weights live once, in the library).
//
// Sandboxing, and how it differs from the wasmtime host:
//  - Memory: the host creates the guest's memory, new WebAssembly.Memory({initial, maximum}) with
//    maximum = the tenant's memoryMiB, so memory.grow past it returns -1.  V8 can cap only a memory
//    the host creates: a guest that defines and exports its own memory is rewritten at load to
//    import it instead (same limits, same index), so every guest is capped.
//  - Runaway guests: V8 has no fuel and no epochs.  Every call into the guest has a wall-clock
//    deadline (timeoutMs): imports check it (the guest traps), and a timer in the main thread
//    terminates the worker (worker.terminate()) when a guest spins in wasm code without calling
//    the host.  A worker blocked inside a native call (one realm_* call, e.g. a long prefill) cannot
//    be interrupted: it stops when that call returns.  A terminated tenant loses its instance; the
//    host frees its sessions, and the next call instantiates the guest afresh (new memory, new
//    handle table).  Stops of any other kind (a fault, a trap, a deadline seen by an import) keep
//    the instance, its memory and its sessions, as in the wasmtime host.
//  - No fuel limit (wasmtime's per-call instruction budget): the deadline is the only CPU limit.
//  - Precision ('exact' | 'fast') is the host's choice, as in the wasmtime host: every session a
//    guest creates gets its tenant's precision (a fork keeps its parent's); the ABI has no way
//    for the guest to ask for another.
//  - Host callbacks (onText, onLog) run in the main thread, asynchronously to the guest: an
//    exception in onText (or an aborted signal) cancels the call at the guest's next import call
//    and reaches the caller unchanged.

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { Worker } = require('node:worker_threads');

const { native, lib, E, ERR, check, fail, RealmError, describe, u64, hex } = require('./call.cjs');
const abi = require('./guest_abi.cjs');

const { GUEST_ABI_VERSION, MAX_MODULE_BYTES, GuestAbiError, GuestLimitError, deserializeError } = abi;

const WORKER = path.join(__dirname, 'guest_worker.cjs');
const RAW = 1;
const FUSED = 2;
const FULL_LOGITS = 4;
const FINISH = { 0: 'error', 1: 'stop', 2: 'eos', 3: 'length', 4: 'cancelled' };
const GRACE_MS = 50;          // the main thread's terminate timer fires this long after the deadline

/** Per-tenant limits; the per-call ones reset at every call into the guest. */
const DEFAULT_LIMITS = Object.freeze({
  memoryMiB: 64,              // the guest's linear memory
  timeoutMs: 300000,          // wall clock per call into the guest (a generate() is one call)
  hostTimeMs: 300000,         // time inside imports per call (then REALM_E_LIMIT)
  maxSessions: 8,             // live sessions
  maxKvTokens: 32768,         // sum of n_ctx over live sessions
  maxOutputBytes: 1 << 20,    // realm_emit bytes per call
  maxLogBytes: 64 << 10,      // realm_log bytes per call
});

const PRECISIONS = ['exact', 'fast'];

/** precision if it is 'exact' or 'fast' (undefined: fallback); else REALM_E_ARG naming it. */
function validatePrecision(where, precision, fallback = 'exact') {
  if (precision === undefined) return fallback;
  if (!PRECISIONS.includes(precision)) {
    throw fail(E.REALM_E_ARG, `${where}: precision must be 'exact' or 'fast', got ${describe(precision)}`);
  }
  return precision;
}

function validateLimits(where, given, base = DEFAULT_LIMITS) {
  const out = { ...base };
  for (const [k, v] of Object.entries(given || {})) {
    if (!(k in DEFAULT_LIMITS)) continue;
    if (v === undefined) continue;
    out[k] = v;
  }
  for (const k of ['memoryMiB', 'timeoutMs', 'hostTimeMs']) {
    const v = out[k];
    if (typeof v !== 'number' || !(v > 0) || v === Infinity) {
      throw fail(E.REALM_E_ARG, `${where}: ${k} must be a positive number, got ${describe(v)}`);
    }
  }
  for (const k of ['maxSessions', 'maxKvTokens', 'maxOutputBytes', 'maxLogBytes']) {
    const v = out[k];
    if (!Number.isSafeInteger(v) || v < 0) {
      throw fail(E.REALM_E_ARG, `${where}: ${k} must be a non-negative integer, got ${describe(v)}`);
    }
  }
  if (out.memoryMiB > 4096) throw fail(E.REALM_E_ARG, `${where}: memoryMiB ${out.memoryMiB} exceeds a 32-bit memory (4096 MiB)`);
  if (out.timeoutMs > 0x7FFFFFFF) throw fail(E.REALM_E_ARG, `${where}: timeoutMs ${out.timeoutMs} is over 2^31 - 1`);
  return Object.freeze(out);
}

// ---- modules --------------------------------------------------------------------------------------

/** A compiled guest, checked against the host's imports; shareable by any number of tenants. */
class GuestModule {
  /** @internal */
  constructor(checked) {
    this.module = checked.module;                 // the WebAssembly.Module the tenants instantiate
    this.abi = checked.abi;                       // the ABI it was built for (null: not recorded)
    this.memory = Object.freeze({ min: checked.memory.min, max: checked.memory.max });   // pages, as declared
    this.memoryWasImported = checked.memoryWasImported;   // false: rewritten to import it
    this.exports = Object.freeze([...checked.exports]);
    this.size = checked.size;                     // bytes of the .wasm
    Object.freeze(this);
  }
}

/** The directory of the shipped guests: guests/ next to librealm.so (in the Python package). */
function guestsDir() {
  lib();
  return path.join(path.dirname(fs.realpathSync(native.loadedPath())), 'guests');
}

/** The path of a shipped guest ("generate", "ban_word"). */
function guestPath(name = 'generate') {
  const p = path.join(guestsDir(), `${name}.wasm`);
  if (!fs.existsSync(p)) {
    throw fail(E.REALM_E_NOT_FOUND, `no shipped guest '${name}': ${p} does not exist (build the guests with ` +
      '`make -C bindings/wasm`, which needs clang and lld)');
  }
  return p;
}

function readGuest(source) {
  let bytes;
  if (source instanceof Uint8Array) bytes = source;
  else if (source instanceof ArrayBuffer) bytes = new Uint8Array(source);
  else if (ArrayBuffer.isView(source)) bytes = new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
  else if (typeof source === 'string' || source instanceof URL) {
    let p = source instanceof URL ? source : String(source);
    if (typeof p === 'string' && p.trimStart().startsWith('(module')) {
      throw new GuestAbiError('the Node host runs .wasm only, not WAT text: compile it first (wat2wasm, or ' +
        "python -c 'import wasmtime, sys; sys.stdout.buffer.write(wasmtime.wat2wasm(open(sys.argv[1]).read()))' f.wat)");
    }
    if (typeof p === 'string' && !p.includes('/') && !p.endsWith('.wasm') && !p.endsWith('.wat')) p = guestPath(p);
    try {
      const st = fs.statSync(p);
      if (st.size > MAX_MODULE_BYTES) throw new GuestAbiError(`${p} is larger than ${MAX_MODULE_BYTES >> 20} MiB`);
      bytes = fs.readFileSync(p);
    } catch (e) {
      if (e instanceof RealmError) throw e;
      throw fail(E.REALM_E_IO, `cannot read guest ${p}: ${e.message}`);
    }
  } else {
    throw fail(E.REALM_E_ARG, `a guest is .wasm bytes, a path or a shipped guest's name, got ${describe(source)}`);
  }
  if (bytes.length > MAX_MODULE_BYTES) {
    throw new GuestAbiError(`the guest is ${bytes.length} bytes, more than ${MAX_MODULE_BYTES >> 20} MiB`);
  }
  if (bytes.length < 4 || bytes[0] !== 0 || bytes[1] !== 0x61 || bytes[2] !== 0x73 || bytes[3] !== 0x6d) {
    throw new GuestAbiError('not a WebAssembly module (no \\0asm magic): the Node host runs .wasm files ' +
      '(compile WAT text with wat2wasm first)');
  }
  return new Uint8Array(bytes);                    // a copy: the caller may reuse its buffer
}

// ---- the host ---------------------------------------------------------------------------------------

class GuestHost {
  #modules = new Map();
  #tenants = new Set();
  #limits;
  #precision;
  #closed = false;

  /** options: default limits for its tenants (memoryMiB, timeoutMs, hostTimeMs, maxSessions,
   *  maxKvTokens, maxOutputBytes, maxLogBytes) and precision, how their sessions compute:
   *  'exact' (default) or 'fast'.  Starts the runtime (from the calling thread: construct the
   *  host in the main thread). */
  constructor(options = {}) {
    this.#limits = validateLimits('GuestHost', options);
    this.#precision = validatePrecision('GuestHost', (options || {}).precision);
    check(lib().realm_init(ERR));
  }

  /** The host's REALM_GUEST_ABI_VERSION. */
  static get abiVersion() {
    return GUEST_ABI_VERSION;
  }

  /** The "realm" imports: name -> { params: ['i32', ...], results: ['i32'] }. */
  static get imports() {
    return Object.fromEntries([...abi.SIGNATURES].map(([n, s]) => [n, { params: [...s.wasm[0]], results: [...s.wasm[1]] }]));
  }

  /** The default limits of this host's tenants. */
  get limits() {
    return this.#limits;
  }

  /** The default precision of this host's tenants' sessions ('exact' or 'fast'). */
  get precision() {
    return this.#precision;
  }

  /** A guest from bytes, a path, or the name of a shipped guest ("generate", "ban_word").
   *  Compiled once per content; the import check runs before anything is instantiated. */
  load(source) {
    if (source instanceof GuestModule) return source;
    const bytes = readGuest(source);
    const key = crypto.createHash('sha256').update(bytes).digest('hex');
    const cached = this.#modules.get(key);
    if (cached) return cached;
    let module;
    try {
      module = new WebAssembly.Module(bytes);
    } catch (e) {
      throw new GuestAbiError(`not a valid WebAssembly module: ${String(e.message).split('\n')[0]}`);
    }
    const g = new GuestModule(abi.checkModule(bytes, module));
    this.#modules.set(key, g);
    return g;
  }

  /** A new tenant running `guest` on `model` (a Model, or a stored model's id): its own worker,
   *  instance, memory, handles and sessions.  options: name, onText(text), onLog(level, text),
   *  and limits and precision overriding the host's. */
  async tenant(guest, model, options = {}) {
    if (this.#closed) throw fail(E.REALM_E_NOT_FOUND, 'GuestHost.tenant: the host is closed');
    const precision = validatePrecision('GuestHost.tenant', (options || {}).precision, this.#precision);
    const limits = validateLimits('GuestHost.tenant', options, this.#limits);
    const g = this.load(guest);
    const t = new Tenant(this, g, model, options, limits, precision);
    this.#tenants.add(t);
    try {
      await t.start();
    } catch (e) {
      await t.close();
      throw e;
    }
    return t;
  }

  /** @internal */
  forget(t) {
    this.#tenants.delete(t);
  }

  /** Close every tenant (their sessions are freed).  Idempotent. */
  async close() {
    this.#closed = true;
    await Promise.all([...this.#tenants].map((t) => t.close()));
  }
}

// ---- tenants ------------------------------------------------------------------------------------------

const NO_STATE = Object.freeze({
  lastError: '', lastFailure: '', memoryBytes: 0, sessions: [], hostCalls: 0, hostSeconds: 0,
  computeSeconds: 0, importCalls: {},
});

class Tenant {
  #host;
  #guest;
  #model;
  #modelId;
  #limits;
  #precision;
  #worker = null;
  #pending = null;
  #busy = false;
  #closed = false;
  #seq = 0;
  #slots;
  #control;
  #state = NO_STATE;
  #output = Buffer.alloc(0);
  #restarts = 0;

  /** @internal  Use GuestHost.tenant(). */
  constructor(host, guest, model, options, limits, precision) {
    const { Model } = require('./realm.cjs');
    this.#host = host;
    this.#guest = guest;
    if (model instanceof Model) {
      this.#model = model;
      this.#modelId = model.handle('GuestHost.tenant');
    } else {
      this.#modelId = u64('GuestHost.tenant', 'model', model);
    }
    const info = Buffer.alloc(native.koffi.sizeof(native.types.realm_model_info));
    info.writeUInt32LE(info.length, 0);
    check(lib().realm_model_info_get(this.#modelId, info, ERR));      // REALM_E_NOT_FOUND for an unknown model
    this.#limits = limits;
    this.#precision = precision;
    this.name = options.name === undefined ? `tenant-${crypto.randomBytes(3).toString('hex')}` : String(options.name);
    this.onText = options.onText || null;
    this.onLog = options.onLog || null;
    this.#slots = new BigUint64Array(new SharedArrayBuffer(8 * Math.max(1, limits.maxSessions)));
    this.#control = new Int32Array(new SharedArrayBuffer(4));
  }

  get guest() { return this.#guest; }
  get limits() { return this.#limits; }
  /** How every session this guest creates computes: 'exact' or 'fast' (chosen by the host). */
  get precision() { return this.#precision; }
  get closed() { return this.#closed; }
  /** The model's id (bigint). */
  get modelId() { return this.#modelId; }
  /** The guest's view: the message of its last import call ("" if it succeeded), after the last call. */
  get lastError() { return this.#state.lastError; }
  /** The host's view: the message of the last failed import during the last call ("" if none). */
  get lastFailure() { return this.#state.lastFailure; }
  /** The guest's linear memory in bytes, after the last call. */
  get memoryBytes() { return this.#state.memoryBytes; }
  /** The library's ids (bigint) of this tenant's live sessions, after the last call. */
  get sessionIds() { return [...this.#slots].filter((x) => x !== 0n); }
  /** Calls into the guest's imports, time inside them and inside the runtime's compute, per name. */
  get stats() {
    const s = this.#state;
    return { hostCalls: s.hostCalls, hostSeconds: s.hostSeconds, computeSeconds: s.computeSeconds,
      importCalls: { ...s.importCalls }, restarts: this.#restarts };
  }
  /** The bytes the guest emitted during the last call. */
  get output() { return this.#output; }

  // ---- the worker -------------------------------------------------------------------------------

  /** @internal  Spawn the worker and instantiate the guest (under the deadline: a start function runs). */
  async start() {
    await this.#request(null);
  }

  #spawn() {
    const w = new Worker(WORKER, {
      workerData: {
        libPath: native.loadedPath(), name: this.name, modelId: this.#modelId, limits: this.#limits,
        precision: this.#precision,
        slots: this.#slots.buffer, control: this.#control.buffer,
      },
    });
    w.on('message', (msg) => this.#onMessage(w, msg));
    w.on('error', (e) => this.#lost(w, fail(E.REALM_E_INTERNAL, `guest ${this.name}: its worker failed: ${e.message}`)));
    w.on('exit', (code) => this.#lost(w, fail(E.REALM_E_INTERNAL, `guest ${this.name}: its worker exited (code ${code})`)));
    w.unref();
    this.#worker = w;
    return this.#send({ op: 'init', module: this.#guest.module, memory: this.#guest.memory }, true, null);
  }

  #freeSessions() {
    const l = lib();
    for (let i = 0; i < this.#slots.length; i++) {
      if (this.#slots[i] !== 0n) {
        l.realm_session_free(this.#slots[i], null);
        this.#slots[i] = 0n;
      }
    }
  }

  // The worker is gone (terminated by us, or it died): its sessions are freed, the call fails.
  async #drop(w, err, terminate) {
    if (this.#worker !== w) return;
    this.#worker = null;
    this.#state = NO_STATE;
    const p = this.#pending;
    this.#pending = null;
    if (p && p.timer) clearTimeout(p.timer);
    w.removeAllListeners('message');
    if (terminate) await w.terminate();       // returns once a native call in progress has returned
    this.#freeSessions();
    if (p) p.reject(err);
  }

  #lost(w, err) {
    this.#drop(w, err, false);
  }

  #onMessage(w, msg) {
    if (w !== this.#worker) return;
    const p = this.#pending;
    if (msg.type === 'emit') {
      const data = Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength);
      if (p) {
        p.chunks.push(data);
        if (p.onText && !p.callbackError) {
          try {
            const text = p.decoder.decode(data, { stream: true });
            if (text) p.onText(text);
          } catch (e) {
            p.callbackError = { error: e };
            Atomics.store(this.#control, 0, 1);            // the guest stops at its next import call
          }
        }
      }
      return;
    }
    if (msg.type === 'log') {
      if (this.onLog) {
        try { this.onLog(msg.level, msg.text); } catch (e) {
          if (p && !p.callbackError) { p.callbackError = { error: e }; Atomics.store(this.#control, 0, 1); }
        }
      } else if (msg.level >= 2) {
        process.stderr.write(`[realm guest ${this.name}] ${msg.text}\n`);
      }
      return;
    }
    if (msg.type !== 'done' || !p || p.id !== msg.id) return;
    this.#pending = null;
    if (p.timer) clearTimeout(p.timer);
    if (p.signal) p.signal.removeEventListener('abort', p.onAbort);
    w.unref();
    this.#state = msg.state;
    this.#output = Buffer.concat(p.chunks);
    if (p.onText && !p.callbackError) {
      try {
        const rest = p.decoder.decode();
        if (rest) p.onText(rest);
      } catch (e) {
        p.callbackError = { error: e };
      }
    }
    if (p.callbackError) p.reject(p.callbackError.error);
    else if (msg.ok) p.resolve(msg.value);
    else p.reject(deserializeError(msg.error));
  }

  #send(msg, timed, options) {
    const w = this.#worker;
    return new Promise((resolve, reject) => {
      const id = ++this.#seq;
      const p = {
        id, resolve, reject, chunks: [], timer: null, callbackError: null,
        onText: (options && options.onText) || this.onText, decoder: new TextDecoder('utf-8'),
        signal: options && options.signal, onAbort: null,
      };
      Atomics.store(this.#control, 0, 0);
      if (p.signal) {
        p.onAbort = () => {
          if (!p.callbackError) p.callbackError = { error: p.signal.reason };
          Atomics.store(this.#control, 0, 1);
        };
        p.signal.addEventListener('abort', p.onAbort, { once: true });
      }
      if (timed) {
        msg.timeoutMs = this.#limits.timeoutMs;
        p.timer = setTimeout(() => {
          this.#restarts++;
          this.#drop(w, new GuestLimitError(`guest ${this.name} passed its deadline of ${this.#limits.timeoutMs} ms ` +
            'per call (its worker was terminated)', 'deadline'), true);
        }, this.#limits.timeoutMs + GRACE_MS);
      }
      this.#pending = p;
      w.ref();
      w.postMessage({ ...msg, id });
    });
  }

  // One call at a time, as the wasmtime host.  msg null: only make sure the instance exists.
  async #request(msg, timed = true, options = null) {
    if (this.#closed) throw fail(E.REALM_E_NOT_FOUND, `tenant ${this.name} is closed`);
    if (this.#busy) throw fail(E.REALM_E_BUSY, `tenant ${this.name} is already running a call (one at a time)`);
    this.#busy = true;
    try {
      if (options && options.signal && options.signal.aborted) throw options.signal.reason;
      if (!this.#worker) {
        try {
          await this.#spawn();
        } catch (e) {
          if (this.#worker) await this.#drop(this.#worker, e, true);
          throw e;
        }
      }
      return msg ? await this.#send(msg, timed, options) : undefined;
    } finally {
      this.#busy = false;
    }
  }

  // ---- calls ----------------------------------------------------------------------------------------

  /** Call the guest's export `name` with numbers (i32, f32) and bigints (i64); resolves to its result.
   *  A stopped guest rejects with a GuestStop (GuestFault, GuestTrap, GuestLimitError). */
  call(name, ...args) {
    return this.#request({ op: 'call', name: String(name), args }, true);
  }

  /** n bytes of guest memory at ptr (a copy). */
  read(ptr, n) {
    return this.#request({ op: 'read', ptr, n }, false).then((b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength));
  }

  /** Write bytes into guest memory at ptr. */
  write(ptr, bytes) {
    return this.#request({ op: 'write', ptr, data: new Uint8Array(bytes) }, false);
  }

  /** A fresh snapshot: { lastError, lastFailure, memoryBytes, sessions, hostCalls, ... }. */
  async state() {
    if (!this.#worker) return { ...NO_STATE };
    await this.#request({ op: 'state' }, false);
    return { ...this.#state, sessions: [...this.#state.sessions] };
  }

  /**
   * Run a generator guest (the convention of realm_guest.h): realm_guest_input,
   * realm_guest_generate, realm_guest_result.  options: extra (the guest's extra string: the stop
   * string of "generate", the banned word of "ban_word"), maxTokens (256), chat (true: the guest
   * applies the chat template), fused, fullLogits, temperature (0 = greedy), topK, topP, seed,
   * onText(text) (streamed, in the main thread), signal (an AbortSignal).
   * Resolves to { text, tokenIds, finishReason, nPrompt, seconds, hostCalls, hostSeconds,
   * computeSeconds, memoryBytes }.
   */
  async generate(prompt, options = {}) {
    const where = 'Tenant.generate';
    const {
      extra = '', maxTokens = 256, chat = true, fused = false, fullLogits = false, temperature = 0, topK = 0,
      topP = 1, seed = 0, onText, signal,
    } = options;
    if (typeof prompt !== 'string' || typeof extra !== 'string') {
      throw fail(E.REALM_E_ARG, `${where}: prompt and extra must be strings, got ${describe(prompt)} and ${describe(extra)}`);
    }
    if (!Number.isInteger(maxTokens) || maxTokens < 0 || maxTokens >= 2 ** 31) {
      throw fail(E.REALM_E_ARG, `${where}: maxTokens must be an integer in [0, 2^31), got ${describe(maxTokens)}`);
    }
    if (!Number.isInteger(topK) || topK < 0 || topK > 0xFFFFFFFF) {
      throw fail(E.REALM_E_ARG, `${where}: topK must be an integer in [0, 2^32), got ${describe(topK)}`);
    }
    if (typeof temperature !== 'number' || typeof topP !== 'number') {
      throw fail(E.REALM_E_ARG, `${where}: temperature and topP must be numbers`);
    }
    const s = u64(where, 'seed', seed);
    const flags = (chat ? 0 : RAW) | (fused ? FUSED : 0) | (fullLogits ? FULL_LOGITS : 0);
    const t0 = performance.now();
    const r = await this.#request({
      op: 'generate', prompt: Buffer.from(prompt, 'utf8'), extra: Buffer.from(extra, 'utf8'), maxTokens, flags,
      temperature, topK, topP, seed: s,
    }, true, { onText, signal });
    return {
      text: this.#output.toString('utf8'), tokenIds: r.tokenIds, finishReason: FINISH[r.finish] || String(r.finish),
      nPrompt: r.nPrompt, seconds: (performance.now() - t0) / 1e3, hostCalls: r.hostCalls, hostSeconds: r.hostSeconds,
      computeSeconds: r.computeSeconds, memoryBytes: r.memoryBytes,
    };
  }

  /** Free this tenant's sessions and its worker (a running call is stopped).  Idempotent. */
  async close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#host.forget(this);
    const w = this.#worker;
    if (!w) {
      this.#freeSessions();
      return;
    }
    if (this.#pending) {
      await this.#drop(w, fail(E.REALM_E_NOT_FOUND, `tenant ${this.name} was closed during the call`), true);
      return;
    }
    try {
      await this.#send({ op: 'close' }, false, null);
    } catch { /* the worker failed: its sessions are freed below */ }
    await this.#drop(w, null, true);
  }

  [Symbol.asyncDispose || Symbol.for('nodejs.asyncDispose')]() {
    return this.close();
  }

  toString() {
    return `<Tenant ${this.name} model=${hex(this.#modelId)} ${this.#precision} sessions=${this.sessionIds.length}>`;
  }
}

// ---- one-shot ---------------------------------------------------------------------------------------

/**
 * Run a generator guest once, in a fresh sandboxed tenant: source is .wasm bytes, a path or a
 * shipped guest's name ("generate", the default).  options: model (a Model or a model id; default:
 * the embedded default model), prompt, and the options of Tenant.generate and the limits of
 * GuestHost (memoryMiB, timeoutMs, ...), precision, onLog.  Resolves to the generate() result.
 */
async function runGuest(source = 'generate', options = {}) {
  const { Model } = require('./realm.cjs');
  const { model, prompt = 'What is the capital of France?', name, onLog, ...rest } = options;
  const host = new GuestHost();
  let own = null;
  try {
    if (model === undefined || model === null) own = Model.storeDefault();
    const t = await host.tenant(source, own || model, { name, onLog, ...rest });
    try {
      return await t.generate(prompt, rest);
    } finally {
      await t.close();
    }
  } finally {
    await host.close();
    if (own) own.close();
  }
}

module.exports = {
  GuestHost, GuestModule, Tenant, runGuest, guestPath, DEFAULT_LIMITS,
  GUEST_ABI_VERSION, GuestAbiError, GuestStop: abi.GuestStop, GuestFault: abi.GuestFault, GuestTrap: abi.GuestTrap,
  GuestLimitError,
};
