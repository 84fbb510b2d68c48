// WebAssembly guests under Node against the direct Node paths, in the same run:
//  - tok/s of the reference guest (realm_embed/guests/generate.wasm) in its tenant's worker, layer by
//    layer and fused, host top-k and full logits, against Session.generate (realm_generate on a pool
//    thread) and a Session.decode loop with argmax in JS, on the same chat prompt and token count
//    (greedy: the same tokens, checked);
//  - the time inside imports that is not model compute, host calls per run, guest memory;
//  - the cost of one host call (a guest looping on realm.abi_version: through the host's import
//    wrapper, and a bare JS import in the main thread) and of one call into the guest (a
//    postMessage round trip to the tenant's worker);
//  - host RSS per added tenant (a worker_thread each), idle and after a short generation.
//
//   cd bindings/js && npm install
//   REALM_PYTHON=.venv/bin/python node bench/bench_node_guest.mjs [--tokens 32] [--reps 3] [--tenants 8] [--json out.json]
//
// Medians of --reps interleaved runs with the spread, because the machine may be shared.
import fs from 'node:fs';

import { GuestHost, Model, Realm } from '../bindings/js/index.mjs';
import native from '../bindings/js/lib/native.cjs';

const args = process.argv.slice(2);
const opt = (name, dflt) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : dflt; };
const TOKENS = Number(opt('--tokens', 32));
const REPS = Number(opt('--reps', 3));
const TENANTS = Number(opt('--tenants', 8));
const CALLS = Number(opt('--calls', 200000));
const JSON_OUT = opt('--json');
const PROMPT = 'Write a long story about a dragon who learns to cook.';
const MODES = {
  'guest layer-by-layer, top-k': {},
  'guest layer-by-layer, full logits': { fullLogits: true },
  'guest fused, top-k': { fused: true },
  'guest fused, full logits': { fused: true, fullLogits: true },
};

// (module (import "realm" "abi_version" (func $v (result i32))) (memory (export "memory") 1)
//   (func (export "loop") (param $n i32)
//     (loop $l (drop (call $v)) (local.tee $n (i32.sub (local.get $n) (i32.const 1))) (br_if $l))))
const LOOP = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
  0x01, 0x09, 0x02, 0x60, 0x00, 0x01, 0x7f, 0x60, 0x01, 0x7f, 0x00,
  0x02, 0x15, 0x01, 0x05, ...Buffer.from('realm'), 0x0b, ...Buffer.from('abi_version'), 0x00, 0x00,
  0x03, 0x02, 0x01, 0x01,
  0x05, 0x03, 0x01, 0x00, 0x01,
  0x07, 0x11, 0x02, 0x06, ...Buffer.from('memory'), 0x02, 0x00, 0x04, ...Buffer.from('loop'), 0x00, 0x01,
  0x0a, 0x13, 0x01, 0x11, 0x00, 0x03, 0x40, 0x10, 0x00, 0x1a, 0x20, 0x00, 0x41, 0x01, 0x6b, 0x22, 0x00, 0x0d, 0x00,
  0x0b, 0x0b,
]);

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const now = () => performance.now() / 1e3;
const rss = () => process.memoryUsage().rss;

function argmax(x) {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

Realm.init();
const model = Model.storeDefault();
const chat = model.applyChatTemplate([{ role: 'user', content: PROMPT }]);
const host = new GuestHost({ timeoutMs: 600000 });

async function sessionGenerate(n) {
  const s = model.createSession({ nCtx: 512 });
  const t0 = now();
  const r = await s.generate(chat, { maxTokens: n }).result;
  const dt = now() - t0;
  s.close();
  return { ids: r.tokenIds, dt };
}

function decodeLoop(n) {
  const s = model.createSession({ nCtx: 512 });
  const t0 = now();
  let token = argmax(s.decode(model.tokenize(chat)));
  const ids = [token];
  while (ids.length < n) ids.push(token = argmax(s.decode([token])));
  const dt = now() - t0;
  s.close();
  return { ids, dt };
}

// ---- tok/s ----------------------------------------------------------------------------------------
const tenants = {};
for (const name of Object.keys(MODES)) tenants[name] = await host.tenant('generate', model, { name });   // one per mode
await sessionGenerate(2);                                                   // warm-up
decodeLoop(2);
for (const [name, o] of Object.entries(MODES)) await tenants[name].generate(PROMPT, { maxTokens: 2, ...o });

const times = { 'Session.generate': [], 'Session.decode loop (argmax in JS)': [] };
const stats = {};
let ref;
for (let rep = 0; rep < REPS; rep++) {
  const g = await sessionGenerate(TOKENS);
  ref = g.ids;
  times['Session.generate'].push(g.dt);
  const d = decodeLoop(ref.length);
  if (d.ids.join() !== ref.join()) throw new Error('the decode loop gave other tokens than Session.generate');
  times['Session.decode loop (argmax in JS)'].push(d.dt);
  for (const [name, o] of Object.entries(MODES)) {
    const r = await tenants[name].generate(PROMPT, { maxTokens: TOKENS, ...o });
    if (r.tokenIds.join() !== ref.join()) throw new Error(`${name}: other tokens than Session.generate`);
    (times[name] = times[name] || []).push(r.seconds);
    stats[name] = r;
  }
}
const n = ref.length;
const base = median(times['Session.generate']);
const rows = Object.entries(times).map(([path, ts]) => {
  const med = median(ts);
  const r = stats[path];
  return {
    path, tokens: n, tok_s: n / med, min: n / Math.max(...ts), max: n / Math.min(...ts), vs_session_generate: base / med,
    host_calls: r ? r.hostCalls : null, overhead_ms: r ? (r.hostSeconds - r.computeSeconds) * 1e3 : null,
    guest_kib: r ? r.memoryBytes / 1024 : null,
  };
});
for (const t of Object.values(tenants)) await t.close();

// ---- host call and export call costs --------------------------------------------------------------
const loop = await host.tenant(LOOP, model, { name: 'loop' });
await loop.call('loop', 1000);
const calls = [];
for (let rep = 0; rep < REPS; rep++) {
  const t0 = now();
  await loop.call('loop', CALLS);
  const inWorker = (now() - t0) / CALLS * 1e6;
  const t1 = now();
  for (let i = 0; i < 2000; i++) await loop.call('loop', 1);
  calls.push({ hostCallUs: inWorker, exportCallUs: (now() - t1) / 2000 * 1e6 });
}
await loop.close();
const bare = new WebAssembly.Instance(new WebAssembly.Module(LOOP),
  { realm: { abi_version: () => 1 }, env: {} }).exports.loop;
bare(1000);
const t2 = now();
bare(CALLS * 5);
const bareUs = (now() - t2) / (CALLS * 5) * 1e6;

// ---- RSS per tenant ---------------------------------------------------------------------------------
global.gc?.();
const rss0 = rss();
const many = [];
for (let i = 0; i < TENANTS; i++) many.push(await host.tenant('generate', model, { name: `t${i}` }));
const rss1 = rss();
await Promise.all(many.map((t) => t.generate('The capital of France is', { chat: false, maxTokens: 4, fused: true })));
const rss2 = rss();
await Promise.all(many.map((t) => t.close()));

// ---- report -------------------------------------------------------------------------------------------
const fmt = (x) => (x === null ? '-' : x < 10 ? x.toFixed(3) : x.toFixed(1));
console.log(`Node ${process.version}, koffi ${native.koffi.version}, library ${Realm.version()}; ${n} greedy tokens after ` +
  `a ${model.tokenize(chat).length}-token chat prompt, ${REPS} reps, torch threads ${process.env.REALM_TORCH_THREADS || 1}`);
console.log(`${'path'.padEnd(38)} ${'tok/s'.padStart(7)} ${'spread'.padStart(13)} ${'vs gen'.padStart(7)} ` +
  `${'calls'.padStart(6)} ${'overhead ms'.padStart(11)} ${'guest KiB'.padStart(9)}`);
for (const r of rows) {
  console.log(`${r.path.padEnd(38)} ${fmt(r.tok_s).padStart(7)} ${`${fmt(r.min)}..${fmt(r.max)}`.padStart(13)} ` +
    `${r.vs_session_generate.toFixed(2).padStart(7)} ${String(r.host_calls ?? '-').padStart(6)} ` +
    `${fmt(r.overhead_ms).padStart(11)} ${fmt(r.guest_kib).padStart(9)}`);
}
const hc = median(calls.map((c) => c.hostCallUs));
const ec = median(calls.map((c) => c.exportCallUs));
console.log(`host call (guest -> realm.abi_version through the import wrapper, in the worker): ${hc.toFixed(3)} µs; ` +
  `bare JS import: ${bareUs.toFixed(3)} µs`);
console.log(`call into the guest (Tenant.call: postMessage round trip to the worker): ${ec.toFixed(1)} µs`);
console.log(`host RSS per added tenant: ${((rss1 - rss0) / TENANTS / 2 ** 20).toFixed(1)} MiB idle, ` +
  `${((rss2 - rss0) / TENANTS / 2 ** 20).toFixed(1)} MiB after generating (${TENANTS} tenants)`);
const result = {
  node: process.version, tokens: n, reps: REPS, rows, host_call_us: hc, bare_import_us: bareUs, export_call_us: ec,
  rss_per_tenant_idle: (rss1 - rss0) / TENANTS, rss_per_tenant_after: (rss2 - rss0) / TENANTS,
};
console.log(JSON.stringify(result));
if (JSON_OUT) fs.writeFileSync(JSON_OUT, JSON.stringify(result, null, 1));
await host.close();
model.close();
