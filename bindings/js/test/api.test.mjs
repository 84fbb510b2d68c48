// Every call of the idiomatic API against the Python runtime (realm_embed in the venv's python):
// same tokens, same text, logits equal bit for bit (the same library computes both).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';

import { ErrorCode, Model, Realm, Sampler, topK } from '../index.mjs';
import { assertRealmError, assertSameFloats, f32, python } from './helpers.mjs';

const TEXTS = ['Hello world', ' Lyon, la ville lumière — 東京 🚀', '<|im_start|>user\nHi<|im_end|>', ''];
const MESSAGES = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'What is the capital of France?' }];
const PROMPT_IDS_TEXT = 'The capital of France is';

let py;
let model;

before(async () => {
  const reference = python(`
mid = realm.store_model()
texts = ${JSON.stringify(TEXTS)}
out = {"id": str(mid), "info": realm.get_model_info(mid), "tensors": realm.list_tensors(mid)}
out["tensor"] = {n: {"shape": list(realm.tensor_info(mid, n).shape), "data": f32(realm.get_tensor(mid, n))}
                 for n in ("output_norm.weight", "blk.0.attn_k.weight")}
out["tok"] = [realm.tokenize(mid, t) for t in texts]
out["tok_plain"] = [realm.tokenize(mid, t, add_special=False, parse_special=False) for t in texts]
out["detok"] = [realm.detokenize(mid, ids) for ids in out["tok"]]
out["pieces"] = [base64.b64encode(realm.token_piece(mid, i)).decode() for i in (0, 1, 2, 504, 49151)]
msgs = ${JSON.stringify(MESSAGES)}
out["chat"] = realm.apply_chat_template(mid, msgs)
out["chat_nogen"] = realm.apply_chat_template(mid, msgs, add_generation_prompt=False)

ids = realm.tokenize(mid, ${JSON.stringify(PROMPT_IDS_TEXT)})
out["ids"] = ids
s = realm.create_session(mid, 64)
h = realm.embed_tokens(s, ids)
out["embed"] = f32(h)
for layer in range(out["info"]["n_layer"]):
    h = realm.forward_layer(s, layer, h, 0)
    if layer == 0: out["layer0"] = f32(h)
out["layers_n_tokens"] = s.n_tokens
out["logits_all"] = f32(realm.compute_logits(s, h))

s2 = realm.create_session(mid, 64)
out["decode_last"] = f32(realm.decode(s2, ids))
out["decode_next"] = f32(realm.decode(s2, [7042]))
f = realm.session_fork(s2)
out["fork_next"] = f32(realm.decode(f, [30]))
realm.session_truncate(s2, len(ids))
out["trunc_next"] = f32(realm.decode(s2, [30]))
realm.session_reset(s2)
out["reset_all"] = f32(realm.decode(s2, ids, all_logits=True))

g = realm.create_session(mid, 256)
c = realm.generate(g, out["chat"], max_tokens=16)
out["gen"] = {"text": c.text, "ids": c.token_ids, "finish": c.finish_reason, "n_prompt": c.n_prompt, "n_tokens": g.n_tokens}
g2 = realm.create_session(mid, 256)
c = realm.generate(g2, out["chat"], max_tokens=16, stop=[" Paris"])
out["gen_stop"] = {"text": c.text, "ids": c.token_ids, "finish": c.finish_reason}
g3 = realm.create_session(mid, 256)
c = realm.generate(g3, ids, max_tokens=12, sampler=realm.SamplerConfig(temperature=0.9, top_k=40, top_p=0.95, seed=1234))
out["gen_seeded"] = {"text": c.text, "ids": c.token_ids, "finish": c.finish_reason}

logits = realm.decode(realm.create_session(mid, 64), ids)
smp = realm.Sampler(realm.SamplerConfig(temperature=1.0, seed=7, repetition_penalty=1.3))
out["samples"] = [smp.sample(logits, ids) for _ in range(5)]
v, i = realm.top_k_logits(logits, 5)
out["topk"] = {"values": f32(v), "ids": [int(x) for x in i]}
out["default_path"] = str(realm.default_model_path())
fs = realm.create_session(mid, 64, precision="fast")
out["fast_last"] = f32(realm.decode(fs, ids))
`);
  Realm.init();                              // meanwhile, in this process
  model = Model.storeDefault();
  py = await reference;
});

after(() => model.close());

describe('Realm', () => {
  test('version, versionNumber, abiVersion, libraryPath', () => {
    assert.equal(Realm.version(), '0.1.0');
    assert.equal(Realm.versionNumber(), 1000);
    assert.equal(Realm.abiVersion(), 1);
    assert.match(Realm.libraryPath(), /librealm\.so$/);
  });
});

describe('Model', () => {
  test('id and info() equal Python', () => {
    assert.equal(model.id, BigInt(py.id));
    const info = model.info();
    const p = py.info;
    const pairs = {
      nLayer: 'n_layer', nEmbd: 'n_embd', nFf: 'n_ff', nHead: 'n_head', nHeadKv: 'n_head_kv', headDim: 'head_dim',
      nRot: 'n_rot', nVocab: 'n_vocab', nCtxTrain: 'n_ctx_train', nTensors: 'n_tensors', bosId: 'bos_id',
      eosId: 'eos_id', ropeFreqBase: 'rope_freq_base', rmsEps: 'rms_eps', architecture: 'architecture',
      totalBytes: 'total_bytes', bytesByType: 'bytes_by_type',
    };
    for (const [js, pyKey] of Object.entries(pairs)) {
      if (pyKey in p) assert.deepEqual(info[js], p[pyKey], js);
    }
    assert.equal(info.id, model.id);
    assert.equal(info.hasChatTemplate, true);
    assert.equal(typeof info.name, 'string');
  });

  test('tensorNames() equal Python, in file order', () => {
    assert.deepEqual(model.tensorNames(), py.tensors);
  });

  test('tensor() and tensorInfo(): same floats and shape as Python', () => {
    for (const [name, t] of Object.entries(py.tensor)) {
      const a = model.tensor(name);
      assert.deepEqual([...a.shape], t.shape, `${name} shape`);
      assertSameFloats(a, f32(t.data), name);
      const ti = model.tensorInfo(name);
      assert.deepEqual(ti.shape, t.shape);
      assert.equal(ti.nElements, a.length);
    }
  });

  test('tokenize() with and without specials, detokenize(), tokenPiece()', () => {
    TEXTS.forEach((text, i) => {
      assert.deepEqual([...model.tokenize(text)], py.tok[i], `tokenize ${JSON.stringify(text)}`);
      assert.deepEqual([...model.tokenize(text, { addSpecial: false, parseSpecial: false })], py.tok_plain[i]);
      assert.equal(model.detokenize(py.tok[i]), py.detok[i]);
      assert.equal(model.detokenize(Int32Array.from(py.tok[i])), py.detok[i]);
    });
    [0, 1, 2, 504, 49151].forEach((id, i) => {
      assert.deepEqual(model.tokenPiece(id), Buffer.from(py.pieces[i], 'base64'), `piece ${id}`);
    });
  });

  test('long text goes through the two-call protocol', () => {
    const text = 'Paris est la capitale de la France. '.repeat(800);   // > 16 KiB of output text
    const ids = model.tokenize(text, { addSpecial: false });
    assert.equal(model.detokenize(ids), text);
  });

  test('applyChatTemplate() equal Python', () => {
    assert.equal(model.applyChatTemplate(MESSAGES), py.chat);
    assert.equal(model.applyChatTemplate(MESSAGES, { addGenerationPrompt: false }), py.chat_nogen);
  });

  test('store(bytes) and storeFile(path) give the content id; close() drops one reference', () => {
    const path = py.default_path;
    const fromFile = Model.storeFile(path);
    const fromBytes = Model.store(readFileSync(path));
    assert.equal(fromFile.id, model.id);
    assert.equal(fromBytes.id, model.id);
    fromFile.close();
    fromBytes.close();
    fromBytes.close();                                   // idempotent
    assert.equal(model.info().nLayer, py.info.n_layer);  // the first reference still holds it
  });
});

describe('Session', () => {
  test('embedTokens -> forwardLayer x L -> computeLogits equal Python', () => {
    const s = model.createSession({ nCtx: 64 });
    assert.equal(s.nCtx, 64);
    const ids = model.tokenize(PROMPT_IDS_TEXT);
    assert.deepEqual([...ids], py.ids);
    let h = s.embedTokens(ids);
    assertSameFloats(h, f32(py.embed), 'embed');
    for (let layer = 0; layer < model.info().nLayer; layer++) {
      h = s.forwardLayer(layer, h, 0);
      if (layer === 0) assertSameFloats(h, f32(py.layer0), 'layer 0');
    }
    assert.equal(s.nTokens, py.layers_n_tokens);
    assertSameFloats(s.computeLogits(h), f32(py.logits_all), 'logits [T, V]');
    s.close();
  });

  test('decode, fork, truncate, reset equal Python', () => {
    const s = model.createSession({ nCtx: 64 });
    assertSameFloats(s.decode(py.ids), f32(py.decode_last), 'decode');
    assertSameFloats(s.decode([7042]), f32(py.decode_next), 'decode next');
    assert.equal(s.nTokens, py.ids.length + 1);
    const f = s.fork();
    assert.equal(f.nTokens, s.nTokens);
    assert.equal(f.model, model);
    assertSameFloats(f.decode([30]), f32(py.fork_next), 'fork');
    s.truncate(py.ids.length);
    assert.equal(s.nTokens, py.ids.length);
    assertSameFloats(s.decode([30]), f32(py.trunc_next), 'truncate');
    s.reset();
    assert.equal(s.nTokens, 0);
    assertSameFloats(s.decode(py.ids, { allLogits: true }), f32(py.reset_all), 'reset + allLogits');
    f.close();
    s.close();
    s.close();                                            // idempotent
  });

  test('createSession({ precision: \'fast\' }) decodes as Python\'s fast session; bad options are REALM_E_ARG', () => {
    const s = model.createSession({ nCtx: 64, precision: 'fast', device: 'cpu' });
    try {
      assert.equal(s.nCtx, 64);
      assertSameFloats(s.decode(py.ids), f32(py.fast_last), 'fast decode');
    } finally {
      s.close();
    }
    const exact = model.createSession({ precision: 'exact' });
    try {
      assertSameFloats(exact.decode(py.ids), f32(py.decode_last), 'exact decode');
    } finally {
      exact.close();
    }
    assertRealmError(() => model.createSession({ precision: 'turbo' }), ErrorCode.ARG, 'options.precision', '"turbo"');
    assertRealmError(() => model.createSession({ device: 'tpu' }), ErrorCode.ARG, 'realm_session_create_ex', "'tpu'");
  });

  test('generate(): greedy stream equals Python, the session keeps the tokens', async () => {
    const s = model.createSession({ nCtx: 256 });
    const g = s.generate(py.chat, { maxTokens: 16 });
    const pieces = [];
    for await (const piece of g) pieces.push(piece);
    const r = await g.result;
    assert.equal(pieces.join(''), py.gen.text);
    assert.equal(r.text, py.gen.text);
    assert.deepEqual(r.tokenIds, py.gen.ids);
    assert.equal(r.finishReason, py.gen.finish);
    assert.equal(r.nPrompt, py.gen.n_prompt);
    assert.equal(r.nGenerated, py.gen.ids.length);
    assert.equal(s.nTokens, py.gen.n_tokens);
    assert.match(r.text, /Paris/);
    s.close();
  });

  test('generate(): stop string and seeded sampling from token ids equal Python', async () => {
    const s = model.createSession({ nCtx: 256 });
    const r = await s.generate(py.chat, { maxTokens: 16, stop: ' Paris' }).result;
    assert.deepEqual({ text: r.text, ids: r.tokenIds, finish: r.finishReason }, py.gen_stop);
    const s3 = model.createSession({ nCtx: 256 });
    const r3 = await s3.generate(py.ids, { maxTokens: 12, temperature: 0.9, topK: 40, topP: 0.95, seed: 1234 }).result;
    assert.deepEqual({ text: r3.text, ids: r3.tokenIds, finish: r3.finishReason }, py.gen_seeded);
    s.close();
    s3.close();
  });

  test('generate(): cancel() and breaking out of the loop stop it; the session is free after', async () => {
    const s = model.createSession({ nCtx: 256 });
    const g = s.generate(py.chat, { maxTokens: 16 });
    let n = 0;
    for await (const piece of g) {
      assert.equal(typeof piece, 'string');
      if (++n === 2) break;
    }
    const r = await g.result;
    assert.equal(r.finishReason, 'cancelled');
    assert.ok(r.tokenIds.length >= 2 && r.tokenIds.length < py.gen.ids.length, `${r.tokenIds.length} tokens`);
    assert.equal(s.nTokens > 0, true);                     // usable again at once
    const g2 = s.generate(' and', { maxTokens: 5 });
    g2.cancel();
    assert.equal((await g2.result).finishReason, 'cancelled');
    s.close();
  });
});

describe('sampling', () => {
  test('Sampler with a seed and topK equal Python', () => {
    const s = model.createSession({ nCtx: 64 });
    const logits = s.decode(py.ids);
    const smp = new Sampler({ temperature: 1.0, seed: 7, repetitionPenalty: 1.3 });
    const got = [0, 1, 2, 3, 4].map(() => smp.sample(logits, py.ids));
    assert.deepEqual(got, py.samples);
    smp.close();
    const t = topK(logits, 5);
    assert.deepEqual([...t.ids], py.topk.ids);
    assertSameFloats(t.values, f32(py.topk.values), 'top-k values');
    assert.deepEqual(topK(Array.from(logits.subarray(0, 3)), 10).ids.length, 3);
    s.close();
  });
});
