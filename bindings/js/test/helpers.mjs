// Shared by the tests: the Python reference (the venv's python, running realm_embed directly) and
// assertions for RealmError and float arrays.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const PKG = path.resolve(HERE, '..');
export const ROOT = path.resolve(PKG, '..', '..');
export const HEADER = path.join(ROOT, 'include', 'realm.h');

/** The python that has realm_embed: $REALM_PYTHON, else the repository's .venv. */
export const PYTHON = process.env.REALM_PYTHON ||
  (fs.existsSync(path.join(ROOT, '.venv/bin/python')) ? path.join(ROOT, '.venv/bin/python') : 'python3');

const PRELUDE = `
import base64, json, sys
import numpy as np, torch
torch.set_num_threads(1)          # the library's default in a foreign host (REALM_TORCH_THREADS)
import realm_embed as realm
def f32(t):
    return base64.b64encode(np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32).tobytes()).decode()
`;

/** Run a Python snippet that assigns `out`, in a child process; resolves to out (parsed JSON).
 *  Asynchronous, so the test can start its own work meanwhile. */
export function python(code) {
  const src = `${PRELUDE}\n${code}\nsys.stdout.write(json.dumps(out))\n`;
  return new Promise((resolve, reject) => {
    execFile(PYTHON, ['-c', src], { encoding: 'utf8', maxBuffer: 256 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`the Python reference failed: ${stderr || err.message}`));
      else resolve(JSON.parse(stdout));
    });
  });
}

/** base64 of float32 bytes (from f32() above) -> Float32Array. */
export function f32(b64) {
  const buf = Buffer.from(b64, 'base64');
  return new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
}

/** The same library computes both sides: the floats must be equal, bit for bit. */
export function assertSameFloats(actual, expected, what) {
  assert.ok(actual instanceof Float32Array, `${what}: not a Float32Array`);
  assert.equal(actual.length, expected.length, `${what}: length`);
  const a = new Uint32Array(actual.buffer, actual.byteOffset, actual.length);
  const b = new Uint32Array(expected.buffer, expected.byteOffset, expected.length);
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) assert.fail(`${what}[${i}]: ${actual[i]} !== ${expected[i]} (Python)`);
  }
}

/** fn() throws a RealmError with exactly this code and a message containing every fragment. */
export function assertRealmError(fn, code, ...fragments) {
  let thrown;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  checkRealmError(thrown, code, fragments);
  return thrown;
}

export async function assertRejectsRealm(promiseOrFn, code, ...fragments) {
  let thrown;
  try {
    await (typeof promiseOrFn === 'function' ? promiseOrFn() : promiseOrFn);
  } catch (e) {
    thrown = e;
  }
  checkRealmError(thrown, code, fragments);
  return thrown;
}

const CODE_NAMES = {
  '-1': 'REALM_E_INTERNAL', '-2': 'REALM_E_INIT', '-3': 'REALM_E_ARG', '-4': 'REALM_E_NOT_FOUND',
  '-5': 'REALM_E_RANGE', '-6': 'REALM_E_BUFFER_TOO_SMALL', '-7': 'REALM_E_FORMAT', '-8': 'REALM_E_UNSUPPORTED',
  '-9': 'REALM_E_LIMIT', '-10': 'REALM_E_BUSY', '-11': 'REALM_E_CONFLICT', '-12': 'REALM_E_IO',
};

function checkRealmError(e, code, fragments) {
  assert.ok(e, `expected a RealmError ${CODE_NAMES[code]}, nothing was thrown`);
  assert.equal(e.name, 'RealmError', `expected a RealmError, got ${e && e.stack}`);
  assert.equal(e.code, code, `code of: ${e.message}`);
  assert.equal(e.codeName, CODE_NAMES[code]);
  for (const f of fragments) assert.ok(e.message.includes(f), `message ${JSON.stringify(e.message)} lacks ${JSON.stringify(f)}`);
}

// Runs `work` with a 5 ms timer alongside and asserts that the event loop stayed responsive: a
// loop blocked by the work fires the timer about once per blocking call.  On a loaded 2-core
// machine the timer still fires every few ms, so a quarter of the ideal count is demanded.
export async function assertLoopResponsive(work) {
  let ticks = 0;
  const timer = setInterval(() => { ticks++; }, 5);
  const t0 = performance.now();
  let result;
  try {
    result = await work();
  } finally {
    clearInterval(timer);
  }
  const elapsed = performance.now() - t0;
  assert.ok(ticks >= Math.max(5, elapsed / 5 / 4), `${ticks} ticks in ${elapsed.toFixed(0)} ms`);
  return result;
}
