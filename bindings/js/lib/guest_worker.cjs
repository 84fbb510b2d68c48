'use strict';
// One tenant's worker_thread: it instantiates the guest with the "realm" imports and runs the calls
// the main thread (lib/guest.cjs) asks for.  The imports are realm_embed/wasm/imports.py over the
// C ABI: the same names, signatures, checks, messages and result codes.  Each import runs in this
// order: resolve handles -> check every guest span (inputs and outputs) -> check values -> the C
// call(s) -> write the outputs.  A span outside guest memory throws a GuestFault (the guest traps);
// anything else that is wrong returns a REALM_E_* code having changed nothing (the C ABI's own
// guarantee covers the compute calls: a failed call leaves the session's KV cache as it was).
//
// Guest memory is the WebAssembly.Memory this worker created with the tenant's cap.  Its buffer is
// re-read at every import call (memory.grow detaches the old ArrayBuffer) and never kept after it.
// Float and id arrays go to koffi as zero-copy typed-array views of guest memory when aligned,
// else through an aligned copy ("buffers need no alignment", realm_guest.h).
//
// The library is the process's one runtime: the model ids and session ids this worker uses are the
// main thread's too.  Live session ids are mirrored into a SharedArrayBuffer so that the main
// thread can free them after terminating this worker.

const { parentPort, workerData } = require('node:worker_threads');
const { isUtf8 } = require('node:buffer');
const native = require('./native.cjs');

native.load(workerData.libPath);
const { RealmError, E, ERR, SIZE, OUT64, OUT32, C } = require('./call.cjs');
const {
  GUEST_ABI_VERSION, SIGNATURES, GuestFault, GuestStop, GuestTrap, GuestLimitError, serializeError,
} = require('./guest_abi.cjs');

const lib = native.load(workerData.libPath);
const koffi = native.koffi;
const { types } = native;

const MODEL = 'model';
const SESSION = 'session';
const MAX_MESSAGES = 1024;
const MAX_TEXT_BYTES = 16 << 20;
const MAX_DETOKENIZE_IDS = 1 << 20;
const LOG_LINE_BYTES = 1024;
const DEFAULT_N_CTX = 2048;
const UNBUDGETED = new Set(['abi_version', 'last_error', 'now_us']);
const INFO = {
  1: 'n_layer', 2: 'n_embd', 3: 'n_vocab', 4: 'n_ctx_train', 5: 'bos_id', 6: 'eos_id', 7: 'n_head',
  8: 'n_head_kv', 9: 'head_dim', 10: 'n_ff', 11: 'has_chat_template',
};
const N_INFO = Object.keys(INFO).length;

const ArgumentError = (m) => new RealmError(E.REALM_E_ARG, m);
const RangeErr = (m) => new RealmError(E.REALM_E_RANGE, m);
const LimitError = (m) => new RealmError(E.REALM_E_LIMIT, m);
const NotFound = (m) => new RealmError(E.REALM_E_NOT_FOUND, m);
const TooSmall = (m) => new RealmError(E.REALM_E_BUFFER_TOO_SMALL, m);
const hex = (n) => `0x${n.toString(16)}`;

// ---- the C calls: a failure becomes a RealmError with the library's message minus its "realm_x: " -----

function c(rc) {
  if (rc !== 0) {
    const end = ERR.indexOf(0, 4);
    const msg = ERR.toString('utf8', 4, end < 0 ? ERR.length : end).replace(/^realm_[a-z0-9_]+: /, '');
    throw new RealmError(ERR.readInt32LE(0), msg);
  }
}

let textBuf = Buffer.alloc(4096);
/** The two-call protocol of realm.h into a host buffer -> the bytes without the NUL. */
function cText(call) {
  let rc = call(textBuf, textBuf.length, SIZE, ERR);
  if (rc === E.REALM_E_BUFFER_TOO_SMALL) {
    textBuf = Buffer.alloc(Number(SIZE[0]) * 2);
    rc = call(textBuf, textBuf.length, SIZE, ERR);
  }
  c(rc);
  return Buffer.from(textBuf.subarray(0, Number(SIZE[0]) - 1));
}

const infoBuf = Buffer.alloc(koffi.sizeof(types.realm_model_info));
/** realm_model_info as an object (a live call: a removed model is REALM_E_NOT_FOUND). */
function modelInfo(mid) {
  infoBuf.fill(0);
  infoBuf.writeUInt32LE(infoBuf.length, 0);
  c(lib.realm_model_info_get(mid, infoBuf, ERR));
  return koffi.decode(infoBuf, types.realm_model_info);
}

const dimsCache = new Map();          // model id -> { D, V, nCtxTrain } (ids are never reused)
function dims(mid) {
  let d = dimsCache.get(mid);
  if (!d) {
    const i = modelInfo(mid);
    d = { D: i.n_embd, V: i.n_vocab, nCtxTrain: i.n_ctx_train };
    dimsCache.set(mid, d);
  }
  return d;
}

// ---- the tenant ---------------------------------------------------------------------------------

const limits = workerData.limits;
const SESSION_PARAMS = {
  struct_size: C.REALM_SESSION_PARAMS_SIZE_V1, n_ctx: 0,
  precision: workerData.precision === 'fast' ? C.REALM_PRECISION_FAST : C.REALM_PRECISION_EXACT, device: null,
};
const slots = new BigUint64Array(workerData.slots);       // live session ids, for the main thread
const control = new Int32Array(workerData.control);       // [0]: 1 = cancel the running call
const T = {
  name: workerData.name,
  modelId: BigInt(workerData.modelId),
  handles: new Map(),        // handle -> { kind, id (bigint), model, nCtx }
  next: 1,
  maxHandles: limits.maxSessions + 1,
  lastError: '',             // the guest's view: the last import call's message
  lastFailure: '',           // the host's view: the last failed import of this call
  fault: null,               // a GuestStop thrown by an import during this call (it sticks)
  stepStarted: 0,
  deadline: Infinity,
  stepHost: 0,
  outBytes: 0,
  logBytes: 0,
  hostCalls: 0,
  hostSeconds: 0,
  computeSeconds: 0,
  importCalls: Object.create(null),
  memory: null,
  instance: null,
};

function addHandle(kind, obj) {
  if (T.handles.size >= T.maxHandles || T.next > 0x7FFFFFFF) {
    throw LimitError(`this guest holds ${T.handles.size} handles, its limit`);
  }
  const h = T.next++;
  T.handles.set(h, { kind, ...obj });
  return h;
}

function getHandle(kind, h) {
  const item = T.handles.get(h);
  if (item === undefined || item.kind !== kind) throw NotFound(`${kind} handle ${h} not found`);
  return item;
}

function sessionsLive() {
  return [...T.handles.values()].filter((x) => x.kind === SESSION);
}

function checkSessionRoom(nCtx) {
  const live = sessionsLive();
  if (live.length >= limits.maxSessions) throw LimitError(`this guest already holds ${live.length} sessions, its limit`);
  const held = live.reduce((a, s) => a + s.nCtx, 0);
  if (held + nCtx > limits.maxKvTokens) {
    throw LimitError(`n_ctx ${nCtx} would bring this guest's KV positions to ${held + nCtx}, over its limit of ${limits.maxKvTokens}`);
  }
}

function adoptSession(id, model, nCtx) {
  let h;
  try {
    h = addHandle(SESSION, { id, model, nCtx });
  } catch (e) {
    lib.realm_session_free(id, null);
    throw e;
  }
  const slot = slots.indexOf(0n);
  if (slot >= 0) slots[slot] = id;
  return h;
}

function freeSession(id) {
  const slot = slots.indexOf(id);
  c(lib.realm_session_free(id, ERR));
  if (slot >= 0) slots[slot] = 0n;
}

function compute(fn) {
  const t0 = performance.now();
  try {
    return fn();
  } finally {
    T.computeSeconds += (performance.now() - t0) / 1e3;
  }
}

function post(msg, transfer) {
  parentPort.postMessage(msg, transfer);
}

// ---- guest memory, for the duration of one import call -----------------------------------------

class GuestMemory {
  constructor(fn) {
    this.fn = fn;
    this.buf = T.memory.buffer;           // current: grow detaches the old one
    this.size = this.buf.byteLength;
  }

  /** Check [ptr, ptr + count * elsize) lies in memory (doubles: no wrap); returns ptr unsigned. */
  span(ptr, count, elsize, what) {
    ptr >>>= 0;
    const nbytes = count * elsize;
    if (ptr + nbytes > this.size) {
      throw new GuestFault(`realm.${this.fn}: ${what} [${hex(ptr)}, ${hex(ptr)} + ${nbytes}) lies outside the ` +
        `guest's memory of ${this.size} bytes`);
    }
    return ptr;
  }

  /** An out-parameter: non-NULL and inside memory. */
  required(ptr, elsize, what) {
    if (ptr >>> 0 === 0) throw ArgumentError(`${what} is NULL`);
    return this.span(ptr, 1, elsize, what);
  }

  bytes(ptr, nbytes, what) {             // a view: valid during this import call only
    ptr = this.span(ptr, nbytes, 1, what);
    return new Uint8Array(this.buf, ptr, nbytes);
  }

  readText(ptr, nbytes, what) {
    const raw = this.bytes(ptr, nbytes, what);
    if (!isUtf8(raw)) throw ArgumentError(`${what} is not valid UTF-8 (byte ${utf8ErrorAt(raw)} of ${nbytes})`);
    return raw;
  }

  /** int32[count] at ptr: a view when aligned, else a copy. */
  i32(ptr, count, what) {
    ptr = this.span(ptr, count, 4, what);
    if (ptr % 4 === 0) return new Int32Array(this.buf, ptr, count);
    return new Int32Array(new Uint8Array(this.buf, ptr, 4 * count).slice().buffer);
  }

  /** float32[count] at ptr (already span-checked): a view when aligned, else a copy. */
  f32(ptr, count) {
    ptr >>>= 0;
    if (ptr % 4 === 0) return new Float32Array(this.buf, ptr, count);
    return new Float32Array(new Uint8Array(this.buf, ptr, 4 * count).slice().buffer);
  }

  /** An output of float32[count] at ptr (span-checked): [array to fill, commit()]. */
  f32Out(ptr, count) {
    ptr >>>= 0;
    if (ptr % 4 === 0) return [new Float32Array(this.buf, ptr, count), () => {}];
    const tmp = new Float32Array(count);
    return [tmp, () => new Uint8Array(this.buf, ptr, 4 * count).set(new Uint8Array(tmp.buffer))];
  }

  write(ptr, data, what) {
    if (data.length) new Uint8Array(this.buf, this.span(ptr, data.length, 1, what), data.length).set(data);
  }

  writeU32(ptr, value, what) {
    new DataView(this.buf).setUint32(this.span(ptr, 1, 4, what), value, true);
  }

  writeI64(ptr, value, what) {
    new DataView(this.buf).setBigInt64(this.span(ptr, 1, 8, what), BigInt(value), true);
  }

  writeTyped(ptr, arr, what) {
    this.write(ptr, new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength), what);
  }
}

/** The byte offset where UTF-8 decoding fails (Python's UnicodeDecodeError.start). */
function utf8ErrorAt(b) {
  let i = 0;
  while (i < b.length) {
    const x = b[i];
    let n;
    let lo = 0x80;
    let hi = 0xbf;
    if (x < 0x80) { i++; continue; }
    if (x >= 0xc2 && x <= 0xdf) n = 1;
    else if (x >= 0xe0 && x <= 0xef) { n = 2; if (x === 0xe0) lo = 0xa0; if (x === 0xed) hi = 0x9f; }
    else if (x >= 0xf0 && x <= 0xf4) { n = 3; if (x === 0xf0) lo = 0x90; if (x === 0xf4) hi = 0x8f; }
    else return i;
    for (let k = 1; k <= n; k++) {
      const y = b[i + k];
      if (y === undefined || y < (k === 1 ? lo : 0x80) || y > (k === 1 ? hi : 0xbf)) return i;
    }
    i += n + 1;
  }
  return -1;
}

// ---- the protocols ------------------------------------------------------------------------------

/** The two-call protocol (realm_guest.h): size query, fill, or BUFFER_TOO_SMALL with the count. */
function twoCall(m, buf, cap, sizePtr, payload, count, elsize, what) {
  m.required(sizePtr, 4, 'size');
  buf >>>= 0;
  if (buf === 0 && cap === 0) {
    m.writeU32(sizePtr, count, 'size');
    return;
  }
  if (buf === 0) throw ArgumentError(`${what} is NULL with a capacity of ${cap}`);
  m.span(buf, cap, elsize, what);
  if (cap < count) {
    m.writeU32(sizePtr, count, 'size');
    throw TooSmall(`${what} holds ${cap}, ${count} needed`);
  }
  m.write(buf, payload, what);
  m.writeU32(sizePtr, count, 'size');
}

const withNul = (bytes) => {
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
};
const i32Bytes = (ids) => new Uint8Array(Int32Array.from(ids).buffer);

function flagsCheck(flags, allowed, what) {
  if (flags & ~allowed) throw ArgumentError(`unknown ${what} flags ${hex(flags >>> 0)} (known: ${hex(allowed)})`);
}

// ---- the imports (realm_guest.h; realm_embed/wasm/imports.py) ----------------------------------

const IMPL = {};

IMPL.abi_version = () => GUEST_ABI_VERSION;

IMPL.last_error = (m, text, cap, size) => {
  const payload = withNul(Buffer.from(T.lastError, 'utf8'));
  twoCall(m, text, cap, size, payload, payload.length, 1, 'text');
};

IMPL.emit = (m, text, n) => {
  const data = m.bytes(text, n, 'text').slice();
  if (T.outBytes + data.length > limits.maxOutputBytes) {
    throw LimitError(`the output budget of ${limits.maxOutputBytes} bytes per call is spent`);
  }
  T.outBytes += data.length;
  post({ type: 'emit', data }, [data.buffer]);
};

IMPL.log = (m, level, text, n) => {
  if (!(level >= 0 && level <= 3)) throw ArgumentError(`log level ${level} out of range [0, 3]`);
  m.span(text, n, 1, 'text');                                         // the whole line must be guest memory
  const line = Buffer.from(m.bytes(text, Math.min(n, LOG_LINE_BYTES), 'text')).toString('utf8');
  if (T.logBytes + [...line].length > limits.maxLogBytes) {
    throw LimitError(`the log budget of ${limits.maxLogBytes} bytes per call is spent`);
  }
  T.logBytes += [...line].length;                                     // characters, as Python's len()
  post({ type: 'log', level, text: line });
};

IMPL.now_us = () => BigInt(Math.floor((performance.now() - T.stepStarted) * 1e3));

IMPL.model = () => T.modelHandle;

IMPL.model_info = (m, handle, key, value) => {
  const mid = getHandle(MODEL, handle).id;
  m.required(value, 8, 'value');
  if (!(key in INFO)) throw ArgumentError(`unknown model_info key ${key} (known: 1..${N_INFO})`);
  const i = modelInfo(mid);
  m.writeI64(value, i[INFO[key]], 'value');
};

IMPL.eot_ids = (m, handle, ids, cap, n) => {
  const mid = getHandle(MODEL, handle).id;
  const info = JSON.parse(cText((b, bc, s, e) => lib.realm_model_info_string(mid, 3, b, bc, s, e)).toString('utf8'));
  const eot = [...info.eot_ids].sort((a, b) => a - b);
  twoCall(m, ids, cap, n, i32Bytes(eot), eot.length, 4, 'ids');
};

let idsBuf = new Int32Array(1024);
IMPL.tokenize = (m, handle, text, n, flags, ids, cap, nIds) => {
  const mid = getHandle(MODEL, handle).id;
  if (n > MAX_TEXT_BYTES) throw LimitError(`text of ${n} bytes is over the limit of ${MAX_TEXT_BYTES}`);
  const s = m.readText(text, n, 'text');
  flagsCheck(flags, 3, 'tokenize');
  let rc = lib.realm_tokenize(mid, s, n, flags, idsBuf, idsBuf.length, SIZE, ERR);
  if (rc === E.REALM_E_BUFFER_TOO_SMALL) {
    idsBuf = new Int32Array(Number(SIZE[0]) + 16);
    rc = lib.realm_tokenize(mid, s, n, flags, idsBuf, idsBuf.length, SIZE, ERR);
  }
  c(rc);
  const count = Number(SIZE[0]);
  twoCall(m, ids, cap, nIds, new Uint8Array(idsBuf.buffer, 0, 4 * count), count, 4, 'ids');
};

IMPL.detokenize = (m, handle, ids, nIds, text, cap, size) => {
  const mid = getHandle(MODEL, handle).id;
  if (nIds > MAX_DETOKENIZE_IDS) throw LimitError(`n_ids ${nIds} is over the limit of ${MAX_DETOKENIZE_IDS}`);
  const a = m.i32(ids, nIds, 'ids');
  const payload = withNul(cText((b, bc, s, e) => lib.realm_detokenize(mid, a, nIds, b, bc, s, e)));
  twoCall(m, text, cap, size, payload, payload.length, 1, 'text');
};

IMPL.token_piece = (m, handle, token, piece, cap, size) => {
  const mid = getHandle(MODEL, handle).id;
  const payload = withNul(cText((b, bc, s, e) => lib.realm_token_piece(mid, token, b, bc, s, e)));
  twoCall(m, piece, cap, size, payload, payload.length, 1, 'piece');
};

IMPL.chat_template = (m, handle, messages, n, flags, text, cap, size) => {
  const mid = getHandle(MODEL, handle).id;
  if (!(n >= 1 && n <= MAX_MESSAGES)) throw ArgumentError(`n_messages ${n} out of range [1, ${MAX_MESSAGES}]`);
  const raw = new Uint32Array(m.i32(messages, 4 * n, 'messages').slice().buffer);
  flagsCheck(flags, 1, 'chat_template');
  const msgs = [];
  let total = 0;
  for (let i = 0; i < n; i++) {
    const [role, roleLen, content, contentLen] = raw.subarray(4 * i, 4 * i + 4);
    total += roleLen + contentLen;
    if (total > MAX_TEXT_BYTES) throw LimitError(`messages of more than ${MAX_TEXT_BYTES} bytes`);
    msgs.push({
      role: Buffer.from(m.readText(role, roleLen, `messages[${i}].role`)).toString('utf8'),
      content: Buffer.from(m.readText(content, contentLen, `messages[${i}].content`)).toString('utf8'),
    });
  }
  const json = JSON.stringify(msgs);
  const payload = withNul(cText((b, bc, s, e) => lib.realm_chat_template_json(mid, json, flags, b, bc, s, e)));
  twoCall(m, text, cap, size, payload, payload.length, 1, 'text');
};

IMPL.session_create = (m, handle, nCtx, out) => {
  const mid = getHandle(MODEL, handle).id;
  m.required(out, 4, 'session');
  const nTrain = dims(mid).nCtxTrain;
  if (nCtx > nTrain) throw RangeErr(`n_ctx ${nCtx} exceeds the model's context length ${nTrain}`);
  const eff = nCtx || Math.min(DEFAULT_N_CTX, nTrain);
  checkSessionRoom(eff);
  // the tenant's precision, picked by the host (guest.cjs validated it): never the guest's choice
  SESSION_PARAMS.n_ctx = nCtx;
  c(lib.realm_session_create_ex(mid, SESSION_PARAMS, OUT64, ERR));
  m.writeU32(out, adoptSession(OUT64[0], mid, eff), 'session');
};

IMPL.session_fork = (m, handle, out) => {
  const s = getHandle(SESSION, handle);
  m.required(out, 4, 'forked');
  checkSessionRoom(s.nCtx);
  c(lib.realm_session_fork(s.id, OUT64, ERR));           // keeps the parent's precision
  m.writeU32(out, adoptSession(OUT64[0], s.model, s.nCtx), 'forked');
};

IMPL.session_free = (m, handle) => {
  if (handle !== 0) {
    const s = getHandle(SESSION, handle);
    T.handles.delete(handle);
    freeSession(s.id);
  }
};

IMPL.session_reset = (m, handle) => c(lib.realm_session_reset(getHandle(SESSION, handle).id, ERR));

IMPL.session_truncate = (m, handle, n) => c(lib.realm_session_truncate(getHandle(SESSION, handle).id, n, ERR));

IMPL.session_n_tokens = (m, handle, out) => {
  const s = getHandle(SESSION, handle);
  m.required(out, 4, 'n_tokens');
  c(lib.realm_session_n_tokens(s.id, OUT32, ERR));
  m.writeU32(out, OUT32[0], 'n_tokens');
};

// compute --------------------------------------------------------------------------------------

/** hidden [T, D] checked -> the float32 array to pass (all rows, or the last one). */
function hiddenIn(m, s, hidden, T_, nEmbd, lastRow = false) {
  const { D } = dims(s.model);
  if (nEmbd !== D) throw ArgumentError(`n_embd ${nEmbd} is not the model's D = ${D}`);
  if (T_ === 0) throw ArgumentError('n_tokens is 0: at least one token is needed');
  m.span(hidden, T_ * D, 4, 'hidden');
  if (lastRow) return m.f32((hidden >>> 0) + 4 * (T_ - 1) * D, D);
  return m.f32(hidden, T_ * D);
}

function outCheck(m, ptr, cap, need, what) {
  m.span(ptr, cap, 4, what);
  if (ptr >>> 0 === 0 && need) throw ArgumentError(`${what} is NULL`);
  if (cap < need) throw TooSmall(`${what} holds ${cap} floats, ${need} needed`);
}

function idsIn(m, ids, T_) {
  if (T_ === 0) throw ArgumentError('n_tokens is 0: at least one token is needed');
  return m.i32(ids, T_, 'ids');
}

/** bias [n] -> { ids: Int32Array, values: Float32Array } or null. */
function biasIn(m, s, bias, nBias) {
  const { V } = dims(s.model);
  if (nBias === 0) return null;
  if (nBias > V) throw ArgumentError(`n_bias ${nBias} exceeds the vocabulary size ${V}`);
  const raw = m.bytes(bias, 8 * nBias, 'bias').slice();
  const ids = new Int32Array(nBias);
  const values = new Float32Array(nBias);
  const dv = new DataView(raw.buffer);
  for (let i = 0; i < nBias; i++) {
    ids[i] = dv.getInt32(8 * i, true);
    values[i] = dv.getFloat32(8 * i + 4, true);
  }
  const bad = ids.findIndex((id) => id < 0 || id >= V);
  if (bad >= 0) throw RangeErr(`bias id ${ids[bad]} out of range [0, ${V})`);
  if (values.some((v) => Number.isNaN(v) || v === Infinity)) {
    throw ArgumentError('a bias value is NaN or +inf (use -inf to ban a token)');
  }
  return { ids, values };
}

function topKCheck(m, s, k, ids, values, nOut) {
  const { V } = dims(s.model);
  if (k === 0) throw ArgumentError('k is 0: at least one candidate is needed');
  const n = Math.min(k, V);
  m.span(ids, n, 4, 'ids');
  m.span(values, n, 4, 'values');
  m.required(nOut, 4, 'n_out');
  if (ids >>> 0 === 0 || values >>> 0 === 0) throw ArgumentError('ids or values is NULL');
}

let logitsBuf = new Float32Array(1);
let topVals = new Float32Array(1);
let topIds = new Int32Array(1);
function scratchLogits(V) {
  if (logitsBuf.length < V) logitsBuf = new Float32Array(V);
  return logitsBuf.subarray(0, V);
}

/** logits [V] (host scratch) + bias -> the k largest, written to the guest. */
function topKOut(m, s, logits, bias, k, ids, values, nOut) {
  const { V } = dims(s.model);
  if (bias) {
    for (let i = 0; i < bias.ids.length; i++) logits[bias.ids[i]] += bias.values[i];   // f32 adds, in order
  }
  const n = Math.min(k, V);
  if (topVals.length < n) { topVals = new Float32Array(n); topIds = new Int32Array(n); }
  c(lib.realm_top_k(logits, V, n, topVals, topIds, SIZE, ERR));
  const got = Number(SIZE[0]);
  m.writeTyped(ids, topIds.subarray(0, got), 'ids');
  m.writeTyped(values, topVals.subarray(0, got), 'values');
  m.writeU32(nOut, got, 'n_out');
}

IMPL.embed_tokens = (m, handle, ids, T_, out, cap) => {
  const s = getHandle(SESSION, handle);
  const { D } = dims(s.model);
  const tokens = idsIn(m, ids, T_);
  outCheck(m, out, cap, T_ * D, 'out');
  const [o, commit] = m.f32Out(out, T_ * D);
  compute(() => c(lib.realm_embed_tokens(s.id, tokens, T_, o, T_ * D, ERR)));
  commit();
};

IMPL.forward_layer = (m, handle, layer, pos, hidden, T_, nEmbd, out, cap) => {
  const s = getHandle(SESSION, handle);
  const x = hiddenIn(m, s, hidden, T_, nEmbd);
  outCheck(m, out, cap, T_ * nEmbd, 'out');
  const [o, commit] = m.f32Out(out, T_ * nEmbd);
  compute(() => c(lib.realm_forward_layer(s.id, layer, pos, x, T_, nEmbd, o, T_ * nEmbd, ERR)));
  commit();
};

IMPL.compute_logits = (m, handle, hidden, T_, nEmbd, logits, cap) => {
  const s = getHandle(SESSION, handle);
  const { V } = dims(s.model);
  const x = hiddenIn(m, s, hidden, T_, nEmbd);
  outCheck(m, logits, cap, T_ * V, 'logits');
  const [o, commit] = m.f32Out(logits, T_ * V);
  compute(() => c(lib.realm_compute_logits(s.id, x, T_, nEmbd, o, T_ * V, ERR)));
  commit();
};

IMPL.logits_top_k = (m, handle, hidden, T_, nEmbd, bias, nBias, k, ids, values, nOut) => {
  const s = getHandle(SESSION, handle);
  const x = hiddenIn(m, s, hidden, T_, nEmbd, true);
  const b = biasIn(m, s, bias, nBias);
  topKCheck(m, s, k, ids, values, nOut);
  const { V } = dims(s.model);
  compute(() => {
    const logits = scratchLogits(V);
    c(lib.realm_compute_logits(s.id, x, 1, nEmbd, logits, V, ERR));
    topKOut(m, s, logits, b, k, ids, values, nOut);
  });
};

IMPL.decode = (m, handle, ids, T_, flags, logits, cap) => {
  const s = getHandle(SESSION, handle);
  const { V } = dims(s.model);
  const tokens = idsIn(m, ids, T_);
  flagsCheck(flags, 1, 'decode');
  const need = flags & 1 ? T_ * V : V;
  outCheck(m, logits, cap, need, 'logits');
  const [o, commit] = m.f32Out(logits, need);
  compute(() => c(lib.realm_decode(s.id, tokens, T_, flags, o, need, ERR)));
  commit();
};

IMPL.decode_top_k = (m, handle, ids, T_, bias, nBias, k, topIdsPtr, topValuesPtr, nOut) => {
  const s = getHandle(SESSION, handle);
  const tokens = idsIn(m, ids, T_);
  const b = biasIn(m, s, bias, nBias);
  topKCheck(m, s, k, topIdsPtr, topValuesPtr, nOut);
  const { V } = dims(s.model);
  compute(() => {
    const logits = scratchLogits(V);
    c(lib.realm_decode(s.id, tokens, T_, 0, logits, V, ERR));
    topKOut(m, s, logits, b, k, topIdsPtr, topValuesPtr, nOut);
  });
};

for (const name of SIGNATURES.keys()) {
  if (!IMPL[name]) throw new Error(`guest_worker: no implementation of realm.${name}`);
}

// ---- the wrapper: arguments, budgets, errors ----------------------------------------------------

function pastDeadline() {
  return new GuestLimitError(`guest ${T.name} passed its deadline of ${limits.timeoutMs} ms per call`, 'deadline');
}

function hostFunction(name, sig) {
  const unsigned = [...sig.params].map((k) => k === 'u' || k === 'p');
  const fn = IMPL[name];
  return (...args) => {
    const started = performance.now();
    try {
      if (T.fault) throw T.fault;        // a guest that caught a trap (wasm exception handling) gets nothing more
      if (Atomics.load(control, 0)) throw new GuestStop(E.REALM_E_LIMIT, `guest ${T.name}: the call was cancelled by the host`, 'cancelled');
      if (started >= T.deadline) throw pastDeadline();
      if (!UNBUDGETED.has(name) && T.stepHost >= limits.hostTimeMs) {
        throw LimitError(`the host-time budget of ${limits.hostTimeMs} ms for this call is spent`);
      }
      for (let i = 0; i < args.length; i++) if (unsigned[i]) args[i] >>>= 0;
      const result = fn(new GuestMemory(name), ...args);
      if (name !== 'last_error') T.lastError = '';
      return result === undefined ? 0 : result;
    } catch (e) {
      if (e instanceof GuestStop) {
        T.fault = e;
        throw e;                                             // a trap: the guest's call ends here
      }
      if (e instanceof RealmError) {
        T.lastError = T.lastFailure = `realm.${name}: ${e.message}`;
        return e.code;
      }
      T.lastError = T.lastFailure = `realm.${name}: internal error: ${e && e.name}: ${e && e.message}`;
      return E.REALM_E_INTERNAL;
    } finally {
      const dt = performance.now() - started;
      T.importCalls[name] = (T.importCalls[name] || 0) + 1;
      T.stepHost += dt;
      T.hostCalls++;
      T.hostSeconds += dt / 1e3;
    }
  };
}

const realmImports = {};
for (const [name, sig] of SIGNATURES) realmImports[name] = hostFunction(name, sig);

// ---- calls into the guest -----------------------------------------------------------------------

function beginStep() {
  T.stepStarted = performance.now();
  T.fault = null;
  T.lastFailure = '';
  T.stepHost = 0;
  T.outBytes = 0;
  T.logBytes = 0;
}

/** What a failed call into the guest raises: the import's fault (it sticks even if the guest
 *  caught it with wasm exception handling), else a trap of the guest's own. */
function classify(e) {
  const fault = T.fault;
  T.fault = null;
  if (fault) return fault;
  if (e instanceof RealmError) return e;
  if (performance.now() >= T.deadline) return pastDeadline();
  return new GuestTrap(`guest ${T.name} trapped: ${e && e.message}`);
}

function callExport(name, args) {
  const fn = T.exports[name];
  if (typeof fn !== 'function') throw NotFound(`guest ${T.name} has no exported function '${name}'`);
  beginStep();
  let result;
  try {
    result = fn(...args);
  } catch (e) {
    throw classify(e);
  }
  if (T.fault) throw classify(null);
  return result;
}

function instantiate(module, memory) {
  const pages = Math.floor(limits.memoryMiB * 16);
  if (memory.min > pages) {
    throw new GuestLimitError(`guest ${T.name} needs ${memory.min} pages (${(memory.min / 16).toFixed(1)} MiB) ` +
      `of memory at start, more than its limit of ${limits.memoryMiB} MiB`, 'memory');
  }
  const top = Math.min(memory.max === null ? pages : memory.max, pages, 65536);
  T.memory = new WebAssembly.Memory({ initial: memory.min, maximum: top });
  T.modelHandle = addHandle(MODEL, { id: T.modelId });
  beginStep();
  try {
    T.instance = new WebAssembly.Instance(module, { realm: realmImports, env: { memory: T.memory } });
  } catch (e) {
    throw classify(e);
  }
  T.exports = T.instance.exports;
}

/** The generator convention of realm_guest.h: realm_guest_input, _generate, _result. */
function generate(o) {
  const input = new Uint8Array(o.prompt.length + o.extra.length);
  input.set(o.prompt);
  input.set(o.extra, o.prompt.length);
  const before = [T.hostCalls, T.hostSeconds, T.computeSeconds];
  const ptr = callExport('realm_guest_input', [input.length]) >>> 0;
  if (ptr === 0) throw LimitError(`guest ${T.name} has no room for an input of ${input.length} bytes`);
  new GuestMemory('realm_guest_input').write(ptr, input, 'input');
  const rc = callExport('realm_guest_generate', [o.prompt.length, o.extra.length, o.maxTokens, o.flags,
    o.temperature, o.topK, o.topP, BigInt.asIntN(64, BigInt(o.seed))]);
  const failure = T.lastFailure;
  const res = callExport('realm_guest_result', []) >>> 0;
  const m = new GuestMemory('realm_guest_result');
  const dv = new DataView(m.bytes(res, 16, 'result').slice().buffer);
  const [finish, nPrompt, nGen, ids] = [dv.getInt32(0, true), dv.getUint32(4, true), dv.getUint32(8, true), dv.getUint32(12, true)];
  if (rc < 0) {
    throw new RealmError(rc, `guest ${T.name} returned ${rc}: ${failure || 'no import failed'}`);
  }
  return {
    finish, nPrompt, tokenIds: [...m.i32(ids, nGen, 'ids')],
    hostCalls: T.hostCalls - before[0], hostSeconds: T.hostSeconds - before[1],
    computeSeconds: T.computeSeconds - before[2], memoryBytes: T.memory.buffer.byteLength,
  };
}

function state() {
  return {
    lastError: T.lastError, lastFailure: T.lastFailure, memoryBytes: T.memory ? T.memory.buffer.byteLength : 0,
    sessions: sessionsLive().map((s) => s.id), hostCalls: T.hostCalls, hostSeconds: T.hostSeconds,
    computeSeconds: T.computeSeconds, importCalls: { ...T.importCalls },
  };
}

function closeAll() {
  for (const [h, item] of T.handles) {
    if (item.kind === SESSION) {
      T.handles.delete(h);
      try { freeSession(item.id); } catch { /* already gone */ }
    }
  }
}

parentPort.on('message', (msg) => {
  const { id, op } = msg;
  T.deadline = msg.timeoutMs === undefined ? Infinity : performance.now() + msg.timeoutMs;
  let value;
  try {
    switch (op) {
      case 'init': instantiate(msg.module, msg.memory); value = null; break;
      case 'call': value = callExport(msg.name, msg.args); break;
      case 'generate': value = generate(msg); break;
      case 'read': value = new GuestMemory('read').bytes(msg.ptr, msg.n, 'bytes').slice(); break;
      case 'write': new GuestMemory('write').write(msg.ptr, msg.data, 'bytes'); value = null; break;
      case 'state': value = state(); break;
      case 'close': closeAll(); value = null; break;
      default: throw new Error(`unknown op ${op}`);
    }
  } catch (e) {
    post({ type: 'done', id, ok: false, error: serializeError(e), state: state() });
    return;
  } finally {
    T.deadline = Infinity;
  }
  post({ type: 'done', id, ok: true, value, state: state() });
});
