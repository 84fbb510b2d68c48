/* realm-embed CPU decode kernels: one token (T = 1) through a llama block, on the GGUF's own
 * quantized bytes.
 *
 * Why this exists: fast mode on CPU used torch's `_weight_int4pack_mm_for_cpu` with bf16
 * activations.  The kernel itself is fine, but a decode step is ~50 torch dispatches per layer
 * (~6 ms a token for a 30-layer model, about as much as the matmuls), and the int4 repack
 * can't use integer dot products.  llama.cpp does the same work with integer dots and no
 * dispatch layer; to match it we do what it does, for the few block types we serve, and fuse a
 * whole block into one call.  (The ggml Python bindings were not a fit: they would bring a
 * second weight layout and graph runtime next to torch, and the KV cache must stay the
 * session's torch tensors.)
 *
 * Block layouts (ggml / GGUF; a weight row of K elements is K/32 consecutive blocks):
 *   Q4_0  18 bytes: f16 d, u8 qs[16]          w[j] = d·(q[j] - 8)
 *   Q4_1  20 bytes: f16 d, f16 m, u8 qs[16]   w[j] = d·q[j] + m
 *         (both: q[j] = qs[j] & 15 for j < 16, qs[j-16] >> 4 for j >= 16)
 *   Q8_0  34 bytes: f16 d, i8 qs[32]          w[j] = d·qs[j]
 * The activation x is quantized per block of 32 like llama.cpp's Q8_1 (d_x = max|x|/127,
 * q = round(x/d_x)), plus a second int8 for the remainder: l = round(128·(x/d_x - q)), so
 * x ≈ u·x_i with u = d_x/128 and x_i = 128·q + l (~15 bits against the block's max; one int8
 * alone moved fast mode's logits 2.5x more than bf16 activations did).  With s = u·Σx_i ≈ Σx,
 * a block's dot is
 *   Q4_0: d·u·Σq_w·x_i - 8·d·s       Q4_1: d·u·Σq_w·x_i + m·s       Q8_0: d·u·Σq_w·x_i
 * with Σq_w·x_i = 128·Σq_w·q + Σq_w·l in integers: vpdpbusd (AVX-512 VNNI), maddubs (AVX2) or
 * plain C.  Q8_0 weights are signed, so they go in as |w| against x·sign(w) (exact).
 *
 * Variants: rd_kernels.h is compiled three times (AVX-512 VNNI, AVX2+FMA, baseline x86-64) with
 * target pragmas, and the best one the CPU supports is picked at load (rd_set_variant forces one,
 * for tests).  No -march flags: one build runs on any x86-64.
 *
 * Threads: a small persistent pthread pool (workers spin a little, then sleep on a condition
 * variable).  Not OpenMP: torch already brings its own libgomp, and two pools oversubscribe.
 * A layer is one pool job with four barriers; every thread quantizes the activation itself
 * (a few hundred floats) instead of waiting for one thread to do it.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RD_X86 1
#endif

#define RD_EXPORT __attribute__((visibility("default")))

enum { RD_Q4_0 = 2, RD_Q4_1 = 3, RD_Q8_0 = 8 };          /* ggml type ids */
enum { RD_SCALAR = 0, RD_AVX2 = 1, RD_AVX512 = 2 };
enum { RD_OK = 0, RD_E_TYPE = -1, RD_E_SHAPE = -2, RD_E_NOMEM = -3, RD_E_VARIANT = -4 };

/* ---- scalar helpers shared by every variant ---------------------------------------------- */

static inline float rd_bits_f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline float rd_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, em = h & 0x7fff;
    /* em << 13 puts exponent and mantissa in f32 position with the wrong bias; 2^112 fixes the
     * bias for normals and scales subnormals (then f32 subnormals) exactly */
    const float mag = em >= 0x7c00 ? rd_bits_f(0x7f800000 | ((em & 0x3ff) << 13)) : rd_bits_f(em << 13) * 0x1p112f;
    uint32_t u;
    memcpy(&u, &mag, 4);
    return rd_bits_f(u | sign);
}

/* exp for x <= ~88, branch-free so the loops around it vectorize; Cephes polynomial, ~1 ulp */
static inline float rd_expf(float x) {
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    const float t = x * 1.44269504088896341f + 12582912.0f;   /* round(x·log2 e) in the low bits */
    const float n = t - 12582912.0f;
    uint32_t ti;
    memcpy(&ti, &t, 4);
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return p * rd_bits_f((ti - 0x4B400000u + 127u) << 23);
}

/* A quantized activation x [K], per block b of 32: x ≈ u[b]·(128·q + l), q and l int8 (see
 * rd_kernels.h), and s[b] = u[b]·Σ(128·q + l) ≈ Σx, for the weights' constant terms. */
typedef struct { int8_t *q, *l; float *u, *s, *us; } rd_act;     /* us: (u, s) pairs, [2·K/32] */

typedef struct {
    void (*quantize)(const float *x, int K, const rd_act *a);
    void (*gemv)(int type, const uint8_t *W, size_t rb, int K, int r0, int r1, const rd_act *a, float *y);
    void (*rmsnorm)(const float *x, const float *w, int D, float eps, float *h);
    void (*attend)(const float *q, const float *kc, const float *vc, const float *kcur, const float *vcur,
                   int pos, int Dh, float scale, float *sc, float *out);
    void (*swiglu)(const float *g, const float *u, int n, float *a);
} rd_kernels;

/* ---- the three variants ------------------------------------------------------------------ */

#define SFX(name) name##_scalar
#include "rd_kernels.h"
#undef SFX

#ifdef RD_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define SFX(name) name##_avx2
#include "rd_kernels.h"
#undef SFX
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#define SFX(name) name##_avx512
#include "rd_kernels.h"
#undef SFX
#pragma GCC pop_options
#endif

static int rd_supported(int v) {
    if (v == RD_SCALAR) return 1;
#ifdef RD_X86
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (v == RD_AVX2) return avx2;
    if (v == RD_AVX512)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vnni");
#endif
    return 0;
}

static const rd_kernels *rd_table(int v) {
#ifdef RD_X86
    if (v == RD_AVX512) return &kernels_avx512;
    if (v == RD_AVX2) return &kernels_avx2;
#endif
    return &kernels_scalar;
}

static int rd_best(void) {
    const char *env = getenv("REALM_CPU_VARIANT");          /* "scalar" / "avx2" / "avx512" caps it */
    int cap = RD_AVX512;
    if (env && !strcmp(env, "scalar")) cap = RD_SCALAR;
    else if (env && !strcmp(env, "avx2")) cap = RD_AVX2;
    for (int v = cap; v > RD_SCALAR; v--)
        if (rd_supported(v)) return v;
    return RD_SCALAR;
}

static int g_variant = -1;
static const rd_kernels *g_k;

static const rd_kernels *K_(void) {
    if (!g_k) { g_variant = rd_best(); g_k = rd_table(g_variant); }
    return g_k;
}

RD_EXPORT int rd_variant(void) { K_(); return g_variant; }

/* v < 0: the best the CPU has (and REALM_CPU_VARIANT allows); else force it (RD_E_VARIANT if the
 * CPU lacks it).  For tests and benchmarks: not meant to be changed while a step runs. */
RD_EXPORT int rd_set_variant(int v) {
    if (v < 0) v = rd_best();
    if (v > RD_AVX512 || !rd_supported(v)) return RD_E_VARIANT;
    g_variant = v;
    g_k = rd_table(v);
    return RD_OK;
}

/* ---- thread pool ------------------------------------------------------------------------- */

#define RD_MAX_THREADS 64
#define RD_SPIN_NS 200000                /* a worker spins this long for the next job, then sleeps */

typedef void (*rd_job)(void *arg, int ith, int nth);

static struct {
    pthread_mutex_t mu;                  /* also serializes whole calls: one job at a time */
    pthread_mutex_t wake_mu;
    pthread_cond_t wake;
    int n_workers, sleepers;
    atomic_uint gen;                     /* bumped once per job */
    atomic_int pending;                  /* workers still running the job */
    atomic_int bar_count;
    atomic_uint bar_gen;
    rd_job fn;
    void *arg;
    int nth, atfork;
} P = {.mu = PTHREAD_MUTEX_INITIALIZER, .wake_mu = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static inline void rd_relax(void) {
#ifdef RD_X86
    _mm_pause();
#endif
}

/* waiting for another thread of the job: spin, then yield the core, in case that thread is
 * waiting for one (more runnable threads than cores: a busy machine) */
static inline void rd_wait_step(int *spins) {
    if (++*spins < 4096) rd_relax();
    else sched_yield();
}

static uint64_t rd_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *rd_worker(void *p) {
    /* the job generation at spawn time comes with the index: reading P.gen here instead could
     * already see the job this worker was spawned for, and then wait for the next one forever */
    const int ith = (int)((uintptr_t)p & 0xffff);
    unsigned seen = (unsigned)((uintptr_t)p >> 16);
    for (;;) {
        unsigned g = atomic_load_explicit(&P.gen, memory_order_acquire);
        if (g == seen) {
            const uint64_t t0 = rd_now_ns();
            for (int i = 0; (g = atomic_load_explicit(&P.gen, memory_order_acquire)) == seen; i++) {
                rd_relax();
                if ((i & 255) == 255 && rd_now_ns() - t0 > RD_SPIN_NS) {
                    pthread_mutex_lock(&P.wake_mu);
                    P.sleepers++;
                    while ((g = atomic_load(&P.gen)) == seen) pthread_cond_wait(&P.wake, &P.wake_mu);
                    P.sleepers--;
                    pthread_mutex_unlock(&P.wake_mu);
                    break;
                }
            }
        }
        seen = g;
        /* every worker acknowledges every job (even one it sits out), so none can mistake the
         * next job's fields for this one's */
        if (ith < P.nth) P.fn(P.arg, ith, P.nth);
        atomic_fetch_sub_explicit(&P.pending, 1, memory_order_release);
    }
    return NULL;
}

/* a forked child has none of the workers: start over with an empty pool */
static void rd_after_fork(void) {
    pthread_mutex_init(&P.mu, NULL);
    pthread_mutex_init(&P.wake_mu, NULL);
    pthread_cond_init(&P.wake, NULL);
    P.n_workers = P.sleepers = 0;
}

/* all nth threads of the current job meet here (spinning: jobs are short) */
static void rd_barrier(int nth) {
    if (nth <= 1) return;
    const unsigned g = atomic_load_explicit(&P.bar_gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&P.bar_count, 1, memory_order_acq_rel) == nth - 1) {
        atomic_store_explicit(&P.bar_count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&P.bar_gen, 1, memory_order_release);
    } else {
        int spins = 0;
        while (atomic_load_explicit(&P.bar_gen, memory_order_acquire) == g) rd_wait_step(&spins);
    }
}

/* run fn(arg, ith, nth) on nth threads (the caller is thread 0); P.mu must be held */
static int rd_run(rd_job fn, void *arg, int nth) {
    if (nth > RD_MAX_THREADS) nth = RD_MAX_THREADS;
    while (P.n_workers < nth - 1) {                  /* grow the pool on first use */
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        const int err = pthread_create(&t, &a, rd_worker,
                                       (void *)(((uintptr_t)atomic_load(&P.gen) << 16) | (uintptr_t)(P.n_workers + 1)));
        pthread_attr_destroy(&a);
        if (err) { nth = P.n_workers + 1; break; }
        P.n_workers++;
    }
    if (nth <= 1) { fn(arg, 0, 1); return 1; }
    if (!P.atfork) { pthread_atfork(NULL, NULL, rd_after_fork); P.atfork = 1; }
    P.fn = fn, P.arg = arg, P.nth = nth;
    atomic_store(&P.pending, P.n_workers);
    atomic_store(&P.bar_count, 0);
    pthread_mutex_lock(&P.wake_mu);
    atomic_fetch_add_explicit(&P.gen, 1, memory_order_release);
    if (P.sleepers) pthread_cond_broadcast(&P.wake);
    pthread_mutex_unlock(&P.wake_mu);
    fn(arg, 0, nth);
    int spins = 0;
    while (atomic_load_explicit(&P.pending, memory_order_acquire) > 0) rd_wait_step(&spins);
    return nth;
}

/* ---- scratch (grown under P.mu; one step runs at a time) --------------------------------- */

static struct {
    size_t cap;                                      /* bytes */
    char *buf;
} S;

static void *rd_scratch(size_t bytes) {
    if (bytes > S.cap) {
        void *p = NULL;
        if (posix_memalign(&p, 64, bytes)) return NULL;
        free(S.buf);
        S.buf = p, S.cap = bytes;
    }
    return S.buf;
}

static size_t rd_align(size_t n) { return (n + 63) & ~(size_t)63; }

/* ---- public structs (mirrored by ctypes in cpu_kernels.py) -------------------------------- */

typedef struct {
    const uint8_t *data;                             /* N rows of K/32 blocks */
    int32_t type, n, k, pad;
    int64_t row_bytes;
} rd_mat;

typedef struct {
    int32_t D, H, Hkv, Dh, F, pad;
    float eps, pad2;
    const float *attn_norm, *ffn_norm;               /* [D] f32 */
    rd_mat q, k, v, o, gate, up, down;
} rd_layer;

static int rd_type_ok(const rd_mat *m) {
    const int bs = m->type == RD_Q4_0 ? 18 : m->type == RD_Q4_1 ? 20 : m->type == RD_Q8_0 ? 34 : 0;
    if (!bs) return RD_E_TYPE;
    if (m->k <= 0 || m->k % 32 || m->n <= 0 || m->row_bytes != (int64_t)bs * (m->k / 32) || !m->data) return RD_E_SHAPE;
    return RD_OK;
}

/* rows [r0, r1) of nth even shares of n, on 4-row tile boundaries */
static void rd_share(int n, int ith, int nth, int *r0, int *r1) {
    const int tiles = (n + 3) / 4;
    *r0 = 4 * (int)((int64_t)tiles * ith / nth);
    *r1 = 4 * (int)((int64_t)tiles * (ith + 1) / nth);
    if (*r1 > n) *r1 = n;
    if (*r0 > n) *r0 = n;
}

static void rd_gemv_share(const rd_kernels *k, const rd_mat *m, const rd_act *a, int ith, int nth, float *y) {
    int r0, r1;
    rd_share(m->n, ith, nth, &r0, &r1);
    if (r1 > r0) k->gemv(m->type, m->data, (size_t)m->row_bytes, m->k, r0, r1, a, y + r0);
}

/* per-thread activation buffers for K floats, carved from one block */
static rd_act rd_act_at(char *base, int ith, int K) {
    const size_t per = 2 * rd_align((size_t)K) + 4 * rd_align(sizeof(float) * (size_t)(K / 32));
    char *p = base + per * (size_t)ith;
    const size_t nbf = rd_align(sizeof(float) * (size_t)(K / 32)) / sizeof(float);
    rd_act a = {(int8_t *)p, (int8_t *)p + rd_align((size_t)K), (float *)(p + 2 * rd_align((size_t)K)), NULL, NULL};
    a.s = a.u + nbf;
    a.us = a.s + nbf;
    return a;
}

static size_t rd_act_bytes(int K, int nth) {
    return (2 * rd_align((size_t)K) + 4 * rd_align(sizeof(float) * (size_t)(K / 32))) * (size_t)nth;
}

/* ---- gemv: y[T, N] = x[T, K] · W^T (the head, and tests) --------------------------------- */

typedef struct {
    const rd_kernels *k;
    const rd_mat *m;
    const float *x;
    float *y;
    int T;
    char *acts;
} rd_gemv_job;

static void rd_gemv_fn(void *p, int ith, int nth) {
    rd_gemv_job *j = p;
    rd_act a = rd_act_at(j->acts, ith, j->m->k);
    for (int t = 0; t < j->T; t++) {
        j->k->quantize(j->x + (size_t)t * j->m->k, j->m->k, &a);
        rd_gemv_share(j->k, j->m, &a, ith, nth, j->y + (size_t)t * j->m->n);
    }
}

RD_EXPORT int rd_gemv(const rd_mat *m, const float *x, float *y, int T, int nth) {
    int err = rd_type_ok(m);
    if (err) return err;
    if (T <= 0) return RD_E_SHAPE;
    if (nth < 1) nth = 1;
    pthread_mutex_lock(&P.mu);
    rd_gemv_job j = {K_(), m, x, y, T, rd_scratch(rd_act_bytes(m->k, nth > RD_MAX_THREADS ? RD_MAX_THREADS : nth))};
    if (!j.acts) err = RD_E_NOMEM;
    else rd_run(rd_gemv_fn, &j, nth);
    pthread_mutex_unlock(&P.mu);
    return err;
}

/* ---- the head: logits by the gemv, then each position's top R recomputed in f32 ------------ */

/* one GGUF row [K] dequantized exactly as realm_embed.quant does (d·q, then + m), dotted with h */
static float rd_row_f32(int type, const uint8_t *row, int K, const float *h) {
    float w[32], acc = 0.0f;
    const int bs = type == RD_Q4_0 ? 18 : type == RD_Q4_1 ? 20 : 34;
    for (int b = 0; b < K / 32; b++) {
        const uint8_t *blk = row + (size_t)bs * b;
        const float d = rd_f16_to_f32((uint16_t)(blk[0] | blk[1] << 8));
        if (type == RD_Q8_0) {
            for (int j = 0; j < 32; j++) w[j] = (float)(int8_t)blk[2 + j] * d;
        } else if (type == RD_Q4_0) {
            for (int j = 0; j < 16; j++) {
                w[j] = (float)((blk[2 + j] & 15) - 8) * d;
                w[j + 16] = (float)((blk[2 + j] >> 4) - 8) * d;
            }
        } else {
            const float m = rd_f16_to_f32((uint16_t)(blk[2] | blk[3] << 8));
            for (int j = 0; j < 16; j++) {
                w[j] = (float)(blk[4 + j] & 15) * d + m;
                w[j + 16] = (float)(blk[4 + j] >> 4) * d + m;
            }
        }
        float part = 0.0f;
#pragma omp simd reduction(+:part)
        for (int j = 0; j < 32; j++) part += w[j] * h[32 * b + j];
        acc += part;
    }
    return acc;
}

/* indices of the R largest of y [V] (any order), by a min-heap of R */
static void rd_top(const float *y, int V, int R, int *idx) {
    for (int i = 0; i < R; i++) {                    /* heapify the first R as they come */
        int c = i;
        idx[c] = i;
        while (c > 0 && y[idx[(c - 1) / 2]] > y[idx[c]]) {
            const int p = (c - 1) / 2, t = idx[p];
            idx[p] = idx[c], idx[c] = t, c = p;
        }
    }
    for (int v = R; v < V; v++) {
        if (!(y[v] > y[idx[0]])) continue;
        int c = 0;
        idx[0] = v;
        for (;;) {                                   /* sift down */
            int m = c, l = 2 * c + 1, r = l + 1;
            if (l < R && y[idx[l]] < y[idx[m]]) m = l;
            if (r < R && y[idx[r]] < y[idx[m]]) m = r;
            if (m == c) break;
            const int t = idx[m];
            idx[m] = idx[c], idx[c] = t, c = m;
        }
    }
}

/* h [T, K] (normed) -> y [T, N] logits: the quantized gemv for every row, then each position's
 * top R rows again in f32 from the GGUF bytes, so greedy picks and top-k/top-p candidates see
 * exact-mode numbers.  (In C rather than torch: a torch bmm here wakes torch's OpenMP team,
 * whose spinning then competes with this pool's threads for the next token.) */
RD_EXPORT int rd_head(const rd_mat *m, const float *h, float *y, int T, int R, int nth) {
    int err = rd_gemv(m, h, y, T, nth);
    if (err) return err;
    if (R > m->n) R = m->n;
    if (R <= 0) return RD_OK;
    int *idx = malloc(sizeof(int) * (size_t)R);
    if (!idx) return RD_E_NOMEM;
    for (int t = 0; t < T; t++) {
        float *yt = y + (size_t)t * m->n;
        rd_top(yt, m->n, R, idx);
        for (int i = 0; i < R; i++)
            yt[idx[i]] = rd_row_f32(m->type, m->data + (size_t)idx[i] * m->row_bytes, m->k, h + (size_t)t * m->k);
    }
    free(idx);
    return RD_OK;
}

/* the activation quantization alone (tests derive their tolerance from u) */
RD_EXPORT int rd_quantize(const float *x, int K, int8_t *q, int8_t *l, float *u, float *s) {
    if (K <= 0 || K % 32) return RD_E_SHAPE;
    float *us = malloc(sizeof(float) * 2 * (size_t)(K / 32));
    if (!us) return RD_E_NOMEM;
    const rd_act a = {q, l, u, s, us};
    K_()->quantize(x, K, &a);
    free(us);
    return RD_OK;
}

/* ---- one block, T = 1 ------------------------------------------------------------------- */

typedef struct {
    const rd_kernels *k;
    const rd_layer *L;
    float *x;                                        /* [D] residual, updated in place */
    int pos, n_ctx;
    float *kc, *vc;                                  /* this layer's cache: [Hkv, n_ctx, Dh] each */
    const float *cos, *sin;                          /* [Dh/2] at pos */
    float *h, *qkv, *att, *y, *gu, *scores;          /* h/acts per thread; the rest shared */
    char *acts;
    int Kmax;
} rd_step;

static void rd_rope(float *v, const float *c, const float *s, int half) {   /* adjacent pairs */
    for (int i = 0; i < half; i++) {
        const float a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * c[i] - b * s[i];
        v[2 * i + 1] = a * s[i] + b * c[i];
    }
}

static void rd_layer_fn(void *p, int ith, int nth) {
    rd_step *st = p;
    const rd_kernels *k = st->k;
    const rd_layer *L = st->L;
    const int D = L->D, Dh = L->Dh, H = L->H, Hkv = L->Hkv, F = L->F, G = H / Hkv;
    const int nq = H * Dh, nkv = Hkv * Dh;
    float *h = st->h + (size_t)ith * st->Kmax;
    rd_act a = rd_act_at(st->acts, ith, st->Kmax);
    float *q = st->qkv, *kk = q + nq, *vv = kk + nkv;
    int r0, r1;

    /* 1. attention norm, Q/K/V rows */
    k->rmsnorm(st->x, L->attn_norm, D, L->eps, h);
    k->quantize(h, D, &a);
    rd_gemv_share(k, &L->q, &a, ith, nth, q);
    rd_gemv_share(k, &L->k, &a, ith, nth, kk);
    rd_gemv_share(k, &L->v, &a, ith, nth, vv);
    rd_barrier(nth);

    /* 2. per query head: RoPE, attention.  The thread that owns a kv group's first head writes
     *    its K/V to the cache; every head uses its own roped copy of the current k. */
    const float scale = 1.0f / sqrtf((float)Dh);
    float *kcur = h;                                   /* h is free now: [Dh] */
    float *sc = st->scores + (size_t)ith * (st->n_ctx + 16);
    for (int hd = (int)((int64_t)H * ith / nth); hd < (int)((int64_t)H * (ith + 1) / nth); hd++) {
        const int g = hd / G;
        memcpy(kcur, kk + g * Dh, sizeof(float) * Dh);
        rd_rope(kcur, st->cos, st->sin, Dh / 2);
        float *qh = q + hd * Dh;
        rd_rope(qh, st->cos, st->sin, Dh / 2);
        const float *kcg = st->kc + (size_t)g * st->n_ctx * Dh, *vcg = st->vc + (size_t)g * st->n_ctx * Dh;
        if (hd % G == 0) {                  /* the group's first head: one writer per group */
            memcpy((float *)kcg + (size_t)st->pos * Dh, kcur, sizeof(float) * Dh);
            memcpy((float *)vcg + (size_t)st->pos * Dh, vv + g * Dh, sizeof(float) * Dh);
        }
        k->attend(qh, kcg, vcg, kcur, vv + g * Dh, st->pos, Dh, scale, sc, st->att + hd * Dh);
    }
    rd_barrier(nth);

    /* 3. output projection, residual (each thread adds its own rows) */
    k->quantize(st->att, nq, &a);
    rd_share(D, ith, nth, &r0, &r1);
    if (r1 > r0) {
        k->gemv(L->o.type, L->o.data, (size_t)L->o.row_bytes, L->o.k, r0, r1, &a, st->y + r0);
        for (int i = r0; i < r1; i++) st->x[i] += st->y[i];
    }
    rd_barrier(nth);

    /* 4. ffn norm, gate and up rows, SiLU(gate)·up for those rows */
    k->rmsnorm(st->x, L->ffn_norm, D, L->eps, h);
    k->quantize(h, D, &a);
    rd_share(F, ith, nth, &r0, &r1);
    if (r1 > r0) {
        float *g = st->gu, *u = st->gu + F;
        k->gemv(L->gate.type, L->gate.data, (size_t)L->gate.row_bytes, D, r0, r1, &a, g + r0);
        k->gemv(L->up.type, L->up.data, (size_t)L->up.row_bytes, D, r0, r1, &a, u + r0);
        k->swiglu(g + r0, u + r0, r1 - r0, g + r0);            /* in place: gu[:F] = act */
    }
    rd_barrier(nth);

    /* 5. down projection, residual */
    k->quantize(st->gu, F, &a);
    rd_share(D, ith, nth, &r0, &r1);
    if (r1 > r0) {
        k->gemv(L->down.type, L->down.data, (size_t)L->down.row_bytes, F, r0, r1, &a, st->y + r0);
        for (int i = r0; i < r1; i++) st->x[i] += st->y[i];
    }
}

/* x [D] f32 at position pos through block L, in place; writes K/V at pos into kc/vc
 * ([Hkv, n_ctx, Dh] f32 each) and attends over [0, pos].  cos/sin: [Dh/2] for pos. */
RD_EXPORT int rd_layer_step(const rd_layer *L, float *x, int pos, float *kc, float *vc, int n_ctx,
                            const float *cos, const float *sin, int nth) {
    const rd_mat *m[7] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
    for (int i = 0; i < 7; i++) {
        const int err = rd_type_ok(m[i]);
        if (err) return err;
    }
    const int D = L->D, Dh = L->Dh, H = L->H, Hkv = L->Hkv, F = L->F;
    if (D <= 0 || Dh <= 0 || Dh % 2 || H <= 0 || Hkv <= 0 || H % Hkv || F <= 0 || pos < 0 || pos >= n_ctx ||
        L->q.k != D || L->q.n != H * Dh || L->k.k != D || L->k.n != Hkv * Dh || L->v.k != D ||
        L->v.n != Hkv * Dh || L->o.k != H * Dh || L->o.n != D || L->gate.k != D || L->gate.n != F ||
        L->up.k != D || L->up.n != F || L->down.k != F || L->down.n != D)
        return RD_E_SHAPE;
    if (nth < 1) nth = 1;
    if (nth > RD_MAX_THREADS) nth = RD_MAX_THREADS;
    if (nth > H) nth = H;                  /* every thread has a head in step 2 */
    const int Kmax = D > F ? (D > H * Dh ? D : H * Dh) : (F > H * Dh ? F : H * Dh);
    const size_t f = sizeof(float);
    const size_t sz_h = rd_align(f * Kmax * nth), sz_qkv = rd_align(f * (H + 2 * Hkv) * Dh),
                 sz_att = rd_align(f * H * Dh), sz_y = rd_align(f * D), sz_gu = rd_align(f * 2 * F),
                 sz_sc = rd_align(f * (n_ctx + 16) * nth), sz_act = rd_act_bytes(Kmax, nth);
    pthread_mutex_lock(&P.mu);
    char *buf = rd_scratch(sz_h + sz_qkv + sz_att + sz_y + sz_gu + sz_sc + sz_act);
    int err = RD_OK;
    if (!buf) err = RD_E_NOMEM;
    else {
        rd_step st = {.k = K_(), .L = L, .x = x, .pos = pos, .n_ctx = n_ctx, .kc = kc, .vc = vc, .cos = cos, .sin = sin};
        st.h = (float *)buf;
        st.qkv = (float *)(buf += sz_h);
        st.att = (float *)(buf += sz_qkv);
        st.y = (float *)(buf += sz_att);
        st.gu = (float *)(buf += sz_y);
        st.scores = (float *)(buf += sz_gu);
        st.acts = buf + sz_sc;
        st.Kmax = Kmax;
        rd_run(rd_layer_fn, &st, nth);
    }
    pthread_mutex_unlock(&P.mu);
    return err;
}
