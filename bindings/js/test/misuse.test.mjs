// Every misuse path: the exact code (and codeName) and the part of the message that names the
// argument and the offending value.  A failed call changes nothing.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { ErrorCode as E, Model, Realm, Sampler, Session, topK } from '../index.mjs';
import { assertRealmError as throws, assertRejectsRealm as rejects } from './helpers.mjs';

let model;
let session;                         // n_ctx 16, holding 2 tokens
const hex = (id) => `0x${id.toString(16)}`;

before(() => {
  Realm.init();
  model = Model.storeDefault();
  session = model.createSession({ nCtx: 16 });
  session.decode([1, 504]);
});

after(() => {
  session.close();
  model.close();
});

describe('models', () => {
  test('store: missing file, not a GGUF, empty, wrong type, bad id, id conflict', () => {
    throws(() => Model.storeFile('/nonexistent/x.gguf'), E.IO, 'realm_model_store_file: ', "'/nonexistent/x.gguf' does not exist");
    throws(() => Model.store(Buffer.from('this is not a GGUF file')), E.FORMAT, 'realm_model_store: ', 'bad magic');
    throws(() => Model.store(new Uint8Array(0)), E.ARG, 'Model.store: bytes is empty');
    throws(() => Model.store('model.gguf'), E.ARG, 'Model.store: bytes must be a Buffer, Uint8Array or ArrayBuffer, got "model.gguf"');
    throws(() => Model.storeFile(42), E.ARG, 'Model.storeFile: path must be a string, got 42');
    throws(() => Model.storeFile('a\0b'), E.ARG, 'Model.storeFile: path contains a NUL character');
    throws(() => Model.storeDefault({ id: -1 }), E.ARG, 'Model.storeDefault: options.id must be an integer in [0, 2^64)', 'got -1');
    throws(() => Model.storeDefault({ id: 77 }), E.CONFLICT, 'realm_model_store_default: ',
      `already stored as model ${hex(model.id)}; model_id 0x4d cannot name it too`);
  });

  test('remove while sessions live is REALM_E_BUSY and changes nothing', () => {
    throws(() => model.close(), E.BUSY, 'realm_model_remove: ', `model ${hex(model.id)} has 1 live session(s)`);
    assert.equal(model.closed, false);
    assert.equal(session.nTokens, 2);
  });

  test('unknown tensor, bad token ids, bad text', () => {
    throws(() => model.tensor('nope.weight'), E.NOT_FOUND, 'realm_tensor_info_get: ', "tensor 'nope.weight' not found");
    throws(() => model.tensorInfo(undefined), E.ARG, 'Model.tensorInfo: name must be a string, got undefined');
    throws(() => model.tokenPiece(49152), E.RANGE, 'realm_token_piece: ', 'token id 49152 outside the vocabulary [0, 49152)');
    throws(() => model.tokenPiece(1.5), E.ARG, 'Model.tokenPiece: token must be a 32-bit integer token id, got 1.5');
    throws(() => model.detokenize([1, -1]), E.RANGE, 'realm_detokenize: ', 'token id -1 outside the vocabulary');
    throws(() => model.detokenize('abc'), E.ARG, 'Model.detokenize: ids must be an array of token ids', 'got "abc"');
    throws(() => model.detokenize([1, 2 ** 40]), E.ARG, 'Model.detokenize: ids[1] must be a 32-bit integer token id, got 1099511627776');
    throws(() => model.detokenize(new Float32Array([1])), E.ARG, 'Model.detokenize: ids must be an array of token ids');
    throws(() => model.tokenize(42), E.ARG, 'Model.tokenize: text must be a string, got 42');
  });

  test('chat template: not an array, a message without content', () => {
    throws(() => model.applyChatTemplate('Hi'), E.ARG, 'Model.applyChatTemplate: messages must be an array');
    throws(() => model.applyChatTemplate([{ role: 'user' }]), E.ARG, 'realm_chat_template_json: ', "messages[0]['content'] must be a str");
    throws(() => model.applyChatTemplate([5]), E.ARG, 'realm_chat_template_json: ', 'messages[0] must be a dict');
  });

  test('a closed model is REALM_E_NOT_FOUND in every method; close() twice is fine', () => {
    const m = Model.storeDefault();
    m.close();
    m.close();
    for (const [name, call] of [['info', () => m.info()], ['tensorNames', () => m.tensorNames()],
      ['tokenize', () => m.tokenize('x')], ['applyChatTemplate', () => m.applyChatTemplate([])],
      ['createSession', () => m.createSession()]]) {
      const where = name === 'createSession' ? 'Session.create' : `Model.${name}`;
      throws(call, E.NOT_FOUND, `${where}: model ${hex(m.id)} is closed`);
    }
    assert.equal(model.info().nLayer, 30, 'the other reference still holds the model');
  });
});

describe('sessions', () => {
  test('create: not a model, n_ctx over the training context, bad n_ctx', () => {
    throws(() => Session.create({}), E.ARG, 'Session.create: model must be a Model, got a Object');
    throws(() => model.createSession({ nCtx: 100000 }), E.RANGE, 'realm_session_create: ', "n_ctx 100000 exceeds the model's context length 8192");
    throws(() => model.createSession({ nCtx: -1 }), E.ARG, 'Session.create: nCtx must be an integer in [0, 2^32), got -1');
  });

  test('compute calls: layer, position, shape, NaN, empty input, vocabulary, context; nothing changes', () => {
    const h = session.embedTokens([504]);
    throws(() => session.forwardLayer(30, h, 2), E.RANGE, 'realm_forward_layer: layer 30 out of range [0, 30)');
    throws(() => session.forwardLayer(0, h, 5), E.RANGE, 'realm_forward_layer: pos 5 skips past the 2 positions cached for layer 0');
    throws(() => session.forwardLayer(0, h, 16), E.RANGE, 'realm_forward_layer: ');
    throws(() => session.forwardLayer(-1, h, 2), E.ARG, 'Session.forwardLayer: layer must be an integer in [0, 2^32), got -1');
    throws(() => session.forwardLayer(0, h.subarray(1), 2), E.ARG, 'Session.forwardLayer: hidden has 575 floats, not a multiple of D = 576');
    throws(() => session.forwardLayer(0, 'x', 2), E.ARG, 'Session.forwardLayer: hidden must be a Float32Array or number[], got "x"');
    const bad = h.slice();
    bad[7] = NaN;
    throws(() => session.forwardLayer(0, bad, 2), E.ARG, 'realm_forward_layer: hidden contains NaN or infinity');
    bad[7] = Infinity;
    throws(() => session.computeLogits(bad), E.ARG, 'realm_compute_logits: ', 'NaN or infinity');
    throws(() => session.computeLogits(new Float32Array(0)), E.ARG, 'realm_compute_logits: n_tokens is 0');
    throws(() => session.embedTokens([-5]), E.RANGE, 'realm_embed_tokens: token id -5 out of range [0, 49152)');
    throws(() => session.embedTokens([]), E.ARG, 'realm_embed_tokens: ');
    throws(() => session.decode([]), E.ARG, 'realm_decode: n_tokens is 0: at least one token is needed');
    throws(() => session.decode([49152]), E.RANGE, 'realm_decode: token id 49152 out of range [0, 49152)');
    throws(() => session.decode(new Array(15).fill(504)), E.RANGE, "realm_decode: positions [2, 17) exceed the session's n_ctx 16");
    throws(() => session.decode([504, 1.5]), E.ARG, 'Session.decode: ids[1] must be a 32-bit integer token id, got 1.5');
    throws(() => session.truncate(3), E.RANGE, 'realm_session_truncate: n 3 out of range [0, 2]');
    throws(() => session.truncate(-3), E.ARG, 'Session.truncate: n must be an integer in [0, 2^32), got -3');
    assert.equal(session.nTokens, 2, 'every failed call left the cache as it was');
  });

  test('a closed session is REALM_E_NOT_FOUND; close() twice is fine', () => {
    const s = model.createSession({ nCtx: 8 });
    s.close();
    s.free();
    throws(() => s.decode([1]), E.NOT_FOUND, `Session.decode: session ${hex(s.id)} is closed`);
    throws(() => s.nTokens, E.NOT_FOUND, `Session.nTokens: session ${hex(s.id)} is closed`);
    throws(() => s.fork(), E.NOT_FOUND, `Session.fork: session ${hex(s.id)} is closed`);
  });
});

describe('generate', () => {
  test('bad prompts and options reject with the code; the session stays usable', async () => {
    const s = model.createSession({ nCtx: 16 });
    await rejects(s.generate('').result, E.ARG, 'realm_generate: prompt is empty');
    await rejects(s.generate([]).result, E.ARG, 'realm_generate_tokens: prompt is empty');
    await rejects(s.generate('hello '.repeat(40)).result, E.LIMIT, 'realm_generate: prompt of 41 tokens does not fit', 'n_ctx 16');
    await rejects(s.generate('hi', { temperature: -1 }).result, E.ARG, 'realm_generate: params->sampler->temperature=-1.0 must be finite and >= 0');
    await rejects(s.generate('hi', { topP: 2 }).result, E.ARG, 'realm_generate: params->sampler->top_p=2.0');
    await rejects(s.generate('hi', { maxTokens: -1 }).result, E.ARG, 'Session.generate: options.maxTokens must be an integer in [0, 2^32), got -1');
    await rejects(s.generate('hi', { stop: 5 }).result, E.ARG, 'Session.generate: options.stop must be a string or an array of strings, got 5');
    await rejects(s.generate('hi', { temperature: 'hot' }).result, E.ARG, 'Session.generate: options.temperature must be a number, got "hot"');
    await rejects(s.generate('hi', { signal: 'stop' }).result, E.ARG, 'Session.generate: options.signal must be an AbortSignal');
    await rejects(s.generate({}).result, E.ARG, 'Session.generate: prompt must be a string or an array of token ids, got a Object');
    await rejects(s.generate([1, 49152]).result, E.RANGE, 'realm_generate_tokens: ');
    // the iterator rejects the same way as .result
    await rejects(async () => { for await (const _ of s.generate('')) { /* nothing */ } }, E.ARG, 'realm_generate: prompt is empty');
    assert.equal(s.nTokens, 0);
    s.close();
  });

  test('while generate() runs, the session is REALM_E_BUSY for every other call', async () => {
    const s = model.createSession({ nCtx: 64 });
    const g = s.generate('The capital of France is', { maxTokens: 4 });
    const where = `session ${hex(s.id)} is generating`;
    throws(() => s.decode([1]), E.BUSY, 'Session.decode: ', where);
    throws(() => s.close(), E.BUSY, 'Session.close: ', where);
    throws(() => s.nTokens, E.BUSY, 'Session.nTokens: ', where);
    await rejects(s.generate('again').result, E.BUSY, 'Session.generate: ', where);
    const it = g[Symbol.asyncIterator]();
    throws(() => g[Symbol.asyncIterator](), E.ARG, 'Generation: can be iterated only once');
    await it.return();
    assert.ok(s.nTokens >= 5);
    s.close();
  });

  test('an AbortSignal stops it: iteration and .result reject with signal.reason', async () => {
    const s = model.createSession({ nCtx: 128 });
    const ac = new AbortController();
    const g = s.generate('Once upon a time', { maxTokens: 64, signal: ac.signal });
    const pieces = [];
    await assert.rejects(async () => {
      for await (const piece of g) {
        pieces.push(piece);
        if (pieces.length === 2) ac.abort();
      }
    }, { name: 'AbortError' });
    await assert.rejects(g.result, { name: 'AbortError' });
    assert.ok(pieces.length >= 2 && pieces.length < 10, `${pieces.length} pieces`);
    const n = s.nTokens;
    assert.ok(n > 4 && n < 20, `${n} tokens kept`);
    const reason = new Error('already aborted');
    await assert.rejects(s.generate('x', { signal: AbortSignal.abort(reason) }).result, reason);
    assert.equal(s.nTokens, n, 'an aborted-before-start generate decodes nothing');
    s.close();
  });
});

describe('sampling', () => {
  test('bad sampler parameters, logits and history; closed sampler', () => {
    throws(() => new Sampler({ topP: 0 }), E.ARG, 'realm_sampler_create: params->top_p=0.0 must be in (0, 1]');
    throws(() => new Sampler({ temperature: -1 }), E.ARG, 'realm_sampler_create: params->temperature=-1.0 must be finite and >= 0');
    throws(() => new Sampler({ topK: 1.5 }), E.ARG, 'new Sampler: options.topK must be a 32-bit integer, got 1.5');
    throws(() => new Sampler({ seed: -2 }), E.ARG, 'new Sampler: options.seed must be an integer in [0, 2^64)');
    const smp = new Sampler({ repetitionPenalty: 1.3 });
    throws(() => smp.sample(new Float32Array(0)), E.ARG, 'realm_sampler_sample: n_logits is 0');
    throws(() => smp.sample(new Float32Array([1, NaN])), E.ARG, 'realm_sampler_sample: logits contain NaN (first at id 1)');
    throws(() => smp.sample(new Float32Array([1, 2]), [5]), E.RANGE, 'realm_sampler_sample: history token id 5 outside the vocabulary [0, 2)');
    smp.close();
    throws(() => smp.sample(new Float32Array([1, 2])), E.NOT_FOUND, `Sampler.sample: sampler ${hex(smp.id)} is closed`);
    throws(() => topK(new Float32Array([1, 2]), 0), E.ARG, 'realm_top_k: k is 0');
    throws(() => topK(new Float32Array([1, NaN]), 1), E.ARG, 'realm_top_k: ');
    throws(() => topK([1n], 1), E.ARG, 'topK: logits must be a Float32Array or number[]');
  });
});
