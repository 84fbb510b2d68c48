'use strict';
// generate() on a libuv pool thread, streamed through an async iterator; and the sampler.

const {
  native, koffi, types, E, C, lib, loadedLib, readError, check, fail, ERR, OUT64, SIZE,
  u32, u64, describe, isArrayLike, ids32, f32, hex,
} = require('./call.cjs');

const samplerGC = new FinalizationRegistry((id) => {
  const l = loadedLib();
  if (l) l.realm_sampler_free(id, null);
});

const dispose = Symbol.dispose || Symbol.for('nodejs.dispose');

// ---- generation --------------------------------------------------------------------------------

const FINISH = { 1: 'stop', 2: 'eos', 3: 'length', 4: 'cancelled' };

function samplerParams(where, o) {
  const num = (name, dflt) => {
    const v = o[name] === undefined ? dflt : o[name];
    if (typeof v !== 'number' || Number.isNaN(v)) {
      throw fail(E.REALM_E_ARG, `${where}: options.${name} must be a number, got ${describe(o[name])}`);
    }
    return v;
  };
  const topK = o.topK === undefined ? 0 : o.topK;
  if (!Number.isInteger(topK) || topK < -0x80000000 || topK > 0x7FFFFFFF) {
    throw fail(E.REALM_E_ARG, `${where}: options.topK must be a 32-bit integer, got ${describe(o.topK)}`);
  }
  return {
    struct_size: C.REALM_SAMPLER_PARAMS_SIZE_V1,
    top_k: topK,
    temperature: num('temperature', 0),
    top_p: num('topP', 1),
    min_p: num('minP', 0),
    repetition_penalty: num('repetitionPenalty', 1),
    seed: o.seed === undefined || o.seed === null ? C.REALM_SEED_RANDOM : u64(where, 'options.seed', o.seed),
  };
}

/** One generate() call: an async iterable of text pieces; .result resolves to the completion. */
class Generation {
  #queue = [];
  #waiter = null;
  #finished = false;
  #error = null;
  #cancelled = false;
  #iterating = false;
  #tokenIds = [];
  #text = '';
  #resolve;
  #reject;

  constructor(session, prompt, options, setBusy) {
    /** Promise<{ text, tokenIds, finishReason: 'stop'|'eos'|'length'|'cancelled', nPrompt, nGenerated }> */
    this.result = new Promise((resolve, reject) => { this.#resolve = resolve; this.#reject = reject; });
    this.result.catch(() => {});                       // a caller who only iterates sees the error there
    try {
      this.#start(session, prompt, options || {}, setBusy);
    } catch (e) {
      this.#finish(e, null);
    }
  }

  #start(session, prompt, o, setBusy) {
    const where = 'Session.generate';
    const sid = session.handle(where);
    const signal = o.signal;
    if (signal !== undefined && !(signal && typeof signal.aborted === 'boolean')) {
      throw fail(E.REALM_E_ARG, `${where}: options.signal must be an AbortSignal, got ${describe(signal)}`);
    }
    if (signal && signal.aborted) throw signal.reason;
    let stop = o.stop === undefined ? [] : o.stop;
    if (typeof stop === 'string') stop = [stop];
    if (!Array.isArray(stop) || stop.some((s) => typeof s !== 'string' || s.includes('\0'))) {
      throw fail(E.REALM_E_ARG, `${where}: options.stop must be a string or an array of strings, got ${describe(o.stop)}`);
    }
    const params = {
      struct_size: C.REALM_GENERATE_PARAMS_SIZE_V1,
      max_tokens: u32(where, 'options.maxTokens', o.maxTokens === undefined ? 256 : o.maxTokens),
      sampler: samplerParams(where, o),
      stop, n_stop: stop.length,
      on_token: null,
      user_data: null,
    };
    let call;
    if (typeof prompt === 'string') {
      const bytes = Buffer.from(prompt, 'utf8');
      call = (p, res, err, done) => lib().realm_generate.async(sid, bytes, bytes.length, p, res, err, done);
    } else {
      if (!isArrayLike(prompt)) {
        throw fail(E.REALM_E_ARG, `${where}: prompt must be a string or an array of token ids, got ${describe(prompt)}`);
      }
      const ids = ids32(where, 'prompt', prompt);
      call = (p, res, err, done) => lib().realm_generate_tokens.async(sid, ids, ids.length, p, res, err, done);
    }

    // The callback runs on the main thread: koffi queues it there from the pool thread, which
    // waits for its answer (0 = go on, 1 = stop).
    const onToken = koffi.register((_userData, tokenId, piece, len) => {
      try {
        const text = len ? koffi.decode(piece, 'char', Number(len)) : '';
        if (tokenId >= 0) this.#tokenIds.push(tokenId);
        if (text) this.#push(text);
        return this.#cancelled ? 1 : 0;
      } catch {
        return 1;
      }
    }, koffi.pointer(types.realm_token_callback));
    params.on_token = onToken;

    const onAbort = () => { this.#cancelled = true; };
    if (signal) signal.addEventListener('abort', onAbort, { once: true });
    const err = Buffer.alloc(native.ERROR_SIZE);
    const res = Buffer.alloc(C.REALM_GENERATE_RESULT_SIZE_V1);
    res.writeUInt32LE(res.length, 0);
    setBusy(true);
    try {
      call(params, res, err, (e, rc) => {
        koffi.unregister(onToken);
        setBusy(false);
        if (signal) signal.removeEventListener('abort', onAbort);
        if (e) return this.#finish(e, null);
        if (rc !== 0) return this.#finish(readError(err), null);
        const r = koffi.decode(res, types.realm_generate_result);
        if (signal && signal.aborted && r.finish_reason === C.REALM_FINISH_CANCELLED) {
          return this.#finish(signal.reason, null);
        }
        return this.#finish(null, {
          text: this.#text, tokenIds: this.#tokenIds, finishReason: FINISH[r.finish_reason] || String(r.finish_reason),
          nPrompt: r.n_prompt, nGenerated: r.n_generated,
        });
      });
    } catch (e) {                                      // koffi refused the arguments
      koffi.unregister(onToken);
      setBusy(false);
      if (signal) signal.removeEventListener('abort', onAbort);
      throw e;
    }
  }

  #push(text) {
    this.#text += text;
    if (this.#waiter) {
      const w = this.#waiter;
      this.#waiter = null;
      w.resolve({ value: text, done: false });
    } else {
      this.#queue.push(text);
    }
  }

  #finish(error, completion) {
    this.#finished = true;
    this.#error = error;
    if (error) this.#reject(error); else this.#resolve(completion);
    if (this.#waiter) {
      const w = this.#waiter;
      this.#waiter = null;
      if (error) w.reject(error); else w.resolve({ value: undefined, done: true });
    }
  }

  /** Stop after the current token; .result then resolves with finishReason 'cancelled'. */
  cancel() {
    this.#cancelled = true;
  }

  [Symbol.asyncIterator]() {
    if (this.#iterating) {
      throw fail(E.REALM_E_ARG, 'Generation: can be iterated only once');
    }
    this.#iterating = true;
    return {
      next: () => {
        if (this.#queue.length) return Promise.resolve({ value: this.#queue.shift(), done: false });
        if (this.#finished) {
          return this.#error ? Promise.reject(this.#error) : Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve, reject) => { this.#waiter = { resolve, reject }; });
      },
      // break / return in a for-await loop: cancel, and wait until the session is free again.
      return: async () => {
        this.#cancelled = true;
        this.#queue.length = 0;
        await this.result.catch(() => {});
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() { return this; },
    };
  }
}

// ---- sampling ----------------------------------------------------------------------------------

/** A sampler with its own random generator (options as generate's: temperature, topK, ..., seed). */
class Sampler {
  #id;
  #closed = false;

  constructor(options = {}) {
    const p = samplerParams('new Sampler', options || {});
    check(lib().realm_sampler_create(p, OUT64, ERR));
    this.#id = OUT64[0];
    samplerGC.register(this, this.#id, this);
  }

  get id() {
    return this.#id;
  }

  /** Pick a token from logits [V], given the tokens seen so far (for the repetition penalty). */
  sample(logits, history = []) {
    if (this.#closed) throw fail(E.REALM_E_NOT_FOUND, `Sampler.sample: sampler ${hex(this.#id)} is closed`);
    const l = f32('Sampler.sample', 'logits', logits);
    const h = ids32('Sampler.sample', 'history', history);
    const out = new Int32Array(1);
    check(lib().realm_sampler_sample(this.#id, l, l.length, h, h.length, out, ERR));
    return out[0];
  }

  close() {
    if (this.#closed) return;
    check(lib().realm_sampler_free(this.#id, ERR));
    this.#closed = true;
    samplerGC.unregister(this);
  }

  [dispose]() {
    this.close();
  }
}

/** The k largest logits, descending (ties to the lower id): { values: Float32Array, ids: Int32Array }. */
function topK(logits, k) {
  const l = f32('topK', 'logits', logits);
  const kk = u32('topK', 'k', k);
  const n = Math.max(1, Math.min(kk, l.length));    // never a NULL output: let the library judge k
  const values = new Float32Array(n);
  const ids = new Int32Array(n);
  check(lib().realm_top_k(l, l.length, kk, values, ids, SIZE, ERR));
  return { values: values.subarray(0, Number(SIZE[0])), ids: ids.subarray(0, Number(SIZE[0])) };
}

module.exports = { Generation, Sampler, topK, samplerParams };
