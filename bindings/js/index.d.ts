// realm-embed for Node.js: types of the idiomatic layer (lib/realm.cjs).
// Shapes (row-major float32, as in realm.h): T tokens, D hidden size (nEmbd), V vocabulary (nVocab).

/** A model or sampler id: a bigint (a number is accepted where it is an input). */
export type Id = bigint;

/** The result codes by short name: ErrorCode.NOT_FOUND === -4. */
export const ErrorCode: Readonly<{
  INTERNAL: -1; INIT: -2; ARG: -3; NOT_FOUND: -4; RANGE: -5; BUFFER_TOO_SMALL: -6; FORMAT: -7;
  UNSUPPORTED: -8; LIMIT: -9; BUSY: -10; CONFLICT: -11; IO: -12;
}>;

/** The REALM_ABI_VERSION this binding speaks. */
export const ABI_VERSION: number;

/** Every failure.  message: the call's own message, e.g. "realm_forward_layer: layer 31 out of range [0, 30)". */
export class RealmError extends Error {
  readonly name: 'RealmError';
  /** The C result code (negative). */
  readonly code: number;
  /** Its name, e.g. "REALM_E_NOT_FOUND". */
  readonly codeName: string;
}

export class Realm {
  /** Start the runtime now (about 1 s: Python and torch).  Call once, from the main thread. */
  static init(): void;
  /** "MAJOR.MINOR.PATCH" */
  static version(): string;
  static versionNumber(): number;
  static abiVersion(): number;
  /** The path librealm.so was loaded from. */
  static libraryPath(): string;
}

export interface StoreOptions {
  /** A requested id; default: derived from the content. */
  id?: bigint | number;
}

/** Options of every *Async method. */
export interface AsyncOptions {
  /** Aborted before the call starts (also while it waits behind earlier calls on its session):
   *  the promise rejects with signal.reason and nothing runs.  A call that has started runs to
   *  the end (a compute call cannot be interrupted) and resolves as usual. */
  signal?: AbortSignal;
}

export interface ModelInfo {
  id: bigint;
  architecture: string;
  name: string;
  nLayer: number;
  nEmbd: number;
  nFf: number;
  nHead: number;
  nHeadKv: number;
  headDim: number;
  nRot: number;
  nVocab: number;
  nCtxTrain: number;
  nTensors: number;
  bosId: number;
  eosId: number;
  hasChatTemplate: boolean;
  ropeFreqBase: number;
  rmsEps: number;
  totalBytes: number;
  /** Stored bytes per GGML type name, e.g. { Q4_1: 66355200, ... } */
  bytesByType: Record<string, number>;
}

export interface TensorInfo {
  name: string;
  /** numpy order, outermost first */
  shape: number[];
  nElements: number;
  /** GGML type number: 0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 8 Q8_0, ... */
  ggmlType: number;
  nBytes: number;
}

export interface ChatMessage {
  role: string;
  content: string;
  [key: string]: unknown;
}

export class Model {
  /** Store a GGUF from memory (copied). */
  static store(bytes: Uint8Array | ArrayBuffer, options?: StoreOptions): Model;
  /** Store a GGUF file (memory-mapped, not copied). */
  static storeFile(path: string, options?: StoreOptions): Model;
  /** Store the embedded default model (SmolLM2-135M-Instruct Q4_1). */
  static storeDefault(options?: StoreOptions): Model;
  /** store() on a libuv pool thread.  The bytes are copied first: reuse the buffer at once. */
  static storeAsync(bytes: Uint8Array | ArrayBuffer, options?: StoreOptions & AsyncOptions): Promise<Model>;
  /** storeFile() on a libuv pool thread. */
  static storeFileAsync(path: string, options?: StoreOptions & AsyncOptions): Promise<Model>;
  /** storeDefault() on a libuv pool thread. */
  static storeDefaultAsync(options?: StoreOptions & AsyncOptions): Promise<Model>;
  readonly id: bigint;
  readonly closed: boolean;
  /** *Async calls on this model not settled yet (close() is REALM_E_BUSY meanwhile). */
  readonly pendingCalls: number;
  info(): ModelInfo;
  tensorNames(): string[];
  tensorInfo(name: string): TensorInfo;
  /** Dequantized to float32, row-major, with its shape. */
  tensor(name: string): Float32Array & { readonly shape: readonly number[] };
  tokenize(text: string, options?: { addSpecial?: boolean; parseSpecial?: boolean }): Int32Array;
  tokenizeAsync(text: string, options?: { addSpecial?: boolean; parseSpecial?: boolean } & AsyncOptions): Promise<Int32Array>;
  detokenize(ids: ArrayLike<number>): string;
  detokenizeAsync(ids: ArrayLike<number>, options?: AsyncOptions): Promise<string>;
  /** The raw bytes of one token (may be part of a UTF-8 character). */
  tokenPiece(token: number): Buffer;
  applyChatTemplate(messages: ChatMessage[], options?: { addGenerationPrompt?: boolean }): string;
  applyChatTemplateAsync(messages: ChatMessage[], options?: { addGenerationPrompt?: boolean } & AsyncOptions): Promise<string>;
  /** A new session: nCtx positions (0 = min(2048, nCtxTrain)); precision 'exact' (default) or
   *  'fast' (4-bit weights, bf16 activations); device 'cpu' (default), 'cuda' or 'cuda:N'
   *  (REALM_E_UNSUPPORTED without CUDA). */
  createSession(options?: SessionOptions): Session;
  /** Drop this object's reference (the last frees the model).  Idempotent; REALM_E_BUSY while
   *  sessions use it or its *Async calls are pending. */
  close(): void;
  remove(): void;
}

export interface SessionOptions {
  /** Positions of the KV cache; 0 (default) = min(2048, nCtxTrain). */
  nCtx?: number;
  /** 'exact' (default): f32 weights; 'fast': 4-bit weights through int4 kernels, bf16 activations. */
  precision?: 'exact' | 'fast';
  /** 'cpu' (default), 'cuda' or 'cuda:N'. */
  device?: string | null;
}

export interface SamplerOptions {
  /** 0 = greedy (default) */
  temperature?: number;
  /** 0 = off */
  topK?: number;
  /** 1 = off */
  topP?: number;
  /** 0 = off */
  minP?: number;
  /** 1 = off */
  repetitionPenalty?: number;
  /** same seed, same tokens; default: a fresh random seed */
  seed?: bigint | number;
}

export interface GenerateOptions extends SamplerOptions {
  /** default 256 */
  maxTokens?: number;
  /** generation stops before the first match; the stop string is not part of the text */
  stop?: string | string[];
  /** abort: iteration and .result reject with signal.reason */
  signal?: AbortSignal;
}

export interface Completion {
  text: string;
  tokenIds: number[];
  finishReason: 'stop' | 'eos' | 'length' | 'cancelled';
  nPrompt: number;
  nGenerated: number;
}

/** One generate() call, running on a libuv pool thread: an async iterable of text pieces. */
export class Generation implements AsyncIterable<string> {
  readonly result: Promise<Completion>;
  /** Stop after the current token; .result resolves with finishReason 'cancelled'. */
  cancel(): void;
  [Symbol.asyncIterator](): AsyncIterator<string>;
}

export class Session {
  static create(model: Model, options?: SessionOptions): Session;
  readonly id: bigint;
  readonly model: Model;
  readonly closed: boolean;
  /** *Async calls on this session not settled yet (queued or running). */
  readonly pendingCalls: number;
  /** Positions cached: where the next decode starts. */
  readonly nTokens: number;
  readonly nCtx: number;
  /** ids[T] -> [T x D] */
  embedTokens(ids: ArrayLike<number>): Float32Array;
  /** hidden [T x D] at positions [pos, pos + T) through one layer -> [T x D] */
  forwardLayer(layer: number, hidden: Float32Array | ArrayLike<number>, pos: number): Float32Array;
  /** hidden [T x D] -> logits [T x V] */
  computeLogits(hidden: Float32Array | ArrayLike<number>): Float32Array;
  /** Append ids[T] -> logits of the last token [V], or [T x V] with allLogits. */
  decode(ids: ArrayLike<number>, options?: { allLogits?: boolean }): Float32Array;
  // The *Async twins run on a libuv pool thread and resolve to what the synchronous method
  // returns (or reject with its RealmError).  Calls on one session run one at a time, in call
  // order; while any is pending, the synchronous methods, generate() and close() of the session
  // are REALM_E_BUSY.  Inputs are copied when the call is made.
  embedTokensAsync(ids: ArrayLike<number>, options?: AsyncOptions): Promise<Float32Array>;
  forwardLayerAsync(layer: number, hidden: Float32Array | ArrayLike<number>, pos: number, options?: AsyncOptions): Promise<Float32Array>;
  computeLogitsAsync(hidden: Float32Array | ArrayLike<number>, options?: AsyncOptions): Promise<Float32Array>;
  decodeAsync(ids: ArrayLike<number>, options?: { allLogits?: boolean } & AsyncOptions): Promise<Float32Array>;
  reset(): void;
  truncate(n: number): void;
  fork(): Session;
  /** Does not block the event loop.  The session keeps the prompt and the generated tokens. */
  generate(prompt: string | ArrayLike<number>, options?: GenerateOptions): Generation;
  /** Idempotent; REALM_E_BUSY (the session stays open) while generate() runs on it or *Async
   *  calls on it are pending. */
  close(): void;
  free(): void;
}

export class Sampler {
  constructor(options?: SamplerOptions);
  readonly id: bigint;
  /** Pick a token from logits [V], given the tokens seen so far. */
  sample(logits: Float32Array | ArrayLike<number>, history?: ArrayLike<number>): number;
  close(): void;
}

/** The k largest logits, descending (ties to the lower id). */
export function topK(logits: Float32Array | ArrayLike<number>, k: number): { values: Float32Array; ids: Int32Array };

// ---- WebAssembly guests (bindings/wasm/realm_guest.h), each tenant in its own worker_thread ----

/** The host's REALM_GUEST_ABI_VERSION. */
export const GUEST_ABI_VERSION: number;

/** The module cannot run on this host (an unknown import, a wrong signature, no memory): REALM_E_UNSUPPORTED. */
export class GuestAbiError extends RealmError {}
/** The call into the guest was stopped. */
export class GuestStop extends RealmError {
  readonly reason: 'fault' | 'trap' | 'deadline' | 'memory' | 'cancelled';
}
/** An import got a pointer or length outside guest memory (a trap): REALM_E_ARG. */
export class GuestFault extends GuestStop {}
/** The guest trapped on its own (unreachable, stack overflow, out-of-bounds load): REALM_E_ARG. */
export class GuestTrap extends GuestStop {}
/** A limit stopped the guest (deadline, memory) or the host cancelled the call: REALM_E_LIMIT. */
export class GuestLimitError extends GuestStop {}

/** Per-tenant limits; the per-call ones reset at every call into the guest. */
export interface GuestLimits {
  /** the guest's linear memory (default 64): memory.grow past it returns -1 */
  memoryMiB?: number;
  /** wall clock per call into the guest (default 300000); a runaway worker is terminated */
  timeoutMs?: number;
  /** time inside imports per call (default 300000), then REALM_E_LIMIT */
  hostTimeMs?: number;
  /** live sessions (default 8) */
  maxSessions?: number;
  /** sum of n_ctx over live sessions (default 32768) */
  maxKvTokens?: number;
  /** realm_emit bytes per call (default 1 MiB) */
  maxOutputBytes?: number;
  /** realm_log bytes per call (default 64 KiB) */
  maxLogBytes?: number;
}

/** How a tenant's sessions compute; the host picks it, the guest cannot ask for another. */
export interface GuestHostOptions extends GuestLimits {
  /** 'exact' (default): f32 weights; 'fast': 4-bit weights, bf16 activations.  Every session the
   *  guest creates gets it (a fork keeps its parent's); anything else is REALM_E_ARG. */
  precision?: 'exact' | 'fast';
}

export interface TenantOptions extends GuestHostOptions {
  name?: string;
  /** text the guest emits (realm_emit), decoded as UTF-8 across calls; an exception cancels the call */
  onText?: (text: string) => void;
  /** the guest's realm_log lines (default: WARN and ERROR to stderr) */
  onLog?: (level: number, text: string) => void;
}

export interface GuestGenerateOptions {
  /** the guest's extra string: the stop string of "generate", the banned word of "ban_word" */
  extra?: string;
  /** default 256 */
  maxTokens?: number;
  /** default true: the guest applies the chat template */
  chat?: boolean;
  /** realm_decode instead of the layer loop */
  fused?: boolean;
  /** sample on all V logits instead of the host's top-k */
  fullLogits?: boolean;
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: bigint | number;
  onText?: (text: string) => void;
  signal?: AbortSignal;
}

export interface GuestResult {
  text: string;
  tokenIds: number[];
  finishReason: 'stop' | 'eos' | 'length' | 'cancelled' | 'error';
  nPrompt: number;
  seconds: number;
  /** import calls, time inside them, and inside the runtime's compute calls */
  hostCalls: number;
  hostSeconds: number;
  computeSeconds: number;
  /** the guest's linear memory after the call */
  memoryBytes: number;
}

export interface TenantState {
  lastError: string;
  lastFailure: string;
  memoryBytes: number;
  sessions: bigint[];
  hostCalls: number;
  hostSeconds: number;
  computeSeconds: number;
  importCalls: Record<string, number>;
}

/** A compiled, checked guest; shareable by any number of tenants. */
export class GuestModule {
  readonly module: WebAssembly.Module;
  readonly abi: number | null;
  readonly memory: { min: number; max: number | null };
  readonly memoryWasImported: boolean;
  readonly exports: readonly string[];
  readonly size: number;
}

export type GuestSource = Uint8Array | ArrayBuffer | string | URL | GuestModule;

export class GuestHost {
  /** default limits and precision of its tenants (TenantOptions override them) */
  constructor(options?: GuestHostOptions);
  static readonly abiVersion: number;
  static readonly imports: Record<string, { params: string[]; results: string[] }>;
  readonly limits: Readonly<Required<GuestLimits>>;
  /** the default precision of its tenants' sessions */
  readonly precision: 'exact' | 'fast';
  /** .wasm bytes, a path, or a shipped guest's name ("generate", "ban_word") */
  load(source: GuestSource): GuestModule;
  tenant(guest: GuestSource, model: Model | bigint | number, options?: TenantOptions): Promise<Tenant>;
  close(): Promise<void>;
}

export class Tenant {
  readonly name: string;
  onText: ((text: string) => void) | null;
  onLog: ((level: number, text: string) => void) | null;
  readonly guest: GuestModule;
  readonly limits: Readonly<Required<GuestLimits>>;
  /** the precision of every session this guest creates (chosen by the host) */
  readonly precision: 'exact' | 'fast';
  readonly closed: boolean;
  readonly modelId: bigint;
  readonly lastError: string;
  readonly lastFailure: string;
  readonly memoryBytes: number;
  readonly sessionIds: bigint[];
  readonly output: Buffer;
  readonly stats: { hostCalls: number; hostSeconds: number; computeSeconds: number; importCalls: Record<string, number>; restarts: number };
  call(name: string, ...args: Array<number | bigint>): Promise<number | bigint | undefined>;
  read(ptr: number, n: number): Promise<Buffer>;
  write(ptr: number, bytes: Uint8Array): Promise<void>;
  state(): Promise<TenantState>;
  generate(prompt: string, options?: GuestGenerateOptions): Promise<GuestResult>;
  close(): Promise<void>;
}

/** Run a generator guest once in a fresh tenant (default model: the embedded one). */
export function runGuest(source?: GuestSource, options?: GuestGenerateOptions & TenantOptions & {
  model?: Model | bigint | number; prompt?: string;
}): Promise<GuestResult>;

/** The path of a shipped guest (next to librealm.so, in the Python package). */
export function guestPath(name?: string): string;

declare const realm: {
  Realm: typeof Realm; Model: typeof Model; Session: typeof Session; Generation: typeof Generation;
  Sampler: typeof Sampler; RealmError: typeof RealmError; ErrorCode: typeof ErrorCode;
  topK: typeof topK; ABI_VERSION: number;
  GuestHost: typeof GuestHost; GuestModule: typeof GuestModule; Tenant: typeof Tenant; runGuest: typeof runGuest;
  guestPath: typeof guestPath; GuestAbiError: typeof GuestAbiError; GuestStop: typeof GuestStop;
  GuestFault: typeof GuestFault; GuestTrap: typeof GuestTrap; GuestLimitError: typeof GuestLimitError;
  GUEST_ABI_VERSION: number;
};
export default realm;
