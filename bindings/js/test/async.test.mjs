// The *Async methods: each resolves to its synchronous twin's value, bit for bit, and rejects with
// its RealmError (same code, same message from the library); the event loop runs meanwhile; calls
// on one session run in call order, calls on two sessions side by side; inputs are copied at the
// call; a pending call keeps its session open (close() is REALM_E_BUSY) and alive (no finalizer).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import v8 from 'node:v8';
import vm from 'node:vm';

import { ErrorCode as E, Model, Realm } from '../index.mjs';
import {
  assertLoopResponsive, assertRealmError as throws, assertRejectsRealm as rejects, assertSameFloats, python,
} from './helpers.mjs';

const TEXT = 'The capital of France is';
const hex = (id) => `0x${id.toString(16)}`;

let model;
let info;
let ids;                             // tokenize(TEXT)
let defaultPath;

before(async () => {
  const where = python('out = str(realm.default_model_path())');
  Realm.init();
  model = Model.storeDefault();
  info = model.info();
  ids = model.tokenize(TEXT);
  defaultPath = await where;
});

after(() => model.close());

/** asyncFn()'s RealmError, with the synchronous twin's code and message (the twin runs first:
 *  while the async call is pending, the session refuses synchronous calls). */
async function sameError(asyncFn, syncFn) {
  let expected;
  try {
    syncFn();
  } catch (e) {
    expected = e;
  }
  assert.ok(expected, 'the synchronous twin should have thrown');
  const got = await rejects(asyncFn(), expected.code);
  assert.equal(got.message, expected.message);
  return got;
}

describe('same values as the synchronous twins', () => {
  test('decodeAsync (last and all logits), embedTokensAsync, forwardLayerAsync x L, computeLogitsAsync', async () => {
    const a = model.createSession({ nCtx: 64 });
    const b = model.createSession({ nCtx: 64 });
    assertSameFloats(await b.decodeAsync(ids), a.decode(ids), 'decodeAsync');
    assertSameFloats(await b.decodeAsync([7042]), a.decode([7042]), 'decodeAsync next');
    assertSameFloats(await b.decodeAsync([30, 31], { allLogits: true }), a.decode([30, 31], { allLogits: true }), 'allLogits');
    assert.equal(b.nTokens, a.nTokens);

    a.reset();
    b.reset();
    let ha = a.embedTokens(ids);
    let hb = await b.embedTokensAsync([...ids]);        // number[] input too
    assertSameFloats(hb, ha, 'embedTokensAsync');
    for (let layer = 0; layer < info.nLayer; layer++) {
      ha = a.forwardLayer(layer, ha, 0);
      hb = await b.forwardLayerAsync(layer, hb, 0);
      assertSameFloats(hb, ha, `forwardLayerAsync ${layer}`);
    }
    assert.equal(b.nTokens, a.nTokens);
    assertSameFloats(await b.computeLogitsAsync(hb), a.computeLogits(ha), 'computeLogitsAsync');
    assertSameFloats(await b.computeLogitsAsync([...hb.subarray(0, info.nEmbd)]), a.computeLogits(ha.subarray(0, info.nEmbd)), 'number[] hidden');
    a.close();
    b.close();
  });

  test('tokenizeAsync, detokenizeAsync, applyChatTemplateAsync (short and long: the two-call protocol)', async () => {
    const long = 'Lyon, la ville lumière — 東京 🚀 <|im_start|> '.repeat(300);
    for (const t of [TEXT, '', long]) {
      for (const o of [{}, { addSpecial: false }, { parseSpecial: false }]) {
        assert.deepEqual(await model.tokenizeAsync(t, o), model.tokenize(t, o));
      }
    }
    const many = model.tokenize(long);
    assert.equal(await model.detokenizeAsync(many), model.detokenize(many));
    assert.equal(await model.detokenizeAsync([...ids]), model.detokenize(ids));
    // control tokens render long pieces: more text than the first buffer guess (8 bytes a token)
    const controls = new Int32Array(600).fill(1);
    assert.equal(await model.detokenizeAsync(controls), model.detokenize(controls));
    const messages = [{ role: 'system', content: 'x'.repeat(10000) }, { role: 'user', content: 'Hi' }];
    assert.equal(await model.applyChatTemplateAsync(messages), model.applyChatTemplate(messages));
    assert.equal(await model.applyChatTemplateAsync(messages, { addGenerationPrompt: false }),
      model.applyChatTemplate(messages, { addGenerationPrompt: false }));
    assert.equal(model.pendingCalls, 0);
  });

  test('storeDefaultAsync, storeFileAsync, storeAsync give the content id (and add a reference)', async () => {
    const [d, f, b] = await Promise.all([
      Model.storeDefaultAsync(), Model.storeFileAsync(defaultPath), Model.storeAsync(readFileSync(defaultPath)),
    ]);
    for (const m of [d, f, b]) assert.equal(m.id, model.id);
    for (const m of [d, f, b]) m.close();
    assert.equal(model.info().nLayer, info.nLayer);       // the first reference still holds it
  });
});

describe('errors reject with the synchronous twin\'s code and message', () => {
  test('library errors: token ids, layer, position, NaN, empty input, context, file, format', async () => {
    const s = model.createSession({ nCtx: 16 });
    s.decode([1, 504]);
    const h = s.embedTokens([504]);
    const bad = h.slice();
    bad[7] = NaN;
    const cases = [
      [() => s.decodeAsync([49152]), () => s.decode([49152]), E.RANGE],
      [() => s.decodeAsync([]), () => s.decode([]), E.ARG],
      [() => s.decodeAsync(new Array(15).fill(504)), () => s.decode(new Array(15).fill(504)), E.RANGE],
      [() => s.embedTokensAsync([-5]), () => s.embedTokens([-5]), E.RANGE],
      [() => s.embedTokensAsync([]), () => s.embedTokens([]), E.ARG],
      [() => s.forwardLayerAsync(30, h, 2), () => s.forwardLayer(30, h, 2), E.RANGE],
      [() => s.forwardLayerAsync(0, h, 5), () => s.forwardLayer(0, h, 5), E.RANGE],
      [() => s.forwardLayerAsync(0, bad, 2), () => s.forwardLayer(0, bad, 2), E.ARG],
      [() => s.computeLogitsAsync(bad), () => s.computeLogits(bad), E.ARG],
      [() => s.computeLogitsAsync(new Float32Array(0)), () => s.computeLogits(new Float32Array(0)), E.ARG],
      [() => model.detokenizeAsync([99999]), () => model.detokenize([99999]), E.RANGE],
      [() => Model.storeFileAsync('/nonexistent/x.gguf'), () => Model.storeFile('/nonexistent/x.gguf'), E.IO],
      [() => Model.storeAsync(Buffer.from('this is not a GGUF file')), () => Model.store(Buffer.from('this is not a GGUF file')), E.FORMAT],
    ];
    for (const [asyncFn, syncFn, code] of cases) {
      const e = await sameError(asyncFn, syncFn);
      assert.equal(e.code, code);
      assert.match(e.message, /^realm_\w+: /);
    }
    await rejects(s.decodeAsync([49152]), E.RANGE, 'realm_decode: token id 49152 out of range [0, 49152)');
    assert.equal(s.nTokens, 2, 'every failed call left the cache as it was');
    s.close();
  });

  test('binding-side checks reject (never throw) with REALM_E_ARG, naming the async method', async () => {
    const s = model.createSession({ nCtx: 16 });
    const h = s.embedTokens([504]);
    let p;
    assert.doesNotThrow(() => { p = s.decodeAsync([504, 1.5]); });
    await rejects(p, E.ARG, 'Session.decodeAsync: ids[1] must be a 32-bit integer token id, got 1.5');
    await rejects(s.embedTokensAsync('x'), E.ARG, 'Session.embedTokensAsync: ids must be an array of token ids');
    await rejects(s.forwardLayerAsync(-1, h, 0), E.ARG, 'Session.forwardLayerAsync: layer must be an integer in [0, 2^32), got -1');
    await rejects(s.forwardLayerAsync(0, h.subarray(1), 0), E.ARG, 'Session.forwardLayerAsync: hidden has 575 floats, not a multiple of D = 576');
    await rejects(s.computeLogitsAsync('x'), E.ARG, 'Session.computeLogitsAsync: hidden must be a Float32Array or number[], got "x"');
    await rejects(s.decodeAsync([1], { signal: 'stop' }), E.ARG, 'Session.decodeAsync: options.signal must be an AbortSignal, got "stop"');
    await rejects(model.tokenizeAsync(5), E.ARG, 'Model.tokenizeAsync: text must be a string, got 5');
    await rejects(model.applyChatTemplateAsync('hi'), E.ARG, 'Model.applyChatTemplateAsync: messages must be an array');
    await rejects(Model.storeAsync(new Uint8Array(0)), E.ARG, 'Model.storeAsync: bytes is empty');
    await rejects(Model.storeAsync('model.gguf'), E.ARG, 'Model.storeAsync: bytes must be a Buffer, Uint8Array or ArrayBuffer, got "model.gguf"');
    await rejects(Model.storeFileAsync(7), E.ARG, 'Model.storeFileAsync: path must be a string, got 7');
    await rejects(Model.storeDefaultAsync({ id: -1 }), E.ARG, 'Model.storeDefaultAsync: options.id must be an integer in [0, 2^64)');
    assert.equal(s.nTokens, 0);
    assert.equal(s.pendingCalls, 0);
    s.close();
    await rejects(s.decodeAsync([1]), E.NOT_FOUND, `Session.decodeAsync: session ${hex(s.id)} is closed`);
    const m = await Model.storeDefaultAsync();
    m.close();
    await rejects(m.tokenizeAsync('x'), E.NOT_FOUND, `Model.tokenizeAsync: model ${hex(m.id)} is closed`);
  });
});

describe('threads and order', () => {
  test('the event loop keeps running during decodeAsync (a 5 ms timer keeps firing)', async () => {
    const s = model.createSession({ nCtx: 512 });
    const prompt = model.tokenize('Once upon a time, in a land far away, '.repeat(12));
    const logits = await assertLoopResponsive(async () => {
      const first = await s.decodeAsync(prompt);
      for (let i = 0; i < 8; i++) await s.decodeAsync([504 + i]);
      return first;
    });
    assert.equal(logits.length, info.nVocab);
    assert.equal(s.nTokens, prompt.length + 8);
    s.close();
  });

  test('calls on one session run in call order; two sessions at once equal the synchronous run', async () => {
    const steps = [ids, [7042], [30], [31, 32], [504]];
    const ref = model.createSession({ nCtx: 64 });
    const expected = steps.map((t) => ref.decode(t));
    ref.close();
    const a = model.createSession({ nCtx: 64 });
    const b = model.createSession({ nCtx: 64 });
    // every call issued at once, without awaiting: a's in call order, b's alongside
    const pa = steps.map((t) => a.decodeAsync(t));
    const pb = steps.map((t) => b.decodeAsync(t));
    assert.equal(a.pendingCalls, steps.length);
    const [ra, rb] = await Promise.all([Promise.all(pa), Promise.all(pb)]);
    for (let i = 0; i < steps.length; i++) {
      assertSameFloats(ra[i], expected[i], `session a, step ${i}`);
      assertSameFloats(rb[i], expected[i], `session b, step ${i}`);
    }
    assert.equal(a.pendingCalls, 0);
    assert.equal(a.nTokens, b.nTokens);
    a.close();
    b.close();
  });

  test('many calls at once on many sessions and the model (past the in-flight cap) all complete', async () => {
    const sessions = Array.from({ length: 6 }, () => model.createSession({ nCtx: 32 }));
    const expected = model.createSession({ nCtx: 32 });
    const want = expected.embedTokens(ids);
    expected.close();
    const work = [];
    for (let i = 0; i < 100; i++) work.push(model.tokenizeAsync(TEXT));
    for (const s of sessions) for (let i = 0; i < 5; i++) work.push(s.embedTokensAsync(ids));
    const out = await Promise.all(work);
    for (let i = 0; i < 100; i++) assert.deepEqual(out[i], ids);
    for (let i = 100; i < out.length; i++) assertSameFloats(out[i], want, `embed ${i}`);
    for (const s of sessions) s.close();
  });

  test('inputs are copied at the call: changing them afterwards changes nothing', async () => {
    const a = model.createSession({ nCtx: 64 });
    const b = model.createSession({ nCtx: 64 });
    const mine = Int32Array.from(ids);
    const p = b.decodeAsync(mine);
    mine.fill(0);
    assertSameFloats(await p, a.decode(ids), 'decode, ids zeroed after the call');
    const h = a.embedTokens(ids);
    const want = a.forwardLayer(0, h, 0);
    const hidden = h.slice();
    b.reset();
    const q = b.forwardLayerAsync(0, hidden, 0);
    hidden.fill(NaN);
    assertSameFloats(await q, want, 'forwardLayer, hidden overwritten after the call');
    const bytes = readFileSync(defaultPath);
    const r = Model.storeAsync(bytes);
    bytes.fill(0);
    const m = await r;
    assert.equal(m.id, model.id);
    m.close();
    a.close();
    b.close();
  });
});

describe('pending calls, close, generate, abort', () => {
  test('while calls are pending: close() and sync calls are REALM_E_BUSY, the session stays open; after, all is free', async () => {
    const s = model.createSession({ nCtx: 64 });
    const p1 = s.decodeAsync(ids);
    const p2 = s.decodeAsync([7042]);
    const busy = `session ${hex(s.id)} has 2 async call(s) pending; await them first`;
    throws(() => s.close(), E.BUSY, 'Session.close: ', busy);
    throws(() => s.decode([1]), E.BUSY, 'Session.decode: ', busy);
    throws(() => s.nTokens, E.BUSY, 'Session.nTokens: ', busy);
    throws(() => s.fork(), E.BUSY, 'Session.fork: ', busy);
    await rejects(s.generate('x', { maxTokens: 1 }).result, E.BUSY, 'Session.generate: ', busy);
    assert.equal(s.closed, false);
    await Promise.all([p1, p2]);
    assert.equal(s.pendingCalls, 0);
    assert.equal(s.nTokens, ids.length + 1);
    // a failed call settles too
    await rejects(s.decodeAsync([49152]), E.RANGE);
    assert.equal(s.pendingCalls, 0);
    s.close();
    assert.equal(s.closed, true);

    const t = model.tokenizeAsync(TEXT);
    throws(() => model.close(), E.BUSY, `Model.close: model ${hex(model.id)} has 1 async call(s) pending; await them first`);
    assert.deepEqual(await t, ids);
    assert.equal(model.closed, false);
  });

  test('while generate() runs, *Async calls on that session reject with REALM_E_BUSY', async () => {
    const s = model.createSession({ nCtx: 64 });
    const g = s.generate(TEXT, { maxTokens: 3 });
    await rejects(s.decodeAsync([1]), E.BUSY, 'Session.decodeAsync: ', `session ${hex(s.id)} is generating`);
    await g.result;
    const f = s.fork();
    assertSameFloats(await s.decodeAsync([1]), f.decode([1]), 'decodeAsync after generate');
    f.close();
    s.close();
  });

  test('an aborted signal rejects with signal.reason before the call starts; a started call completes', async () => {
    const s = model.createSession({ nCtx: 64 });
    const reason = new Error('already aborted');
    await assert.rejects(s.decodeAsync(ids, { signal: AbortSignal.abort(reason) }), reason);
    await assert.rejects(model.tokenizeAsync(TEXT, { signal: AbortSignal.abort(reason) }), reason);
    await assert.rejects(Model.storeDefaultAsync({ signal: AbortSignal.abort(reason) }), reason);
    assert.equal(s.nTokens, 0, 'nothing ran');

    // aborted while waiting behind another call: removed from the queue, rejects at once
    const ac = new AbortController();
    const first = s.decodeAsync(ids, { signal: ac.signal });   // starts now: the abort cannot stop it
    const second = s.decodeAsync([7042], { signal: ac.signal });
    const third = s.decodeAsync([30]);
    assert.equal(s.pendingCalls, 3);
    ac.abort();
    assert.equal(s.pendingCalls, 2, 'the waiting call left the queue at the abort');
    await assert.rejects(second, { name: 'AbortError' });
    const [l1, l3] = await Promise.all([first, third]);
    const r = model.createSession({ nCtx: 64 });
    assertSameFloats(l1, r.decode(ids), 'the started call completed');
    assertSameFloats(l3, r.decode([30]), 'the next call ran after it, without the aborted one');
    assert.equal(s.nTokens, ids.length + 1);
    r.close();
    s.close();
  });

  test('a session dropped with a call in flight stays alive until the call settles (no crash, right result)', async () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc');
    const ref = model.createSession({ nCtx: 64 });
    const want = ref.decode(ids);
    ref.close();
    const start = () => model.createSession({ nCtx: 64 }).decodeAsync(ids);   // no reference kept
    const pending = [start(), start()];
    for (let i = 0; i < 5; i++) {
      gc();
      await new Promise((resolve) => setImmediate(resolve));
    }
    for (const logits of await Promise.all(pending)) assertSameFloats(logits, want, 'dropped session');
    gc();                          // now the finalizer may free them
    await new Promise((resolve) => setTimeout(resolve, 10));
  });
});
