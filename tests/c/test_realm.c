/*
 * test_realm.c: the C ABI from a real non-Python host (compiled against realm.h, linked -lrealm).
 *
 *   test_realm                          the main calls and the error paths; prints
 *                                       "N passed, M failed" and exits 1 on any failure
 *   test_realm --expect-init-failure    start-up must fail (REALM_PYTHON points at a Python
 *                                       without the package): every call returns REALM_E_INIT
 *                                       with the reason, outputs stay untouched, no exit
 *
 * Run by tests/test_capi_c.py (make test).
 */
#define _POSIX_C_SOURCE 200809L            /* sigaction */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "realm.h"

static int passed, failed;

#define CHECK(cond)                                                                             \
    do {                                                                                        \
        if (cond) {                                                                             \
            passed++;                                                                           \
        } else {                                                                                \
            failed++;                                                                           \
            fprintf(stderr, "FAIL %s:%d: %s\n    last error: %s\n", __FILE__, __LINE__, #cond,  \
                    realm_last_error());                                                        \
        }                                                                                       \
    } while (0)

#define OK(call) CHECK((call) == REALM_OK)

static void host_handler(int sig) { (void)sig; }

static int starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

/* ---- start-up failure -------------------------------------------------------------------- */

static int expect_init_failure(void)
{
    realm_error err = REALM_ERROR_INIT;
    uint64_t id = 77;
    uint32_t n32 = 77;
    size_t n = 77;
    float buf[4] = {1, 2, 3, 4};
    int32_t tok = 77;
    realm_model_info info = REALM_MODEL_INFO_INIT;

    /* what never starts Python still works */
    CHECK(strcmp(realm_version(), REALM_VERSION) == 0);
    CHECK(realm_abi_version() == REALM_ABI_VERSION);
    CHECK(strcmp(realm_errstr(REALM_E_INIT), "the runtime could not start") == 0);

    CHECK(realm_init(&err) == REALM_E_INIT);
    CHECK(err.code == REALM_E_INIT);
    CHECK(starts_with(err.message, "realm_init: the runtime failed to start: "));
    printf("reason: %s\n", err.message);
    /* every function, again and again: the same code, never 0 */
    for (int round = 0; round < 2; round++) {
        CHECK(realm_init(NULL) == REALM_E_INIT);
        CHECK(realm_model_store_default(0, &id, &err) == REALM_E_INIT);
        CHECK(starts_with(err.message, "realm_model_store_default: the runtime failed to start"));
        CHECK(realm_model_store("GGUF", 4, 0, &id, NULL) == REALM_E_INIT);
        CHECK(realm_model_store_file("/x.gguf", 0, &id, NULL) == REALM_E_INIT);
        CHECK(realm_model_info_get(1, &info, NULL) == REALM_E_INIT);
        CHECK(realm_model_remove(0, NULL) == REALM_E_INIT);
        CHECK(realm_session_create(1, 0, &id, NULL) == REALM_E_INIT);
        CHECK(realm_session_free(0, NULL) == REALM_E_INIT);
        CHECK(realm_session_n_tokens(1, &n32, NULL) == REALM_E_INIT);
        CHECK(realm_tokenize(1, "hi", 2, REALM_TOKENIZE_DEFAULT, NULL, 0, &n, NULL) == REALM_E_INIT);
        CHECK(realm_decode(1, &tok, 1, 0, buf, 4, NULL) == REALM_E_INIT);
        CHECK(realm_sampler_create(NULL, &id, NULL) == REALM_E_INIT);
        CHECK(realm_top_k(buf, 4, 2, buf, &tok, &n, NULL) == REALM_E_INIT);
        CHECK(realm_generate(1, "hi", 2, NULL, NULL, &err) == REALM_E_INIT);
        CHECK(strstr(realm_last_error(), "failed to start") != NULL);
    }
    CHECK(id == 77 && n32 == 77 && n == 77 && tok == 77 && buf[0] == 1 && info.n_layer == 0);
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}

/* ---- generation callback ----------------------------------------------------------------- */

struct collected {
    char text[4096];
    size_t len;
    int n_tokens;
    int stop_after;
    uint64_t model;
    int nested_ok;
};

static int32_t on_token(void *user_data, int32_t token_id, const char *piece, size_t piece_len)
{
    struct collected *c = user_data;
    char tmp[64];
    size_t size = 0;
    if (c->len + piece_len < sizeof c->text) {
        memcpy(c->text + c->len, piece, piece_len);
        c->len += piece_len;
        c->text[c->len] = '\0';
    }
    if (token_id >= 0) {
        c->n_tokens++;
        /* a realm call from inside the callback */
        if (realm_token_piece(c->model, token_id, tmp, sizeof tmp, &size, NULL) == REALM_OK)
            c->nested_ok++;
    }
    return c->stop_after > 0 && c->n_tokens >= c->stop_after;
}

/* ---- the main calls ------------------------------------------------------------------------ */

static size_t argmax(const float *x, size_t n)
{
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

int main(int argc, char **argv)
{
    realm_error err = REALM_ERROR_INIT;
    realm_model_info info = REALM_MODEL_INFO_INIT;
    uint64_t model = 0, session = 0, other = 0, sampler = 0;
    size_t n = 0, size = 0;
    uint32_t n32 = 0;
    int32_t ids[64];
    const char *prompt = "The capital of France is";

    if (argc > 1 && strcmp(argv[1], "--expect-init-failure") == 0)
        return expect_init_failure();

    /* lifecycle and versions */
    CHECK(realm_abi_version() == REALM_ABI_VERSION);
    CHECK(realm_version_number() == REALM_VERSION_NUMBER);
    CHECK(strcmp(realm_version(), REALM_VERSION) == 0);
    CHECK(strcmp(realm_errstr(REALM_E_NOT_FOUND), "not found") == 0);
    CHECK(strcmp(realm_errstr(12345), "unknown error code") == 0);
    /* the host's signal handlers survive start-up (Python installs none: Go needs that) */
    {
        struct sigaction mine, got;
        memset(&mine, 0, sizeof mine);
        mine.sa_handler = host_handler;
        sigaction(SIGINT, &mine, NULL);
        sigaction(SIGSEGV, &mine, NULL);
        OK(realm_init(&err));
        sigaction(SIGINT, NULL, &got);
        CHECK(got.sa_handler == host_handler);
        sigaction(SIGSEGV, NULL, &got);
        CHECK(got.sa_handler == host_handler);
    }
    CHECK(err.code == REALM_OK && err.message[0] == '\0');
    OK(realm_init(NULL));

    /* models */
    OK(realm_model_store_default(0, &model, &err));
    CHECK(model != 0);
    OK(realm_model_info_get(model, &info, &err));
    CHECK(info.n_layer == 30 && info.n_embd == 576 && info.n_vocab == 49152 && info.has_chat_template == 1);
    OK(realm_model_info_string(model, REALM_MODEL_ARCHITECTURE, NULL, 0, &size, NULL));
    CHECK(size == 6);
    {
        char arch[6], small[3] = {'#', '#', '#'};
        OK(realm_model_info_string(model, REALM_MODEL_ARCHITECTURE, arch, sizeof arch, &size, NULL));
        CHECK(strcmp(arch, "llama") == 0);
        size = 0;
        CHECK(realm_model_info_string(model, REALM_MODEL_ARCHITECTURE, small, 2, &size, &err) ==
              REALM_E_BUFFER_TOO_SMALL);
        CHECK(size == 6 && small[0] == '#' && small[1] == '#' && small[2] == '#');
        CHECK(err.code == REALM_E_BUFFER_TOO_SMALL && strstr(err.message, "6 needed") != NULL);
    }
    {
        char name[64];
        realm_tensor_info ti = REALM_TENSOR_INFO_INIT;
        float *w;
        OK(realm_model_tensor_name(model, 0, name, sizeof name, &size, NULL));
        CHECK(strcmp(name, "token_embd.weight") == 0);
        OK(realm_tensor_info_get(model, name, &ti, NULL));
        CHECK(ti.n_dims == 2 && ti.shape[0] == 49152 && ti.shape[1] == 576 && ti.n_elements == 49152u * 576u);
        OK(realm_tensor_get_f32(model, "output_norm.weight", NULL, 0, &n, NULL));
        CHECK(n == 576);
        w = malloc(n * sizeof *w);
        OK(realm_tensor_get_f32(model, "output_norm.weight", w, n, &n, NULL));
        CHECK(isfinite(w[0]) && w[0] != 0.0f);
        free(w);
        CHECK(realm_tensor_info_get(model, "nope", &ti, &err) == REALM_E_NOT_FOUND);
        CHECK(strstr(err.message, "'nope'") != NULL);
    }

    /* text */
    OK(realm_tokenize(model, prompt, strlen(prompt), REALM_TOKENIZE_DEFAULT, NULL, 0, &n, NULL));
    CHECK(n == 5);
    OK(realm_tokenize(model, prompt, strlen(prompt), REALM_TOKENIZE_DEFAULT, ids, 64, &n, NULL));
    CHECK(ids[0] == 504 && ids[4] == 314);
    {
        char text[64];
        OK(realm_detokenize(model, ids, n, text, sizeof text, &size, NULL));
        CHECK(strcmp(text, prompt) == 0 && size == strlen(prompt) + 1);
    }

    /* compute: decode, then the layer loop on another session, same answer */
    OK(realm_session_create(model, 0, &session, NULL));
    {
        size_t T = n, D = info.n_embd, V = info.n_vocab;
        float *logits = malloc(V * sizeof *logits), *h = malloc(T * D * sizeof *h);
        float *all = malloc(T * V * sizeof *all);
        char piece[32];
        OK(realm_decode(session, ids, T, 0, logits, V, NULL));
        OK(realm_session_n_tokens(session, &n32, NULL));
        CHECK(n32 == T);
        OK(realm_token_piece(model, (int32_t)argmax(logits, V), piece, sizeof piece, &size, NULL));
        CHECK(strcmp(piece, " Paris") == 0);

        OK(realm_session_create(model, 0, &other, NULL));
        OK(realm_embed_tokens(other, ids, T, h, T * D, NULL));
        for (uint32_t layer = 0; layer < info.n_layer; layer++)
            OK(realm_forward_layer(other, layer, 0, h, T, D, h, T * D, NULL));
        OK(realm_compute_logits(other, h, T, D, all, T * V, NULL));
        CHECK(argmax(all + (T - 1) * V, V) == argmax(logits, V));
        CHECK(fabsf(all[(T - 1) * V + argmax(logits, V)] - logits[argmax(logits, V)]) < 1e-3f);

        /* error paths: each names the argument and the value, changes nothing */
        CHECK(realm_forward_layer(other, info.n_layer, 0, h, T, D, h, T * D, &err) == REALM_E_RANGE);
        CHECK(strstr(err.message, "realm_forward_layer: layer 30 out of range") == err.message);
        CHECK(realm_forward_layer(other, 0, 0, h, T, D + 1, h, T * D, &err) == REALM_E_ARG);
        CHECK(strstr(err.message, "n_embd is 577") != NULL);
        CHECK(realm_forward_layer(other, 0, 0, NULL, T, D, h, T * D, &err) == REALM_E_ARG);
        CHECK(strcmp(err.message, "realm_forward_layer: hidden is NULL but n_tokens is 5") == 0);
        CHECK(realm_decode(session, ids, T, 0, logits, V - 1, &err) == REALM_E_BUFFER_TOO_SMALL);
        ids[0] = (int32_t)V;
        CHECK(realm_decode(session, ids, T, 0, logits, V, &err) == REALM_E_RANGE);
        ids[0] = 504;
        OK(realm_session_n_tokens(session, &n32, NULL));
        CHECK(n32 == T);
        CHECK(realm_session_truncate(session, 99, &err) == REALM_E_RANGE);

        /* sampling: greedy sampler = argmax; top-k */
        {
            realm_sampler_params sp = REALM_SAMPLER_PARAMS_INIT;
            int32_t tok = -1, top[3];
            float vals[3];
            OK(realm_sampler_create(&sp, &sampler, NULL));
            OK(realm_sampler_sample(sampler, logits, V, ids, T, &tok, NULL));
            CHECK((size_t)tok == argmax(logits, V));
            OK(realm_top_k(logits, V, 3, vals, top, &n, NULL));
            CHECK(n == 3 && top[0] == tok && vals[0] >= vals[1] && vals[1] >= vals[2]);
            OK(realm_sampler_free(sampler, NULL));
            CHECK(realm_sampler_free(sampler, &err) == REALM_E_NOT_FOUND);
            sp.top_p = 0.0;
            CHECK(realm_sampler_create(&sp, &sampler, &err) == REALM_E_ARG);
            CHECK(strstr(err.message, "params->top_p=0.0") != NULL);
        }
        free(logits);
        free(h);
        free(all);
    }

    /* chat + generation through the callback, then a cancel */
    {
        const char *roles[] = {"user"}, *contents[] = {"What is the capital of France?"};
        struct collected c;
        realm_generate_params gp = REALM_GENERATE_PARAMS_INIT;
        realm_generate_result res = REALM_GENERATE_RESULT_INIT;
        char *chat;
        OK(realm_chat_template(model, roles, contents, 1, REALM_CHAT_ADD_GENERATION_PROMPT, NULL, 0, &size, NULL));
        chat = malloc(size);
        OK(realm_chat_template(model, roles, contents, 1, REALM_CHAT_ADD_GENERATION_PROMPT, chat, size, &size, NULL));
        CHECK(strstr(chat, "<|im_start|>assistant\n") != NULL);

        memset(&c, 0, sizeof c);
        c.model = model;
        gp.max_tokens = 16;
        gp.on_token = on_token;
        gp.user_data = &c;
        OK(realm_session_reset(session, NULL));
        OK(realm_generate(session, chat, strlen(chat), &gp, &res, &err));
        printf("answer: %s\n", c.text);
        CHECK(strstr(c.text, "Paris") != NULL);
        CHECK(res.finish_reason == REALM_FINISH_EOS && res.n_generated == (uint32_t)c.n_tokens);
        CHECK(c.nested_ok == c.n_tokens);

        memset(&c, 0, sizeof c);
        c.model = model;
        c.stop_after = 2;
        OK(realm_session_reset(session, NULL));
        OK(realm_generate(session, chat, strlen(chat), &gp, &res, NULL));
        CHECK(res.finish_reason == REALM_FINISH_CANCELLED && c.n_tokens == 2);
        free(chat);
    }

    /* lifetimes: busy model, freed session, stale ids */
    CHECK(realm_model_remove(model, &err) == REALM_E_BUSY);
    OK(realm_session_free(session, NULL));
    OK(realm_session_free(other, NULL));
    CHECK(realm_session_free(session, &err) == REALM_E_NOT_FOUND);
    CHECK(realm_session_reset(session, &err) == REALM_E_NOT_FOUND);
    OK(realm_session_free(0, NULL));
    OK(realm_model_remove(model, NULL));
    CHECK(realm_model_info_get(model, &info, &err) == REALM_E_NOT_FOUND);
    CHECK(realm_session_create(model, 0, &session, &err) == REALM_E_NOT_FOUND);
    CHECK(realm_model_store_file("/nonexistent.gguf", 0, &model, &err) == REALM_E_IO);
    CHECK(realm_model_store("GGUF-but-not-really", 19, 0, &model, &err) == REALM_E_FORMAT);
    CHECK(realm_model_store_default(0, NULL, &err) == REALM_E_ARG);
    CHECK(strcmp(err.message, "realm_model_store_default: model_out is NULL") == 0);
    CHECK(strcmp(realm_last_error(), err.message) == 0);
    OK(realm_init(&err));
    CHECK(realm_last_error()[0] == '\0');

    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
