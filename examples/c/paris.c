/*
 * paris.c: ask the embedded default model a question through the C ABI, answer streamed.
 *
 *   cc paris.c $(python -m realm_embed config --cflags --libs) -o paris && ./paris
 *   ./paris "What is the capital of Italy?"
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "realm.h"

/* Called for each generated token: print its text as it comes. */
static int32_t print_piece(void *user_data, int32_t token_id, const char *piece, size_t piece_len)
{
    (void)user_data;
    (void)token_id;
    fwrite(piece, 1, piece_len, stdout);
    fflush(stdout);
    return 0;                                   /* 0: go on; anything else stops */
}

int main(int argc, char **argv)
{
    const char *roles[] = {"user"};
    const char *contents[] = {argc > 1 ? argv[1] : "What is the capital of France?"};
    realm_error err = REALM_ERROR_INIT;
    realm_generate_params params = REALM_GENERATE_PARAMS_INIT;     /* sampler NULL: greedy */
    realm_generate_result result = REALM_GENERATE_RESULT_INIT;
    uint64_t model = 0, session = 0;
    size_t size = 0;
    char *prompt = NULL;
    int status = 1;

    if (realm_init(&err) != REALM_OK)                               /* starts Python: ~1 s */
        goto fail;
    if (realm_model_store_default(0, &model, &err) != REALM_OK)
        goto fail;
    /* the chat template, by the two-call protocol: ask the size, then fill */
    if (realm_chat_template(model, roles, contents, 1, REALM_CHAT_ADD_GENERATION_PROMPT, NULL, 0, &size, &err))
        goto fail;
    prompt = malloc(size);
    if (realm_chat_template(model, roles, contents, 1, REALM_CHAT_ADD_GENERATION_PROMPT, prompt, size, &size, &err))
        goto fail;
    if (realm_session_create(model, 0, &session, &err) != REALM_OK)
        goto fail;
    params.max_tokens = 64;
    params.on_token = print_piece;
    if (realm_generate(session, prompt, strlen(prompt), &params, &result, &err) != REALM_OK)
        goto fail;
    printf("\n");
    status = 0;
    goto done;
fail:
    fprintf(stderr, "paris: %s (%s)\n", err.message, realm_errstr(err.code));
done:
    free(prompt);
    realm_session_free(session, NULL);                              /* 0 is a no-op */
    realm_model_remove(model, NULL);
    return status;
}
