/*
 * generate.c: the reference realm guest.  It owns the whole decoding loop:
 *
 *   prompt -> chat template (host) -> tokenize (host) -> prefill -> [sample -> stream -> decode]*
 *
 * Prefill and decode run layer by layer (embed_tokens, forward_layer x L, logits), with the
 * hidden states [T, D] round-tripping through this guest's memory; REALM_GUEST_FUSED switches to
 * the host's fused decode.  Sampling is the guest's own: greedy, or temperature -> top-k -> top-p
 * with its own seeded PRNG, on the host's top-k candidates (at most K_MAX) or, with
 * REALM_GUEST_FULL_LOGITS, on all V logits.  It stops on an end-of-turn token, max_tokens, or
 * the stop string given as the "extra" input, and streams text with realm_emit, holding back
 * bytes that may start the stop string (the host's generate() does the same).
 *
 * Memory for SmolLM2 (D = 576, V = 49152): hidden [64, 576] f32 = 147 KB, logits [V] = 196 KB
 * only with REALM_GUEST_FULL_LOGITS, plus the prompt's token ids and text.
 */
#include "guest_util.h"

#define CHUNK 64      /* prefill tokens per layer call */
#define K_MAX 64      /* candidates asked of the host when sampling with a temperature */
#define MAX_EOT 16

typedef struct {
    uint32_t     flags;
    realm_handle model, session;
    uint32_t     L, D, V, pos;
    int32_t      eot[MAX_EOT];
    uint32_t     n_eot;
    float       *hidden;         /* [CHUNK, D] */
    float       *logits;         /* [V], REALM_GUEST_FULL_LOGITS only */
    int32_t      cand_ids[K_MAX];
    float        cand_values[K_MAX], probs[K_MAX];
    uint32_t     n_cand, k;      /* candidates held, candidates asked for */
} gen;

static char *g_input;
static uint32_t g_input_cap;
static realm_guest_result g_result;

#define CHECK(call, what)                                  \
    do {                                                   \
        int32_t rc_ = (call);                              \
        if (rc_ < 0) { g_log_last_error(what); return rc_; } \
    } while (0)

__attribute__((export_name("realm_guest_input"))) uint32_t realm_guest_input(uint32_t n_bytes) {
    g_alloc_reset();             /* a new request: everything of the previous one goes */
    g_input = g_alloc(n_bytes ? n_bytes : 1);
    g_input_cap = g_input ? n_bytes : 0;
    return (uint32_t)(uintptr_t)g_input;
}

__attribute__((export_name("realm_guest_result"))) uint32_t realm_guest_result_ptr(void) {
    return (uint32_t)(uintptr_t)&g_result;
}

static int32_t model_number(realm_handle model, int32_t key, uint32_t *out) {
    int64_t v = 0;
    CHECK(realm_model_info(model, key, &v), "model_info");
    *out = (uint32_t)v;
    return REALM_OK;
}

/* Append ids[T] to the session; leave the next token's candidates (or all logits) in g. */
static int32_t step(gen *g, const int32_t *ids, uint32_t T) {
    int full = (g->flags & REALM_GUEST_FULL_LOGITS) != 0;
    if (g->flags & REALM_GUEST_FUSED) {
        if (full)
            CHECK(realm_decode(g->session, ids, T, 0, g->logits, g->V), "decode");
        else
            CHECK(realm_decode_top_k(g->session, ids, T, 0, 0, g->k, g->cand_ids, g->cand_values, &g->n_cand),
                  "decode_top_k");
        g->pos += T;
        return REALM_OK;
    }
    uint32_t done = 0, n = 0;
    while (done < T) {
        n = T - done < CHUNK ? T - done : CHUNK;
        CHECK(realm_embed_tokens(g->session, ids + done, n, g->hidden, n * g->D), "embed_tokens");
        for (uint32_t layer = 0; layer < g->L; layer++)
            CHECK(realm_forward_layer(g->session, layer, g->pos, g->hidden, n, g->D, g->hidden, n * g->D),
                  "forward_layer");
        g->pos += n;
        done += n;
    }
    const float *last = g->hidden + (n - 1) * g->D;     /* only the last position is sampled */
    if (full)
        CHECK(realm_compute_logits(g->session, last, 1, g->D, g->logits, g->V), "compute_logits");
    else
        CHECK(realm_logits_top_k(g->session, last, 1, g->D, 0, 0, g->k, g->cand_ids, g->cand_values, &g->n_cand),
              "logits_top_k");
    return REALM_OK;
}

static int32_t next_token(gen *g, const g_sampler *cfg, g_rng *rng) {
    if (!(g->flags & REALM_GUEST_FULL_LOGITS))
        return g_sample(cfg, rng, g->cand_ids, g->cand_values, g->n_cand, g->probs);
    if (cfg->temperature > 0.0f && cfg->top_k == 0 && cfg->top_p >= 1.0f) {
        float max = g->logits[0], sum = 0.0f;     /* the exact distribution over all V */
        for (uint32_t v = 1; v < g->V; v++) if (g->logits[v] > max) max = g->logits[v];
        for (uint32_t v = 0; v < g->V; v++) sum += g_expf((g->logits[v] - max) / cfg->temperature);
        float u = g_rng_float(rng) * sum;
        for (uint32_t v = 0; v < g->V; v++) {
            float p = g_expf((g->logits[v] - max) / cfg->temperature);
            if (u < p) return (int32_t)v;
            u -= p;
        }
        return (int32_t)g->V - 1;
    }
    g->n_cand = g_top_k(g->logits, g->V, g->k, g->cand_ids, g->cand_values);
    return g_sample(cfg, rng, g->cand_ids, g->cand_values, g->n_cand, g->probs);
}

static int is_eot(const gen *g, int32_t token) {
    for (uint32_t i = 0; i < g->n_eot; i++) if (g->eot[i] == token) return 1;
    return 0;
}

/* prompt -> token ids (through the chat template unless REALM_GUEST_RAW); room for `extra` more. */
static int32_t prompt_ids(gen *g, const char *prompt, uint32_t len, uint32_t extra, int32_t **ids, uint32_t *n) {
    const char *text = prompt;
    uint32_t text_len = len, size = 0;
    if (!(g->flags & REALM_GUEST_RAW)) {
        static const char user[] = "user";
        realm_chat_message msg = { (uint32_t)(uintptr_t)user, 4, (uint32_t)(uintptr_t)prompt, len };
        CHECK(realm_chat_template(g->model, &msg, 1, REALM_CHAT_ADD_GENERATION_PROMPT, 0, 0, &size), "chat_template");
        char *rendered = g_alloc(size);
        if (!rendered) return REALM_E_LIMIT;
        CHECK(realm_chat_template(g->model, &msg, 1, REALM_CHAT_ADD_GENERATION_PROMPT, rendered, size, &size),
              "chat_template");
        text = rendered;
        text_len = size - 1;
    }
    CHECK(realm_tokenize(g->model, text, text_len, REALM_TOKENIZE_DEFAULT, 0, 0, n), "tokenize");
    if (*n == 0) return REALM_E_ARG;
    if (*n > (1u << 24)) return REALM_E_LIMIT;
    *ids = g_alloc((*n + extra) * 4);
    if (!*ids) return REALM_E_LIMIT;
    CHECK(realm_tokenize(g->model, text, text_len, REALM_TOKENIZE_DEFAULT, *ids, *n, n), "tokenize");
    return REALM_OK;
}

/* Sample, stream and decode until a stop rule fires.  out[] receives the generated ids. */
static int32_t loop(gen *g, const g_sampler *cfg, g_rng *rng, uint32_t max_tokens, uint32_t n_ctx,
                    const char *stop, uint32_t stop_len, int32_t *out) {
    uint32_t piece_cap = 256, held_len = 0, size = 0;
    char *piece = g_alloc(piece_cap);
    char *held = g_alloc(stop_len + piece_cap);     /* text that may be the start of the stop string */
    if (!piece || !held) return REALM_E_LIMIT;
    for (;;) {
        if (g_result.n_generated >= max_tokens) { g_result.finish_reason = REALM_FINISH_LENGTH; break; }
        int32_t token = next_token(g, cfg, rng);
        if (token < 0) return REALM_E_INTERNAL;
        if (is_eot(g, token)) { g_result.finish_reason = REALM_FINISH_EOS; break; }
        out[g_result.n_generated++] = token;
        int32_t rc = realm_token_piece(g->model, token, piece, piece_cap, &size);
        if (rc == REALM_E_BUFFER_TOO_SMALL) {          /* a long piece: grow both buffers */
            char *p = g_alloc(size), *h = g_alloc(stop_len + size);
            if (!p || !h) return REALM_E_LIMIT;
            memcpy(h, held, held_len);
            piece = p, held = h, piece_cap = size;
            rc = realm_token_piece(g->model, token, piece, piece_cap, &size);
        }
        CHECK(rc, "token_piece");
        memcpy(held + held_len, piece, size - 1);
        held_len += size - 1;
        int32_t cut = stop_len ? g_find(held, held_len, stop, stop_len) : -1;
        if (cut >= 0) {
            if (cut > 0) realm_emit(held, (uint32_t)cut);
            held_len = 0;
            g_result.finish_reason = REALM_FINISH_STOP;
            return REALM_OK;
        }
        uint32_t safe = held_len - g_stop_prefix(held, held_len, stop, stop_len);
        if (safe && realm_emit(held, safe) < 0) { held_len = 0; g_result.finish_reason = REALM_FINISH_CANCELLED; break; }
        memmove(held, held + safe, held_len - safe);
        held_len -= safe;
        if (g->pos + 1 > n_ctx) { g_result.finish_reason = REALM_FINISH_LENGTH; break; }
        CHECK(step(g, &token, 1), "decode step");
    }
    if (held_len) realm_emit(held, held_len);
    return REALM_OK;
}

__attribute__((export_name("realm_guest_generate")))
int32_t realm_guest_generate(uint32_t prompt_len, uint32_t extra_len, uint32_t max_tokens, uint32_t flags,
                             float temperature, uint32_t top_k, float top_p, uint64_t seed) {
    realm_guest_result empty = { 0 };
    g_result = empty;
    if (!g_input || (uint64_t)prompt_len + extra_len > g_input_cap) return REALM_E_ARG;
    if (!(temperature >= 0.0f) || !(top_p > 0.0f && top_p <= 1.0f)) return REALM_E_ARG;
    gen g = { 0 };
    g.flags = flags;
    g.model = realm_model();
    if (g.model < 0) return g.model;
    uint32_t n_ctx_train = 0;
    int32_t rc;
    if ((rc = model_number(g.model, REALM_INFO_N_LAYER, &g.L)) || (rc = model_number(g.model, REALM_INFO_N_EMBD, &g.D)) ||
        (rc = model_number(g.model, REALM_INFO_N_VOCAB, &g.V)) ||
        (rc = model_number(g.model, REALM_INFO_N_CTX_TRAIN, &n_ctx_train)))
        return rc;
    CHECK(realm_eot_ids(g.model, g.eot, MAX_EOT, &g.n_eot), "eot_ids");
    if (max_tokens > n_ctx_train) max_tokens = n_ctx_train;

    int32_t *ids = 0;
    uint32_t n_prompt = 0;
    if ((rc = prompt_ids(&g, g_input, prompt_len, max_tokens, &ids, &n_prompt))) return rc;
    if (n_prompt >= n_ctx_train) return REALM_E_LIMIT;
    uint32_t n_ctx = n_prompt + (max_tokens ? max_tokens : 1);
    if (n_ctx > n_ctx_train) n_ctx = n_ctx_train;

    g_sampler cfg = { temperature, top_k, top_p };
    g_rng rng;
    g_rng_seed(&rng, seed);
    g.k = temperature <= 0.0f ? 1 : (top_k && top_k < K_MAX ? top_k : K_MAX);
    g.hidden = g_alloc(CHUNK * g.D * 4);
    g.logits = (flags & REALM_GUEST_FULL_LOGITS) ? g_alloc(g.V * 4) : 0;
    if (!g.hidden || ((flags & REALM_GUEST_FULL_LOGITS) && !g.logits)) return REALM_E_LIMIT;

    CHECK(realm_session_create(g.model, n_ctx, &g.session), "session_create");
    g_result.n_prompt = n_prompt;
    g_result.ids = (uint32_t)(uintptr_t)(ids + n_prompt);
    rc = step(&g, ids, n_prompt);
    if (rc == REALM_OK)
        rc = loop(&g, &cfg, &rng, max_tokens, n_ctx, g_input + prompt_len, extra_len, ids + n_prompt);
    realm_session_free(g.session);
    if (rc < 0) { g_result.finish_reason = 0; return rc; }
    return (int32_t)g_result.n_generated;
}
