/* realm-embed CPU decode kernels: one token (T = 1) through a llama block, on the GGUF's own
 * quantized bytes.
 *
 * Why this exists: fast mode on CPU used torch's `_weight_int4pack_mm_for_cpu` with bf16
 * activations.  The kernel itself is fine, but a decode step is ~50 torch dispatches per layer
 * (~6 ms a token for a 30-layer model, about as much as the matmuls), and the int4 repack
 * can't use integer dot products.  llama.cpp does the same work with integer dots and no
 * dispatch layer; to match it we do what it does, for the block types we serve, and fuse a
 * whole block into one call.  (The ggml Python bindings were not a fit: they would bring a
 * second weight layout and graph runtime next to torch, and the KV cache must stay the
 * session's torch tensors.)
 *
 * Block layouts (ggml / GGUF; a weight row of K elements is K/32 consecutive blocks):
 *   Q4_0  18 bytes: f16 d, u8 qs[16]          w[j] = d·(q[j] - 8)
 *   Q4_1  20 bytes: f16 d, f16 m, u8 qs[16]   w[j] = d·q[j] + m
 *   Q5_0  22 bytes: f16 d, u8 qh[4], u8 qs[16]          w[j] = d·(q[j] - 16)
 *   Q5_1  24 bytes: f16 d, f16 m, u8 qh[4], u8 qs[16]   w[j] = d·q[j] + m
 *         (all four: q[j] = qs[j] & 15 for j < 16, qs[j-16] >> 4 for j >= 16; Q5_x adds
 *          16·(bit j of qh read as a little-endian uint32))
 *   Q8_0  34 bytes: f16 d, i8 qs[32]          w[j] = d·qs[j]
 * and the K-quants, super-blocks of 256 (a row is K/256 of them; each spans 8 activation blocks):
 *   Q4_K 144 bytes: f16 d, f16 dmin, scales[12], qs[128]     sub-block j of 32: w = d·sc_j·q - dmin·m_j
 *   Q5_K 176 bytes: as Q4_K with qh[32] before qs (5th bits)  (sc_j, m_j: 6 bits, packed in 12 bytes)
 *   Q6_K 210 bytes: ql[128], qh[64], i8 sc[16], f16 d         sub-block of 16: w = d·sc·(q - 32), q 6 bits
 *   (nibble and bit orders in rd_kernels.h, as ggml's dequantize_row_q*_K)
 * The activation x is quantized per block of 32 like llama.cpp's Q8_1 (d_x = max|x|/127,
 * q = round(x/d_x)), plus a second int8 for the remainder: l = round(128·(x/d_x - q)), so
 * x ≈ u·x_i with u = d_x/128 and x_i = 128·q + l (~15 bits against the block's max; one int8
 * alone moved fast mode's logits 2.5x more than bf16 activations did).  With s = u·Σx_i ≈ Σx,
 * a block's dot is
 *   Q4_0: d·u·Σq_w·x_i - 8·d·s       Q4_1: d·u·Σq_w·x_i + m·s       Q8_0: d·u·Σq_w·x_i
 *   Q5_0: d·u·Σq_w·x_i - 16·d·s      Q5_1: as Q4_1 (q_w 5 bits)
 *   Q4_K/Q5_K sub-block j: (d·sc_j)·u·Σq_w·x_i - (dmin·m_j)·s      Q6_K: per half of 16, as Q8_0
 * with Σq_w·x_i = 128·Σq_w·q + Σq_w·l in integers: vpdpbusd (AVX-512 VNNI), maddubs (AVX2) or
 * plain C.  Q8_0 (and Q6_K's q - 32) weights are signed, so they go in as |w| against x·sign(w)
 * (exact).  The activation blocks stay 32 wide for the K-quants too (llama.cpp's Q8_K has one
 * scale per 256): the two-int8 precision holds per 32, at a float scale per sub-block.
 *
 * Variants: rd_kernels.h is compiled three times (AVX-512 VNNI, AVX2+FMA, baseline x86-64) with
 * target pragmas, and the best one the CPU supports is picked at load (rd_set_variant forces one,
 * for tests).  No -march flags: one build runs on any x86-64.
 *
 * Threads: a small persistent pthread pool (workers spin a little, then sleep on a condition
 * variable).  Not OpenMP: torch already brings its own libgomp, and two pools oversubscribe.
 * No barriers: a layer is five phases of chunks claimed from a counter, the caller working too and
 * waiting only for chunks another thread is actually running, so a worker the OS hasn't scheduled
 * (a busy machine) costs nothing; see "thread pool" below.
 */
#define _GNU_SOURCE                      /* RUSAGE_THREAD */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RD_X86 1
#endif

#define RD_EXPORT __attribute__((visibility("default")))

enum { RD_Q4_0 = 2, RD_Q4_1 = 3, RD_Q5_0 = 6, RD_Q5_1 = 7, RD_Q8_0 = 8, RD_Q4_K = 12, RD_Q5_K = 13, RD_Q6_K = 14 };   /* ggml type ids */
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

/* rd_b2b16[i]: byte k = 16 if bit k of i is set (Q5_0 / Q5_1's fifth bits, 8 at a time, in the
 * plain C variant; ggml's table_b2b_0) */
#define RD_B1(c, s, n) 0x##n##c, 0x##n##s
#define RD_B2(c, s, n) RD_B1(c, s, n##c), RD_B1(c, s, n##s)
#define RD_B3(c, s, n) RD_B2(c, s, n##c), RD_B2(c, s, n##s)
#define RD_B4(c, s, n) RD_B3(c, s, n##c), RD_B3(c, s, n##s)
#define RD_B5(c, s, n) RD_B4(c, s, n##c), RD_B4(c, s, n##s)
#define RD_B6(c, s, n) RD_B5(c, s, n##c), RD_B5(c, s, n##s)
#define RD_B7(c, s, n) RD_B6(c, s, n##c), RD_B6(c, s, n##s)
#define RD_B8(c, s) RD_B7(c, s, c), RD_B7(c, s, s)
static const uint64_t rd_b2b16[256] = {RD_B8(00, 10)};

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

/* Work is handed out in phases: a phase is n units of independent work (a gemv's rows, attention
 * heads), run as chunks fn(arg, u0, u1).  The calling thread publishes the phase, then claims and
 * runs chunks like any worker, and the phase is over when n units are *done* (not when every
 * thread has checked in).  So a worker the scheduler hasn't run yet (a busy machine, more
 * runnable threads than cores) never holds the caller up: the caller runs its chunks itself.
 * Only a worker descheduled in the middle of a chunk is waited for, and only for that chunk.
 *
 * Chunks are guided: a claim takes about remaining / (2·nth) units (at least the phase's minimum,
 * in multiples of its grain), so a phase is a handful of claims a thread, large ones first, small
 * ones at the end to even out the finish.  (Fixed small chunks cost a cross-core cache miss or
 * two each, on the counter and the done count, and that was ~30% of a decode step on 2 cores.)
 *
 * The claim counter is one 64-bit word, phase generation << 32 | next unit, taken by CAS: a
 * worker that read a phase late can't claim (or count) a chunk of a later one, because the
 * generation is part of what it compares.  A successful claim also means the phase isn't over
 * (its chunk isn't done), so fn/arg (the caller's stack) are still those of that phase.
 *
 * Chunks have no thread identity (no per-thread scratch), so the results are the same bits on
 * any number of threads, and the pool's size can follow torch.get_num_threads() call by call. */

#define RD_MAX_THREADS 64
/* An idle worker spins RD_SPIN_NS for the next phase, then sleeps.  But a spinning worker on a
 * busy machine takes a share of a core from the thread that makes the work (more runnable threads
 * than cores): the caller gets 2/3 of a core instead of a whole one, and decode slows down.  So
 * when a pool thread has been preempted (its involuntary context switches went up: someone else
 * wanted the core) workers spin only RD_SPIN_BUSY_NS, until RD_BUSY_HOLD_NS pass without that. */
#define RD_SPIN_NS 200000
#define RD_SPIN_BUSY_NS 5000
#define RD_BUSY_HOLD_NS 200000000

typedef void (*rd_chunk)(void *arg, int u0, int u1);

static struct {
    pthread_mutex_t mu;                  /* serializes whole calls: one phase at a time */
    pthread_mutex_t wake_mu;
    pthread_cond_t wake;
    int n_workers, atfork;
    atomic_int sleepers;
    _Atomic(rd_chunk) fn;                /* the current phase: written before its generation */
    _Atomic(void *) arg;
    atomic_int n, nth, grain, min;       /* units, threads, claim granularity and minimum */
    _Alignas(64) _Atomic uint64_t claim; /* generation << 32 | next unit */
    _Alignas(64) atomic_int done;        /* units finished in the current phase */
    _Alignas(64) char end;
} P = {.mu = PTHREAD_MUTEX_INITIALIZER, .wake_mu = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static inline void rd_relax(void) {
#ifdef RD_X86
    _mm_pause();
#endif
}

/* waiting for another thread's chunk: spin, then yield the core, in case that thread is waiting
 * for one (more runnable threads than cores: a busy machine) */
static inline void rd_wait_step(int *spins) {
    if (++*spins < 4096) rd_relax();
    else sched_yield();
}

static uint64_t rd_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint32_t rd_gen(void) {
    return (uint32_t)(atomic_load_explicit(&P.claim, memory_order_acquire) >> 32);
}

/* claim and run chunks of phase g until there are none left (or the phase is over) */
static void rd_claim_loop(uint32_t g) {
    for (;;) {
        uint64_t w = atomic_load_explicit(&P.claim, memory_order_acquire);
        if ((uint32_t)(w >> 32) != g) return;
        const int i = (int)(uint32_t)w;
        /* these may already be a later phase's: then the CAS below fails, as the word moved on */
        const int n = atomic_load_explicit(&P.n, memory_order_relaxed);
        if (i >= n) return;
        const int grain = atomic_load_explicit(&P.grain, memory_order_relaxed);
        const int nth = atomic_load_explicit(&P.nth, memory_order_relaxed);
        int size = (n - i) / (2 * nth), mn = atomic_load_explicit(&P.min, memory_order_relaxed);
        if (size < mn) size = mn;
        size = (size + grain - 1) / grain * grain;
        if (size > n - i) size = n - i;
        if (!atomic_compare_exchange_weak_explicit(&P.claim, &w, w + (uint64_t)size, memory_order_acq_rel,
                                                   memory_order_relaxed))
            continue;
        const rd_chunk fn = atomic_load_explicit(&P.fn, memory_order_relaxed);
        fn(atomic_load_explicit(&P.arg, memory_order_relaxed), i, i + size);
        atomic_fetch_add_explicit(&P.done, size, memory_order_release);
    }
}

static _Atomic uint64_t g_busy_until;    /* rd_now_ns() until which workers spin short */

/* A thread's involuntary context switches (preempted: another thread wanted its core), checked
 * now and then: more than RD_BUSY_RATE a second means the machine is busy.  (A quiet machine has a
 * few dozen a second, from kernel threads and torch's own pool; a busy one thousands.) */
#define RD_BUSY_RATE 300
typedef struct { long nivcsw; uint64_t t; } rd_preempt;

static void rd_check_preempted(rd_preempt *c) {
    struct rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru)) return;
    const uint64_t now = rd_now_ns();
    const long d = ru.ru_nivcsw - c->nivcsw;
    if (c->t && d >= 2 && (uint64_t)d * 1000000000u > (uint64_t)RD_BUSY_RATE * (now - c->t))
        atomic_store_explicit(&g_busy_until, now + RD_BUSY_HOLD_NS, memory_order_relaxed);
    c->nivcsw = ru.ru_nivcsw, c->t = now;
}

static void *rd_worker(void *p) {
    /* the generation at spawn time comes with the index: reading it here instead could already
     * see the phase this worker was spawned for, and then sit it out */
    const int ith = (int)((uintptr_t)p & 0xffff);
    uint32_t seen = (uint32_t)((uintptr_t)p >> 16);
    rd_preempt pre = {0, 0};
    for (unsigned phases = 0;; phases++) {
        uint32_t g;
        if ((phases & 63) == 0) rd_check_preempted(&pre);
        const uint64_t t0 = rd_now_ns();
        const uint64_t spin = t0 < atomic_load_explicit(&g_busy_until, memory_order_relaxed) ? RD_SPIN_BUSY_NS : RD_SPIN_NS;
        for (int i = 0; (g = rd_gen()) == seen; i++) {
            rd_relax();
            if ((i & 63) == 63 && rd_now_ns() - t0 > spin) {
                pthread_mutex_lock(&P.wake_mu);
                atomic_fetch_add(&P.sleepers, 1);          /* seq_cst: pairs with rd_parallel */
                while ((g = (uint32_t)(atomic_load(&P.claim) >> 32)) == seen)
                    pthread_cond_wait(&P.wake, &P.wake_mu);
                atomic_fetch_sub(&P.sleepers, 1);
                pthread_mutex_unlock(&P.wake_mu);
                phases = 63;                               /* check on the way out of a sleep */
                break;
            }
        }
        seen = g;
        /* workers past the call's thread count sit phases out (a stale nth only adds a helper) */
        if (ith < atomic_load_explicit(&P.nth, memory_order_relaxed)) rd_claim_loop(g);
    }
    return NULL;
}

/* a forked child has none of the workers: start over with an empty pool (the phase counters
 * carry on; new workers start from the current generation) */
static void rd_after_fork(void) {
    pthread_mutex_init(&P.mu, NULL);
    pthread_mutex_init(&P.wake_mu, NULL);
    pthread_cond_init(&P.wake, NULL);
    P.n_workers = 0;
    atomic_store(&P.sleepers, 0);
}

/* make sure nth - 1 workers exist (P.mu held); returns the thread count we have */
static int rd_pool(int nth) {
    if (nth > RD_MAX_THREADS) nth = RD_MAX_THREADS;
    if (nth < 1) nth = 1;
    if (nth > 1 && !P.atfork) { pthread_atfork(NULL, NULL, rd_after_fork); P.atfork = 1; }
    while (P.n_workers < nth - 1) {
        pthread_t t;
        pthread_attr_t a;
        pthread_attr_init(&a);
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        const int err = pthread_create(&t, &a, rd_worker,
                                       (void *)(((uintptr_t)rd_gen() << 16) | (uintptr_t)(P.n_workers + 1)));
        pthread_attr_destroy(&a);
        if (err) return P.n_workers + 1;
        P.n_workers++;
    }
    return nth;
}

/* fn over units [0, n) on up to nth threads, the caller among them, in claims of at least mn
 * units, multiples of grain (P.mu held) */
static void rd_parallel(rd_chunk fn, void *arg, int n, int grain, int mn, int nth) {
    if (n <= 0) return;
    if (nth <= 1 || n <= mn) {
        fn(arg, 0, n);
        return;
    }
    atomic_store_explicit(&P.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&P.arg, arg, memory_order_relaxed);
    atomic_store_explicit(&P.n, n, memory_order_relaxed);
    atomic_store_explicit(&P.nth, nth, memory_order_relaxed);
    atomic_store_explicit(&P.grain, grain, memory_order_relaxed);
    atomic_store_explicit(&P.min, mn, memory_order_relaxed);
    atomic_store_explicit(&P.done, 0, memory_order_relaxed);
    const uint32_t g = rd_gen() + 1;
    atomic_store(&P.claim, (uint64_t)g << 32);           /* seq_cst: pairs with the sleepers count */
    if (atomic_load(&P.sleepers)) {
        pthread_mutex_lock(&P.wake_mu);
        pthread_cond_broadcast(&P.wake);
        pthread_mutex_unlock(&P.wake_mu);
    }
    rd_claim_loop(g);
    int spins = 0;                                       /* chunks other threads still run */
    while (atomic_load_explicit(&P.done, memory_order_acquire) < n) rd_wait_step(&spins);
}

/* a gemv phase's smallest claim: RD_MIN_MACS multiply-adds (about a µs), in whole cache lines of
 * output (16 rows), so no two threads write the same line of y */
#define RD_MIN_MACS 16384
static int rd_min_rows(int K, int T) {
    const int r = (int)(RD_MIN_MACS / ((int64_t)K * T));
    return r < 16 ? 16 : (r + 15) & ~15;
}

/* ---- scratch (grown under P.mu; one call runs at a time) --------------------------------- */

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

/* bytes of one block of `type` (0: not served), and the values it holds (32, or 256 for K-quants) */
static int rd_block_bytes(int type) {
    switch (type) {
    case RD_Q4_0: return 18;
    case RD_Q4_1: return 20;
    case RD_Q5_0: return 22;
    case RD_Q5_1: return 24;
    case RD_Q8_0: return 34;
    case RD_Q4_K: return 144;
    case RD_Q5_K: return 176;
    case RD_Q6_K: return 210;
    default: return 0;
    }
}
static int rd_block_len(int type) { return type >= RD_Q4_K ? 256 : 32; }

static int rd_type_ok(const rd_mat *m) {
    const int bs = rd_block_bytes(m->type), qk = rd_block_len(m->type);
    if (!bs) return RD_E_TYPE;
    if (m->k <= 0 || m->k % qk || m->n <= 0 || m->row_bytes != (int64_t)bs * (m->k / qk) || !m->data) return RD_E_SHAPE;
    return RD_OK;
}

/* activation buffers (quantized x) for T rows of K, carved from one block */
static rd_act rd_act_at(char *base, int t, int K) {
    const size_t per = 2 * rd_align((size_t)K) + 4 * rd_align(sizeof(float) * (size_t)(K / 32));
    char *p = base + per * (size_t)t;
    const size_t nbf = rd_align(sizeof(float) * (size_t)(K / 32)) / sizeof(float);
    rd_act a = {(int8_t *)p, (int8_t *)p + rd_align((size_t)K), (float *)(p + 2 * rd_align((size_t)K)), NULL, NULL};
    a.s = a.u + nbf;
    a.us = a.s + nbf;
    return a;
}

static size_t rd_act_bytes(int K, int T) {
    return (2 * rd_align((size_t)K) + 4 * rd_align(sizeof(float) * (size_t)(K / 32))) * (size_t)T;
}

/* ---- a gemv phase: up to 3 matrices on the same activation(s), their rows one range --------- */

typedef struct {
    const rd_kernels *k;
    int nm, T;                                       /* matrices, activations */
    const rd_mat *m[3];
    float *y[3];                                     /* [T, m->n] each */
    float *resid;                                    /* if set (T = 1): resid[r] += y[r] */
    int r0[4];                                       /* first row of each matrix in the range */
    const rd_act *a;                                 /* [T] */
} rd_gemv_phase;

static void rd_gemv_chunk(void *p, int u0, int u1) {
    const rd_gemv_phase *ph = p;
    for (int j = 0; j < ph->nm; j++) {
        const rd_mat *m = ph->m[j];
        const int r0 = (u0 > ph->r0[j] ? u0 : ph->r0[j]) - ph->r0[j];
        const int r1 = (u1 < ph->r0[j + 1] ? u1 : ph->r0[j + 1]) - ph->r0[j];
        if (r1 <= r0) continue;
        for (int t = 0; t < ph->T; t++) {
            float *y = ph->y[j] + (size_t)t * m->n;
            ph->k->gemv(m->type, m->data, (size_t)m->row_bytes, m->k, r0, r1, &ph->a[t], y + r0);
        }
        if (ph->resid)
            for (int r = r0; r < r1; r++) ph->resid[r] += ph->y[j][r];
    }
}

static void rd_gemv_run(rd_gemv_phase *ph, int nth) {
    ph->r0[0] = 0;
    for (int j = 0; j < ph->nm; j++) ph->r0[j + 1] = ph->r0[j] + ph->m[j]->n;
    rd_parallel(rd_gemv_chunk, ph, ph->r0[ph->nm], 16, rd_min_rows(ph->m[0]->k, ph->T), nth);
}

/* ---- gemv: y[T, N] = x[T, K] · W^T (the head, and tests) --------------------------------- */

#define RD_MAX_T 64

RD_EXPORT int rd_gemv(const rd_mat *m, const float *x, float *y, int T, int nth) {
    int err = rd_type_ok(m);
    if (err) return err;
    if (T <= 0) return RD_E_SHAPE;
    pthread_mutex_lock(&P.mu);
    const rd_kernels *k = K_();
    nth = rd_pool(nth);
    for (int t0 = 0; t0 < T && !err; t0 += RD_MAX_T) {
        const int Tn = T - t0 < RD_MAX_T ? T - t0 : RD_MAX_T;
        char *acts = rd_scratch(rd_act_bytes(m->k, Tn));
        if (!acts) { err = RD_E_NOMEM; break; }
        rd_act a[RD_MAX_T];
        for (int t = 0; t < Tn; t++) {
            a[t] = rd_act_at(acts, t, m->k);
            k->quantize(x + (size_t)(t0 + t) * m->k, m->k, &a[t]);
        }
        rd_gemv_phase ph = {.k = k, .nm = 1, .T = Tn, .m = {m}, .y = {y + (size_t)t0 * m->n}, .a = a};
        rd_gemv_run(&ph, nth);
    }
    pthread_mutex_unlock(&P.mu);
    return err;
}

/* ---- the head: logits by the gemv, then each position's top R recomputed in f32 ------------ */

/* one GGUF block dequantized exactly as realm_embed.quant does (f16 scales widened, d·q, then
 * ± m, each a separate f32 rounding) into w[rd_block_len(type)] */
static void rd_block_f32(int type, const uint8_t *blk, float *w) {
    const float d = rd_f16_to_f32((uint16_t)(blk[0] | blk[1] << 8));
    if (type == RD_Q8_0) {
        for (int j = 0; j < 32; j++) w[j] = (float)(int8_t)blk[2 + j] * d;
    } else if (type == RD_Q4_0) {
        for (int j = 0; j < 16; j++) {
            w[j] = (float)((blk[2 + j] & 15) - 8) * d;
            w[j + 16] = (float)((blk[2 + j] >> 4) - 8) * d;
        }
    } else if (type == RD_Q4_1) {
        const float m = rd_f16_to_f32((uint16_t)(blk[2] | blk[3] << 8));
        for (int j = 0; j < 16; j++) {
            w[j] = (float)(blk[4 + j] & 15) * d + m;
            w[j + 16] = (float)(blk[4 + j] >> 4) * d + m;
        }
    } else if (type == RD_Q5_0 || type == RD_Q5_1) {       /* Q5_0: (q - 16)·d; Q5_1: (q·d) + m */
        const int o = type == RD_Q5_0 ? 2 : 4;
        const uint32_t qh = (uint32_t)blk[o] | (uint32_t)blk[o + 1] << 8 | (uint32_t)blk[o + 2] << 16 | (uint32_t)blk[o + 3] << 24;
        const float m = type == RD_Q5_1 ? rd_f16_to_f32((uint16_t)(blk[2] | blk[3] << 8)) : 0.0f;
        for (int j = 0; j < 32; j++) {
            const int q = ((j < 16 ? blk[o + 4 + j] : blk[o + 4 + j - 16] >> 4) & 15) | (int)((qh >> j) & 1) << 4;
            w[j] = type == RD_Q5_0 ? (float)(q - 16) * d : (float)q * d + m;
        }
    } else if (type == RD_Q4_K || type == RD_Q5_K) {       /* (q·(d·sc)) - (dmin·m) */
        const float dmin = rd_f16_to_f32((uint16_t)(blk[2] | blk[3] << 8));
        const uint8_t *qs = blk + (type == RD_Q4_K ? 16 : 48), *qh = blk + 16;
        uint8_t sm[16];
        k_scale_min_scalar(blk + 4, sm);
        for (int j = 0; j < 8; j++) {
            const float dl = d * (float)sm[j], ml = dmin * (float)sm[8 + j];
            for (int i = 0; i < 32; i++) {
                int q = (qs[32 * (j / 2) + i] >> (4 * (j & 1))) & 15;
                if (type == RD_Q5_K) q |= ((qh[i] >> j) & 1) << 4;
                w[32 * j + i] = (float)q * dl - ml;
            }
        }
    } else {                                               /* Q6_K: q·(d·sc) */
        const float d6 = rd_f16_to_f32((uint16_t)(blk[208] | blk[209] << 8));
        const int8_t *scs = (const int8_t *)(blk + 192);
        for (int h = 0; h < 2; h++)
            for (int j = 0; j < 4; j++)
                for (int i = 0; i < 32; i++) {
                    const uint8_t *ql = blk + 64 * h, *qh = blk + 128 + 32 * h;
                    const int q = (((ql[32 * (j & 1) + i] >> (4 * (j >> 1))) & 15) | (((qh[i] >> (2 * j)) & 3) << 4)) - 32;
                    w[128 * h + 32 * j + i] = (float)q * (d6 * (float)scs[8 * h + 2 * j + i / 16]);
                }
    }
}

/* one GGUF row [K] dequantized exactly as realm_embed.quant does, dotted with h */
static float rd_row_f32(int type, const uint8_t *row, int K, const float *h) {
    float w[256], acc = 0.0f;
    const int bs = rd_block_bytes(type), qk = rd_block_len(type);
    for (int b = 0; b < K / qk; b++) {
        rd_block_f32(type, row + (size_t)bs * b, w);
        for (int c = 0; c < qk; c += 32) {                 /* sums of 32, as before */
            float part = 0.0f;
#pragma omp simd reduction(+:part)
            for (int j = 0; j < 32; j++) part += w[c + j] * h[qk * b + c + j];
            acc += part;
        }
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

/* The block is five phases; between them the caller alone does the little serial work (norms,
 * quantizing the next activation: a few µs of the ~100-300). */
typedef struct {
    const rd_kernels *k;
    const rd_layer *L;
    int pos, n_ctx;
    float *kc, *vc;                                  /* this layer's cache: [Hkv, n_ctx, Dh] each */
    const float *cos, *sin;                          /* [Dh/2] at pos */
    float *qkv, *att, *gu, *kcur, *scores;           /* kcur [H, Dh], scores [H, n_ctx + 16] */
    const rd_act *a;
} rd_step;

static void rd_rope(float *v, const float *c, const float *s, int half) {   /* adjacent pairs */
    for (int i = 0; i < half; i++) {
        const float a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * c[i] - b * s[i];
        v[2 * i + 1] = a * s[i] + b * c[i];
    }
}

/* query head hd: RoPE, attention.  The group's first head writes its K/V to the cache; every
 * head uses its own roped copy of the current k (attend reads it apart from the cache). */
static void rd_attn_head(const rd_step *st, int hd) {
    const rd_layer *L = st->L;
    const int Dh = L->Dh, G = L->H / L->Hkv, g = hd / G;
    const float *kk = st->qkv + L->H * Dh, *vv = kk + L->Hkv * Dh;
    float *kcur = st->kcur + (size_t)hd * Dh, *qh = st->qkv + (size_t)hd * Dh;
    memcpy(kcur, kk + g * Dh, sizeof(float) * Dh);
    rd_rope(kcur, st->cos, st->sin, Dh / 2);
    rd_rope(qh, st->cos, st->sin, Dh / 2);
    const float *kcg = st->kc + (size_t)g * st->n_ctx * Dh, *vcg = st->vc + (size_t)g * st->n_ctx * Dh;
    if (hd % G == 0) {
        memcpy((float *)kcg + (size_t)st->pos * Dh, kcur, sizeof(float) * Dh);
        memcpy((float *)vcg + (size_t)st->pos * Dh, vv + g * Dh, sizeof(float) * Dh);
    }
    st->k->attend(qh, kcg, vcg, kcur, vv + g * Dh, st->pos, Dh, 1.0f / sqrtf((float)Dh),
                  st->scores + (size_t)hd * (st->n_ctx + 16), st->att + (size_t)hd * Dh);
}

static void rd_attn_chunk(void *p, int h0, int h1) {
    for (int hd = h0; hd < h1; hd++) rd_attn_head(p, hd);
}

/* gate and up rows [r0, r1), then SiLU(gate)·up for them (in place: gu[:F] = act) */
static void rd_ffn_chunk(void *p, int r0, int r1) {
    const rd_step *st = p;
    const rd_layer *L = st->L;
    const int F = L->F;
    float *g = st->gu, *u = st->gu + F;
    st->k->gemv(L->gate.type, L->gate.data, (size_t)L->gate.row_bytes, L->D, r0, r1, st->a, g + r0);
    st->k->gemv(L->up.type, L->up.data, (size_t)L->up.row_bytes, L->D, r0, r1, st->a, u + r0);
    st->k->swiglu(g + r0, u + r0, r1 - r0, g + r0);
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
    const int Kmax = D > F ? (D > H * Dh ? D : H * Dh) : (F > H * Dh ? F : H * Dh);
    const size_t f = sizeof(float);
    const size_t sz_h = rd_align(f * Kmax), sz_qkv = rd_align(f * (H + 2 * Hkv) * Dh), sz_att = rd_align(f * H * Dh),
                 sz_y = rd_align(f * D), sz_gu = rd_align(f * 2 * F), sz_kcur = rd_align(f * H * Dh),
                 sz_sc = rd_align(f * (n_ctx + 16) * H), sz_act = rd_act_bytes(Kmax, 1);
    pthread_mutex_lock(&P.mu);
    char *buf = rd_scratch(sz_h + sz_qkv + sz_att + sz_y + sz_gu + sz_kcur + sz_sc + sz_act);
    if (!buf) {
        pthread_mutex_unlock(&P.mu);
        return RD_E_NOMEM;
    }
    nth = rd_pool(nth);
    static _Thread_local rd_preempt caller_pre;
    static unsigned calls;
    if (nth > 1 && (calls++ & 15) == 0) rd_check_preempted(&caller_pre);
    const rd_kernels *k = K_();
    float *h = (float *)buf, *qkv = (float *)(buf += sz_h), *att = (float *)(buf += sz_qkv),
          *y = (float *)(buf += sz_att), *gu = (float *)(buf += sz_y), *kcur = (float *)(buf += sz_gu),
          *scores = (float *)(buf += sz_kcur);
    const rd_act a = rd_act_at(buf + sz_sc, 0, Kmax);
    const int nq = H * Dh, nkv = Hkv * Dh;

    /* 1. attention norm, Q/K/V rows */
    k->rmsnorm(x, L->attn_norm, D, L->eps, h);
    k->quantize(h, D, &a);
    rd_gemv_phase qp = {.k = k, .nm = 3, .T = 1, .m = {&L->q, &L->k, &L->v}, .y = {qkv, qkv + nq, qkv + nq + nkv}, .a = &a};
    rd_gemv_run(&qp, nth);

    /* 2. per query head: RoPE, attention */
    rd_step st = {.k = k, .L = L, .pos = pos, .n_ctx = n_ctx, .kc = kc, .vc = vc, .cos = cos, .sin = sin,
                  .qkv = qkv, .att = att, .gu = gu, .kcur = kcur, .scores = scores, .a = &a};
    rd_parallel(rd_attn_chunk, &st, H, 1, 1, nth);

    /* 3. output projection, residual (each chunk adds its own rows) */
    k->quantize(att, nq, &a);
    rd_gemv_phase op = {.k = k, .nm = 1, .T = 1, .m = {&L->o}, .y = {y}, .resid = x, .a = &a};
    rd_gemv_run(&op, nth);

    /* 4. ffn norm, gate and up rows, SiLU(gate)·up for those rows */
    k->rmsnorm(x, L->ffn_norm, D, L->eps, h);
    k->quantize(h, D, &a);
    rd_parallel(rd_ffn_chunk, &st, F, 16, rd_min_rows(2 * D, 1), nth);   /* a row: gate's and up's */

    /* 5. down projection, residual */
    k->quantize(gu, F, &a);
    rd_gemv_phase dp = {.k = k, .nm = 1, .T = 1, .m = {&L->down}, .y = {y}, .resid = x, .a = &a};
    rd_gemv_run(&dp, nth);

    pthread_mutex_unlock(&P.mu);
    return RD_OK;
}
