/*
 * guest_util.h: the little a guest needs without a libc.  Include it in exactly ONE source file
 * of a guest (it defines memcpy, memset and memmove, which clang may call).
 *
 *   - a bump allocator over the guest's own linear memory (grown with memory.grow)
 *   - byte-string helpers, a float exp, and a seeded PRNG (splitmix64 + xorshift64*)
 *   - candidate sampling: temperature -> top-k -> top-p over logits sorted descending
 *
 * Build with -mbulk-memory so that copies and fills become memory.copy / memory.fill.
 */
#ifndef REALM_GUEST_UTIL_H
#define REALM_GUEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "realm_guest.h"

#define G_FN static __attribute__((unused))

void *memcpy(void *dst, const void *src, size_t n) { return __builtin_memcpy(dst, src, n); }
void *memmove(void *dst, const void *src, size_t n) { return __builtin_memmove(dst, src, n); }
void *memset(void *dst, int c, size_t n) { return __builtin_memset(dst, c, n); }

/* ---- bump allocator: g_alloc(n) never frees; g_alloc_reset() frees everything -------------- */

extern unsigned char __heap_base;
static uintptr_t g_heap_top;

G_FN void g_alloc_reset(void) { g_heap_top = (uintptr_t)&__heap_base; }

/* n bytes, 16-aligned, zeroed; 0 when memory cannot grow (the host's memory limit). */
G_FN void *g_alloc(uint32_t n) {
    if (!g_heap_top) g_alloc_reset();
    uintptr_t p = (g_heap_top + 15) & ~(uintptr_t)15;
    uint64_t end = (uint64_t)p + n;
    uint64_t have = (uint64_t)__builtin_wasm_memory_size(0) << 16;
    if (end > have) {
        uint64_t pages = (end - have + 65535) >> 16;
        if (__builtin_wasm_memory_grow(0, (uintptr_t)pages) == (size_t)-1) return 0;
    }
    g_heap_top = (uintptr_t)end;
    memset((void *)p, 0, n);
    return (void *)p;
}

/* ---- bytes ---------------------------------------------------------------------------------- */

G_FN uint32_t g_strlen(const char *s) { uint32_t n = 0; while (s[n]) n++; return n; }

/* The first index of needle[nn] in hay[hn], or -1. */
G_FN int32_t g_find(const char *hay, uint32_t hn, const char *needle, uint32_t nn) {
    if (nn == 0) return 0;
    for (uint32_t i = 0; i + nn <= hn; i++) {
        uint32_t j = 0;
        while (j < nn && hay[i + j] == needle[j]) j++;
        if (j == nn) return (int32_t)i;
    }
    return -1;
}

/* The length of the longest suffix of text[tn] that is a proper prefix of stop[sn]. */
G_FN uint32_t g_stop_prefix(const char *text, uint32_t tn, const char *stop, uint32_t sn) {
    uint32_t n = sn ? sn - 1 : 0;
    if (n > tn) n = tn;
    for (; n > 0; n--) {
        uint32_t j = 0;
        while (j < n && text[tn - n + j] == stop[j]) j++;
        if (j == n) return n;
    }
    return 0;
}

/* Log the host's message for the last failed import (best effort). */
G_FN void g_log_last_error(const char *what) {
    char msg[512];
    uint32_t size = 0;
    int32_t rc = realm_last_error(msg, sizeof msg, &size);
    if (rc != REALM_OK) size = 1, msg[0] = 0;
    char line[640];
    uint32_t n = 0, w = g_strlen(what);
    for (uint32_t i = 0; i < w && n < 100; i++) line[n++] = what[i];
    line[n++] = ':';
    line[n++] = ' ';
    for (uint32_t i = 0; i + 1 < size && n < sizeof line; i++) line[n++] = msg[i];
    realm_log(REALM_LOG_ERROR, line, n);
}

/* ---- math ------------------------------------------------------------------------------------ */

/* e^x for x <= 0 (what softmax needs after subtracting the max), relative error ~1e-7. */
G_FN float g_expf(float x) {
    if (x < -87.0f) return 0.0f;
    float k = __builtin_floorf(x * 1.44269504f + 0.5f);     /* x = k ln2 + r, |r| <= ln2 / 2 */
    float r = x - k * 0.693145752f - k * 1.42860677e-6f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (0.166666672f + r * (0.0416666754f
              + r * (0.00833333470f + r * 0.00138888892f)))));
    union { uint32_t u; float f; } s = { (uint32_t)((int32_t)k + 127) << 23 };
    return p * s.f;
}

/* ---- PRNG: xorshift64* seeded through splitmix64 (so seed 0 is fine) ----------------------- */

typedef struct { uint64_t s; } g_rng;

G_FN void g_rng_seed(g_rng *r, uint64_t seed) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    r->s = (z ^ (z >> 31)) | 1;
}

G_FN uint64_t g_rng_next(g_rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1Dull;
}

/* Uniform in [0, 1). */
G_FN float g_rng_float(g_rng *r) { return (float)(g_rng_next(r) >> 40) * (1.0f / 16777216.0f); }

/* ---- sampling over candidates ids[n], values[n] sorted descending (ties: lower id first) ------ */

typedef struct {
    float    temperature;   /* 0 = greedy */
    uint32_t top_k;         /* 0 = off */
    float    top_p;         /* 1 = off */
} g_sampler;

/* probs[] is scratch of n floats. */
G_FN int32_t g_sample(const g_sampler *cfg, g_rng *rng, const int32_t *ids, const float *values,
                        uint32_t n, float *probs) {
    if (n == 0) return -1;
    if (cfg->temperature <= 0.0f) return ids[0];
    if (cfg->top_k && cfg->top_k < n) n = cfg->top_k;
    float sum = 0.0f;
    for (uint32_t i = 0; i < n; i++) sum += probs[i] = g_expf((values[i] - values[0]) / cfg->temperature);
    uint32_t keep = n;
    if (cfg->top_p < 1.0f) {   /* drop a token once the tokens before it hold top_p of the mass */
        float before = 0.0f;
        for (uint32_t i = 0; i < n; i++) {
            if (i > 0 && before >= cfg->top_p * sum) { keep = i; break; }
            before += probs[i];
        }
        sum = 0.0f;
        for (uint32_t i = 0; i < keep; i++) sum += probs[i];
    }
    float u = g_rng_float(rng) * sum;
    for (uint32_t i = 0; i < keep; i++) {
        if (u < probs[i]) return ids[i];
        u -= probs[i];
    }
    return ids[keep - 1];
}

/* The k largest of logits[V] into ids[k]/values[k], descending, ties to the lower id; returns k. */
G_FN uint32_t g_top_k(const float *logits, uint32_t V, uint32_t k, int32_t *ids, float *values) {
    uint32_t n = 0;
    if (k > V) k = V;
    for (uint32_t v = 0; v < V; v++) {
        float x = logits[v];
        if (n == k && !(x > values[n - 1])) continue;
        uint32_t i = n < k ? n++ : k - 1;
        while (i > 0 && x > values[i - 1]) { values[i] = values[i - 1]; ids[i] = ids[i - 1]; i--; }
        values[i] = x;
        ids[i] = (int32_t)v;
    }
    return n;
}

#endif /* REALM_GUEST_UTIL_H */
