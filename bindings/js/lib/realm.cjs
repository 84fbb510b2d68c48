'use strict';
// The idiomatic layer over lib/native.cjs: classes, typed arrays, RealmError, and a generate()
// that runs on a libuv pool thread and streams through an async iterator.
//
//   const { Realm, Model } = require('realm-embed');
//   Realm.init();                                   // once, from the main thread (~1 s: Python + torch)
//   const model = Model.storeDefault();
//   const session = model.createSession();
//   const prompt = model.applyChatTemplate([{ role: 'user', content: 'What is the capital of France?' }]);
//   for await (const piece of session.generate(prompt, { maxTokens: 32 })) process.stdout.write(piece);
//
// Shapes (row-major float32, as in realm.h): T tokens, D hidden size, V vocabulary size.
// Synchronous methods block the calling thread for the call (a decode step: milliseconds);
// generate() and the *Async methods (decodeAsync, Model.storeFileAsync, tokenizeAsync, ...) run
// on a libuv pool thread and do not block the event loop.

const {
  native, koffi, types, E, C, lib, loadedLib, RealmError, ErrorCode, check, fail, callText,
  ERR, SIZE, OUT64, OUT32, u32, u64, describe, ids32, f32, floats, str, hex,
  callAsync, callAsyncRc, callTextAsync, signalOf, asyncCopy, asyncFloats, ensureStarted, markStarted,
} = require('./call.cjs');
const { Generation, Sampler, topK } = require('./generate.cjs');

// ---- GC: objects dropped without close() are freed by the finalizer ---------------------------

const sessionGC = new FinalizationRegistry((id) => {
  const l = loadedLib();
  if (l) l.realm_session_free(id, null);
});
const modelGC = new FinalizationRegistry((id) => {
  // The model's sessions may be collected in the same cycle, their finalizers after this one:
  // on REALM_E_BUSY try once more after them.
  const l = loadedLib();
  if (l && l.realm_model_remove(id, null) === E.REALM_E_BUSY) {
    setImmediate(() => l.realm_model_remove(id, null)).unref();
  }
});

const dispose = Symbol.dispose || Symbol.for('nodejs.dispose');

// ---- Realm -------------------------------------------------------------------------------------

class Realm {
  /** Start the runtime now (about 1 s: Python and torch).  Call once, from the main thread. */
  static init() {
    check(lib().realm_init(ERR));
    markStarted();
  }

  /** The library's version, "MAJOR.MINOR.PATCH". */
  static version() {
    return lib().realm_version();
  }

  /** The library's version as a number, MAJOR * 1000000 + MINOR * 1000 + PATCH. */
  static versionNumber() {
    return lib().realm_version_number();
  }

  /** The library's ABI version (equal to native.ABI_VERSION, or loading fails). */
  static abiVersion() {
    return lib().realm_abi_version();
  }

  /** The path librealm.so was loaded from. */
  static libraryPath() {
    lib();
    return native.loadedPath();
  }
}

// ---- Model -------------------------------------------------------------------------------------

function modelOptions(where, options) {
  const id = options && options.id !== undefined ? u64(where, 'options.id', options.id) : 0n;
  return id;
}

function modelBytes(where, bytes) {
  let data = bytes;
  if (data instanceof ArrayBuffer) data = new Uint8Array(data);
  if (!(data instanceof Uint8Array)) {
    throw fail(E.REALM_E_ARG, `${where}: bytes must be a Buffer, Uint8Array or ArrayBuffer, got ${describe(bytes)}`);
  }
  if (data.length === 0) throw fail(E.REALM_E_ARG, `${where}: bytes is empty`);
  return data;
}

// Model.store*Async: check the arguments and the signal now, start the runtime on this thread if
// nothing has yet (it must not start on a pool thread), then store on a pool thread.
function storeAsync(where, options, args) {
  return new Promise((resolve, reject) => {
    const id = modelOptions(where, options);
    const signal = signalOf(where, options);
    const a = args();
    if (signal && signal.aborted) throw signal.reason;
    ensureStarted();
    const out = new BigUint64Array(1);
    resolve(callAsync(a.fn, [...a.args, id, out]).then(() => new Model(out[0])));
  });
}

class Model {
  #id;
  #closed = false;
  #info = null;
  #pending = 0;                                       // *Async calls not settled yet

  /** @internal  Use Model.store / storeFile / storeDefault. */
  constructor(id) {
    this.#id = id;
    modelGC.register(this, id, this);
  }

  /** Store a GGUF from memory (copied).  options.id: a requested id (default: from the content). */
  static store(bytes, options) {
    const id = modelOptions('Model.store', options);
    const data = modelBytes('Model.store', bytes);
    check(lib().realm_model_store(data, data.length, id, OUT64, ERR));
    return new Model(OUT64[0]);
  }

  /** Store a GGUF file (memory-mapped, not copied). */
  static storeFile(path, options) {
    const id = modelOptions('Model.storeFile', options);
    check(lib().realm_model_store_file(str('Model.storeFile', 'path', path), id, OUT64, ERR));
    return new Model(OUT64[0]);
  }

  /** Store the embedded default model (SmolLM2-135M-Instruct Q4_1). */
  static storeDefault(options) {
    const id = modelOptions('Model.storeDefault', options);
    check(lib().realm_model_store_default(id, OUT64, ERR));
    return new Model(OUT64[0]);
  }

  /** Model.store on a libuv pool thread: Promise<Model>.  The bytes are copied first (the library
   *  reads them during the call), so the caller may reuse its buffer at once. */
  static storeAsync(bytes, options) {
    return storeAsync('Model.storeAsync', options, () => {
      const data = asyncCopy(modelBytes('Model.storeAsync', bytes));
      return { fn: lib().realm_model_store, args: [data, data.length] };
    });
  }

  /** Model.storeFile on a libuv pool thread: Promise<Model>. */
  static storeFileAsync(path, options) {
    return storeAsync('Model.storeFileAsync', options, () => ({
      fn: lib().realm_model_store_file, args: [str('Model.storeFileAsync', 'path', path)],
    }));
  }

  /** Model.storeDefault on a libuv pool thread: Promise<Model>. */
  static storeDefaultAsync(options) {
    return storeAsync('Model.storeDefaultAsync', options, () => ({ fn: lib().realm_model_store_default, args: [] }));
  }

  /** The model's id (bigint). */
  get id() {
    return this.#id;
  }

  get closed() {
    return this.#closed;
  }

  /** @internal the id, or a REALM_E_NOT_FOUND error once closed. */
  handle(where) {
    if (this.#closed) throw fail(E.REALM_E_NOT_FOUND, `${where}: model ${hex(this.#id)} is closed`);
    return this.#id;
  }

  /** *Async calls on this model (tokenizeAsync, detokenizeAsync, applyChatTemplateAsync) not settled yet. */
  get pendingCalls() {
    return this.#pending;
  }

  // One *Async call: checks (prepare) now, then work(id) on pool threads.  Calls on a model read
  // no state that changes, so they run at once, side by side.  The model cannot close meanwhile
  // (close() is REALM_E_BUSY), and the callbacks hold this object, so no finalizer frees it.
  #async(where, options, prepare) {
    return new Promise((resolve, reject) => {
      const id = this.handle(where);
      const signal = signalOf(where, options);
      const work = prepare();
      if (signal && signal.aborted) throw signal.reason;
      this.#pending++;
      const settle = () => { this.#pending--; };
      let p;
      try {
        p = work(id);
      } catch (e) {
        p = Promise.reject(e);
      }
      p.then((v) => { settle(); resolve(v); }, (e) => { settle(); reject(e); });
    });
  }

  /** Model numbers: { nLayer, nEmbd, nVocab, ..., architecture, name, bytesByType }. */
  info() {
    if (this.#info) {
      this.handle('Model.info');
      return { ...this.#info };
    }
    const id = this.handle('Model.info');
    const buf = Buffer.alloc(koffi.sizeof(types.realm_model_info));
    buf.writeUInt32LE(buf.length, 0);
    check(lib().realm_model_info_get(id, buf, ERR));
    const r = koffi.decode(buf, types.realm_model_info);
    const text = (key) => callText((b, cap, size, err) => lib().realm_model_info_string(id, key, b, cap, size, err));
    const json = JSON.parse(text(C.REALM_MODEL_INFO_JSON));
    this.#info = Object.freeze({
      id: BigInt(r.id), architecture: text(C.REALM_MODEL_ARCHITECTURE), name: text(C.REALM_MODEL_NAME),
      nLayer: r.n_layer, nEmbd: r.n_embd, nFf: r.n_ff, nHead: r.n_head, nHeadKv: r.n_head_kv,
      headDim: r.head_dim, nRot: r.n_rot, nVocab: r.n_vocab, nCtxTrain: r.n_ctx_train,
      nTensors: r.n_tensors, bosId: r.bos_id, eosId: r.eos_id, hasChatTemplate: r.has_chat_template === 1,
      ropeFreqBase: r.rope_freq_base, rmsEps: r.rms_eps, totalBytes: Number(r.total_bytes),
      bytesByType: json.bytes_by_type || {},
    });
    return { ...this.#info };
  }

  /** Every tensor name, in file order. */
  tensorNames() {
    const id = this.handle('Model.tensorNames');
    const n = this.info().nTensors;
    const names = new Array(n);
    for (let i = 0; i < n; i++) {
      names[i] = callText((b, cap, size, err) => lib().realm_model_tensor_name(id, i, b, cap, size, err));
    }
    return names;
  }

  /** { name, shape: number[], nElements, ggmlType, nBytes } (shape in numpy order, outermost first). */
  tensorInfo(name) {
    const id = this.handle('Model.tensorInfo');
    const buf = Buffer.alloc(koffi.sizeof(types.realm_tensor_info));
    buf.writeUInt32LE(buf.length, 0);
    check(lib().realm_tensor_info_get(id, str('Model.tensorInfo', 'name', name), buf, ERR));
    const r = koffi.decode(buf, types.realm_tensor_info);
    return {
      name, shape: r.shape.slice(0, r.n_dims).map(Number), nElements: Number(r.n_elements),
      ggmlType: r.ggml_type, nBytes: Number(r.n_bytes),
    };
  }

  /** The tensor dequantized to float32, row-major; the array carries its shape as .shape. */
  tensor(name) {
    const id = this.handle('Model.tensor');
    const t = this.tensorInfo(name);
    const out = new Float32Array(t.nElements);
    check(lib().realm_tensor_get_f32(id, name, out, out.length, SIZE, ERR));
    Object.defineProperty(out, 'shape', { value: Object.freeze(t.shape), enumerable: false });
    return out;
  }

  /** text -> token ids.  Defaults as realm_generate: add BOS/EOS as the model asks, parse control tokens. */
  tokenize(text, { addSpecial = true, parseSpecial = true } = {}) {
    const id = this.handle('Model.tokenize');
    const bytes = Buffer.from(str('Model.tokenize', 'text', text), 'utf8');
    const flags = (addSpecial ? C.REALM_TOKENIZE_ADD_SPECIAL : 0) | (parseSpecial ? C.REALM_TOKENIZE_PARSE_SPECIAL : 0);
    let ids = new Int32Array(bytes.length + 16);      // at most one token per byte, plus BOS/EOS
    let rc = lib().realm_tokenize(id, bytes, bytes.length, flags, ids, ids.length, SIZE, ERR);
    if (rc === E.REALM_E_BUFFER_TOO_SMALL) {
      ids = new Int32Array(Number(SIZE[0]));
      rc = lib().realm_tokenize(id, bytes, bytes.length, flags, ids, ids.length, SIZE, ERR);
    }
    check(rc);
    return ids.slice(0, Number(SIZE[0]));
  }

  /** tokenize() on a libuv pool thread: Promise<Int32Array>.  options: as tokenize's, and signal. */
  tokenizeAsync(text, options = {}) {
    const where = 'Model.tokenizeAsync';
    return this.#async(where, options, () => {
      const { addSpecial = true, parseSpecial = true } = options || {};
      const bytes = Buffer.from(str(where, 'text', text), 'utf8');
      const flags = (addSpecial ? C.REALM_TOKENIZE_ADD_SPECIAL : 0) | (parseSpecial ? C.REALM_TOKENIZE_PARSE_SPECIAL : 0);
      return async (id) => {
        const n = new BigUint64Array(1);
        let ids = new Int32Array(new ArrayBuffer(4 * (bytes.length + 16)));
        let [rc, err] = await callAsyncRc(lib().realm_tokenize, [id, bytes, bytes.length, flags, ids, ids.length, n]);
        if (rc === E.REALM_E_BUFFER_TOO_SMALL) {
          ids = new Int32Array(new ArrayBuffer(4 * Number(n[0])));
          [rc, err] = await callAsyncRc(lib().realm_tokenize, [id, bytes, bytes.length, flags, ids, ids.length, n]);
        }
        check(rc, err);
        return ids.slice(0, Number(n[0]));
      };
    });
  }

  /** token ids -> text (bytes that are not valid UTF-8 become U+FFFD). */
  detokenize(ids) {
    const id = this.handle('Model.detokenize');
    const a = ids32('Model.detokenize', 'ids', ids);
    return callText((b, cap, size, err) => lib().realm_detokenize(id, a, a.length, b, cap, size, err));
  }

  /** detokenize() on a libuv pool thread: Promise<string>.  options: signal. */
  detokenizeAsync(ids, options) {
    const where = 'Model.detokenizeAsync';
    return this.#async(where, options, () => {
      const a = asyncCopy(ids32(where, 'ids', ids));
      return (id) => callTextAsync((b, cap, size) => callAsyncRc(lib().realm_detokenize, [id, a, a.length, b, cap, size]),
        64 + a.length * 8);                              // most tokens are a few bytes; else a second call
    });
  }

  /** The raw bytes of one token (may be part of a UTF-8 character). */
  tokenPiece(token) {
    const id = this.handle('Model.tokenPiece');
    if (!Number.isInteger(token) || token < -0x80000000 || token > 0x7FFFFFFF) {
      throw fail(E.REALM_E_ARG, `Model.tokenPiece: token must be a 32-bit integer token id, got ${describe(token)}`);
    }
    const t = token;
    let buf = Buffer.alloc(64);
    let rc = lib().realm_token_piece(id, t, buf, buf.length, SIZE, ERR);
    if (rc === E.REALM_E_BUFFER_TOO_SMALL) {
      buf = Buffer.alloc(Number(SIZE[0]));
      rc = lib().realm_token_piece(id, t, buf, buf.length, SIZE, ERR);
    }
    check(rc);
    return Buffer.from(buf.subarray(0, Number(SIZE[0]) - 1));
  }

  /** Render the model's chat template: messages [{ role, content }, ...] -> prompt text. */
  applyChatTemplate(messages, { addGenerationPrompt = true } = {}) {
    const id = this.handle('Model.applyChatTemplate');
    if (!Array.isArray(messages)) {
      throw fail(E.REALM_E_ARG, `Model.applyChatTemplate: messages must be an array of { role, content }, got ${describe(messages)}`);
    }
    const json = JSON.stringify(messages);
    const flags = addGenerationPrompt ? C.REALM_CHAT_ADD_GENERATION_PROMPT : 0;
    return callText((b, cap, size, err) => lib().realm_chat_template_json(id, json, flags, b, cap, size, err));
  }

  /** applyChatTemplate() on a libuv pool thread: Promise<string>.  options: as applyChatTemplate's, and signal. */
  applyChatTemplateAsync(messages, options = {}) {
    const where = 'Model.applyChatTemplateAsync';
    return this.#async(where, options, () => {
      const { addGenerationPrompt = true } = options || {};
      if (!Array.isArray(messages)) {
        throw fail(E.REALM_E_ARG, `${where}: messages must be an array of { role, content }, got ${describe(messages)}`);
      }
      const json = JSON.stringify(messages);            // koffi copies the string before the call
      const flags = addGenerationPrompt ? C.REALM_CHAT_ADD_GENERATION_PROMPT : 0;
      return (id) => callTextAsync((b, cap, size) => callAsyncRc(lib().realm_chat_template_json, [id, json, flags, b, cap, size]));
    });
  }

  /** A new session (its own KV cache of nCtx positions; 0 = min(2048, nCtxTrain)).
   *  precision: 'exact' (default) or 'fast' (4-bit weights, bf16 activations); device: 'cpu'
   *  (default), 'cuda' or 'cuda:N' (REALM_E_UNSUPPORTED without CUDA). */
  createSession(options) {
    return Session.create(this, options);
  }

  /** Drop this object's reference to the model (the last one frees it).  Idempotent.
   *  Throws REALM_E_BUSY (and stays open) while sessions use the model or its *Async calls are
   *  pending. */
  close() {
    if (this.#closed) return;
    if (this.#pending) {
      throw fail(E.REALM_E_BUSY, `Model.close: model ${hex(this.#id)} has ${this.#pending} async call(s) pending; ` +
        'await them first');
    }
    check(lib().realm_model_remove(this.#id, ERR));
    this.#closed = true;
    modelGC.unregister(this);
  }

  /** The C name of close(). */
  remove() {
    this.close();
  }

  [dispose]() {
    this.close();
  }
}

// ---- Session -----------------------------------------------------------------------------------

const PRECISIONS = Object.freeze({ exact: C.REALM_PRECISION_EXACT, fast: C.REALM_PRECISION_FAST });

class Session {
  #id;
  #model;
  #closed = false;
  #busy = false;
  #dims;
  #jobs = [];                                         // *Async calls waiting their turn, in call order
  #running = false;                                   // one of them is on a pool thread now
  #pending = 0;                                       // waiting + running

  /** @internal  Use Session.create(model) or model.createSession(). */
  constructor(id, model) {
    this.#id = id;
    this.#model = model;
    const info = model.info();
    this.#dims = { D: info.nEmbd, V: info.nVocab };
    sessionGC.register(this, id, this);
  }

  static create(model, { nCtx = 0, precision = 'exact', device = null } = {}) {
    if (!(model instanceof Model)) {
      throw fail(E.REALM_E_ARG, `Session.create: model must be a Model, got ${describe(model)}`);
    }
    const mid = model.handle('Session.create');
    if (!Object.hasOwn(PRECISIONS, precision)) {
      throw fail(E.REALM_E_ARG, `Session.create: options.precision must be 'exact' or 'fast', got ${describe(precision)}`);
    }
    const n = u32('Session.create', 'nCtx', nCtx);
    if (precision === 'exact' && (device === null || device === undefined)) {
      check(lib().realm_session_create(mid, n, OUT64, ERR));          // the defaults: as before
    } else {
      const params = {
        struct_size: C.REALM_SESSION_PARAMS_SIZE_V1,
        n_ctx: n,
        precision: PRECISIONS[precision],
        device: device === null || device === undefined ? null : str('Session.create', 'options.device', device),
      };
      check(lib().realm_session_create_ex(mid, params, OUT64, ERR));
    }
    return new Session(OUT64[0], model);
  }

  get id() {
    return this.#id;
  }

  get model() {
    return this.#model;
  }

  get closed() {
    return this.#closed;
  }

  /** @internal the id, or an error when closed, while generate() runs on this session, or while
   *  *Async calls on it are pending. */
  handle(where) {
    const id = this.#live(where);
    if (this.#pending) {
      throw fail(E.REALM_E_BUSY, `${where}: session ${hex(this.#id)} has ${this.#pending} async call(s) pending; ` +
        'await them first');
    }
    return id;
  }

  #live(where) {
    if (this.#closed) throw fail(E.REALM_E_NOT_FOUND, `${where}: session ${hex(this.#id)} is closed`);
    if (this.#busy) {
      throw fail(E.REALM_E_BUSY, `${where}: session ${hex(this.#id)} is generating; ` +
        'wait for generate() to finish or abort it');
    }
    return this.#id;
  }

  /** *Async calls on this session not settled yet (queued or running). */
  get pendingCalls() {
    return this.#pending;
  }

  // One *Async call.  prepare() checks the arguments and copies the inputs now (so the caller may
  // change its arrays at once); the returned work(id) runs later, on a pool thread, after every
  // earlier *Async call on this session has settled: calls run one at a time, in call order (the
  // C library locks per session, but two pool threads could take the lock in either order).
  // While any is pending, synchronous calls, generate() and close() are REALM_E_BUSY: nothing can
  // overtake a queued call or free the session under one.  A signal aborted while the call waits
  // removes it (it rejects with signal.reason, nothing runs); once running, it completes.
  #enqueue(where, options, prepare) {
    return new Promise((resolve, reject) => {
      this.#live(where);
      const signal = signalOf(where, options);
      const work = prepare();
      if (signal && signal.aborted) throw signal.reason;
      const job = { work, signal, resolve, reject, onAbort: null };
      if (signal) {
        job.onAbort = () => {
          const i = this.#jobs.indexOf(job);
          if (i < 0) return;                              // running already: it completes
          this.#jobs.splice(i, 1);
          this.#pending--;
          reject(signal.reason);
        };
        signal.addEventListener('abort', job.onAbort, { once: true });
      }
      this.#pending++;
      this.#jobs.push(job);
      this.#pump();
    });
  }

  #pump() {
    if (this.#running || this.#jobs.length === 0) return;
    const job = this.#jobs.shift();
    if (job.signal) job.signal.removeEventListener('abort', job.onAbort);
    this.#running = true;
    let p;
    try {
      p = job.work(this.#id);
    } catch (e) {
      p = Promise.reject(e);
    }
    // The callbacks hold this session: no finalizer frees it while the call runs.
    p.then((value) => this.#settle(job, null, value), (e) => this.#settle(job, e, undefined));
  }

  #settle(job, error, value) {
    this.#running = false;
    this.#pending--;
    if (error) job.reject(error); else job.resolve(value);
    this.#pump();
  }

  /** Positions cached: where the next decode starts. */
  get nTokens() {
    check(lib().realm_session_n_tokens(this.handle('Session.nTokens'), OUT32, ERR));
    return OUT32[0];
  }

  /** Context size. */
  get nCtx() {
    check(lib().realm_session_n_ctx(this.handle('Session.nCtx'), OUT32, ERR));
    return OUT32[0];
  }

  /** ids[T] -> embeddings, Float32Array [T x D].  Reads no session state. */
  embedTokens(ids) {
    const id = this.handle('Session.embedTokens');
    const a = ids32('Session.embedTokens', 'ids', ids);
    const out = floats(a.length * this.#dims.D);
    check(lib().realm_embed_tokens(id, a, a.length, out, out.length, ERR));
    return out;
  }

  #rows(where, hidden) {
    const h = f32(where, 'hidden', hidden);
    const D = this.#dims.D;
    if (h.length % D !== 0) {
      throw fail(E.REALM_E_ARG, `${where}: hidden has ${h.length} floats, not a multiple of D = ${D}`);
    }
    return h;
  }

  /** embedTokens() on a libuv pool thread: Promise<Float32Array [T x D]>.  options: signal. */
  embedTokensAsync(ids, options) {
    const where = 'Session.embedTokensAsync';
    return this.#enqueue(where, options, () => {
      const a = asyncCopy(ids32(where, 'ids', ids));
      const out = asyncFloats(a.length * this.#dims.D);
      return (id) => callAsync(lib().realm_embed_tokens, [id, a, a.length, out, out.length]).then(() => out);
    });
  }

  /** hidden [T x D] at positions [pos, pos + T) through one layer -> Float32Array [T x D]. */
  forwardLayer(layer, hidden, pos) {
    const id = this.handle('Session.forwardLayer');
    const h = this.#rows('Session.forwardLayer', hidden);
    const D = this.#dims.D;
    const out = floats(h.length);
    check(lib().realm_forward_layer(id, u32('Session.forwardLayer', 'layer', layer),
      u32('Session.forwardLayer', 'pos', pos), h, h.length / D, D, out, out.length, ERR));
    return out;
  }

  /** forwardLayer() on a libuv pool thread: Promise<Float32Array [T x D]>.  options: signal. */
  forwardLayerAsync(layer, hidden, pos, options) {
    const where = 'Session.forwardLayerAsync';
    return this.#enqueue(where, options, () => {
      const h = asyncCopy(this.#rows(where, hidden));
      const D = this.#dims.D;
      const l = u32(where, 'layer', layer);
      const p = u32(where, 'pos', pos);
      const out = asyncFloats(h.length);
      return (id) => callAsync(lib().realm_forward_layer, [id, l, p, h, h.length / D, D, out, out.length]).then(() => out);
    });
  }

  /** hidden [T x D] -> logits, Float32Array [T x V] (final norm and output head). */
  computeLogits(hidden) {
    const id = this.handle('Session.computeLogits');
    const h = this.#rows('Session.computeLogits', hidden);
    const D = this.#dims.D;
    const T = h.length / D;
    const out = floats(T * this.#dims.V);
    check(lib().realm_compute_logits(id, h, T, D, out, out.length, ERR));
    return out;
  }

  /** computeLogits() on a libuv pool thread: Promise<Float32Array [T x V]>.  options: signal. */
  computeLogitsAsync(hidden, options) {
    const where = 'Session.computeLogitsAsync';
    return this.#enqueue(where, options, () => {
      const h = asyncCopy(this.#rows(where, hidden));
      const D = this.#dims.D;
      const T = h.length / D;
      const out = asyncFloats(T * this.#dims.V);
      return (id) => callAsync(lib().realm_compute_logits, [id, h, T, D, out, out.length]).then(() => out);
    });
  }

  /** Append ids[T] through every layer -> logits of the last token [V], or [T x V] with allLogits. */
  decode(ids, { allLogits = false } = {}) {
    const id = this.handle('Session.decode');
    const a = ids32('Session.decode', 'ids', ids);
    const out = floats((allLogits ? a.length : 1) * this.#dims.V);
    check(lib().realm_decode(id, a, a.length, allLogits ? C.REALM_DECODE_ALL_LOGITS : 0, out, out.length, ERR));
    return out;
  }

  /** decode() on a libuv pool thread: Promise<Float32Array>.  options: allLogits, signal. */
  decodeAsync(ids, options = {}) {
    const where = 'Session.decodeAsync';
    return this.#enqueue(where, options, () => {
      const { allLogits = false } = options || {};
      const a = asyncCopy(ids32(where, 'ids', ids));
      const out = asyncFloats((allLogits ? a.length : 1) * this.#dims.V);
      const flags = allLogits ? C.REALM_DECODE_ALL_LOGITS : 0;
      return (id) => callAsync(lib().realm_decode, [id, a, a.length, flags, out, out.length]).then(() => out);
    });
  }

  /** Forget every cached position. */
  reset() {
    check(lib().realm_session_reset(this.handle('Session.reset'), ERR));
  }

  /** Keep the first n positions. */
  truncate(n) {
    const id = this.handle('Session.truncate');
    check(lib().realm_session_truncate(id, u32('Session.truncate', 'n', n), ERR));
  }

  /** A new session on the same model with a copy of this one's cache. */
  fork() {
    check(lib().realm_session_fork(this.handle('Session.fork'), OUT64, ERR));
    return new Session(OUT64[0], this.#model);
  }

  /** Free the session and its cache.  Idempotent; REALM_E_BUSY (and stays open) while generate()
   *  runs on it or *Async calls on it are pending. */
  close() {
    if (this.#closed) return;
    check(lib().realm_session_free(this.handle('Session.close'), ERR));
    this.#closed = true;
    sessionGC.unregister(this);
  }

  /** The C name of close(). */
  free() {
    this.close();
  }

  [dispose]() {
    this.close();
  }

  /**
   * Generate from a prompt (text, tokenized like realm_generate, or token ids) on a libuv pool
   * thread.  Returns a Generation: an async iterable of text pieces, with .result (a promise of
   * the completion).  options: maxTokens (256), temperature (0 = greedy), topK, topP, minP,
   * repetitionPenalty, seed, stop (string or string[]), signal (an AbortSignal: iteration and
   * .result reject with signal.reason).  The session keeps the prompt and the generated tokens.
   */
  generate(prompt, options = {}) {
    return new Generation(this, prompt, options, (busy) => { this.#busy = busy; });
  }
}

// WebAssembly guests (lib/guest.cjs): the same "realm" imports as the Python host, each tenant in
// its own worker_thread.
const guest = require('./guest.cjs');

module.exports = {
  Realm, Model, Session, Generation, Sampler, RealmError, ErrorCode, topK,
  ABI_VERSION: native.ABI_VERSION,
  GuestHost: guest.GuestHost, GuestModule: guest.GuestModule, Tenant: guest.Tenant, runGuest: guest.runGuest,
  guestPath: guest.guestPath, GuestAbiError: guest.GuestAbiError, GuestStop: guest.GuestStop,
  GuestFault: guest.GuestFault, GuestTrap: guest.GuestTrap, GuestLimitError: guest.GuestLimitError,
  GUEST_ABI_VERSION: guest.GUEST_ABI_VERSION,
};
