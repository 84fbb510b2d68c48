/*
 * bench_capi.c: what the C ABI costs a C host (driven by bench/bench_capi.py).
 *
 *   bench_capi N_CALLS N_TOKENS [exact|fast]   prints one JSON object:
 *     init_s           realm_init (Python start + import torch)
 *     cnoop_us         realm_abi_version: an export that stays in C (the FFI floor)
 *     noop_us          realm_session_n_tokens: through the C wrapper into Python and back
 *     decode_tok_s     greedy realm_decode loop, one token per call, argmax in C, on a session
 *                      of that precision (realm_session_create_ex; default exact)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "realm.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

#define CHECK(call)                                                                             \
    do {                                                                                        \
        if ((call) != REALM_OK) {                                                               \
            fprintf(stderr, "bench_capi: %s\n", realm_last_error());                            \
            return 1;                                                                           \
        }                                                                                       \
    } while (0)

int main(int argc, char **argv)
{
    long n_calls = argc > 1 ? atol(argv[1]) : 100000;
    int n_tokens = argc > 2 ? atoi(argv[2]) : 32;
    const char *precision = argc > 3 ? argv[3] : "exact";
    const char *prompt = "The capital of France is";
    realm_session_params params = REALM_SESSION_PARAMS_INIT;
    realm_model_info info = REALM_MODEL_INFO_INIT;
    uint64_t model, session;
    int32_t ids[64], tok;
    size_t T;
    uint32_t n32;
    volatile int32_t sink = 0;
    double t0, init_s, cnoop, noop, tok_s;

    t0 = now();
    CHECK(realm_init(NULL));
    init_s = now() - t0;
    CHECK(realm_model_store_default(0, &model, NULL));
    CHECK(realm_model_info_get(model, &info, NULL));
    if (strcmp(precision, "exact") != 0 && strcmp(precision, "fast") != 0) {
        fprintf(stderr, "bench_capi: precision must be exact or fast, got '%s'\n", precision);
        return 2;
    }
    /* fast mode decodes ~10x faster, so the host's per-token cost weighs ~10x more there */
    params.precision = strcmp(precision, "fast") == 0 ? REALM_PRECISION_FAST : REALM_PRECISION_EXACT;
    CHECK(realm_session_create_ex(model, &params, &session, NULL));

    t0 = now();
    for (long i = 0; i < n_calls * 10; i++)
        sink += realm_abi_version();
    cnoop = (now() - t0) / (n_calls * 10) * 1e6;

    for (long i = 0; i < 1000; i++)
        CHECK(realm_session_n_tokens(session, &n32, NULL));
    t0 = now();
    for (long i = 0; i < n_calls; i++)
        CHECK(realm_session_n_tokens(session, &n32, NULL));
    noop = (now() - t0) / n_calls * 1e6;

    float *logits = malloc(info.n_vocab * sizeof *logits);
    CHECK(realm_tokenize(model, prompt, strlen(prompt), REALM_TOKENIZE_DEFAULT, ids, 64, &T, NULL));
    CHECK(realm_decode(session, ids, T, 0, logits, info.n_vocab, NULL));       /* prefill: not timed */
    t0 = now();
    for (int step = 0; step < n_tokens; step++) {
        tok = 0;
        for (uint32_t v = 1; v < info.n_vocab; v++)
            if (logits[v] > logits[tok])
                tok = (int32_t)v;
        CHECK(realm_decode(session, &tok, 1, 0, logits, info.n_vocab, NULL));
    }
    tok_s = n_tokens / (now() - t0);
    printf("{\"precision\": \"%s\", \"init_s\": %.3f, \"cnoop_us\": %.4f, \"noop_us\": %.3f, "
           "\"decode_tok_s\": %.2f, \"last_token\": %d}\n", precision, init_s, cnoop, noop, tok_s, tok);
    free(logits);
    realm_session_free(session, NULL);
    realm_model_remove(model, NULL);
    return 0;
}
