// Node binding speed against the Python path, measured in the same run:
//  - decode: prefill 128 tokens, then 64 greedy tokens one realm_decode at a time (argmax in JS);
//    the anchor is the same loop in Python (realm_embed.decode, torch 1 thread like the library);
//  - per-call overhead: realm_abi_version (pure C: koffi's own cost) and realm_tokenize of a short
//    string (into Python), through the thin and the idiomatic layer; the anchor is
//    realm_embed.tokenize called from Python.
//
//   cd bindings/js && npm install
//   REALM_PYTHON=.venv/bin/python [REALM_TORCH_THREADS=N] node bench/bench_node.mjs [--reps 3] [--precision exact|fast] [--json out.json]
//
// --precision picks both paths' sessions (default exact): fast decodes ~10x faster, so the
// binding's per-token cost weighs ~10x more there.
//
// Prints a table, then one JSON line.  Medians of --reps runs with the spread, because the
// machine may be shared.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Model, Realm } from '../bindings/js/index.mjs';
import native from '../bindings/js/lib/native.cjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name, dflt) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : dflt; };
const REPS = Number(opt('--reps', 3));
const PREFILL = Number(opt('--prefill', 128));
const DECODE = Number(opt('--decode', 64));
const CALLS = Number(opt('--calls', 20000));
const JSON_OUT = opt('--json');
const PRECISION = opt('--precision', 'exact');
if (!['exact', 'fast'].includes(PRECISION)) throw new Error(`--precision must be exact or fast, got ${PRECISION}`);
const PYTHON = process.env.REALM_PYTHON || path.join(ROOT, '.venv/bin/python');
// torch's thread count, for the library in this process (it reads REALM_TORCH_THREADS) and the anchor
const THREADS = Number(process.env.REALM_TORCH_THREADS || 1);
const TEXT = 'The history of the city is long and full of surprises. '.repeat(40);
const SHORT = 'Hello, world';

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const now = () => Number(process.hrtime.bigint()) / 1e9;

function argmax(x) {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

// ---- Node ---------------------------------------------------------------------------------------
Realm.init();
const model = Model.storeDefault();
const ids = model.tokenize(TEXT).subarray(0, PREFILL);

function decodeOnce(prefillIds, nDecode) {
  const s = model.createSession({ nCtx: prefillIds.length + nDecode + 1, precision: PRECISION });
  const t0 = now();
  let token = argmax(s.decode(prefillIds));
  const t1 = now();
  for (let i = 0; i < nDecode; i++) token = argmax(s.decode([token]));
  const t2 = now();
  s.close();
  return [prefillIds.length / (t1 - t0), nDecode / (t2 - t1)];
}

decodeOnce(ids.subarray(0, 8), 2);                      // warm-up: dequantized weights cached
const nodeRuns = Array.from({ length: REPS }, () => decodeOnce(ids, DECODE));

const lib = native.load();
const err = Buffer.alloc(native.ERROR_SIZE);
const shortBytes = Buffer.from(SHORT);
const idsOut = new Int32Array(64);
const nOut = new BigUint64Array(1);
function perCall(fn, calls = CALLS) {
  for (let i = 0; i < Math.min(1000, calls); i++) fn();
  const t0 = now();
  for (let i = 0; i < calls; i++) fn();
  return (now() - t0) / calls * 1e6;
}
const callRows = [];
for (let r = 0; r < REPS; r++) {
  callRows.push({
    'abi_version thin': perCall(() => lib.realm_abi_version(), CALLS * 10),
    'abi_version idiomatic': perCall(() => Realm.abiVersion(), CALLS * 10),
    'tokenize thin': perCall(() => lib.realm_tokenize(model.id, shortBytes, shortBytes.length, 3, idsOut, 64, nOut, err)),
    'tokenize idiomatic': perCall(() => model.tokenize(SHORT)),
  });
}

// ---- Python anchor (same process-free loop in the venv's python) ---------------------------------
const py = JSON.parse(execFileSync(PYTHON, ['-c', `
import json, time, torch
torch.set_num_threads(${THREADS})
import realm_embed as realm
mid = realm.store_model()
ids = realm.tokenize(mid, ${JSON.stringify(TEXT)})[:${PREFILL}]
def once(p, n):
    s = realm.create_session(mid, len(p) + n + 1, precision=${JSON.stringify(PRECISION)})
    t0 = time.perf_counter(); tok = int(realm.decode(s, p).argmax()); t1 = time.perf_counter()
    for _ in range(n): tok = int(realm.decode(s, [tok]).argmax())
    t2 = time.perf_counter(); realm.session_free(s)
    return [len(p) / (t1 - t0), n / (t2 - t1)]
once(ids[:8], 2)
runs = [once(ids, ${DECODE}) for _ in range(${REPS})]
calls = []
for _ in range(${REPS}):
    for _ in range(1000): realm.tokenize(mid, ${JSON.stringify(SHORT)})
    t0 = time.perf_counter()
    for _ in range(${CALLS}): realm.tokenize(mid, ${JSON.stringify(SHORT)})
    calls.append((time.perf_counter() - t0) / ${CALLS} * 1e6)
print(json.dumps({"runs": runs, "tokenize_us": calls}))
`], { encoding: 'utf8', maxBuffer: 1 << 20 }));

// ---- report -------------------------------------------------------------------------------------
const rows = [];
const fmt = (x) => (x < 10 ? x.toFixed(3) : x.toFixed(1));
const spread = (xs) => `${fmt(Math.min(...xs))}..${fmt(Math.max(...xs))}`;
for (const [i, phase] of [[0, 'prefill'], [1, 'decode']]) {
  const n = nodeRuns.map((r) => r[i]);
  const p = py.runs.map((r) => r[i]);
  rows.push({ what: `${phase} tok/s`, node: median(n), python: median(p), ratio: median(n) / median(p), nodeSpread: spread(n), pythonSpread: spread(p) });
}
for (const key of Object.keys(callRows[0])) {
  const n = callRows.map((r) => r[key]);
  const anchor = key.startsWith('tokenize') ? median(py.tokenize_us) : null;
  rows.push({ what: `${key} µs/call`, node: median(n), python: anchor, ratio: anchor ? median(n) / anchor : null,
    nodeSpread: spread(n), pythonSpread: key.startsWith('tokenize') ? spread(py.tokenize_us) : '' });
}
console.log(`Node ${process.version}, koffi ${native.koffi.version}, library ${Realm.version()} (${Realm.libraryPath()}); ` +
  `precision ${PRECISION}, prefill ${PREFILL}, decode ${DECODE} greedy, ${REPS} reps, ${CALLS} calls per overhead rep (x10 for abi_version); torch threads ${THREADS}`);
console.log(`${'measure'.padEnd(28)} ${'node'.padStart(10)} ${'python'.padStart(10)} ${'node/py'.padStart(8)}  spread node | python`);
for (const r of rows) {
  const f = (x) => (x === null ? '-' : fmt(x));
  console.log(`${r.what.padEnd(28)} ${f(r.node).padStart(10)} ${f(r.python).padStart(10)} ${(r.ratio === null ? '-' : r.ratio.toFixed(2)).padStart(8)}  ${r.nodeSpread} | ${r.pythonSpread}`);
}
const result = { node: process.version, koffi: native.koffi.version, precision: PRECISION, prefill: PREFILL, decode: DECODE, reps: REPS, rows };
console.log(JSON.stringify(result));
if (JSON_OUT) fs.writeFileSync(JSON_OUT, JSON.stringify(result, null, 1));
model.close();
