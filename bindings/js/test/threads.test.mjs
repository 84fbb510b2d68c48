// Threads: generate() keeps the event loop free; concurrent generations and main-thread calls
// don't deadlock; worker_threads calling at once get the single-thread results and their own
// error messages.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import { Worker } from 'node:worker_threads';

import { Model, Realm } from '../index.mjs';
import { assertLoopResponsive, assertSameFloats } from './helpers.mjs';

let model;
let prompt;
let greedy;                          // the single-thread greedy completion of prompt

before(async () => {
  Realm.init();                      // from the main thread: it becomes Python's main thread
  model = Model.storeDefault();
  prompt = model.applyChatTemplate([{ role: 'user', content: 'What is the capital of France?' }]);
  const s = model.createSession({ nCtx: 256 });
  greedy = await s.generate(prompt, { maxTokens: 10 }).result;
  s.close();
});

test('the event loop stays responsive while generate() runs (a 5 ms timer keeps firing)', async () => {
  const s = model.createSession({ nCtx: 256 });
  const r = await assertLoopResponsive(() => s.generate(prompt, { maxTokens: 10 }).result);
  s.close();
  assert.deepEqual(r.tokenIds, greedy.tokenIds);
});

test('two generations at once, and sync calls on the main thread meanwhile: same tokens, no deadlock', async () => {
  const a = model.createSession({ nCtx: 256 });
  const b = model.createSession({ nCtx: 256 });
  const other = model.createSession({ nCtx: 64 });
  const paris = [...model.tokenize(' Paris', { addSpecial: false })];
  const ga = a.generate(prompt, { maxTokens: 10 });
  const gb = b.generate(prompt, { maxTokens: 10 });
  let done = false;
  const both = Promise.all([ga.result, gb.result]).finally(() => { done = true; });
  let calls = 0;
  while (!done) {                                       // main-thread calls into Python meanwhile
    assert.deepEqual([...model.tokenize(' Paris', { addSpecial: false })], paris);
    other.decode([42]);
    other.reset();
    calls++;
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  const [ra, rb] = await both;
  assert.deepEqual(ra.tokenIds, greedy.tokenIds);
  assert.deepEqual(rb.tokenIds, greedy.tokenIds);
  assert.ok(calls > 1, `${calls} main-thread rounds`);
  for (const s of [a, b, other]) s.close();
});

// Each worker loads the package itself, stores the (already stored) default model, and runs mixed
// calls; every call must equal the main thread's single-thread result.
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { Model, RealmError } = require(workerData.pkg);
const model = Model.storeDefault();
const out = { id: model.id.toString(), runs: [], errors: [] };
for (let round = 0; round < workerData.rounds; round++) {
  const s = model.createSession({ nCtx: 64 });
  const ids = model.tokenize(workerData.texts[(workerData.index + round) % workerData.texts.length]);
  const logits = s.decode(ids);
  const h = s.embedTokens(ids.subarray(0, 2));
  out.runs.push({ ids: [...ids], logits: Buffer.from(logits.buffer).toString('base64'),
                  h: Buffer.from(h.buffer).toString('base64'), n: s.nTokens });
  // a distinct bad token per worker and round: the message must be this call's own
  const bad = 50000 + workerData.index * 100 + round;
  try { s.decode([bad]); } catch (e) { out.errors.push({ bad, code: e.code, message: e.message, isRealm: e instanceof RealmError }); }
  s.close();
}
model.close();
parentPort.postMessage(out);
`;

test('4 worker_threads calling at once equal the single-thread run, each with its own error messages', async () => {
  const texts = ['The capital of France is', 'Once upon a time', 'Hello world', 'Node workers calling Python'];
  const expected = new Map(texts.map((t) => {
    const s = model.createSession({ nCtx: 64 });
    const ids = model.tokenize(t);
    const r = { logits: s.decode(ids), h: s.embedTokens(ids.subarray(0, 2)), n: s.nTokens };
    s.close();
    return [ids.join(','), r];
  }));
  const pkg = new URL('../lib/realm.cjs', import.meta.url).pathname;
  const rounds = 2;
  const results = await Promise.all([0, 1, 2, 3].map((index) => new Promise((resolve, reject) => {
    const w = new Worker(WORKER, { eval: true, workerData: { pkg, texts, index, rounds } });
    w.once('message', resolve);
    w.once('error', reject);
  })));
  const f32 = (b64) => { const b = Buffer.from(b64, 'base64'); return new Float32Array(b.buffer, b.byteOffset, b.length / 4); };
  results.forEach((r, index) => {
    assert.equal(BigInt(r.id), model.id);
    assert.equal(r.runs.length, rounds);
    for (const run of r.runs) {
      const want = expected.get(run.ids.join(','));
      assert.ok(want, `worker ${index}: unexpected ids ${run.ids}`);
      assertSameFloats(f32(run.logits), want.logits, `worker ${index} logits`);
      assertSameFloats(f32(run.h), want.h, `worker ${index} embeddings`);
      assert.equal(run.n, want.n);
    }
    assert.equal(r.errors.length, rounds);
    for (const e of r.errors) {
      assert.equal(e.isRealm, true);
      assert.equal(e.code, -5);
      assert.equal(e.message, `realm_decode: token id ${e.bad} out of range [0, 49152)`);
    }
  });
  assert.equal(model.info().nLayer, 30, 'the workers dropped only their own references');
});

test('generate() from a worker_thread streams too', async () => {
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    const { Model } = require(workerData.pkg);
    (async () => {
      const s = Model.storeDefault().createSession({ nCtx: 256 });
      const pieces = [];
      const g = s.generate(workerData.prompt, { maxTokens: 10 });
      for await (const p of g) pieces.push(p);
      parentPort.postMessage({ text: pieces.join(''), ids: (await g.result).tokenIds });
    })();`;
  const pkg = new URL('../lib/realm.cjs', import.meta.url).pathname;
  const r = await new Promise((resolve, reject) => {
    const w = new Worker(code, { eval: true, workerData: { pkg, prompt } });
    w.once('message', resolve);
    w.once('error', reject);
  });
  assert.deepEqual(r.ids, greedy.tokenIds);
  assert.equal(r.text, greedy.text);
});
