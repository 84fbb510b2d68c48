/*
 * realm_guest.h: the host imports of a realm-embed WebAssembly guest (module "realm").
 *
 * A guest is a tenant's orchestration: it tokenizes through the host, runs the layer loop (or
 * the fused decode), samples with its own logic, stops on its own rules and streams text out.
 * The weights live once in the host; the guest holds small integer handles to its model and its
 * own sessions.  The Python host (realm_embed.wasm, wasmtime) implements these imports; a Node
 * host implements the same ones over the C ABI (include/realm.h), so one .wasm runs in both.
 *
 * Build (no libc; see bindings/wasm/README.md):
 *   clang --target=wasm32 -nostdlib -O2 -mbulk-memory -I bindings/wasm \
 *         -Wl,--no-entry -Wl,--export-dynamic -Wl,--import-memory \
 *         -Wl,-z,stack-size=65536 -Wl,--stack-first -o guest.wasm guest.c
 *
 * Shapes use the letters of realm.h: T tokens, D hidden size (n_embd), V vocabulary size
 * (n_vocab), L layers (n_layer).  Matrices are row-major float32: hidden [T, D] is T rows of D
 * floats.
 *
 * ==========================================================================================
 * THE RULES (written once, for every import)
 * ==========================================================================================
 *  - Only i32, i64 and f32 cross the boundary.  Pointers are offsets into the guest's own
 *    linear memory, sizes are uint32_t counts of elements (bytes for char buffers).
 *  - The host never allocates in guest memory and never keeps a guest pointer after the call.
 *    Every output buffer is allocated by the guest.  Buffers need no alignment.
 *  - Every pointer and length is checked in wide unsigned arithmetic against the guest's memory
 *    size at the moment of the call.  A buffer that does not lie entirely inside guest memory
 *    is a memory fault: the import TRAPS (the call into the guest ends with an error on the
 *    host side), exactly as a wasm load or store out of bounds would.  Pointer 0 is NULL.
 *  - Everything else that is wrong returns a negative REALM_E_* code, and the import has done
 *    nothing: no output written, the session's KV cache exactly as before the call.
 *    realm_last_error() gives the message ("realm.forward_layer: layer 31 out of range [0, 30)").
 *  - Handles (realm_handle) are small positive integers local to this guest: model handles and
 *    session handles share one table, are never reused, and a handle this guest does not hold
 *    (never created, already freed, another guest's, or of the other kind) is
 *    REALM_E_NOT_FOUND with one and the same message.
 *  - Buffers whose size the guest cannot know use the two-call protocol of realm.h:
 *      buf == 0 && cap == 0 : size query: writes the needed count to *size, returns REALM_OK;
 *      cap >= needed        : writes the result, *size = needed, REALM_OK;
 *      cap <  needed        : REALM_E_BUFFER_TOO_SMALL, *size = needed, buf untouched.
 *    Text outputs are NUL-terminated UTF-8 and *size COUNTS THE NUL.
 *  - Fixed-shape outputs ([T, D], [V], top-k) take a capacity only; one too small is
 *    REALM_E_BUFFER_TOO_SMALL before any work.
 *  - Limits set by the host per guest: linear memory, fuel (wasm instructions per call into the
 *    guest), a wall-clock deadline per call, a host-time budget per call, live sessions, KV
 *    positions, output bytes.  A limit reached inside an import returns REALM_E_LIMIT; fuel and
 *    the deadline trap.
 *
 * ==========================================================================================
 * VERSIONING
 * ==========================================================================================
 *  REALM_GUEST_ABI_VERSION is written into the custom section "realm_abi" of every object that
 *  includes this header.  The host reads it before instantiating, and a guest importing a name
 *  the host does not provide fails to load with
 *    "unknown import realm.X (guest built for ABI N, host ABI M)".
 *  An import never changes meaning: an incompatible change adds a new name (forward_layer_v2)
 *  and bumps the ABI; compatible additions keep it.
 */
#ifndef REALM_GUEST_H
#define REALM_GUEST_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define REALM_GUEST_ABI_VERSION 1

#define REALM_GUEST_STR_(x) #x
#define REALM_GUEST_STR(x) REALM_GUEST_STR_(x)
#ifndef REALM_GUEST_NO_ABI_SECTION
/* One record per object file; the host checks that all records agree. */
__asm__(".section .custom_section.realm_abi,\"\",@\n"
        ".ascii \"realm-guest-abi " REALM_GUEST_STR(REALM_GUEST_ABI_VERSION) ";\"\n"
        ".text\n");
#endif

#define REALM_IMPORT(name) __attribute__((import_module("realm"), import_name(#name)))

/* ---- result codes (equal to include/realm.h and realm_embed/errors.py) ------------------ */
#define REALM_OK                   0   /* success */
#define REALM_E_INTERNAL          -1   /* unexpected failure inside the host (a bug: please report) */
#define REALM_E_INIT              -2   /* the runtime could not start */
#define REALM_E_ARG               -3   /* misuse: a NULL pointer, a bad value, a wrong shape */
#define REALM_E_NOT_FOUND         -4   /* no such handle (or token id) */
#define REALM_E_RANGE             -5   /* layer, position, token or length outside its valid range */
#define REALM_E_BUFFER_TOO_SMALL  -6   /* output buffer too small; the needed size was written back */
#define REALM_E_FORMAT            -7   /* not a valid model */
#define REALM_E_UNSUPPORTED       -8   /* valid but not supported */
#define REALM_E_LIMIT             -9   /* a limit set by the host was hit */
#define REALM_E_BUSY             -10   /* the object is in use */
#define REALM_E_CONFLICT         -11   /* the requested id already names different content */
#define REALM_E_IO               -12   /* the operating system refused */

/* Finish reasons (the same numbers as REALM_FINISH_* in realm.h), for guests that report one. */
#define REALM_FINISH_STOP      1
#define REALM_FINISH_EOS       2
#define REALM_FINISH_LENGTH    3
#define REALM_FINISH_CANCELLED 4

typedef int32_t realm_handle;   /* > 0; model or session, local to this guest */

/* ---- host services ---------------------------------------------------------------------- */

/* The host's REALM_GUEST_ABI_VERSION.  Never fails. */
REALM_IMPORT(abi_version) int32_t realm_abi_version(void);

/* The message of this guest's last failed import call, by the two-call protocol ("" when the
 * last call succeeded; calling realm_last_error itself changes nothing).
 * Returns: REALM_OK; REALM_E_BUFFER_TOO_SMALL; REALM_E_ARG (size NULL). */
REALM_IMPORT(last_error) int32_t realm_last_error(char *text, uint32_t text_cap, uint32_t *size);

/* Stream text[len] (UTF-8 bytes; a character may be split across calls) to the host's output.
 * Returns: REALM_OK; REALM_E_LIMIT (the output budget of this call is spent: nothing sent). */
REALM_IMPORT(emit) int32_t realm_emit(const char *text, uint32_t len);

/* Levels of realm_log. */
#define REALM_LOG_DEBUG 0
#define REALM_LOG_INFO  1
#define REALM_LOG_WARN  2
#define REALM_LOG_ERROR 3
/* A diagnostic line for the host's log (not the output).  Long lines are cut at 1 KiB.
 * Returns: REALM_OK; REALM_E_ARG (level); REALM_E_LIMIT (the log budget of this call). */
REALM_IMPORT(log) int32_t realm_log(int32_t level, const char *text, uint32_t len);

/* Microseconds since the host called into the guest for this step (the current export call).
 * Monotonic; never fails. */
REALM_IMPORT(now_us) int64_t realm_now_us(void);

/* ---- the model ---------------------------------------------------------------------------- */

/* The handle of the model the host gave this guest (> 0), or REALM_E_NOT_FOUND if none. */
REALM_IMPORT(model) int32_t realm_model(void);

/* Keys of realm_model_info. */
#define REALM_INFO_N_LAYER           1   /* L */
#define REALM_INFO_N_EMBD            2   /* D */
#define REALM_INFO_N_VOCAB           3   /* V */
#define REALM_INFO_N_CTX_TRAIN       4   /* the largest n_ctx of a session */
#define REALM_INFO_BOS_ID            5   /* -1 if none */
#define REALM_INFO_EOS_ID            6   /* -1 if none */
#define REALM_INFO_N_HEAD            7
#define REALM_INFO_N_HEAD_KV         8
#define REALM_INFO_HEAD_DIM          9
#define REALM_INFO_N_FF             10
#define REALM_INFO_HAS_CHAT_TEMPLATE 11  /* 1 or 0 */

/* *value = the model's number for key.
 * Returns: REALM_OK; REALM_E_ARG (unknown key, value NULL); REALM_E_NOT_FOUND. */
REALM_IMPORT(model_info) int32_t realm_model_info(realm_handle model, int32_t key, int64_t *value);

/* The end-of-turn token ids (EOS and the chat template's end token), by the two-call protocol:
 * ids[cap], *n = their number.  Returns: REALM_OK; REALM_E_BUFFER_TOO_SMALL; REALM_E_NOT_FOUND. */
REALM_IMPORT(eot_ids) int32_t realm_eot_ids(realm_handle model, int32_t *ids, uint32_t cap, uint32_t *n);

/* ---- text ----------------------------------------------------------------------------------- */

#define REALM_TOKENIZE_ADD_SPECIAL   1   /* add BOS/EOS as the model asks */
#define REALM_TOKENIZE_PARSE_SPECIAL 2   /* "<|im_start|>" in the text becomes that control token */
#define REALM_TOKENIZE_DEFAULT       3   /* both: what the host's generate does with a prompt */

/* text[len] (UTF-8) -> ids, by the two-call protocol: ids[cap], *n = the number of tokens.
 * Returns: REALM_OK; REALM_E_BUFFER_TOO_SMALL; REALM_E_ARG (invalid UTF-8, unknown flags);
 * REALM_E_LIMIT (len over 16 MiB); REALM_E_NOT_FOUND. */
REALM_IMPORT(tokenize) int32_t realm_tokenize(realm_handle model, const char *text, uint32_t len,
                                              uint32_t flags, int32_t *ids, uint32_t cap, uint32_t *n);

/* ids[n_ids] -> text (NUL-terminated; invalid UTF-8 becomes U+FFFD), by the two-call protocol.
 * Returns: REALM_OK; REALM_E_BUFFER_TOO_SMALL; REALM_E_RANGE (a token id); REALM_E_LIMIT (n_ids
 * over 2^20); REALM_E_NOT_FOUND. */
REALM_IMPORT(detokenize) int32_t realm_detokenize(realm_handle model, const int32_t *ids, uint32_t n_ids,
                                                  char *text, uint32_t cap, uint32_t *size);

/* The raw bytes of one token (maybe part of a UTF-8 character; control tokens give their text),
 * NUL-terminated, by the two-call protocol: the piece is *size - 1 bytes.
 * Returns: REALM_OK; REALM_E_BUFFER_TOO_SMALL; REALM_E_RANGE (token); REALM_E_NOT_FOUND. */
REALM_IMPORT(token_piece) int32_t realm_token_piece(realm_handle model, int32_t token, char *piece,
                                                    uint32_t cap, uint32_t *size);

/* One chat message in guest memory: role[role_len] and content[content_len], UTF-8. */
typedef struct realm_chat_message {
    uint32_t role;          /* pointer to the role text ("system", "user", "assistant") */
    uint32_t role_len;
    uint32_t content;       /* pointer to the content text */
    uint32_t content_len;
} realm_chat_message;       /* 16 bytes */

#define REALM_CHAT_ADD_GENERATION_PROMPT 1   /* end with the assistant's turn opening */

/* Render the model's chat template for messages[n_messages] into text, by the two-call
 * protocol (NUL-terminated).  Tokenize the result with REALM_TOKENIZE_DEFAULT.
 * Returns: REALM_OK; REALM_E_BUFFER_TOO_SMALL; REALM_E_RANGE (no template); REALM_E_ARG
 * (n_messages 0 or over 1024, invalid UTF-8, unknown flags, the template raised); REALM_E_LIMIT
 * (over 16 MiB of text); REALM_E_NOT_FOUND. */
REALM_IMPORT(chat_template) int32_t realm_chat_template(realm_handle model, const realm_chat_message *messages,
                                                        uint32_t n_messages, uint32_t flags,
                                                        char *text, uint32_t cap, uint32_t *size);

/* ---- sessions: one sequence each, with its own KV cache of n_ctx positions ------------------ */

/* n_ctx 0 = the default (min(2048, n_ctx_train)).  The session's precision (exact f32 or fast
 * 4-bit weights) is the host's policy for this tenant, not the guest's to choose.
 * Returns: REALM_OK and *session; REALM_E_RANGE (n_ctx > n_ctx_train); REALM_E_LIMIT (this
 * guest's session or KV-position limit); REALM_E_NOT_FOUND (model); REALM_E_ARG (session NULL). */
REALM_IMPORT(session_create) int32_t realm_session_create(realm_handle model, uint32_t n_ctx,
                                                          realm_handle *session);

/* A new session holding a copy of this one's cache (and its precision).  Returns as
 * realm_session_create. */
REALM_IMPORT(session_fork) int32_t realm_session_fork(realm_handle session, realm_handle *forked);

/* Free the session and its cache; the handle is never valid again.  0: no-op.
 * Returns: REALM_OK; REALM_E_NOT_FOUND. */
REALM_IMPORT(session_free) int32_t realm_session_free(realm_handle session);

/* Forget every cached position.  Returns: REALM_OK; REALM_E_NOT_FOUND. */
REALM_IMPORT(session_reset) int32_t realm_session_reset(realm_handle session);

/* Keep the first n_tokens positions.  Returns: REALM_OK; REALM_E_RANGE; REALM_E_NOT_FOUND. */
REALM_IMPORT(session_truncate) int32_t realm_session_truncate(realm_handle session, uint32_t n_tokens);

/* *n_tokens = positions cached in every layer (where the next decode starts).
 * Returns: REALM_OK; REALM_E_NOT_FOUND; REALM_E_ARG (n_tokens NULL). */
REALM_IMPORT(session_n_tokens) int32_t realm_session_n_tokens(realm_handle session, uint32_t *n_tokens);

/* ---- compute: embed -> forward_layer for layer 0..L-1 -> logits, or the fused decode ---------- */

/* ids[T] -> out[T, D] (token embeddings).  Reads no session state.  out_cap >= T * D.
 * Returns: REALM_OK; REALM_E_RANGE (a token id); REALM_E_ARG (T = 0);
 * REALM_E_BUFFER_TOO_SMALL; REALM_E_NOT_FOUND. */
REALM_IMPORT(embed_tokens) int32_t realm_embed_tokens(realm_handle session, const int32_t *ids, uint32_t n_tokens,
                                                      float *out, uint32_t out_cap);

/* hidden[T, D] at positions [pos, pos + T) through layer `layer` -> out[T, D] (out may be
 * hidden).  n_embd must equal D.  Writes that layer's K/V for [pos, pos + T), dropping the
 * layer's later positions, and attends to [0, pos + T); pos may not skip past what the layer
 * holds.  After the last layer's call the session's n_tokens is pos + T.
 * Returns: REALM_OK; REALM_E_RANGE (layer, pos, pos + T > n_ctx); REALM_E_ARG (T = 0,
 * n_embd != D, NaN/inf); REALM_E_BUFFER_TOO_SMALL; REALM_E_NOT_FOUND; REALM_E_LIMIT. */
REALM_IMPORT(forward_layer) int32_t realm_forward_layer(realm_handle session, uint32_t layer, uint32_t pos,
                                                        const float *hidden, uint32_t n_tokens, uint32_t n_embd,
                                                        float *out, uint32_t out_cap);

/* hidden[T, D] -> logits[T, V] (final norm and output head).  Reads no session state.
 * For the last position only, pass its row: hidden + (T - 1) * D with T = 1.
 * Returns: REALM_OK; REALM_E_ARG; REALM_E_BUFFER_TOO_SMALL; REALM_E_NOT_FOUND. */
REALM_IMPORT(compute_logits) int32_t realm_compute_logits(realm_handle session, const float *hidden,
                                                          uint32_t n_tokens, uint32_t n_embd,
                                                          float *logits, uint32_t logits_cap);

/* A bias entry: logits[id] += value before the top-k.  -INFINITY bans the token.  Entries for
 * the same id add up.  value may not be NaN or +INFINITY. */
typedef struct realm_bias {
    int32_t id;
    float   value;
} realm_bias;               /* 8 bytes */

/* Compact logits for sampling in the guest: the logits of the LAST row of hidden[T, D], plus
 * bias[n_bias] (may be 0/0), then the k largest, descending, ties to the lower id:
 * ids[k] and values[k]; *n_out = min(k, V).  k = 1 is greedy decoding.
 * Returns: REALM_OK; REALM_E_ARG (k = 0, n_bias > V, a NaN/+inf bias, T = 0, n_embd != D);
 * REALM_E_RANGE (a bias id); REALM_E_NOT_FOUND. */
REALM_IMPORT(logits_top_k) int32_t realm_logits_top_k(realm_handle session, const float *hidden, uint32_t n_tokens,
                                                      uint32_t n_embd, const realm_bias *bias, uint32_t n_bias,
                                                      uint32_t k, int32_t *ids, float *values, uint32_t *n_out);

#define REALM_DECODE_ALL_LOGITS 1   /* logits for every token [T, V], not only the last [V] */

/* Fused: append ids[T] through every layer without leaving the host (positions n_tokens ..
 * n_tokens + T - 1) -> logits of the last token [V] (logits_cap >= V), or [T, V].
 * Returns: REALM_OK (n_tokens grew by T); REALM_E_RANGE (token id, n_tokens + T > n_ctx);
 * REALM_E_ARG (T = 0, unknown flags); REALM_E_BUFFER_TOO_SMALL; REALM_E_NOT_FOUND; REALM_E_LIMIT. */
REALM_IMPORT(decode) int32_t realm_decode(realm_handle session, const int32_t *ids, uint32_t n_tokens,
                                          uint32_t flags, float *logits, uint32_t logits_cap);

/* Fused decode with compact output: as realm_decode, then as realm_logits_top_k on the last
 * token.  Returns as those two. */
REALM_IMPORT(decode_top_k) int32_t realm_decode_top_k(realm_handle session, const int32_t *ids, uint32_t n_tokens,
                                                      const realm_bias *bias, uint32_t n_bias, uint32_t k,
                                                      int32_t *top_ids, float *top_values, uint32_t *n_out);

/* ==========================================================================================
 * THE GENERATOR CONVENTION (what `realm guest` and realm_embed.wasm.Tenant.generate call)
 * ==========================================================================================
 * A guest that generates text exports:
 *   uint32_t realm_guest_input(uint32_t n_bytes);
 *       A buffer of at least n_bytes in guest memory for the host to write the input into
 *       (0: too big).  The input is the prompt followed by an "extra" string whose meaning is
 *       the guest's (a stop string, a word to ban, ...).
 *   int32_t realm_guest_generate(uint32_t prompt_len, uint32_t extra_len, uint32_t max_tokens,
 *                                uint32_t flags, float temperature, uint32_t top_k, float top_p,
 *                                uint64_t seed);
 *       Generate, streaming text with realm_emit.  Returns the number of generated tokens (>= 0)
 *       or a REALM_E_* code.
 *   uint32_t realm_guest_result(void);
 *       A pointer to a realm_guest_result describing the last generate call.
 */
#define REALM_GUEST_RAW         1   /* the prompt is used as is: no chat template */
#define REALM_GUEST_FUSED       2   /* realm_decode instead of the layer loop */
#define REALM_GUEST_FULL_LOGITS 4   /* sample on all V logits instead of the host's top-k */

typedef struct realm_guest_result {
    int32_t  finish_reason;   /* REALM_FINISH_*, 0 if generation failed */
    uint32_t n_prompt;        /* prompt tokens */
    uint32_t n_generated;     /* generated tokens (an end-of-turn token is not counted) */
    uint32_t ids;             /* pointer to n_generated int32_t token ids */
} realm_guest_result;         /* 16 bytes */

#ifdef __cplusplus
}
#endif

#endif /* REALM_GUEST_H */
