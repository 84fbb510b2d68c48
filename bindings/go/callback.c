// The C side of Generate's token callback: a trampoline with the exact realm_token_callback
// signature that forwards to the exported Go function (a file of its own: a Go file with
// //export may only declare C functions in its preamble).
#include <stdint.h>
#include "realm.h"
#include "_cgo_export.h"

static int32_t realm_go_trampoline(void *user_data, int32_t token_id, const char *piece, size_t piece_len)
{
	return realmGoOnToken((uintptr_t)user_data, token_id, (char *)piece, piece_len);
}

void realm_go_params_set_callback(realm_generate_params *params, uintptr_t handle)
{
	params->on_token = realm_go_trampoline;
	params->user_data = (void *)handle;
}
