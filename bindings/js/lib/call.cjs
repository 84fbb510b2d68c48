'use strict';
// Shared by the idiomatic layer: the loaded library, RealmError, the per-thread buffers of
// synchronous calls, the two-call text protocol, and the argument checks (binding-side misuse is
// a RealmError too, with the code the C library would give).

const native = require('./native.cjs');

const { koffi, types, CODES, CONSTANTS: C } = native;
const E = CODES;

let L = null;
function lib() {
  return L || (L = native.load());
}

// ---- errors ----------------------------------------------------------------------------------

/** Every failure: code is the C result code (e.g. -4), codeName its name ("REALM_E_NOT_FOUND"). */
class RealmError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'RealmError';
    this.code = code;
    this.codeName = native.codeName(code);
  }
}

/** The result codes by short name: ErrorCode.NOT_FOUND === -4. */
const ErrorCode = Object.freeze(Object.fromEntries(
  Object.entries(CODES).filter(([k]) => k !== 'REALM_OK').map(([k, v]) => [k.slice('REALM_E_'.length), v])));

function readError(buf) {
  const end = buf.indexOf(0, 4);
  return new RealmError(buf.readInt32LE(0), buf.toString('utf8', 4, end < 0 ? buf.length : end));
}

// One error struct and one text buffer per thread (each worker_thread loads its own copy of this
// module) for synchronous calls; asynchronous calls get their own.
const ERR = Buffer.alloc(native.ERROR_SIZE);
const SIZE = new BigUint64Array(1);
const OUT64 = new BigUint64Array(1);
const OUT32 = new Uint32Array(1);
let TEXT = Buffer.alloc(16384);

function check(rc, err = ERR) {
  if (rc !== 0) throw readError(err);
}

function fail(code, message) {
  return new RealmError(code, message);
}

// The two-call protocol for text: one call when the shared buffer is big enough, else a size query
// answer (written on REALM_E_BUFFER_TOO_SMALL) and a second call.
function callText(call) {
  let rc = call(TEXT, TEXT.length, SIZE, ERR);
  if (rc === E.REALM_E_BUFFER_TOO_SMALL) {
    const need = Number(SIZE[0]);
    if (need > TEXT.length && need <= (1 << 20)) TEXT = Buffer.alloc(need * 2);
    const buf = need <= TEXT.length ? TEXT : Buffer.alloc(need);
    rc = call(buf, buf.length, SIZE, ERR);
    check(rc);
    return buf.toString('utf8', 0, Number(SIZE[0]) - 1);
  }
  check(rc);
  return TEXT.toString('utf8', 0, Number(SIZE[0]) - 1);
}

// ---- argument checks (binding-side misuse is a RealmError too, REALM_E_ARG) -------------------

const U32_MAX = 0xFFFFFFFF;

function u32(where, name, value) {
  if (!Number.isInteger(value) || value < 0 || value > U32_MAX) {
    throw fail(E.REALM_E_ARG, `${where}: ${name} must be an integer in [0, 2^32), got ${describe(value)}`);
  }
  return value;
}

function u64(where, name, value) {
  let v = value;
  if (typeof v === 'number' && Number.isInteger(v)) v = BigInt(v);
  if (typeof v !== 'bigint' || v < 0n || v > 0xFFFFFFFFFFFFFFFFn) {
    throw fail(E.REALM_E_ARG, `${where}: ${name} must be an integer in [0, 2^64) (number or bigint), got ${describe(value)}`);
  }
  return v;
}

function describe(v) {
  if (typeof v === 'bigint') return `${v}n`;
  if (typeof v === 'string') return JSON.stringify(v);
  if (v === null || v === undefined || typeof v === 'number' || typeof v === 'boolean') return String(v);
  return Array.isArray(v) ? 'an array' : `a ${v.constructor ? v.constructor.name : typeof v}`;
}

function isArrayLike(v) {
  return Array.isArray(v) || (ArrayBuffer.isView(v) && !(v instanceof DataView));
}

/** Token ids -> Int32Array (Int32Array passes through without a copy). */
function ids32(where, name, ids) {
  if (ids instanceof Int32Array) return ids;
  if (!isArrayLike(ids) || ids instanceof Float32Array || ids instanceof Float64Array) {
    throw fail(E.REALM_E_ARG, `${where}: ${name} must be an array of token ids (number[] or Int32Array), got ${describe(ids)}`);
  }
  const out = new Int32Array(ids.length);
  for (let i = 0; i < ids.length; i++) {
    const v = typeof ids[i] === 'bigint' ? Number(ids[i]) : ids[i];
    if (!Number.isInteger(v) || v < -0x80000000 || v > 0x7FFFFFFF) {
      throw fail(E.REALM_E_ARG, `${where}: ${name}[${i}] must be a 32-bit integer token id, got ${describe(ids[i])}`);
    }
    out[i] = v;
  }
  return out;
}

/** Floats -> Float32Array (passes through without a copy). */
function f32(where, name, values) {
  if (values instanceof Float32Array) return values;
  if (!isArrayLike(values) || typeof values[0] === 'bigint') {
    throw fail(E.REALM_E_ARG, `${where}: ${name} must be a Float32Array or number[], got ${describe(values)}`);
  }
  return Float32Array.from(values);
}

// An output array for n floats.  Never empty: an empty typed array reaches C as NULL, and the
// library would name the output buffer instead of the input that makes the result empty.
function floats(n) {
  return new Float32Array(Math.max(1, n));
}

function str(where, name, value) {
  if (typeof value !== 'string') {
    throw fail(E.REALM_E_ARG, `${where}: ${name} must be a string, got ${describe(value)}`);
  }
  if (value.includes('\0')) {
    throw fail(E.REALM_E_ARG, `${where}: ${name} contains a NUL character`);
  }
  return value;
}

function hex(id) {
  return `0x${id.toString(16)}`;
}

// ---- asynchronous calls (koffi's fn.async: a libuv pool thread) ---------------------------------
//
// Each call gets its own realm_error and its own output scalars.  koffi hands typed arrays and
// Buffers to C as raw pointers and keeps no reference to them: the completion callback below
// refers to `args`, so every buffer of the call stays alive (and is not collected) until the C
// function has returned.  Callers pass inputs that nobody else holds (asyncCopy) and outputs they
// hand to JS only from the resolved value.

// koffi refuses more than 256 asynchronous calls in flight (each holds a call stack); the pool
// runs UV_THREADPOOL_SIZE (4) at a time anyway, so calls past ASYNC_MAX wait here, in order.
const ASYNC_MAX = 64;
let asyncInFlight = 0;
const asyncWaiting = [];

function asyncRelease() {
  asyncInFlight--;
  while (asyncWaiting.length && asyncInFlight < ASYNC_MAX) {
    asyncInFlight++;
    asyncWaiting.shift()();
  }
}

function hold() {}

/** fn.async(...args, err, cb) -> Promise<[rc, err]> (rc: the result code; err: the call's realm_error). */
function callAsyncRc(fn, args) {
  return new Promise((resolve, reject) => {
    const start = () => {
      const err = Buffer.alloc(native.ERROR_SIZE);
      try {
        fn.async(...args, err, (e, rc) => {
          asyncRelease();
          hold(args);                                 // the buffers stay referenced until here
          if (e) reject(e); else resolve([rc, err]);
        });
      } catch (e) {                                   // koffi refused the arguments
        asyncRelease();
        reject(e);
      }
    };
    if (asyncInFlight < ASYNC_MAX) {
      asyncInFlight++;
      start();
    } else {
      asyncWaiting.push(start);
    }
  });
}

/** fn.async(...args, err, cb) -> Promise<void>, rejecting with the call's RealmError. */
async function callAsync(fn, args) {
  const [rc, err] = await callAsyncRc(fn, args);
  if (rc !== 0) throw readError(err);
}

/** The two-call text protocol on pool threads, with buffers of its own.
 *  call(buf, cap, size) -> Promise<[rc, err]>. */
async function callTextAsync(call, guess = 4096) {
  const size = new BigUint64Array(1);
  let buf = Buffer.alloc(guess);
  let [rc, err] = await call(buf, buf.length, size);
  if (rc === E.REALM_E_BUFFER_TOO_SMALL) {
    buf = Buffer.alloc(Number(size[0]));
    [rc, err] = await call(buf, buf.length, size);
  }
  if (rc !== 0) throw readError(err);
  return buf.toString('utf8', 0, Number(size[0]) - 1);
}

/** options.signal: undefined or an AbortSignal (else REALM_E_ARG). */
function signalOf(where, options) {
  const signal = options ? options.signal : undefined;
  if (signal !== undefined && !(signal && typeof signal.aborted === 'boolean' && typeof signal.addEventListener === 'function')) {
    throw fail(E.REALM_E_ARG, `${where}: options.signal must be an AbortSignal, got ${describe(signal)}`);
  }
  return signal;
}

// Arrays of asynchronous calls live in an ArrayBuffer of their own: V8 keeps small typed arrays
// created by length inside the JS heap, where the collector may move them; an ArrayBuffer's
// memory never moves.

/** An asynchronous call's own copy of an input typed array (the caller may change or transfer
 *  its array meanwhile).  An empty one passes as it is: nothing to copy, and C sees it as the
 *  synchronous call does. */
function asyncCopy(a) {
  if (a.length === 0) return a;
  // the base type, not a subclass's constructor (Buffer's: new Buffer() is deprecated)
  const Type = [Uint8Array, Int32Array, Float32Array].find((T) => a instanceof T);
  const out = new Type(new ArrayBuffer(a.byteLength));
  out.set(a);
  return out;
}

/** An output array for n floats of an asynchronous call (never empty: see floats()). */
function asyncFloats(n) {
  return new Float32Array(new ArrayBuffer(4 * Math.max(1, n)));
}

// The runtime starts on the first call, on the calling thread, which becomes Python's main
// thread: an asynchronous call must not be the one that starts it (a pool thread would).
let started = false;
function ensureStarted() {
  if (!started) {
    check(lib().realm_init(ERR));
    started = true;
  }
}
function markStarted() {
  started = true;
}

/** The library if it is loaded already (finalizers must not load it), else null. */
function loadedLib() {
  return L;
}

module.exports = {
  native, koffi, types, E, C, lib, loadedLib, RealmError, ErrorCode, readError, check, fail, callText,
  ERR, SIZE, OUT64, OUT32, u32, u64, describe, isArrayLike, ids32, f32, floats, str, hex,
  callAsync, callAsyncRc, callTextAsync, signalOf, asyncCopy, asyncFloats, ensureStarted, markStarted,
};
