// WebAssembly guests under Node (lib/guest.cjs): the same .wasm and the same "realm" imports as the
// Python host (realm_embed.wasm, wasmtime).  The Python side runs in one child process (the venv's
// python): it compiles the hostile WAT guests (wasmtime.wat2wasm), gives the reference tokens
// (realm.generate and the wasmtime host), and runs one scripted sequence of import calls through its
// proxy guest; the Node host runs the same script through the same proxy and must record the same
// result codes, messages, traps and memory bytes.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import {
  GuestAbiError, GuestFault, GuestHost, GuestLimitError, GuestStop, GuestTrap, Model, Realm, RealmError, guestPath,
  runGuest,
} from '../index.mjs';
import native from '../lib/native.cjs';
import { ROOT, python } from './helpers.mjs';

const Q = 'What is the capital of France?';
const RAW = 'The capital of France is';
const D = 576;
const V = 49152;
const L = 30;
const MEM = 8 * 65536;                       // the proxy guest's memory
const TEXT = 0x1000; const IDS = 0x2000; const OUT = 0x3000; const MSGS = 0x3100; const BIAS = 0x3800;
const CAND = 0x4000; const VALS = 0x4100; const PIECE = 0x4800; const HID = 0x10000; const LOGITS = 0x20000;
const SIZE = OUT; const I64 = OUT + 8; const HANDLE = OUT + 16;

// ---- the conformance script: steps run by both hosts ---------------------------------------------

const STEPS = [];
const w = (ptr, bytes) => STEPS.push(['w', ptr, Buffer.from(bytes).toString('base64')]);
const wText = (ptr, s) => w(ptr, Buffer.from(s, 'utf8'));
const wi32 = (ptr, xs) => w(ptr, new Uint8Array(Int32Array.from(xs).buffer));
const wf32 = (ptr, xs) => w(ptr, new Uint8Array(Float32Array.from(xs).buffer));
const wBias = (ptr, entries) => {
  const b = Buffer.alloc(8 * entries.length);
  entries.forEach(([id, v], i) => { b.writeInt32LE(id, 8 * i); b.writeFloatLE(v, 8 * i + 4); });
  w(ptr, b);
};
const r = (ptr, n) => STEPS.push(['r', ptr, n]);
const call = (name, ...args) => STEPS.push(['c', name, ...args]);

call('abi_version');
call('model');
for (let k = 1; k <= 11; k++) { call('model_info', 1, k, I64); r(I64, 8); }
call('model_info', 1, 99, I64);
call('model_info', 1, 1, 0);
call('model_info', 2, 1, I64);
call('model_info', 1, 1, MEM - 4);                                // trap
call('eot_ids', 1, 0, 0, SIZE); r(SIZE, 4);
call('eot_ids', 1, IDS, 1, SIZE); r(SIZE, 4);
call('eot_ids', 1, IDS, 16, SIZE); r(IDS, 8);
// tokenize: the two-call protocol, flags, bad UTF-8, limits, faults
const HELLO = Buffer.from('Hello, world! <|im_end|> héllo 東京', 'utf8');
w(TEXT, HELLO);
call('tokenize', 1, TEXT, HELLO.length, 3, 0, 0, SIZE); r(SIZE, 4);
wi32(IDS, Array(16).fill(-7));
call('tokenize', 1, TEXT, HELLO.length, 3, IDS, 2, SIZE); r(SIZE, 4); r(IDS, 64);
call('tokenize', 1, TEXT, HELLO.length, 3, IDS, 64, SIZE); r(SIZE, 4); r(IDS, 64);
call('tokenize', 1, TEXT, HELLO.length, 0, IDS, 64, SIZE); r(IDS, 64);
call('tokenize', 1, TEXT, HELLO.length, 4, IDS, 64, SIZE);
call('tokenize', 1, TEXT, HELLO.length, 3, 0, 5, SIZE);
call('tokenize', 1, TEXT, HELLO.length, 3, IDS, 64, 0);
call('tokenize', 1, TEXT, (16 << 20) + 1, 3, IDS, 64, SIZE);
for (const bad of [[0x41, 0xff, 0x42], [0x41, 0xe2, 0x82], [0x41, 0xed, 0xa0, 0x80], [0xc0, 0x80], [0xf4, 0x90, 0x80, 0x80]]) {
  w(TEXT + 0x100, bad);
  call('tokenize', 1, TEXT + 0x100, bad.length, 3, IDS, 64, SIZE);
}
call('tokenize', 1, MEM - 4, 10, 0, IDS, 8, SIZE);              // trap: text
wi32(SIZE, [12345]);
call('tokenize', 1, TEXT, 5, 0, MEM - 4, 8, SIZE); r(SIZE, 4);   // trap: ids; nothing written
call('tokenize', 1, 0xFFFFFFF0, 0x20, 0, IDS, 8, SIZE);          // trap: ptr + len wraps
call('tokenize', 2, TEXT, 1, 0, IDS, 8, SIZE);                   // no model handle 2
// detokenize, token_piece
const PARIS = [504, 3575, 282, 4649, 314, 7042, 30];
wi32(IDS + 0x100, PARIS);
call('detokenize', 1, IDS + 0x100, 7, 0, 0, SIZE); r(SIZE, 4);
call('detokenize', 1, IDS + 0x100, 7, PIECE, 200, SIZE); r(PIECE, 40); r(SIZE, 4);
call('detokenize', 1, IDS + 0x100, 7, PIECE, 3, SIZE); r(SIZE, 4);
call('detokenize', 1, IDS + 0x100, 0, PIECE, 200, SIZE); r(PIECE, 4);
wi32(IDS + 0x200, [99999]);
call('detokenize', 1, IDS + 0x200, 1, PIECE, 200, SIZE);
call('detokenize', 1, IDS, (1 << 20) + 1, PIECE, 200, SIZE);
wi32(IDS + 0x204, [0, 7042, 30]);
call('detokenize', 1, IDS + 0x205, 1, PIECE, 200, SIZE);         // unaligned ids
call('token_piece', 1, 7042, PIECE, 64, SIZE); r(PIECE, 8); r(SIZE, 4);
call('token_piece', 1, 7042, PIECE, 1, SIZE); r(SIZE, 4);
call('token_piece', 1, -1, PIECE, 64, SIZE);
call('token_piece', 1, V, PIECE, 64, SIZE);
call('token_piece', 1, 2, 0, 0, SIZE); r(SIZE, 4);
// chat_template
wText(TEXT + 0x200, 'user');
wText(TEXT + 0x300, Q);
wi32(MSGS, [TEXT + 0x200, 4, TEXT + 0x300, Q.length]);
call('chat_template', 1, MSGS, 1, 1, 0, 0, SIZE); r(SIZE, 4);
call('chat_template', 1, MSGS, 1, 1, 0x5000, 4096, SIZE); r(0x5000, 120);
call('chat_template', 1, MSGS, 1, 0, 0x5000, 4096, SIZE); r(0x5000, 120);
call('chat_template', 1, MSGS, 0, 1, 0x5000, 4096, SIZE);
call('chat_template', 1, MSGS, 0xFFFFFFFF, 1, 0x5000, 4096, SIZE);
call('chat_template', 1, MSGS, 1, 2, 0x5000, 4096, SIZE);
call('chat_template', 1, MSGS, 1, 1, 0x5000, 10, SIZE); r(SIZE, 4);
w(TEXT + 0x100, [0xc0, 0x80]);
wi32(MSGS + 16, [TEXT + 0x100, 2, TEXT + 0x300, Q.length]);
call('chat_template', 1, MSGS + 16, 1, 1, 0x5000, 4096, SIZE);
wi32(MSGS + 32, [MEM + 100, 4, TEXT + 0x300, Q.length]);
call('chat_template', 1, MSGS + 32, 1, 1, 0x5000, 4096, SIZE);  // trap: role outside
call('chat_template', 1, MEM - 8, 1, 1, 0x5000, 4096, SIZE);    // trap: messages outside
// sessions
call('session_create', 1, 64, HANDLE); r(HANDLE, 4);             // handle 2
call('session_create', 1, 0xFFFFFFFF, HANDLE);
call('session_create', 1, 64, 0);
call('session_create', 1, 64, MEM - 2);                          // trap
call('session_n_tokens', 2, SIZE); r(SIZE, 4);
call('session_n_tokens', 2, 0);
call('session_fork', 2, HANDLE + 4); r(HANDLE + 4, 4);           // handle 3
call('session_free', 3);
call('session_free', 3);
call('session_free', 0);
for (const h of [3, 1, -1, 999]) call('session_n_tokens', h, SIZE);
call('session_reset', 2);
call('session_reset', 42);
call('session_truncate', 2, 5);
call('session_truncate', 2, 0);
// compute: the layer loop
wText(TEXT + 0x400, RAW);
call('tokenize', 1, TEXT + 0x400, RAW.length, 3, IDS, 64, SIZE); r(SIZE, 4); r(IDS, 20);
call('embed_tokens', 2, IDS, 5, HID, 5 * D); r(HID, 5 * D * 4);
call('embed_tokens', 2, IDS, 0, HID, 0);
call('embed_tokens', 2, IDS, 5, HID, 10);
call('embed_tokens', 2, IDS, 5, 0, 5 * D);
call('embed_tokens', 2, IDS, 0x40000001, HID, 64);               // trap: 4 * n wraps in 32 bits
wi32(IDS + 0x300, [V]);
call('embed_tokens', 2, IDS + 0x300, 1, HID + 0x8000, D);
call('embed_tokens', 2, IDS, 5, 0x30002, 5 * D); r(0x30002, 5 * D * 4);   // unaligned output
for (let layer = 0; layer < L; layer++) call('forward_layer', 2, layer, 0, HID, 5, D, HID, 5 * D);
r(HID, 5 * D * 4);
call('session_n_tokens', 2, SIZE); r(SIZE, 4);
call('forward_layer', 2, L, 5, HID, 1, D, HID, D);
call('forward_layer', 2, 0, 10, HID, 1, D, HID, D);
call('forward_layer', 2, 0, 5, HID, 1, D - 1, HID, D);
call('forward_layer', 2, 0, 5, HID, 0, D, HID, D);
call('forward_layer', 2, 0, 5, HID, 1, D, HID, D - 1);
call('forward_layer', 2, 0, 5, HID, 1, D, MEM - 8, D);           // trap: out
const BIG_T = Math.floor(2 ** 32 / (4 * D)) + 1;                  // T * D * 4 wraps in 32 bits
call('forward_layer', 2, 0, 0, HID, BIG_T, D, HID, BIG_T * D);   // trap: hidden
wf32(0x30000, Array(D).fill(1));
wf32(0x30000 + 28, [NaN]);
call('forward_layer', 2, 0, 5, 0x30000, 1, D, 0x30000, D);       // NaN in hidden
call('session_n_tokens', 2, SIZE); r(SIZE, 4);
call('compute_logits', 2, HID + 4 * 4 * D, 1, D, LOGITS, V); r(LOGITS, 4 * V);
call('compute_logits', 2, HID, 5, D, LOGITS, V);
call('compute_logits', 2, HID, 5, D, LOGITS, 5 * V);             // trap: 5 V floats do not fit
call('compute_logits', 2, 0x30002 + 4 * 4 * D, 1, D, LOGITS + 1, V); r(LOGITS + 1, 4 * V);   // unaligned both
call('logits_top_k', 2, HID, 5, D, 0, 0, 5, CAND, VALS, SIZE); r(CAND, 20); r(VALS, 20); r(SIZE, 4);
wBias(BIAS, [[7042, -Infinity]]);
call('logits_top_k', 2, HID, 5, D, BIAS, 1, 3, CAND, VALS, SIZE); r(CAND, 12); r(VALS, 12);
wBias(BIAS + 0x40, [[7042, 1.5], [7042, 2.25], [30, -0.5]]);
call('logits_top_k', 2, HID, 5, D, BIAS + 0x40, 3, 4, CAND, VALS, SIZE); r(CAND, 16); r(VALS, 16);
wBias(BIAS + 0x80, [[V, 0]]);
call('logits_top_k', 2, HID, 5, D, BIAS + 0x80, 1, 3, CAND, VALS, SIZE);
wBias(BIAS + 0x88, [[5, Infinity]]);
call('logits_top_k', 2, HID, 5, D, BIAS + 0x88, 1, 3, CAND, VALS, SIZE);
wBias(BIAS + 0x90, [[5, NaN]]);
call('logits_top_k', 2, HID, 5, D, BIAS + 0x90, 1, 3, CAND, VALS, SIZE);
call('logits_top_k', 2, HID, 5, D, BIAS, V + 1, 3, CAND, VALS, SIZE);
call('logits_top_k', 2, HID, 5, D, 0, 0, 0, CAND, VALS, SIZE);
call('logits_top_k', 2, HID, 5, D, 0, 0, 3, 0, VALS, SIZE);
call('logits_top_k', 2, HID, 5, D, 0, 0, 3, CAND, VALS, 0);
call('logits_top_k', 2, HID, 5, D, 0, 0, 2, CAND + 1, VALS + 3, SIZE); r(CAND, 12); r(VALS, 12);
// compute: the fused decode
call('session_create', 1, 32, HANDLE); r(HANDLE, 4);             // handle 4
call('decode', 4, IDS, 3, 0, LOGITS, V); r(LOGITS, 4 * V);
call('decode', 4, IDS + 12, 1, 0, LOGITS, V - 1);
wi32(IDS + 0x300, [V + 5]);
call('decode', 4, IDS + 0x300, 1, 0, LOGITS, V);
call('decode', 4, IDS + 12, 1, 2, LOGITS, V);
call('decode', 4, IDS + 12, 1, 0, MEM - 100, V);                 // trap
call('decode', 4, IDS + 12, 0, 0, LOGITS, V);
call('decode', 4, IDS + 12, 1, 0, LOGITS, 0xFFFFFFFF);           // trap
call('session_n_tokens', 4, SIZE); r(SIZE, 4);                   // still 3
call('decode_top_k', 4, IDS + 12, 1, BIAS + 0x88, 1, 1, CAND, VALS, SIZE);
call('session_n_tokens', 4, SIZE); r(SIZE, 4);                   // still 3
call('decode_top_k', 4, IDS + 12, 1, 0, 0, 1, CAND, VALS, SIZE); r(CAND, 4); r(VALS, 4);
call('decode', 4, IDS + 16, 1, 1, LOGITS, V); r(LOGITS, 4 * V);
call('session_fork', 4, HANDLE + 8); r(HANDLE + 8, 4);           // handle 5
call('decode_top_k', 5, IDS, 1, 0, 0xFFFFFFFF, 5, CAND, VALS, SIZE);
call('decode_top_k', 5, IDS, 1, 0, 0, 0xFFFFFFFF, 0x10000, 0x40000, SIZE); r(SIZE, 4);   // k clamped to V
r(0x10000, 64); r(0x10000 + 4 * V - 64, 64); r(0x40000, 64);
call('session_truncate', 4, 2);
call('session_n_tokens', 4, SIZE); r(SIZE, 4);
// host services
wText(TEXT + 0x500, 'héllo');
call('emit', TEXT + 0x500, 6);
call('emit', TEXT + 0x500, 0);
call('emit', TEXT, 0xFFFFFFFF);                                  // trap
call('log', 1, TEXT + 0x500, 6);
call('log', 7, TEXT + 0x500, 6);
call('log', -1, TEXT + 0x500, 6);
call('log', 1, MEM - 2, 6);                                      // trap
call('session_n_tokens', 77, SIZE);
call('last_error', 0, 0, SIZE); r(SIZE, 4);
call('last_error', PIECE, 200, SIZE); r(PIECE, 64);
call('last_error', PIECE, 3, SIZE); r(SIZE, 4);
call('abi_version');
call('last_error', 0, 0, SIZE); r(SIZE, 4);
call('last_error', 0, 0, 0);
// per-guest limits: 8 sessions (2, 4, 5 live)
for (let i = 0; i < 6; i++) { call('session_create', 1, 16, HANDLE); r(HANDLE, 4); }
call('session_fork', 2, HANDLE);
call('session_free', 2);
call('session_fork', 4, HANDLE); r(HANDLE, 4);

// ---- the Python side ---------------------------------------------------------------------------------

const WAT = {
  looping_start: '(module (memory (export "memory") 1) (func $s (loop $l (br $l))) (start $s))',
  wrong_sig: '(module (import "realm" "decode" (func (param i32) (result i32))) (memory (export "memory") 1))',
  unknown_module: '(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))) ' +
    '(memory (export "memory") 1))',
  no_memory: '(module (import "realm" "abi_version" (func (result i32))))',
  not_func: '(module (import "realm" "emit" (global i32)) (memory (export "memory") 1))',
  big_defined: '(module (memory (export "memory") 1000))',
  declared_max: '(module (import "env" "memory" (memory 1 3)) (func (export "grow") (param i32) (result i32) ' +
    '(memory.grow (local.get 0))))',
  session_spin: '(module (import "realm" "session_create" (func $c (param i32 i32 i32) (result i32))) ' +
    '(import "env" "memory" (memory 1)) (func (export "spin") (drop (call $c (i32.const 1) (i32.const 64) ' +
    '(i32.const 256))) (loop $l (br $l))))',
  // catches the host's trap with wasm exception handling (V8 has it), then asks the host for more
  catches_trap: '(module (import "realm" "emit" (func $emit (param i32 i32) (result i32))) ' +
    '(import "realm" "session_create" (func $c (param i32 i32 i32) (result i32))) (import "env" "memory" (memory 1)) ' +
    '(func (export "sneaky") (result i32) try (result i32) i32.const 0xfff0 i32.const 100 call $emit ' +
    'catch_all i32.const 1 i32.const 16 i32.const 256 call $c end))',
};
const BAD = ['old_abi', 'wrong_sig', 'unknown_module', 'no_memory', 'not_func'];

const PY = `
import sys, wasmtime
sys.path.insert(0, ${JSON.stringify(path.join(ROOT, 'tests'))})
from wasm_util import GUESTS, proxy_wat, with_abi, u32
from realm_embed.wasm import Host, GuestStop, GuestAbiError
from realm_embed.wasm.imports import IMPORTS
b64 = lambda b: base64.b64encode(bytes(b)).decode()
W = wasmtime.wat2wasm
mods = {n: b64(W((GUESTS / f"{n}.wat").read_text())) for n in ["spin", "import_loop", "bomb", "crash", "big_memory"]}
mods["old_abi"] = b64(with_abi(W((GUESTS / "old_abi.wat").read_text()), 0))
mods["proxy"] = b64(W(proxy_wat()))
mods["proxy_imported"] = b64(W(proxy_wat(imported_memory=True)))
for k, src in json.loads(${JSON.stringify(JSON.stringify(WAT))}).items():
    mods[k] = b64(W(src))
out = {"mods": mods, "imports": {n: [list(p), list(r)] for n, (sig, _) in IMPORTS.items() for p, r in [sig.wasm()]}}
host = Host()
out["abi_errors"] = {}
for k in ${JSON.stringify(BAD)}:
    try:
        host.load(base64.b64decode(mods[k])); out["abi_errors"][k] = None
    except GuestAbiError as e:
        out["abi_errors"][k] = str(e)
mid = realm.store_model()
chat = realm.apply_chat_template(mid, [{"role": "user", "content": ${JSON.stringify(Q)}}])
c = realm.generate(realm.create_session(mid, 256), chat, max_tokens=16)
out["paris"] = {"ids": c.token_ids, "text": c.text, "finish": c.finish_reason}
c = realm.generate(realm.create_session(mid, 64), ${JSON.stringify(RAW)}, max_tokens=2)
out["raw"] = {"ids": c.token_ids, "text": c.text}
c = realm.generate(realm.create_session(mid, 64, precision="fast"), ${JSON.stringify(RAW)}, max_tokens=4)
out["fast_raw"] = {"ids": c.token_ids, "text": c.text}
t = host.tenant("generate", mid)
out["sampled"] = t.generate(${JSON.stringify(Q)}, max_tokens=12, fused=True, temperature=0.9, top_k=40, top_p=0.95,
                            seed=2**64 - 5).token_ids
out["sampled_full"] = t.generate(${JSON.stringify(Q)}, max_tokens=8, fused=True, full_logits=True, temperature=0.8,
                                 seed=7).token_ids
b = host.tenant("ban_word", mid).generate(${JSON.stringify(Q)}, extra=" Paris", max_tokens=12, fused=True)
out["ban"] = {"ids": b.token_ids, "text": b.text}
p = host.tenant(base64.b64decode(mods["proxy"]), mid, name="conformance")
rec = []
for step in json.loads(${JSON.stringify(JSON.stringify(STEPS))}):
    if step[0] == "w":
        p.memory.write(p.store, base64.b64decode(step[2]), step[1])
    elif step[0] == "r":
        rec.append(b64(p.memory.read(p.store, step[1], step[1] + step[2])))
    else:
        try:
            rec.append({"rc": p.call(step[1], *[u32(a) for a in step[2:]]), "err": p.last_error})
        except GuestStop as e:
            rec.append({"trap": [type(e).__name__, str(e)], "err": p.last_error})
out["conformance"] = rec
`;

// ---- set-up ----------------------------------------------------------------------------------------------

let py;
let model;
let host;
let reference;                    // a well-behaved tenant and its answer before any hostile guest ran
let before0;
const mod = (name) => Buffer.from(py.mods[name], 'base64');

before(async () => {
  const pending = python(PY);
  Realm.init();
  model = Model.storeDefault();
  const info = model.info();
  assert.deepEqual([info.nEmbd, info.nVocab, info.nLayer], [D, V, L], 'the script assumes SmolLM2-135M');
  host = new GuestHost({ timeoutMs: 60000 });
  reference = await host.tenant('generate', model, { name: 'reference' });
  before0 = await reference.generate(RAW, { chat: false, maxTokens: 2, fused: true });
  py = await pending;
});

after(async () => {
  await host.close();
  model.close();
});

async function stillAnswers() {
  const r = await reference.generate(RAW, { chat: false, maxTokens: 2, fused: true });
  assert.deepEqual(r.tokenIds, before0.tokenIds);
  assert.equal(r.text, before0.text);
}

async function rejects(promise, cls, ...fragments) {
  let thrown;
  try {
    await promise;
  } catch (e) {
    thrown = e;
  }
  assert.ok(thrown, `expected a ${cls.name}, nothing was thrown`);
  assert.ok(thrown instanceof cls, `expected a ${cls.name}, got ${thrown && thrown.stack}`);
  for (const f of fragments) assert.ok(thrown.message.includes(f), `${JSON.stringify(thrown.message)} lacks ${JSON.stringify(f)}`);
  return thrown;
}

const u32At = async (t, ptr) => (await t.read(ptr, 4)).readUInt32LE(0);

// ---- the ABI -----------------------------------------------------------------------------------------------

describe('the ABI', () => {
  test('the import table equals the Python host\'s (names and wasm signatures)', () => {
    const mine = Object.fromEntries(Object.entries(GuestHost.imports).map(([n, s]) => [n, [s.params, s.results]]));
    assert.deepEqual(mine, py.imports);
    assert.equal(GuestHost.abiVersion, 1);
  });

  test('a mismatched guest is refused with the Python host\'s exact sentence', () => {
    for (const name of BAD) {
      let thrown;
      try { host.load(mod(name)); } catch (e) { thrown = e; }
      assert.ok(thrown instanceof GuestAbiError, `${name}: ${thrown}`);
      assert.equal(thrown.code, -8);
      assert.equal(thrown.message, py.abi_errors[name], name);
    }
    assert.equal(py.abi_errors.old_abi, 'unknown import realm.forward_layer_v0 (guest built for ABI 0, host ABI 1)');
    assert.throws(() => host.load(Buffer.from('hello')), /no \\0asm magic/);
    assert.throws(() => host.load('(module)'), GuestAbiError);
    assert.throws(() => host.load(Buffer.from([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 99])), /not a valid WebAssembly module/);
  });

  test('the shipped guests load: ABI 1, imported memory; an exported memory is rewritten to an import', () => {
    const g = host.load('generate');
    assert.equal(g.abi, 1);
    assert.equal(g.memoryWasImported, true);
    assert.equal(host.load(guestPath('generate')), g, 'compiled once per content');
    const p = host.load(mod('proxy'));
    assert.equal(p.memoryWasImported, false);
    assert.deepEqual(p.memory, { min: 8, max: null });
    assert.deepEqual(WebAssembly.Module.imports(p.module).filter((i) => i.module === 'env'),
      [{ module: 'env', name: 'memory', kind: 'memory' }]);
  });
});

// ---- generation ------------------------------------------------------------------------------------------------

describe('Paris through the guest', () => {
  test('layer by layer and fused: the greedy tokens equal realm.generate\'s, streamed text included', async () => {
    assert.match(py.paris.text, /Paris/);
    const t = await host.tenant('generate', model, { memoryMiB: 16 });
    for (const opts of [{}, { fused: true }, { fused: true, fullLogits: true }]) {
      const pieces = [];
      const r = await t.generate(Q, { maxTokens: 16, onText: (s) => pieces.push(s), ...opts });
      assert.deepEqual(r.tokenIds, py.paris.ids, JSON.stringify(opts));
      assert.equal(r.text, py.paris.text);
      assert.equal(pieces.join(''), r.text);
      assert.equal(r.finishReason, py.paris.finish);
      assert.ok(r.memoryBytes <= 2 << 20, `guest memory ${r.memoryBytes}`);
      assert.ok(r.hostCalls > 0 && r.computeSeconds > 0 && r.computeSeconds <= r.hostSeconds);
    }
    assert.deepEqual(t.sessionIds, [], 'the guest freed its session');
    await t.close();
  });

  test('sampling in the guest (its own PRNG, f32 and i64 arguments) equals the wasmtime host token for token', async () => {
    const t = await host.tenant('generate', model);
    const a = await t.generate(Q, { maxTokens: 12, fused: true, temperature: 0.9, topK: 40, topP: 0.95, seed: 2n ** 64n - 5n });
    assert.deepEqual(a.tokenIds, py.sampled);
    const b = await t.generate(Q, { maxTokens: 8, fused: true, fullLogits: true, temperature: 0.8, seed: 7 });
    assert.deepEqual(b.tokenIds, py.sampled_full);
    await t.close();
  });

  test('runGuest: a path or bytes, the default model; ban_word equals the wasmtime host', async () => {
    let streamed = '';
    const r = await runGuest(guestPath('generate'), { maxTokens: 16, fused: true, memoryMiB: 8, onText: (s) => { streamed += s; } });
    assert.deepEqual(r.tokenIds, py.paris.ids);
    assert.equal(streamed, r.text);
    const b = await runGuest(fs.readFileSync(guestPath('ban_word')), { model, prompt: Q, extra: ' Paris', maxTokens: 12, fused: true });
    assert.deepEqual(b.tokenIds, py.ban.ids);
    assert.equal(b.text, py.ban.text);
    assert.ok(!b.text.includes('Paris'));
  });
});

// ---- precision: the host's choice -------------------------------------------------------------------------

const maxDiff = (a, b) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0);

describe('precision', () => {
  test('a fast tenant\'s greedy tokens equal realm.generate on a fast session (host default and tenant option)', async () => {
    assert.match(py.fast_raw.text, /^ Paris/);
    const fastHost = new GuestHost({ precision: 'fast', timeoutMs: 60000 });
    assert.equal(fastHost.precision, 'fast');
    assert.equal(host.precision, 'exact');
    const tenants = [await fastHost.tenant('generate', model), await host.tenant('generate', model, { precision: 'fast' })];
    for (const t of tenants) {
      assert.equal(t.precision, 'fast');
      for (const fused of [false, true]) {
        const r = await t.generate(RAW, { chat: false, maxTokens: 4, fused });
        assert.deepEqual(r.tokenIds, py.fast_raw.ids, `fused ${fused}`);
        assert.equal(r.text, py.fast_raw.text);
      }
    }
    const exact = await fastHost.tenant('generate', model, { precision: 'exact' });    // a tenant overrides its host
    assert.equal(exact.precision, 'exact');
    await fastHost.close();
    await tenants[1].close();
  });

  test('every session a fast guest creates is fast, and its fork too (logits equal a fast Session\'s)', async () => {
    const ids = model.tokenize(RAW);
    const direct = (precision) => {
      const s = model.createSession({ nCtx: 32, precision });
      const first = s.decode(ids);
      const next = s.decode([ids[0]]);
      s.close();
      return [first, next];
    };
    const fast = direct('fast');
    const exact = direct('exact');
    const p = await host.tenant(mod('proxy'), model, { precision: 'fast' });
    assert.equal(await p.call('session_create', 1, 32, HANDLE), 0);
    await p.write(IDS, new Uint8Array(Int32Array.from(ids).buffer));
    assert.equal(await p.call('decode', 2, IDS, ids.length, 0, LOGITS, V), 0);
    const first = new Float32Array(new Uint8Array(await p.read(LOGITS, 4 * V)).buffer);
    assert.equal(await p.call('session_fork', 2, HANDLE), 0);
    assert.equal(await p.call('decode', 3, IDS, 1, 0, LOGITS, V), 0);                     // on the fork
    const next = new Float32Array(new Uint8Array(await p.read(LOGITS, 4 * V)).buffer);
    for (const [got, i] of [[first, 0], [next, 1]]) {
      assert.ok(maxDiff(got, fast[i]) < 1e-4, `fast ${i}: ${maxDiff(got, fast[i])}`);
      assert.ok(maxDiff(got, exact[i]) > 1e-3, `not exact ${i}: ${maxDiff(got, exact[i])}`);
    }
    await p.close();
  });

  test('a bad precision is REALM_E_ARG naming the value, wherever it is given', async () => {
    for (const bad of ['slow', 'FAST', '', 1, null]) {
      const check = (e) => e instanceof RealmError && e.code === -3 && /precision must be 'exact' or 'fast', got/.test(e.message) &&
        e.message.includes(bad === '' ? '""' : String(bad));
      assert.throws(() => new GuestHost({ precision: bad }), check, `GuestHost ${bad}`);
      await assert.rejects(host.tenant('generate', model, { precision: bad }), check, `tenant ${bad}`);
      await assert.rejects(runGuest('generate', { model, maxTokens: 1, precision: bad }), check, `runGuest ${bad}`);
    }
  });
});

// ---- the imports, call for call against the Python host ------------------------------------------------

describe('the imports', () => {
  test('a scripted sequence of import calls records what the wasmtime host records (codes, messages, traps, bytes)', async () => {
    const p = await host.tenant(mod('proxy'), model, { name: 'conformance', onLog: () => {} });
    const rec = [];
    for (const step of STEPS) {
      if (step[0] === 'w') await p.write(step[1], Buffer.from(step[2], 'base64'));
      else if (step[0] === 'r') rec.push((await p.read(step[1], step[2])).toString('base64'));
      else {
        try {
          rec.push({ rc: await p.call(step[1], ...step.slice(2)), err: p.lastError });
        } catch (e) {
          if (!(e instanceof GuestStop)) throw e;
          rec.push({ trap: [e.name, e.message], err: p.lastError });
        }
      }
    }
    if (process.env.GUEST_DUMP) fs.writeFileSync(process.env.GUEST_DUMP, JSON.stringify({ steps: STEPS, node: rec, python: py.conformance }));
    assert.equal(rec.length, py.conformance.length);
    let j = 0;
    STEPS.forEach((step, i) => {
      if (step[0] === 'w') return;
      const [mine, theirs] = [rec[j], py.conformance[j]];
      j++;
      assert.deepEqual(mine, theirs, `step ${i}: ${JSON.stringify(step).slice(0, 120)}`);
    });
    const n = py.conformance.filter((x) => x.trap).length;
    assert.ok(n >= 15, `${n} traps`);
    await p.close();
    await stillAnswers();
  });

  test('emit streams text to the tenant, now_us is the step\'s clock, the model stored in the main thread is the worker\'s', async () => {
    let text = '';
    const t = await host.tenant(mod('proxy_imported'), model.id, { onText: (s) => { text += s; } });
    assert.equal(t.guest.memoryWasImported, true);
    await t.write(TEXT, Buffer.from('héllo wörld'));
    assert.equal(await t.call('emit', TEXT, 3), 0);            // "hé" split inside "é"... then the rest
    assert.equal(await t.call('emit', TEXT + 3, 10), 0);
    assert.equal(text, 'héllo wörld');
    assert.equal(t.output.toString(), 'llo wörld');            // the bytes of the last call
    const us = await t.call('now_us');
    assert.equal(typeof us, 'bigint');
    assert.ok(us >= 0n && us < 10000000n);
    assert.equal(await t.call('model_info', 1, 1, I64), 0);
    assert.equal((await t.read(I64, 8)).readBigInt64LE(0), BigInt(L));
    await t.close();
  });
});

// ---- hostile guests ---------------------------------------------------------------------------------------------

describe('hostile guests', () => {
  test('handles are local: another guest\'s, a freed one, a global id and junk are the same "not found"', async () => {
    const [a, b] = await Promise.all([host.tenant(mod('proxy'), model, { name: 'a' }), host.tenant(mod('proxy'), model, { name: 'b' })]);
    assert.equal(await b.call('session_create', 1, 16, HANDLE), 0);
    assert.equal(await u32At(b, HANDLE), 2);
    const globalId = b.sessionIds[0];
    const notFound = async (rc, h, kind = 'session') => {
      assert.equal(rc, -4);
      const name = a.lastError.split(':')[0];
      assert.equal(a.lastError, `${name}: ${kind} handle ${h} not found`);
    };
    for (const h of [2, 999, Number(BigInt.asIntN(32, globalId)), -1]) {
      await notFound(await a.call('session_n_tokens', h, SIZE), h);
      await notFound(await a.call('session_free', h), h);
      await notFound(await a.call('decode', h, IDS, 1, 0, LOGITS, V), h);
    }
    await notFound(await a.call('session_n_tokens', 1, SIZE), 1);             // the model is not a session
    assert.equal(await a.call('session_create', 1, 16, HANDLE), 0);
    assert.equal(await u32At(a, HANDLE), 2);                                  // a's own handle 2
    await notFound(await a.call('tokenize', 2, TEXT, 1, 0, IDS, 8, SIZE), 2, 'model');
    assert.equal(await a.call('session_free', 2), 0);
    await notFound(await a.call('session_n_tokens', 2, SIZE), 2);             // freed = never existed
    assert.equal(await a.call('session_create', 1, 16, HANDLE), 0);
    assert.equal(await u32At(a, HANDLE), 3);                                  // never reused
    assert.equal(await b.call('session_n_tokens', 2, SIZE), 0);              // b's untouched
    await Promise.all([a.close(), b.close()]);
    await stillAnswers();
  });

  test('failing imports leave the session exactly as before (the next decode equals the direct Session path)', async () => {
    const p = await host.tenant(mod('proxy'), model);
    const ids = model.tokenize(RAW);
    assert.equal(await p.call('session_create', 1, 32, HANDLE), 0);
    await p.write(IDS, new Uint8Array(Int32Array.from(ids).buffer));
    assert.equal(await p.call('decode', 2, IDS, 3, 0, LOGITS, V), 0);
    await p.write(0x6000, new Uint8Array(Int32Array.from([V + 5]).buffer));
    assert.equal(await p.call('decode', 2, 0x6000, 1, 0, LOGITS, V), -5);
    assert.equal(await p.call('decode', 2, IDS + 12, 1, 0, LOGITS, V - 1), -6);
    await rejects(p.call('decode', 2, IDS + 12, 1, 0, MEM - 100, V), GuestFault, 'realm.decode: logits');
    const hid = new Float32Array(D).fill(1);
    hid[7] = NaN;
    await p.write(HID, new Uint8Array(hid.buffer));
    assert.equal(await p.call('forward_layer', 2, 0, 3, HID, 1, D, HID, D), -3);              // NaN in hidden
    await p.write(HID + 28, new Uint8Array(Float32Array.from([1]).buffer));
    assert.equal(await p.call('forward_layer', 2, 0, 10, HID, 1, D, HID, D), -5);             // skips positions
    assert.equal(await p.call('forward_layer', 2, L, 3, HID, 1, D, HID, D), -5);
    await rejects(p.call('forward_layer', 2, 0, 3, HID, 1, D, MEM - 8, D), GuestFault);
    assert.equal(await p.call('session_n_tokens', 2, SIZE), 0);
    assert.equal(await u32At(p, SIZE), 3);
    assert.equal(await p.call('decode', 2, IDS + 12, 1, 0, LOGITS, V), 0);
    const got = new Float32Array(new Uint8Array(await p.read(LOGITS, 4 * V)).buffer);
    const s = model.createSession({ nCtx: 32 });
    s.decode(ids.subarray(0, 3));
    const want = s.decode(ids.subarray(3, 4));
    s.close();
    assert.deepEqual(new Uint32Array(got.buffer), new Uint32Array(want.buffer));
    await p.close();
  });

  test('an infinite loop is stopped by terminate within the timeout; the tenant restarts; the others go on', async () => {
    const spinner = await host.tenant(mod('spin'), model, { timeoutMs: 300 });
    for (let i = 0; i < 2; i++) {
      const t0 = performance.now();
      const e = await rejects(spinner.call('spin'), GuestLimitError, 'passed its deadline of 300 ms per call');
      const dt = performance.now() - t0;
      assert.ok(dt >= 290 && dt < 3000, `stopped after ${dt.toFixed(0)} ms`);
      assert.equal(e.reason, 'deadline');
      assert.equal(e.code, -9);
    }
    assert.equal(spinner.stats.restarts, 2);
    await spinner.close();
    // while a guest spins in its worker, another tenant answers as before
    const other = await host.tenant(mod('spin'), model, { timeoutMs: 2000 });
    const spinning = rejects(other.call('spin'), GuestLimitError, 'deadline');
    await stillAnswers();
    await spinning;
    await other.close();
  });

  test('a guest spinning on host calls is stopped by the imports\' deadline check (no terminate needed)', async () => {
    const t = await host.tenant(mod('import_loop'), model, { timeoutMs: 300 });
    const e = await rejects(t.call('spin'), GuestLimitError, 'passed its deadline of 300 ms per call');
    assert.equal(e.reason, 'deadline');
    assert.equal(t.stats.restarts, 0, 'the instance survived');
    assert.ok(t.stats.importCalls.now_us > 10);
    assert.equal(await t.call('spin').catch((x) => x.reason), 'deadline');
    await t.close();
  });

  test('a looping start function is stopped while instantiating', async () => {
    await rejects(host.tenant(mod('looping_start'), model, { timeoutMs: 300 }), GuestLimitError, 'deadline');
  });

  test('a terminated tenant\'s sessions are freed by the host', async () => {
    const t = await host.tenant(mod('session_spin'), model, { timeoutMs: 600 });
    const spinning = rejects(t.call('spin'), GuestLimitError, 'deadline');
    let ids = [];
    for (let i = 0; i < 200 && ids.length === 0; i++) {
      await new Promise((resolve) => setTimeout(resolve, 5));
      ids = t.sessionIds;
    }
    assert.equal(ids.length, 1, 'the guest created its session (seen live through the shared table)');
    await spinning;
    assert.deepEqual(t.sessionIds, []);
    const lib = native.load();
    assert.equal(lib.realm_session_n_tokens(ids[0], new Uint32Array(1), null), -4);
    await t.close();
  });

  test('a memory bomb is capped: grow is refused past memoryMiB, also for a guest that exports its memory', async () => {
    const t = await host.tenant(mod('bomb'), model, { memoryMiB: 4 });
    assert.equal(await t.call('grow_all'), -1);
    assert.equal(await t.call('bomb'), 49);                  // 1 + 16 + 16 + 16 pages: one more is over 64
    assert.equal(t.memoryBytes, 49 << 16);
    await t.close();
    const m = await host.tenant(mod('declared_max'), model);  // the guest's own maximum holds too
    assert.equal(await m.call('grow', 2), 1);
    assert.equal(await m.call('grow', 1), -1);
    await m.close();
    const e = await rejects(host.tenant(mod('big_memory'), model, { memoryMiB: 16 }), GuestLimitError,
      'needs 1000 pages (62.5 MiB) of memory at start, more than its limit of 16 MiB');
    assert.equal(e.reason, 'memory');
    await rejects(host.tenant(mod('big_defined'), model, { memoryMiB: 16 }), GuestLimitError, 'needs 1000 pages');
    const small = await host.tenant('generate', model, { memoryMiB: 0.1875 });   // 3 pages: no room for hidden
    const err = await rejects(small.generate(RAW, { chat: false, maxTokens: 1 }), RealmError, 'returned -9');
    assert.equal(err.code, -9);
    assert.deepEqual(small.sessionIds, []);
    await small.close();
    await stillAnswers();
  });

  test('the guest\'s own crashes are traps for it alone', async () => {
    const t = await host.tenant(mod('crash'), model);
    for (const [name, words] of [['recurse', 'stack'], ['unreachable', 'unreachable'], ['oob_load', 'out of bounds']]) {
      const e = await rejects(t.call(name), GuestTrap, words);
      assert.ok(e.message.startsWith(`guest ${t.name} trapped`), e.message);
      assert.equal(e.code, -3);
    }
    await rejects(t.call('nope'), RealmError, "has no exported function 'nope'");
    await t.close();
    const sneaky = await host.tenant(mod('catches_trap'), model);
    await rejects(sneaky.call('sneaky'), GuestFault, 'realm.emit: text [0xfff0, 0xfff0 + 100) lies outside');
    assert.deepEqual(sneaky.sessionIds, [], 'after its trap the guest got nothing from the host');
    assert.equal(sneaky.stats.importCalls.session_create, 1);
    await sneaky.close();
  });

  test('an exception in onText cancels the call and reaches the caller; the tenant goes on', async () => {
    const t = await host.tenant('generate', model);
    class Stop extends Error {}
    await rejects(t.generate(Q, { maxTokens: 16, fused: true, onText: () => { throw new Stop('the host said stop'); } }), Stop);
    const ac = new AbortController();
    const aborted = t.generate(Q, { maxTokens: 16, fused: true, signal: ac.signal, onText: () => ac.abort(new Stop('aborted')) });
    await rejects(aborted, Stop, 'aborted');
    const r = await t.generate(Q, { maxTokens: 16, fused: true });
    assert.deepEqual(r.tokenIds, py.paris.ids);
    await t.close();
  });

  test('per-call budgets and per-guest limits; one call at a time; a closed tenant frees its sessions', async () => {
    const t = await host.tenant(mod('proxy'), model, { maxOutputBytes: 10, maxLogBytes: 5, maxSessions: 2, maxKvTokens: 100, onLog: () => {} });
    await t.write(TEXT, Buffer.from('12345678'));
    assert.equal(await t.call('emit', TEXT, 8), 0);
    assert.equal(await t.call('emit', TEXT, 8), 0);                         // each call has its budget
    assert.equal(await t.call('log', 1, TEXT, 8), -9);
    assert.equal(t.lastError, 'realm.log: the log budget of 5 bytes per call is spent');
    assert.equal(await t.call('session_create', 1, 60, HANDLE), 0);
    assert.equal(await t.call('session_create', 1, 60, HANDLE), -9);
    assert.equal(t.lastError, "realm.session_create: n_ctx 60 would bring this guest's KV positions to 120, over its limit of 100");
    assert.equal(await t.call('session_create', 1, 40, HANDLE), 0);
    assert.equal(await t.call('session_create', 1, 1, HANDLE), -9);
    const busy = t.call('abi_version');
    await rejects(t.call('abi_version'), RealmError, 'already running a call');
    await busy;
    const ids = t.sessionIds;
    assert.equal(ids.length, 2);
    await t.close();
    const lib = native.load();
    for (const id of ids) assert.equal(lib.realm_session_n_tokens(id, new Uint32Array(1), null), -4);
    await rejects(t.call('abi_version'), RealmError, 'is closed');
    const slow = await host.tenant('generate', model, { hostTimeMs: 0.001 });
    await rejects(slow.generate(RAW, { chat: false, maxTokens: 1 }), RealmError,
      'the host-time budget of 0.001 ms for this call is spent');
    await slow.close();
  });

  test('the other tenants answer as before', async () => {
    await stillAnswers();
    assert.deepEqual(reference.sessionIds, []);
  });
});
