'use strict';
// The thin layer: every realm_* function of include/realm.h, declared 1:1 with koffi, plus the
// header's constants and struct types.  No policy here beyond finding the library and refusing
// one with another ABI version; lib/realm.cjs builds the idiomatic API on top.
//
//   const native = require('realm-embed/native');
//   const lib = native.load();              // { realm_init, realm_tokenize, ... } (koffi functions)
//   const err = Buffer.alloc(native.ERROR_SIZE);
//   lib.realm_init(err);                    // every fallible function takes realm_error *err last
//
// Pointer arguments take Buffers and typed arrays (the library writes into them during the call:
// uint64_t * -> BigUint64Array, size_t * -> BigUint64Array, float * -> Float32Array,
// realm_error * / realm_model_info * -> a Buffer of the struct's size; koffi.decode reads it back).
// Each function also has .async(...args, (e, rc) => {}) that runs it on a libuv pool thread.

const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const koffi = require('koffi');

/** The REALM_ABI_VERSION this binding was written for. */
const ABI_VERSION = 1;

// ---- constants (equal to include/realm.h; test/native.test.cjs keeps them equal) -------------
const CODES = Object.freeze({
  REALM_OK: 0,
  REALM_E_INTERNAL: -1,
  REALM_E_INIT: -2,
  REALM_E_ARG: -3,
  REALM_E_NOT_FOUND: -4,
  REALM_E_RANGE: -5,
  REALM_E_BUFFER_TOO_SMALL: -6,
  REALM_E_FORMAT: -7,
  REALM_E_UNSUPPORTED: -8,
  REALM_E_LIMIT: -9,
  REALM_E_BUSY: -10,
  REALM_E_CONFLICT: -11,
  REALM_E_IO: -12,
});

const CONSTANTS = Object.freeze({
  REALM_ABI_VERSION: ABI_VERSION,
  REALM_ERROR_MESSAGE_SIZE: 1020,
  REALM_MODEL_INFO_SIZE_V1: 88,
  REALM_MODEL_ARCHITECTURE: 1,
  REALM_MODEL_NAME: 2,
  REALM_MODEL_INFO_JSON: 3,
  REALM_TENSOR_INFO_SIZE_V1: 64,
  REALM_PRECISION_EXACT: 0,
  REALM_PRECISION_FAST: 1,
  REALM_SESSION_PARAMS_SIZE_V1: 24,
  REALM_DECODE_ALL_LOGITS: 1,
  REALM_TOKENIZE_ADD_SPECIAL: 1,
  REALM_TOKENIZE_PARSE_SPECIAL: 2,
  REALM_TOKENIZE_DEFAULT: 3,
  REALM_CHAT_ADD_GENERATION_PROMPT: 1,
  REALM_SEED_RANDOM: 0xFFFFFFFFFFFFFFFFn,
  REALM_SAMPLER_PARAMS_SIZE_V1: 48,
  REALM_GENERATE_PARAMS_SIZE_V1: 48,
  REALM_FINISH_STOP: 1,
  REALM_FINISH_EOS: 2,
  REALM_FINISH_LENGTH: 3,
  REALM_FINISH_CANCELLED: 4,
  REALM_GENERATE_RESULT_SIZE_V1: 16,
  ...CODES,
});

const CODE_NAMES = new Map(Object.entries(CODES).map(([name, code]) => [code, name]));

/** "REALM_E_NOT_FOUND" for -4; "REALM_E_UNKNOWN(-99)" for a code the binding does not know. */
function codeName(code) {
  return CODE_NAMES.get(code) || `REALM_E_UNKNOWN(${code})`;
}

// ---- the declarations, exactly as realm.h writes them (whitespace collapsed) -----------------
const DECLARATIONS = [
  'int32_t realm_init(realm_error *err)',
  'const char *realm_version(void)',
  'int32_t realm_version_number(void)',
  'int32_t realm_abi_version(void)',
  'const char *realm_errstr(int32_t code)',
  'const char *realm_last_error(void)',
  'int32_t realm_model_store(const void *data, size_t size, uint64_t requested_id, uint64_t *model_out, realm_error *err)',
  'int32_t realm_model_store_file(const char *path, uint64_t requested_id, uint64_t *model_out, realm_error *err)',
  'int32_t realm_model_store_default(uint64_t requested_id, uint64_t *model_out, realm_error *err)',
  'int32_t realm_model_remove(uint64_t model, realm_error *err)',
  'int32_t realm_model_info_get(uint64_t model, realm_model_info *info, realm_error *err)',
  'int32_t realm_model_info_string(uint64_t model, int32_t key, char *text, size_t text_cap, size_t *size, realm_error *err)',
  'int32_t realm_model_tensor_name(uint64_t model, size_t index, char *name, size_t name_cap, size_t *size, realm_error *err)',
  'int32_t realm_tensor_info_get(uint64_t model, const char *name, realm_tensor_info *info, realm_error *err)',
  'int32_t realm_tensor_get_f32(uint64_t model, const char *name, float *out, size_t out_cap, size_t *n_floats, realm_error *err)',
  'int32_t realm_session_create(uint64_t model, uint32_t n_ctx, uint64_t *session_out, realm_error *err)',
  'void realm_session_params_default(realm_session_params *params)',
  'int32_t realm_session_create_ex(uint64_t model, const realm_session_params *params, uint64_t *session_out, realm_error *err)',
  'int32_t realm_session_fork(uint64_t session, uint64_t *session_out, realm_error *err)',
  'int32_t realm_session_reset(uint64_t session, realm_error *err)',
  'int32_t realm_session_truncate(uint64_t session, uint32_t n_tokens, realm_error *err)',
  'int32_t realm_session_free(uint64_t session, realm_error *err)',
  'int32_t realm_session_n_tokens(uint64_t session, uint32_t *n_tokens, realm_error *err)',
  'int32_t realm_session_n_ctx(uint64_t session, uint32_t *n_ctx, realm_error *err)',
  'int32_t realm_session_model(uint64_t session, uint64_t *model_out, realm_error *err)',
  'int32_t realm_embed_tokens(uint64_t session, const int32_t *ids, size_t n_tokens, float *out, size_t out_cap, realm_error *err)',
  'int32_t realm_forward_layer(uint64_t session, uint32_t layer, uint32_t pos, const float *hidden, size_t n_tokens, size_t n_embd, float *out, size_t out_cap, realm_error *err)',
  'int32_t realm_compute_logits(uint64_t session, const float *hidden, size_t n_tokens, size_t n_embd, float *logits, size_t logits_cap, realm_error *err)',
  'int32_t realm_decode(uint64_t session, const int32_t *ids, size_t n_tokens, uint32_t flags, float *logits, size_t logits_cap, realm_error *err)',
  'int32_t realm_tokenize(uint64_t model, const char *text, size_t text_len, uint32_t flags, int32_t *ids, size_t ids_cap, size_t *n_ids, realm_error *err)',
  'int32_t realm_detokenize(uint64_t model, const int32_t *ids, size_t n_ids, char *text, size_t text_cap, size_t *size, realm_error *err)',
  'int32_t realm_token_piece(uint64_t model, int32_t token, char *piece, size_t piece_cap, size_t *size, realm_error *err)',
  'int32_t realm_chat_template(uint64_t model, const char *const *roles, const char *const *contents, size_t n_messages, uint32_t flags, char *text, size_t text_cap, size_t *size, realm_error *err)',
  'int32_t realm_chat_template_json(uint64_t model, const char *messages_json, uint32_t flags, char *text, size_t text_cap, size_t *size, realm_error *err)',
  'void realm_sampler_params_default(realm_sampler_params *params)',
  'int32_t realm_sampler_create(const realm_sampler_params *params, uint64_t *sampler_out, realm_error *err)',
  'int32_t realm_sampler_sample(uint64_t sampler, const float *logits, size_t n_logits, const int32_t *history, size_t n_history, int32_t *token_out, realm_error *err)',
  'int32_t realm_sampler_free(uint64_t sampler, realm_error *err)',
  'int32_t realm_top_k(const float *logits, size_t n_logits, size_t k, float *values, int32_t *ids, size_t *n_out, realm_error *err)',
  'void realm_generate_params_default(realm_generate_params *params)',
  'int32_t realm_generate(uint64_t session, const char *prompt, size_t prompt_len, const realm_generate_params *params, realm_generate_result *result, realm_error *err)',
  'int32_t realm_generate_tokens(uint64_t session, const int32_t *ids, size_t n_ids, const realm_generate_params *params, realm_generate_result *result, realm_error *err)',
];

// ---- struct types (layouts of realm.h; the test checks the sizes against REALM_*_SIZE_V1) ----
const types = {};
types.realm_error = koffi.struct('realm_error', {
  code: 'int32_t',
  message: koffi.array('char', 1020, 'String'),
});
types.realm_model_info = koffi.struct('realm_model_info', {
  struct_size: 'uint32_t', n_layer: 'uint32_t', id: 'uint64_t', n_embd: 'uint32_t', n_ff: 'uint32_t',
  n_head: 'uint32_t', n_head_kv: 'uint32_t', head_dim: 'uint32_t', n_rot: 'uint32_t', n_vocab: 'uint32_t',
  n_ctx_train: 'uint32_t', n_tensors: 'uint32_t', bos_id: 'int32_t', eos_id: 'int32_t',
  has_chat_template: 'uint32_t', rope_freq_base: 'double', rms_eps: 'double', total_bytes: 'uint64_t',
});
types.realm_tensor_info = koffi.struct('realm_tensor_info', {
  struct_size: 'uint32_t', n_dims: 'uint32_t', shape: koffi.array('uint64_t', 4, 'Array'),
  n_elements: 'uint64_t', ggml_type: 'uint32_t', reserved: 'uint32_t', n_bytes: 'uint64_t',
});
types.realm_session_params = koffi.struct('realm_session_params', {
  struct_size: 'uint32_t', n_ctx: 'uint32_t', precision: 'int32_t', device: 'const char *',
});
types.realm_sampler_params = koffi.struct('realm_sampler_params', {
  struct_size: 'uint32_t', top_k: 'int32_t', temperature: 'double', top_p: 'double', min_p: 'double',
  repetition_penalty: 'double', seed: 'uint64_t',
});
// piece is declared const void * (realm.h: const char *) so that koffi hands over the pointer and
// the binding decodes exactly piece_len bytes, instead of a string cut at the first NUL.
types.realm_token_callback = koffi.proto(
  'int32_t realm_token_callback(void *user_data, int32_t token_id, const void *piece, size_t piece_len)');
types.realm_generate_params = koffi.struct('realm_generate_params', {
  struct_size: 'uint32_t', max_tokens: 'uint32_t', sampler: 'const realm_sampler_params *',
  stop: 'const char *const *', n_stop: 'size_t', on_token: 'realm_token_callback *', user_data: 'void *',
});
types.realm_generate_result = koffi.struct('realm_generate_result', {
  struct_size: 'uint32_t', finish_reason: 'int32_t', n_prompt: 'uint32_t', n_generated: 'uint32_t',
});

/** sizeof(realm_error): the Buffer every fallible call gets as its last argument. */
const ERROR_SIZE = koffi.sizeof(types.realm_error);

// ---- locating the library ----------------------------------------------------------------------

/**
 * Where librealm.so is, deterministically:
 *   1. $REALM_LIB, the library's path;
 *   2. else the Python package's own answer: `${REALM_PYTHON:-python3} -m realm_embed config --library`.
 * Throws an Error whose message says where it looked.
 */
function locate(env = process.env) {
  if (env.REALM_LIB) {
    if (!fs.existsSync(env.REALM_LIB)) {
      throw new Error(`realm-embed: REALM_LIB=${env.REALM_LIB} does not exist; point it at librealm.so ` +
        'or unset it to ask the Python package (REALM_PYTHON or python3)');
    }
    return { path: env.REALM_LIB, how: 'REALM_LIB' };
  }
  const python = env.REALM_PYTHON || 'python3';
  const how = `${env.REALM_PYTHON ? 'REALM_PYTHON=' : ''}${python} -m realm_embed config --library`;
  let out;
  try {
    out = execFileSync(python, ['-m', 'realm_embed', 'config', '--library'],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env });
  } catch (e) {
    const why = e.code === 'ENOENT' ? `${python}: no such executable${python.includes('/') ? '' : ' on PATH'}`
      : (String(e.stderr || '').trim().split('\n').pop() || e.message);
    throw new Error(`realm-embed: cannot find librealm.so: REALM_LIB is unset and \`${how}\` failed (${why}); ` +
      'set REALM_LIB to the path of librealm.so, or REALM_PYTHON to the python of the environment ' +
      'where realm-embed is installed');
  }
  const path = out.trim();
  if (!path || !fs.existsSync(path)) {
    throw new Error(`realm-embed: \`${how}\` answered ${JSON.stringify(path)}, which does not exist; ` +
      'build the library (make setup) or set REALM_LIB');
  }
  return { path, how };
}

// ---- loading ------------------------------------------------------------------------------------

let loaded = null;

/**
 * Load librealm.so (once per thread: each worker_thread has its own koffi instance) and declare
 * every function.  path: explicit library path; default: locate().  Throws when the library's
 * realm_abi_version() differs from ABI_VERSION.
 */
function load(path) {
  if (loaded) {
    if (path && path !== loaded.path) {
      throw new Error(`realm-embed: librealm.so is already loaded from ${loaded.path}, not ${path}`);
    }
    return loaded.lib;
  }
  const where = path ? { path, how: 'an explicit path' } : locate();
  // koffi runs C calls on its own stacks (sync 2 MiB, async 128 KiB by default).  Python and torch
  // run inside these calls, so give both 8 MiB, like a normal thread (mmap'd, committed lazily).
  // config() can only change before the first library load of this koffi instance.
  try {
    koffi.config({ ...koffi.config(), sync_stack_size: 8 << 20, async_stack_size: 8 << 20 });
  } catch { /* a library was loaded through koffi already: keep its settings */ }
  let handle;
  try {
    // global: libpython's symbols must be global for Python's extension modules
    // (shared/design/embedding.md, pitfall 2); the library also fixes this itself.
    handle = koffi.load(where.path, { global: true });
  } catch (e) {
    throw new Error(`realm-embed: cannot load ${where.path} (found via ${where.how}): ${e.message}`);
  }
  let abi;
  try {
    abi = handle.func('int32_t realm_abi_version(void)')();
  } catch (e) {
    throw new Error(`realm-embed: ${where.path} (found via ${where.how}) is not librealm.so: ${e.message}`);
  }
  if (abi !== ABI_VERSION) {
    throw new Error(`realm-embed: ${where.path} speaks ABI version ${abi}, this binding speaks ABI version ` +
      `${ABI_VERSION}; install the matching versions of the package and the library`);
  }
  const lib = {};
  for (const decl of DECLARATIONS) {
    const name = /(realm_\w+)\(/.exec(decl)[1];
    try {
      lib[name] = handle.func(decl);
    } catch (e) {
      throw new Error(`realm-embed: ${where.path} lacks ${name} although it reports ABI version ${abi}: ${e.message}`);
    }
  }
  Object.freeze(lib);
  loaded = { path: where.path, how: where.how, lib };
  return lib;
}

/** The path the library was loaded from (null before load()). */
function loadedPath() {
  return loaded ? loaded.path : null;
}

module.exports = {
  ABI_VERSION, CODES, CONSTANTS, DECLARATIONS, ERROR_SIZE, types, koffi,
  codeName, locate, load, loadedPath,
};
