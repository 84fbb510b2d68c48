/*
 * ban_word.c: a tiny guest with its own decoding rule.  It answers greedily but never lets the
 * model start the banned word (the "extra" input, "Paris" by default): every token that begins
 * the word, with or without a leading space and capitalised or not, gets a bias of -inf, applied
 * host-side before the top-k.  Fused decode; same exports as generate.c.
 */
#include "guest_util.h"

#define MAX_BANNED 8
#define MAX_EOT 16

static char *g_input;
static uint32_t g_input_cap;
static realm_guest_result g_result;

__attribute__((export_name("realm_guest_input"))) uint32_t realm_guest_input(uint32_t n_bytes) {
    g_alloc_reset();
    g_input = g_alloc(n_bytes ? n_bytes : 1);
    g_input_cap = g_input ? n_bytes : 0;
    return (uint32_t)(uintptr_t)g_input;
}

__attribute__((export_name("realm_guest_result"))) uint32_t realm_guest_result_ptr(void) {
    return (uint32_t)(uintptr_t)&g_result;
}

/* Ban the first token of `word` (as tokenized on its own) unless it is banned already. */
static int32_t ban(realm_handle model, const char *word, uint32_t len, realm_bias *bias, uint32_t *n_bias) {
    int32_t ids[64];
    uint32_t n = 0;
    int32_t rc = realm_tokenize(model, word, len, 0, ids, 64, &n);
    if (rc == REALM_E_BUFFER_TOO_SMALL) rc = REALM_OK;          /* only the first token matters */
    if (rc < 0 || n == 0) return rc;
    for (uint32_t i = 0; i < *n_bias; i++) if (bias[i].id == ids[0]) return REALM_OK;
    if (*n_bias < MAX_BANNED) bias[(*n_bias)++] = (realm_bias){ ids[0], -__builtin_inff() };
    return REALM_OK;
}

__attribute__((export_name("realm_guest_generate")))
int32_t realm_guest_generate(uint32_t prompt_len, uint32_t extra_len, uint32_t max_tokens, uint32_t flags,
                             float temperature, uint32_t top_k, float top_p, uint64_t seed) {
    (void)temperature, (void)top_k, (void)top_p, (void)seed;    /* greedy only */
    realm_guest_result empty = { 0 };
    g_result = empty;
    if (!g_input || (uint64_t)prompt_len + extra_len > g_input_cap || extra_len > 64) return REALM_E_ARG;
    realm_handle model = realm_model(), session = 0;
    if (model < 0) return model;

    /* the banned word in four spellings: Word, " Word", word, " word" */
    char word[66];
    const char *w = extra_len ? g_input + prompt_len : "Paris";
    uint32_t wn = extra_len ? extra_len : 5;
    realm_bias bias[MAX_BANNED];
    uint32_t n_bias = 0;
    int32_t rc = REALM_OK;
    for (int variant = 0; variant < 4 && rc == REALM_OK; variant++) {
        uint32_t o = variant & 1;
        word[0] = ' ';
        memcpy(word + 1, w, wn);
        char c = word[1];
        if (variant & 2) word[1] = (c >= 'a' && c <= 'z') ? c - 32 : (c >= 'A' && c <= 'Z') ? c + 32 : c;
        rc = ban(model, word + 1 - o, wn + o, bias, &n_bias);
    }
    int32_t eot[MAX_EOT];
    uint32_t n_eot = 0, n_ids = 0, size = 0;
    if (rc == REALM_OK) rc = realm_eot_ids(model, eot, MAX_EOT, &n_eot);

    /* the prompt: chat template unless raw, then token ids */
    const char *text = g_input;
    uint32_t text_len = prompt_len;
    static const char user[] = "user";
    realm_chat_message msg = { (uint32_t)(uintptr_t)user, 4, (uint32_t)(uintptr_t)g_input, prompt_len };
    if (rc == REALM_OK && !(flags & REALM_GUEST_RAW)) {
        char *rendered = 0;
        rc = realm_chat_template(model, &msg, 1, REALM_CHAT_ADD_GENERATION_PROMPT, 0, 0, &size);
        if (rc == REALM_OK) rc = (rendered = g_alloc(size)) ? REALM_OK : REALM_E_LIMIT;
        if (rc == REALM_OK) rc = realm_chat_template(model, &msg, 1, REALM_CHAT_ADD_GENERATION_PROMPT, rendered, size, &size);
        text = rendered, text_len = size - 1;
    }
    if (rc == REALM_OK) rc = realm_tokenize(model, text, text_len, REALM_TOKENIZE_DEFAULT, 0, 0, &n_ids);
    int32_t *ids = rc == REALM_OK && n_ids < (1u << 20) && max_tokens < (1u << 20) ? g_alloc((n_ids + max_tokens) * 4) : 0;
    if (rc == REALM_OK && !ids) rc = REALM_E_LIMIT;
    if (rc == REALM_OK) rc = realm_tokenize(model, text, text_len, REALM_TOKENIZE_DEFAULT, ids, n_ids, &n_ids);
    if (rc == REALM_OK) rc = realm_session_create(model, n_ids + max_tokens + 1, &session);
    if (rc < 0) { g_log_last_error("ban_word setup"); return rc; }

    /* greedy, fused, with the bias applied host-side before the top-1 */
    int32_t *out = ids + n_ids, token = 0;
    uint32_t n_top = 0;
    float value;
    char piece[256];
    g_result.n_prompt = n_ids;
    g_result.ids = (uint32_t)(uintptr_t)out;
    rc = realm_decode_top_k(session, ids, n_ids, bias, n_bias, 1, &token, &value, &n_top);
    while (rc == REALM_OK) {
        if (g_result.n_generated >= max_tokens) { g_result.finish_reason = REALM_FINISH_LENGTH; break; }
        int stop = 0;
        for (uint32_t i = 0; i < n_eot; i++) stop |= eot[i] == token;
        if (stop) { g_result.finish_reason = REALM_FINISH_EOS; break; }
        out[g_result.n_generated++] = token;
        if (realm_token_piece(model, token, piece, sizeof piece, &size) == REALM_OK) realm_emit(piece, size - 1);
        rc = realm_decode_top_k(session, &token, 1, bias, n_bias, 1, &token, &value, &n_top);
    }
    if (rc < 0) g_log_last_error("ban_word decode");
    realm_session_free(session);
    return rc < 0 ? rc : (int32_t)g_result.n_generated;
}
