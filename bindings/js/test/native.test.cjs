'use strict';
// The thin layer against include/realm.h (declarations, constants, struct layouts), loading
// (CommonJS and ESM, locating the library, refusing another ABI), and the C calling conventions
// (per-call realm_error, the two-call buffer protocol).
const assert = require('node:assert/strict');
const { execFileSync, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { test } = require('node:test');

const native = require('../lib/native.cjs');

const PKG = path.resolve(__dirname, '..');
const HEADER = path.resolve(PKG, '..', '..', 'include', 'realm.h');

function cdefBlock() {
  const text = fs.readFileSync(HEADER, 'utf8');
  const start = text.indexOf('/* ---- realm:cdef-begin');
  const end = text.indexOf('/* ---- realm:cdef-end');
  assert.ok(start > 0 && end > start, 'realm.h has the cdef markers');
  return text.slice(start, end).replace(/\/\*[\s\S]*?\*\//g, ' ');
}

function normalize(decl) {
  return decl.replace(/\s+/g, ' ').replace(/\( /g, '(').replace(/ \)/g, ')').trim();
}

test('every REALM_API function of realm.h is declared, with the same signature', () => {
  const fromHeader = [...cdefBlock().matchAll(/REALM_API\s+([^;]+);/g)].map((m) => normalize(m[1]));
  assert.ok(fromHeader.length >= 40, `${fromHeader.length} declarations in realm.h`);
  assert.deepEqual([...native.DECLARATIONS].map(normalize).sort(), fromHeader.sort());
});

test('every integer constant of the cdef block equals the binding\'s', () => {
  const defines = {};
  for (const m of cdefBlock().matchAll(/#define\s+(REALM_\w+)\s+(-?\s*(?:0[xX][0-9a-fA-F]+|\d+))[uUlL]*\s/g)) {
    defines[m[1]] = BigInt(m[2].replace(/\s/g, ''));
  }
  assert.ok(Object.keys(defines).length >= 30);
  for (const [name, value] of Object.entries(defines)) {
    assert.ok(name in native.CONSTANTS, `${name} is missing from lib/native.cjs CONSTANTS`);
    assert.equal(BigInt(native.CONSTANTS[name]), value, name);
  }
  for (const name of Object.keys(native.CODES)) assert.ok(name in defines, `${name} is not in realm.h`);
});

test('struct layouts equal REALM_*_SIZE_V1', () => {
  const { koffi, types, CONSTANTS: C } = native;
  assert.equal(native.ERROR_SIZE, 4 + C.REALM_ERROR_MESSAGE_SIZE);
  assert.equal(koffi.sizeof(types.realm_model_info), C.REALM_MODEL_INFO_SIZE_V1);
  assert.equal(koffi.sizeof(types.realm_tensor_info), C.REALM_TENSOR_INFO_SIZE_V1);
  assert.equal(koffi.sizeof(types.realm_sampler_params), C.REALM_SAMPLER_PARAMS_SIZE_V1);
  assert.equal(koffi.sizeof(types.realm_generate_params), C.REALM_GENERATE_PARAMS_SIZE_V1);
  assert.equal(koffi.sizeof(types.realm_generate_result), C.REALM_GENERATE_RESULT_SIZE_V1);
  assert.equal(koffi.sizeof(types.realm_session_params), C.REALM_SESSION_PARAMS_SIZE_V1);
  assert.equal(koffi.offsetof(types.realm_session_params, 'device'), 16);
  assert.equal(koffi.offsetof(types.realm_model_info, 'rope_freq_base'), 64);
  assert.equal(koffi.offsetof(types.realm_generate_params, 'on_token'), 32);
});

test('the defaults functions fill the structs as the header\'s _INIT macros', () => {
  const lib = native.load();
  const { koffi, types } = native;
  const sp = Buffer.alloc(koffi.sizeof(types.realm_sampler_params));
  lib.realm_sampler_params_default(sp);
  assert.deepEqual(koffi.decode(sp, types.realm_sampler_params), {
    struct_size: 48, top_k: 0, temperature: 0, top_p: 1, min_p: 0, repetition_penalty: 1, seed: 0xFFFFFFFFFFFFFFFFn,
  });
  const ssp = Buffer.alloc(koffi.sizeof(types.realm_session_params));
  lib.realm_session_params_default(ssp);
  assert.deepEqual(koffi.decode(ssp, types.realm_session_params), {
    struct_size: 24, n_ctx: 0, precision: 0, device: null,
  });
  const gp = Buffer.alloc(koffi.sizeof(types.realm_generate_params));
  lib.realm_generate_params_default(gp);
  assert.equal(gp.readUInt32LE(0), 48);
  assert.equal(gp.readUInt32LE(4), 256);
});

test('thin layer: per-call realm_error, realm_last_error, realm_errstr, the two-call protocol', () => {
  const lib = native.load();
  const err = Buffer.alloc(native.ERROR_SIZE);
  const message = () => err.toString('utf8', 4, err.indexOf(0, 4));
  assert.equal(lib.realm_init(err), 0);
  assert.equal(err.readInt32LE(0), 0);
  assert.equal(message(), '');

  assert.equal(lib.realm_session_free(0xdeadbeefn, err), -4);
  assert.equal(err.readInt32LE(0), -4);
  assert.match(message(), /^realm_session_free: /);
  assert.match(message(), /not found/);
  assert.equal(lib.realm_last_error(), message());
  assert.equal(lib.realm_errstr(-4), 'not found');
  assert.equal(lib.realm_errstr(-999), 'unknown error code');
  assert.equal(lib.realm_session_free(0n, err), 0, 'freeing id 0 is a no-op');
  assert.equal(lib.realm_last_error(), '');

  const out = new BigUint64Array(1);
  assert.equal(lib.realm_model_store_default(0n, out, err), 0);
  const model = out[0];
  const ids = Int32Array.from([504, 3575, 282, 4649]);
  const size = new BigUint64Array(1);
  assert.equal(lib.realm_detokenize(model, ids, ids.length, null, 0, size, err), 0, 'a size query');
  const need = Number(size[0]);
  const small = Buffer.alloc(need - 1, 0x2a);
  size[0] = 0n;
  assert.equal(lib.realm_detokenize(model, ids, ids.length, small, small.length, size, err), -6);
  assert.equal(Number(size[0]), need, 'the needed size is written back');
  assert.ok(small.every((b) => b === 0x2a), 'the buffer is untouched');
  const text = Buffer.alloc(need);
  assert.equal(lib.realm_detokenize(model, ids, ids.length, text, text.length, size, err), 0);
  assert.equal(text.toString('utf8', 0, need - 1), 'The capital of France');
  assert.equal(text[need - 1], 0, 'NUL-terminated; *size counts the NUL');
  assert.equal(lib.realm_detokenize(model, ids, ids.length, null, 5, size, err), -3, 'NULL buffer with cap > 0');
  // realm_session_create_ex: the library checks the precision and struct_size, naming the value
  const sid = new BigUint64Array(1);
  assert.equal(lib.realm_session_create_ex(model, { struct_size: 24, n_ctx: 0, precision: 7, device: null }, sid, err), -3);
  assert.match(message(), /^realm_session_create_ex: params->precision is 7/);
  assert.equal(lib.realm_session_create_ex(model, { struct_size: 8, n_ctx: 0, precision: 0, device: null }, sid, err), -3);
  assert.match(message(), /params->struct_size is 8/);
  assert.equal(lib.realm_session_create_ex(model, null, sid, err), 0, 'NULL params: the defaults');
  assert.equal(lib.realm_session_free(sid[0], err), 0);
  assert.equal(lib.realm_model_remove(model, err), 0);
});

test('require() and import give the same API, with types shipped', async () => {
  const cjs = require('realm-embed');
  const esm = await import('realm-embed');
  for (const name of ['Realm', 'Model', 'Session', 'Generation', 'Sampler', 'RealmError', 'ErrorCode', 'topK']) {
    assert.equal(typeof cjs[name] === 'undefined', false, `require: ${name}`);
    assert.equal(esm[name], cjs[name], `import: ${name}`);
  }
  assert.equal(esm.default, cjs);
  assert.equal(require('realm-embed/native'), native);
  const pkg = require('../package.json');
  assert.ok(fs.existsSync(path.join(PKG, pkg.types)));
});

test('index.d.ts type-checks against a program using the whole API (tsc --noEmit)', () => {
  const tsc = path.join(PKG, 'node_modules', 'typescript', 'bin', 'tsc');
  const r = spawnSync(process.execPath, [tsc, '--noEmit', '--strict', '--target', 'es2022', '--module', 'node16',
    '--moduleResolution', 'node16', '--types', 'node', path.join(__dirname, 'types-check.mts')],
  { cwd: PKG, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stdout + r.stderr);
});

// ---- locating and refusing -------------------------------------------------------------------

function node(code, env) {
  return spawnSync(process.execPath, ['-e', code], { cwd: PKG, encoding: 'utf8', env });
}

test('locate(): REALM_LIB wins; a missing path is a sentence naming it', () => {
  native.load();
  assert.deepEqual(native.locate({ REALM_LIB: native.loadedPath() }), { path: native.loadedPath(), how: 'REALM_LIB' });
  assert.throws(() => native.locate({ REALM_LIB: '/nonexistent/librealm.so' }),
    { message: /REALM_LIB=\/nonexistent\/librealm\.so does not exist/ });
});

test('locate(): without REALM_LIB it asks the Python package, and says where it looked when that fails', () => {
  const python = process.env.REALM_PYTHON || path.resolve(PKG, '..', '..', '.venv', 'bin', 'python');
  const found = native.locate({ REALM_PYTHON: python, PATH: process.env.PATH });
  assert.equal(found.how, `REALM_PYTHON=${python} -m realm_embed config --library`);
  native.load();
  assert.equal(fs.realpathSync(found.path), fs.realpathSync(native.loadedPath()));
  assert.throws(() => native.locate({ REALM_PYTHON: '/nonexistent/python' }), {
    message: 'realm-embed: cannot find librealm.so: REALM_LIB is unset and `REALM_PYTHON=/nonexistent/python -m ' +
      'realm_embed config --library` failed (/nonexistent/python: no such executable); set REALM_LIB to the path ' +
      'of librealm.so, or REALM_PYTHON to the python of the environment where realm-embed is installed',
  });
  assert.throws(() => native.locate({ PATH: '/nonexistent' }),
    { message: /REALM_LIB is unset and `python3 -m realm_embed config --library` failed \(python3: no such executable on PATH\)/ });
});

test('a library with another ABI version is refused, naming both numbers', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'realm-abi-'));
  try {
    fs.writeFileSync(path.join(dir, 'fake.c'), 'int realm_abi_version(void) { return 2; }\n');
    execFileSync('cc', ['-shared', '-fPIC', '-o', path.join(dir, 'librealm.so'), path.join(dir, 'fake.c')]);
    const r = node("try { require('./lib/realm.cjs').Realm.version() } catch (e) { console.log(e.message) }",
      { ...process.env, REALM_LIB: path.join(dir, 'librealm.so') });
    assert.equal(r.stdout.trim(), `realm-embed: ${dir}/librealm.so speaks ABI version 2, this binding speaks ABI ` +
      'version 1; install the matching versions of the package and the library');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
