// `npm test`: find librealm.so once (the binding's own locate(): $REALM_LIB, else the Python
// package's config command) and hand it to every test file through REALM_LIB, so each file
// does not pay for a Python start-up just to find the library.  REALM_PYTHON defaults to the
// repository's .venv here (the tests also run the Python reference with it).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const venvPython = path.resolve(here, '..', '..', '..', '.venv', 'bin', 'python');
const env = { ...process.env };
if (!env.REALM_PYTHON && fs.existsSync(venvPython)) env.REALM_PYTHON = venvPython;
const { locate } = createRequire(import.meta.url)('../lib/native.cjs');
try {
  const found = locate(env);
  env.REALM_LIB = found.path;
  console.log(`# librealm.so: ${found.path} (via ${found.how})`);
} catch (e) {
  console.error(e.message);
  process.exit(1);
}
const files = fs.readdirSync(here).filter((f) => /\.test\.(c|m)?js$/.test(f)).map((f) => path.join(here, f));
// Two files at a time where node knows the flag (>= 20.10): most of each file's time is a Python
// start-up or the Python reference, waiting as often as computing.
const [major, minor] = process.versions.node.split('.').map(Number);
const flags = major > 20 || (major === 20 && minor >= 10) ? ['--test-concurrency=2'] : [];
const r = spawnSync(process.execPath, ['--test', ...flags, ...process.argv.slice(2), ...files],
  { env, stdio: 'inherit' });
process.exit(r.status ?? 1);
