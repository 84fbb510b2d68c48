'use strict';
// The guest ABI on the Node side: the "realm" import table (names and wasm signatures, equal to
// realm_embed/wasm/imports.py; test/guest.test.mjs keeps the two equal), the errors of the guest
// host, and the load-time check of a module (the same sentences as realm_embed/wasm/abi.py).
//
// Loaded by the main thread (lib/guest.cjs) and by every tenant's worker (lib/guest_worker.cjs).
// No dependency on the library here beyond RealmError.

const { RealmError, E } = require('./call.cjs');

/** REALM_GUEST_ABI_VERSION of bindings/wasm/realm_guest.h. */
const GUEST_ABI_VERSION = 1;
const MAX_MODULE_BYTES = 64 << 20;
const PAGE = 65536;

// parameter kinds (as abi.py): h handle (i32), i signed i32, u unsigned i32, p pointer (i32),
// I i64, f f32; the result is "i" (an i32 result code) unless given.
const WASM = { h: 'i32', i: 'i32', u: 'i32', p: 'i32', I: 'i64', f: 'f32' };
const SIGNATURES = new Map(Object.entries({
  abi_version: [''],
  last_error: ['pup'],
  emit: ['pu'],
  log: ['ipu'],
  now_us: ['', 'I'],
  model: [''],
  model_info: ['hip'],
  eot_ids: ['hpup'],
  tokenize: ['hpuupup'],
  detokenize: ['hpupup'],
  token_piece: ['hipup'],
  chat_template: ['hpuupup'],
  session_create: ['hup'],
  session_fork: ['hp'],
  session_free: ['h'],
  session_reset: ['h'],
  session_truncate: ['hu'],
  session_n_tokens: ['hp'],
  embed_tokens: ['hpupu'],
  forward_layer: ['huupuupu'],
  compute_logits: ['hpuupu'],
  logits_top_k: ['hpuupuuppp'],
  decode: ['hpuupu'],
  decode_top_k: ['hpupuuppp'],
}).map(([name, [params, result = 'i']]) => [name, Object.freeze({
  params, result,
  wasm: Object.freeze([Object.freeze([...params].map((k) => WASM[k])), Object.freeze([WASM[result]])]),
})]));

// ---- errors -------------------------------------------------------------------------------------
// As realm_embed/wasm/errors.py: every one is a RealmError with the C ABI's code.

/** The module cannot run on this host: an unknown import, a wrong signature, no memory. */
class GuestAbiError extends RealmError {
  constructor(message) {
    super(E.REALM_E_UNSUPPORTED, message);
    this.name = 'GuestAbiError';
  }
}

/** The call into the guest was stopped.  reason: 'fault' | 'trap' | 'deadline' | 'memory' | 'cancelled'. */
class GuestStop extends RealmError {
  constructor(code, message, reason) {
    super(code, message);
    this.name = 'GuestStop';
    this.reason = reason;
  }
}

/** An import was given a pointer or length outside the guest's memory (a trap). */
class GuestFault extends GuestStop {
  constructor(message) {
    super(E.REALM_E_ARG, message, 'fault');
    this.name = 'GuestFault';
  }
}

/** The guest trapped on its own (unreachable, stack overflow, an out-of-bounds load, ...). */
class GuestTrap extends GuestStop {
  constructor(message) {
    super(E.REALM_E_ARG, message, 'trap');
    this.name = 'GuestTrap';
  }
}

/** A per-tenant limit stopped the guest: the deadline (timeoutMs) or its memory; or it was cancelled. */
class GuestLimitError extends GuestStop {
  constructor(message, reason) {
    super(E.REALM_E_LIMIT, message, reason);
    this.name = 'GuestLimitError';
  }
}

const CLASSES = { GuestAbiError, GuestStop, GuestFault, GuestTrap, GuestLimitError, RealmError };

/** An error as a plain object, to cross the worker boundary. */
function serializeError(e) {
  if (e instanceof RealmError) {
    return { cls: e.name in CLASSES ? e.name : 'RealmError', code: e.code, message: e.message, reason: e.reason };
  }
  return { cls: 'RealmError', code: E.REALM_E_INTERNAL, message: `internal error: ${e && e.name}: ${e && e.message}` };
}

function deserializeError(o) {
  switch (o.cls) {
    case 'GuestAbiError': return new GuestAbiError(o.message);
    case 'GuestFault': return new GuestFault(o.message);
    case 'GuestTrap': return new GuestTrap(o.message);
    case 'GuestLimitError': return new GuestLimitError(o.message, o.reason);
    case 'GuestStop': return new GuestStop(o.code, o.message, o.reason);
    default: return new RealmError(o.code, o.message);
  }
}

// ---- the binary format (only what the check needs; the module was validated by V8 first) -------

const VALTYPES = { 0x7f: 'i32', 0x7e: 'i64', 0x7d: 'f32', 0x7c: 'f64', 0x7b: 'v128', 0x70: 'funcref', 0x6f: 'externref' };

class Reader {
  constructor(bytes, pos = 0, end = bytes.length) {
    this.b = bytes;
    this.pos = pos;
    this.end = end;
  }

  byte() {
    if (this.pos >= this.end) throw new GuestAbiError('not a WebAssembly module: truncated section');
    return this.b[this.pos++];
  }

  u32() {                              // unsigned LEB128 (up to 64 bits, as a number)
    let value = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      const b = this.byte();
      value += (b & 0x7f) * scale;
      if (!(b & 0x80)) return value;
      scale *= 128;
    }
    throw new GuestAbiError('not a WebAssembly module: an integer is too long');
  }

  name() {
    const n = this.u32();
    if (this.pos + n > this.end) throw new GuestAbiError('not a WebAssembly module: a name runs past its section');
    const s = Buffer.from(this.b.buffer, this.b.byteOffset + this.pos, n).toString('utf8');
    this.pos += n;
    return s;
  }

  limits() {
    const flags = this.byte();
    const min = this.u32();
    const max = flags & 1 ? this.u32() : null;
    return { min, max, shared: (flags & 2) !== 0, is64: (flags & 4) !== 0 };
  }

  valtype() {
    const t = this.byte();
    return VALTYPES[t] || `type 0x${t.toString(16)}`;
  }
}

function leb(n) {
  const out = [];
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n) byte |= 0x80;
    out.push(byte);
  } while (n);
  return out;
}

/** Sections, function types, imports, defined memories and exports of a (valid) module. */
function parseModule(bytes) {
  if (bytes.length < 8 || bytes[0] !== 0 || bytes[1] !== 0x61 || bytes[2] !== 0x73 || bytes[3] !== 0x6d) {
    throw new GuestAbiError('not a WebAssembly module (no \\0asm magic): a realm guest is a .wasm file');
  }
  const r = new Reader(bytes, 8);
  const out = { sections: [], types: [], imports: [], memories: [], exports: [] };
  while (r.pos < r.end) {
    const start = r.pos;
    const id = r.byte();
    const size = r.u32();
    const body = r.pos;
    if (body + size > r.end) throw new GuestAbiError('not a WebAssembly module: a section runs past the end');
    out.sections.push({ id, start, body, end: body + size });
    const s = new Reader(bytes, body, body + size);
    if (id === 1) {
      for (let n = s.u32(), i = 0; i < n; i++) {
        const form = s.byte();
        if (form !== 0x60) { out.types.push(null); break; }     // a type this reader does not know
        const params = [];
        for (let k = s.u32(), j = 0; j < k; j++) params.push(s.valtype());
        const results = [];
        for (let k = s.u32(), j = 0; j < k; j++) results.push(s.valtype());
        out.types.push({ params, results });
      }
    } else if (id === 2) {
      for (let n = s.u32(), i = 0; i < n; i++) {
        const imp = { module: s.name(), name: s.name() };
        const kind = s.byte();
        if (kind === 0) { imp.kind = 'function'; imp.type = s.u32(); }
        else if (kind === 1) { imp.kind = 'table'; s.byte(); s.limits(); }
        else if (kind === 2) { imp.kind = 'memory'; imp.limits = s.limits(); }
        else if (kind === 3) { imp.kind = 'global'; s.valtype(); s.byte(); }
        else if (kind === 4) { imp.kind = 'tag'; s.byte(); s.u32(); }
        else throw new GuestAbiError(`not a WebAssembly module: import kind ${kind}`);
        out.imports.push(imp);
      }
    } else if (id === 5) {
      for (let n = s.u32(), i = 0; i < n; i++) out.memories.push(s.limits());
    } else if (id === 7) {
      for (let n = s.u32(), i = 0; i < n; i++) {
        const name = s.name();
        const kind = s.byte();
        out.exports.push({ name, kind: ['function', 'table', 'memory', 'global', 'tag'][kind] || kind, index: s.u32() });
      }
    }
    r.pos = body + size;
  }
  return out;
}

/** The ABI version recorded by realm_guest.h ("realm-guest-abi N;" per object file), or null. */
function guestAbi(module) {
  const versions = new Set();
  for (const payload of WebAssembly.Module.customSections(module, 'realm_abi')) {
    for (const record of Buffer.from(payload).toString('latin1').split(';')) {
      if (!record.trim()) continue;
      const parts = record.trim().split(/\s+/);
      if (parts.length !== 2 || parts[0] !== 'realm-guest-abi' || !/^[0-9]+$/.test(parts[1])) {
        throw new GuestAbiError(`malformed realm_abi record '${record}'`);
      }
      versions.add(Number(parts[1]));
    }
  }
  if (versions.size > 1) {
    throw new GuestAbiError(`the guest's objects were built for different ABIs [${[...versions].sort((a, b) => a - b).join(', ')}]`);
  }
  return versions.size ? [...versions][0] : null;
}

const sigText = (params, results) => `(${params.join(', ')}) -> (${results.join(', ')})`;

/**
 * Check a compiled module against the host's imports (the sentences of abi.py's check_module) and
 * find its memory.  A guest that defines and exports its memory is rewritten to import it instead,
 * so that the host creates the memory and caps it (V8 can cap only a memory the host creates).
 * Returns { bytes, module, abi, memory: { min, max }, memoryWasImported, exports, size }.
 */
function checkModule(bytes, module) {
  const abi = guestAbi(module);
  const built = `guest built for ABI ${abi === null ? 'unknown' : abi}, host ABI ${GUEST_ABI_VERSION}`;
  const info = parseModule(bytes);
  let memoryImport = null;
  for (const imp of info.imports) {
    if (imp.module === 'realm') {
      const sig = SIGNATURES.get(imp.name);
      if (!sig) throw new GuestAbiError(`unknown import realm.${imp.name} (${built})`);
      if (imp.kind !== 'function') throw new GuestAbiError(`import realm.${imp.name} must be a function (${built})`);
      const t = info.types[imp.type];
      const have = t ? [t.params, t.results] : [['?'], ['?']];
      if (sigText(...have) !== sigText(...sig.wasm)) {
        throw new GuestAbiError(`import realm.${imp.name} has type ${sigText(...have)}, the host's is ` +
          `${sigText(...sig.wasm)} (${built})`);
      }
    } else if (imp.module === 'env' && imp.name === 'memory' && imp.kind === 'memory') {
      if (imp.limits.is64 || imp.limits.shared) {
        throw new GuestAbiError(`env.memory must be a 32-bit unshared memory of 64 KiB pages (${built})`);
      }
      memoryImport = imp.limits;
    } else {
      throw new GuestAbiError(`unknown import ${imp.module}.${imp.name}: a realm guest imports only module ` +
        `'realm' and env.memory (${built})`);
    }
  }
  const exports = info.exports.map((e) => e.name);
  if (memoryImport) {
    if (info.memories.length) throw new GuestAbiError(`a realm guest has one memory, this one imports and defines one (${built})`);
    return { bytes, module, abi, memory: memoryImport, memoryWasImported: true, exports, size: bytes.length };
  }
  const exported = info.exports.find((e) => e.name === 'memory' && e.kind === 'memory');
  if (!exported || info.memories.length !== 1) {
    throw new GuestAbiError("the guest neither imports env.memory nor exports a memory named 'memory'");
  }
  const mem = info.memories[0];
  if (mem.is64 || mem.shared) {
    throw new GuestAbiError(`the guest's memory must be a 32-bit unshared memory of 64 KiB pages (${built})`);
  }
  const rewritten = importMemory(bytes, info, mem);
  return {
    bytes: rewritten, module: new WebAssembly.Module(rewritten), abi, memory: mem, memoryWasImported: false,
    exports, size: bytes.length,
  };
}

/** The same module with its one defined memory turned into the import env.memory (same limits;
 *  memory index 0 stays memory index 0, so data segments, loads and the export are unchanged). */
function importMemory(bytes, info, mem) {
  const entry = [3, 0x65, 0x6e, 0x76, 6, 0x6d, 0x65, 0x6d, 0x6f, 0x72, 0x79, 2,   // "env" "memory" memory
    ...(mem.max === null ? [0, ...leb(mem.min)] : [1, ...leb(mem.min), ...leb(mem.max)])];
  const parts = [bytes.subarray(0, 8)];
  const section = (id, payload) => Buffer.from([id, ...leb(payload.length), ...payload]);
  let added = false;
  const addImports = () => {
    if (!added) parts.push(section(2, [...leb(1), ...entry]));
    added = true;
  };
  for (const s of info.sections) {
    if (s.id === 2) {
      const r = new Reader(bytes, s.body, s.end);
      const n = r.u32();
      parts.push(section(2, [...leb(n + 1), ...bytes.subarray(r.pos, s.end), ...entry]));
      added = true;
      continue;
    }
    if (s.id !== 0 && s.id !== 1) addImports();       // the import section comes right after types
    if (s.id === 5) continue;                         // the memory section held only this memory
    parts.push(bytes.subarray(s.start, s.end));
  }
  addImports();
  return new Uint8Array(Buffer.concat(parts));
}

module.exports = {
  GUEST_ABI_VERSION, MAX_MODULE_BYTES, PAGE, SIGNATURES,
  GuestAbiError, GuestStop, GuestFault, GuestTrap, GuestLimitError, serializeError, deserializeError,
  parseModule, guestAbi, checkModule,
};
