/*
 * layers.c: the transformer driven layer by layer through the C ABI, greedy decoding by hand.
 *
 *   cc layers.c $(python -m realm_embed config --cflags --libs) -o layers && ./layers
 *
 * Each step runs  embed_tokens -> forward_layer for every layer -> compute_logits  on the new
 * tokens only (the session's KV cache holds the earlier ones), then takes the argmax.  Between
 * the calls the hidden state [T, D] is a plain float array in this program: the place to steer,
 * skip layers or exit early.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "realm.h"

#define CHECK(call)                                                                             \
    do {                                                                                        \
        if ((call) != REALM_OK) {                                                               \
            fprintf(stderr, "layers: %s\n", realm_last_error());                                \
            return 1;                                                                           \
        }                                                                                       \
    } while (0)

int main(int argc, char **argv)
{
    const char *prompt = argc > 1 ? argv[1] : "The capital of France is";
    const int n_new = 6;
    realm_model_info info = REALM_MODEL_INFO_INIT;
    uint64_t model, session;
    int32_t ids[256];
    size_t T = 0;
    uint32_t pos = 0;

    CHECK(realm_model_store_default(0, &model, NULL));
    CHECK(realm_model_info_get(model, &info, NULL));
    CHECK(realm_session_create(model, 0, &session, NULL));
    CHECK(realm_tokenize(model, prompt, strlen(prompt), REALM_TOKENIZE_DEFAULT, ids, 256, &T, NULL));
    printf("%u layers, D = %u, V = %u; prompt of %zu tokens\n%s", info.n_layer, info.n_embd, info.n_vocab, T, prompt);

    size_t D = info.n_embd, V = info.n_vocab;
    float *hidden = malloc(T * D * sizeof *hidden);      /* [T, D]; T only shrinks after the prompt */
    float *logits = malloc(T * V * sizeof *logits);      /* [T, V] */
    for (int step = 0; step < n_new; step++) {
        CHECK(realm_embed_tokens(session, ids, T, hidden, T * D, NULL));
        for (uint32_t layer = 0; layer < info.n_layer; layer++)      /* in place: out == hidden */
            CHECK(realm_forward_layer(session, layer, pos, hidden, T, D, hidden, T * D, NULL));
        CHECK(realm_compute_logits(session, hidden, T, D, logits, T * V, NULL));

        const float *last = logits + (T - 1) * V;        /* the next token follows the last row */
        int32_t next = 0;
        for (size_t v = 1; v < V; v++)
            if (last[v] > last[next])
                next = (int32_t)v;
        char piece[64];
        size_t size;
        CHECK(realm_token_piece(model, next, piece, sizeof piece, &size, NULL));
        printf("%s", piece);
        fflush(stdout);

        pos += (uint32_t)T;                              /* the cache now holds pos tokens */
        ids[0] = next;                                   /* feed back only the new token */
        T = 1;
    }
    printf("\n");
    free(hidden);
    free(logits);
    CHECK(realm_session_free(session, NULL));
    CHECK(realm_model_remove(model, NULL));
    return 0;
}
