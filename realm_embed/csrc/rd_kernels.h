/* The per-ISA half of cpu_decode.c: included once per instruction set, between a
 * `#pragma GCC target(...)` push/pop, with SFX(name) giving each copy its own names.  The
 * pragma also defines __AVX2__ / __AVX512VNNI__ for the copy, which picks the branches below;
 * the plain C loops (norm, attention, SiLU) are the same text, vectorized per target.
 *
 * Activations: x [K] f32 -> per block b of 32: q[32] int8, d[b] = max|x|/127 and
 * s[b] = d[b]·Σq (the Q8_1 "s" that folds a weight block's constant term in one multiply). */

/* ---- f16 scales ---------------------------------------------------------------------------- */
#if defined(__F16C__)
static inline float SFX(h2f)(const uint8_t *p) { uint16_t h; memcpy(&h, p, 2); return _cvtsh_ss(h); }
#else
static inline float SFX(h2f)(const uint8_t *p) { uint16_t h; memcpy(&h, p, 2); return rd_f16_to_f32(h); }
#endif

/* ---- activation quantization (every variant gives the same q, l, u, s) --------------------- */
static void SFX(quantize)(const float *x, int K, const rd_act *a) {
    for (int b = 0; b < K / 32; b++) {
        const float *xb = x + 32 * b;
#if defined(__AVX2__)
        __m256 v[4], mx = _mm256_setzero_ps();
        const __m256 sign = _mm256_set1_ps(-0.0f);
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_loadu_ps(xb + 8 * j);
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[j]));
        }
        __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(mx, 1), _mm256_castps256_ps128(mx));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        const __m256 idv = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f), k128 = _mm256_set1_ps(128.0f);
        const int rnd = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        __m256i qi[4], li[4], sum = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            const __m256 t = _mm256_mul_ps(v[j], idv);               /* x / d_x */
            const __m256 r = _mm256_round_ps(t, rnd);
            const __m256 l = _mm256_round_ps(_mm256_mul_ps(_mm256_sub_ps(t, r), k128), rnd);
            qi[j] = _mm256_cvtps_epi32(r);
            li[j] = _mm256_cvtps_epi32(l);
            sum = _mm256_add_epi32(sum, _mm256_add_epi32(_mm256_slli_epi32(qi[j], 7), li[j]));
        }
        __m128i s4 = _mm_add_epi32(_mm256_extracti128_si256(sum, 1), _mm256_castsi256_si128(sum));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
        const int isum = _mm_cvtsi128_si32(s4);
        /* packs interleave 128-bit lanes; the permute puts the 32 bytes back in order */
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
        _mm256_storeu_si256((__m256i *)(a->q + 32 * b), _mm256_permutevar8x32_epi32(p, order));
        p = _mm256_packs_epi16(_mm256_packs_epi32(li[0], li[1]), _mm256_packs_epi32(li[2], li[3]));
        _mm256_storeu_si256((__m256i *)(a->l + 32 * b), _mm256_permutevar8x32_epi32(p, order));
#else
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(xb[j]));
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int isum = 0;
        for (int j = 0; j < 32; j++) {
            const float t = xb[j] * id;
            const float r = nearbyintf(t);                      /* half to even, as _mm256_round_ps */
            const float l = nearbyintf((t - r) * 128.0f);
            a->q[32 * b + j] = (int8_t)r;
            a->l[32 * b + j] = (int8_t)l;
            isum += 128 * (int)r + (int)l;
        }
#endif
        a->u[b] = amax / 127.0f / 128.0f;
        a->s[b] = a->u[b] * (float)isum;
        a->us[2 * b] = a->u[b];
        a->us[2 * b + 1] = a->s[b];
    }
}

#if defined(__AVX2__)
static inline __m256i SFX(nibbles)(const uint8_t *qs) {     /* 16 bytes -> [lo nibbles | hi nibbles] */
    const __m128i t = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F));
}
static inline __m256i SFX(bits16)(uint32_t qh) {          /* Q5_x's qh: byte j = 16 if bit j is set */
    const __m256i pick = _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), pick);    /* byte j = qh byte j/8 */
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit), _mm256_set1_epi8(16));
}
static inline __m256i SFX(dot_us)(__m256i u, __m256i s) {    /* Σ u8·s8 in 8 int32 lanes */
#if defined(__AVX512VNNI__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else   /* maddubs saturates a pair sum at 2^15 - 1; here u ≤ 128 (nibbles, 5-bit q, |q8|) and |s| ≤ 127,
           so a pair is at most 2·128·127 = 32512 and never saturates */
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}
static inline float SFX(hsum)(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}
#endif

#if defined(__AVX2__)
/* 128·Σw·q + Σw·l for one block (8 int32 lanes); u8 weights against s8 activations */
static inline __m256i SFX(dot2)(__m256i w, __m256i q, __m256i l) {
#if defined(__AVX512VNNI__)
    return _mm256_dpbusd_epi32(_mm256_slli_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), w, q), 7), w, l);
#else
    return _mm256_add_epi32(_mm256_slli_epi32(SFX(dot_us)(w, q), 7), SFX(dot_us)(w, l));
#endif
}

/* block b's partial dot (8 f32 lanes); *c gathers the constant terms */
static inline __attribute__((always_inline)) __m256 SFX(block)(int type, const uint8_t *w, int b, const rd_act *a,
                                                              float *c) {
    const __m256i q = _mm256_loadu_si256((const __m256i *)(a->q + 32 * b));
    const __m256i l = _mm256_loadu_si256((const __m256i *)(a->l + 32 * b));
    __m256i p;
    float dw;
    if (type == RD_Q4_0) {                           /* w = d·(q - 8): Σ(q - 8)·x = Σq·x - 8·Σx */
        const uint8_t *blk = w + 18 * b;
        dw = SFX(h2f)(blk);
        p = SFX(dot2)(SFX(nibbles)(blk + 2), q, l);
        *c -= 8.0f * dw * a->s[b];
    } else if (type == RD_Q4_1) {                    /* w = d·q + m: m·Σx = m·s */
        const uint8_t *blk = w + 20 * b;
        dw = SFX(h2f)(blk);
        p = SFX(dot2)(SFX(nibbles)(blk + 4), q, l);
        *c += SFX(h2f)(blk + 2) * a->s[b];
    } else if (type == RD_Q5_0 || type == RD_Q5_1) { /* as Q4_0 / Q4_1, the nibble | 16·(bit j of qh) */
        const int o = type == RD_Q5_0 ? 2 : 4;
        const uint8_t *blk = w + (type == RD_Q5_0 ? 22 : 24) * b;
        uint32_t qh;
        memcpy(&qh, blk + o, 4);
        dw = SFX(h2f)(blk);
        p = SFX(dot2)(_mm256_or_si256(SFX(nibbles)(blk + o + 4), SFX(bits16)(qh)), q, l);
        if (type == RD_Q5_0) *c -= 16.0f * dw * a->s[b];
        else *c += SFX(h2f)(blk + 2) * a->s[b];
    } else {                                         /* Q8_0: |w|·(x·sign w), exact */
        const uint8_t *blk = w + 34 * b;
        dw = SFX(h2f)(blk);
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(blk + 2));
        p = SFX(dot2)(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(q, wv), _mm256_sign_epi8(l, wv));
    }
    return _mm256_mul_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * a->u[b]));
}
#endif

#if defined(__AVX512VNNI__)
/* Q4_0 / Q4_1 / Q5_0 / Q5_1 rows two blocks per 512-bit op (half the instructions of the 256-bit
 * loop, which is instruction-bound on this work).  Per pair: [d0, c0, d1, c1] from the block
 * headers (c = m for Q4_1 / Q5_1, d for Q4_0 / Q5_0) times (u, s) pairs gives both blocks' scales
 * d·u and constant terms c·s.  Q5_x: the two blocks' qh, as one 64-bit mask, put 16 on the bytes
 * whose fifth bit is set. */
static inline __attribute__((always_inline)) float SFX(row_q4_512)(int type, const uint8_t *w, int nb, const rd_act *a) {
    const int q5 = type == RD_Q5_0 || type == RD_Q5_1, dm = type == RD_Q4_1 || type == RD_Q5_1;
    const int bs = type == RD_Q4_0 ? 18 : type == RD_Q4_1 ? 20 : type == RD_Q5_0 ? 22 : 24;
    const int ho = dm ? 4 : 2, qo = q5 ? ho + 4 : ho;               /* qh, qs offsets */
    const __m512i low4 = _mm512_set1_epi8(0x0F), s16 = _mm512_set1_epi8(16);
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m128 cacc = _mm_setzero_ps();
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        const uint8_t *b0 = w + (size_t)bs * b, *b1 = b0 + bs;
        uint32_t h0, h1;
        if (dm) {
            memcpy(&h0, b0, 4);
            memcpy(&h1, b1, 4);
        } else {
            uint16_t d0, d1;
            memcpy(&d0, b0, 2);
            memcpy(&d1, b1, 2);
            h0 = (uint32_t)d0 * 0x10001u, h1 = (uint32_t)d1 * 0x10001u;
        }
        const __m128 hdr = _mm_cvtph_ps(_mm_insert_epi32(_mm_cvtsi32_si128((int)h0), (int)h1, 1));
        const __m128 prod = _mm_mul_ps(hdr, _mm_loadu_ps(a->us + 2 * b));     /* d0·u0, c0·s0, d1·u1, c1·s1 */
        cacc = _mm_add_ps(cacc, prod);
        const __m512 scale = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(prod));
        const __m256i t = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(b0 + qo))),
                                                  _mm_loadu_si128((const __m128i *)(b1 + qo)), 1);
        __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(t), _mm256_srli_epi16(t, 4), 1);
        z = _mm512_and_si512(_mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0)), low4);  /* lo0 hi0 lo1 hi1 */
        if (q5) {
            uint32_t qh0, qh1;
            memcpy(&qh0, b0 + ho, 4);
            memcpy(&qh1, b1 + ho, 4);
            z = _mm512_or_si512(z, _mm512_maskz_mov_epi8((__mmask64)qh0 | (__mmask64)qh1 << 32, s16));
        }
        const __m512i q = _mm512_loadu_si512(a->q + 32 * b), l = _mm512_loadu_si512(a->l + 32 * b);
        const __m512i p = _mm512_dpbusd_epi32(_mm512_slli_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), z, q), 7), z, l);
        if (b & 2) acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, acc1);
        else acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, acc0);
    }
    float c = _mm_cvtss_f32(_mm_shuffle_ps(cacc, cacc, 1)) + _mm_cvtss_f32(_mm_shuffle_ps(cacc, cacc, 3));
    if (type == RD_Q4_0) c *= -8.0f;
    else if (type == RD_Q5_0) c *= -16.0f;
    float y = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    if (b < nb) {                                                   /* odd block count */
        const __m256 r = SFX(block)(type, w, b, a, &c);
        y += SFX(hsum)(r);
    }
    return y + c;
}
#endif

/* ---- K-quants: super-blocks of 256 = 8 activation blocks of 32 ------------------------------ */

/* Q4_K / Q5_K's 12 scale bytes -> scales in sm[0..7], mins in sm[8..15] (ggml's utmp shuffle) */
static inline void SFX(k_scale_min)(const uint8_t *p, uint8_t *sm) {
    uint32_t t[4];
    memcpy(t, p, 12);
    t[3] = ((t[2] >> 4) & 0x0f0f0f0fu) | (((t[1] >> 6) & 0x03030303u) << 4);
    const uint32_t m = t[1] & 0x3f3f3f3fu;
    t[1] = (t[2] & 0x0f0f0f0fu) | (((t[0] >> 6) & 0x03030303u) << 4);
    t[2] = m;
    t[0] &= 0x3f3f3f3fu;
    memcpy(sm, t, 16);
}

#if defined(__AVX2__)
/* Q4_K (144 bytes: f16 d, f16 dmin, scales[12], qs[128]) and Q5_K (176: ..., qh[32], qs[128]):
 * sub-block j of 32 is w = d·sc_j·q - dmin·m_j, q = nibble (+ 16·bit j of qh for Q5_K); nibbles:
 * qs[32·(j/2) + i], low for even j, high for odd.  Activation block b = 8·sb + j, so a sub-block's
 * dot is (d·sc_j·u_b)·Σq·x_i - dmin·m_j·s_b. */
static inline float SFX(row_q45k)(int type, const uint8_t *w, int nsb, const rd_act *a) {
    const int bs = type == RD_Q4_K ? 144 : 176, qo = type == RD_Q4_K ? 16 : 48;
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), cacc = _mm256_setzero_ps();
    for (int sb = 0; sb < nsb; sb++) {
        const uint8_t *blk = w + (size_t)bs * sb;
        const int b0 = 8 * sb;
        uint8_t sm[16];
        SFX(k_scale_min)(blk + 4, sm);
        const __m256i smi = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)sm));
        const __m256i mni = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(sm + 8)));
        const __m256 scv = _mm256_mul_ps(_mm256_set1_ps(SFX(h2f)(blk)),
                                         _mm256_mul_ps(_mm256_cvtepi32_ps(smi), _mm256_loadu_ps(a->u + b0)));
        cacc = _mm256_fmadd_ps(_mm256_set1_ps(SFX(h2f)(blk + 2)),
                               _mm256_mul_ps(_mm256_cvtepi32_ps(mni), _mm256_loadu_ps(a->s + b0)), cacc);
        float sc[8];
        _mm256_storeu_ps(sc, scv);
        const __m256i qh = type == RD_Q5_K ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(blk + qo + 32 * k));
            __m256i lo = _mm256_and_si256(v, low4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
            if (type == RD_Q5_K) {
                const __m256i m0 = _mm256_set1_epi8((char)(1 << (2 * k))), m1 = _mm256_set1_epi8((char)(2 << (2 * k)));
                const __m256i s16 = _mm256_set1_epi8(16);
                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, m0), m0), s16));
                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, m1), m1), s16));
            }
            const int b = b0 + 2 * k;
            const __m256i p0 = SFX(dot2)(lo, _mm256_loadu_si256((const __m256i *)(a->q + 32 * b)),
                                         _mm256_loadu_si256((const __m256i *)(a->l + 32 * b)));
            const __m256i p1 = SFX(dot2)(hi, _mm256_loadu_si256((const __m256i *)(a->q + 32 * b + 32)),
                                         _mm256_loadu_si256((const __m256i *)(a->l + 32 * b + 32)));
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(sc[2 * k]), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(sc[2 * k + 1]), acc1);
        }
    }
    return SFX(hsum)(_mm256_add_ps(acc0, acc1)) - SFX(hsum)(cacc);
}

/* Q6_K (210 bytes: ql[128], qh[64], i8 scales[16], f16 d): 16 sub-blocks of 16, w = d·sc·(q - 32),
 * q = 4 bits of ql | 2 bits of qh << 4.  Half h (128 values) uses ql[64h..], qh[32h..], sc[8h..];
 * its activation block j (0..3) takes ql[64h + 32·(j&1) + i] (low nibble for j < 2, high after)
 * and bits 2j..2j+1 of qh[32h + i], with scale sc[8h + 2j] for i < 16 and sc[8h + 2j + 1] after.
 * q - 32 is signed: it goes in as |w| against x·sign(w), as Q8_0 does (exact). */
static inline float SFX(row_q6k)(const uint8_t *w, int nsb, const rd_act *a) {
    const __m256i low4 = _mm256_set1_epi8(0x0F), three = _mm256_set1_epi8(3), k32 = _mm256_set1_epi8(32);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int sb = 0; sb < nsb; sb++) {
        const uint8_t *blk = w + (size_t)210 * sb;
        const float d = SFX(h2f)(blk + 208);
        const int8_t *scs = (const int8_t *)(blk + 192);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = blk + 64 * h;
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * h));
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)ql), l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            /* d·sc for this half's 8 sub-blocks, then per activation block ·u */
            const __m256 dsc = _mm256_mul_ps(_mm256_set1_ps(d),
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(scs + 8 * h)))));
            float ds[8];
            _mm256_storeu_ps(ds, dsc);
            const __m256i nib[4] = {_mm256_and_si256(l0, low4), _mm256_and_si256(l1, low4),
                                    _mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                                    _mm256_and_si256(_mm256_srli_epi16(l1, 4), low4)};
            for (int j = 0; j < 4; j++) {
                const int b = 8 * sb + 4 * h + j;
                const __m256i hb = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * j), three), 4);
                const __m256i wv = _mm256_sub_epi8(_mm256_or_si256(nib[j], hb), k32);
                const __m256i q = _mm256_loadu_si256((const __m256i *)(a->q + 32 * b));
                const __m256i l = _mm256_loadu_si256((const __m256i *)(a->l + 32 * b));
                const __m256i p = SFX(dot2)(_mm256_abs_epi8(wv), _mm256_sign_epi8(q, wv), _mm256_sign_epi8(l, wv));
                const float u = a->u[b];
                const __m256 sv = _mm256_set_m128(_mm_set1_ps(ds[2 * j + 1] * u), _mm_set1_ps(ds[2 * j] * u));
                if (j & 1) acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sv, acc1);
                else acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sv, acc0);
            }
        }
    }
    return SFX(hsum)(_mm256_add_ps(acc0, acc1));
}
#else
static float SFX(row_q45k)(int type, const uint8_t *w, int nsb, const rd_act *a) {
    const int bs = type == RD_Q4_K ? 144 : 176, qo = type == RD_Q4_K ? 16 : 48;
    float acc = 0.0f, c = 0.0f;
    for (int sb = 0; sb < nsb; sb++) {
        const uint8_t *blk = w + (size_t)bs * sb, *qs = blk + qo, *qh = blk + 16;
        const float d = SFX(h2f)(blk), dmin = SFX(h2f)(blk + 2);
        uint8_t sm[16];
        SFX(k_scale_min)(blk + 4, sm);
        for (int j = 0; j < 8; j++) {
            const int b = 8 * sb + j, sh = (j & 1) * 4;
            const int8_t *q = a->q + 32 * b, *l = a->l + 32 * b;
            int iq = 0, il = 0;
            for (int i = 0; i < 32; i++) {
                int v = (qs[32 * (j / 2) + i] >> sh) & 15;
                if (type == RD_Q5_K) v |= ((qh[i] >> j) & 1) << 4;
                iq += v * q[i];
                il += v * l[i];
            }
            acc += d * (float)sm[j] * a->u[b] * (float)(128 * iq + il);
            c += dmin * (float)sm[8 + j] * a->s[b];
        }
    }
    return acc - c;
}

static float SFX(row_q6k)(const uint8_t *w, int nsb, const rd_act *a) {
    float acc = 0.0f;
    for (int sb = 0; sb < nsb; sb++) {
        const uint8_t *blk = w + (size_t)210 * sb;
        const float d = SFX(h2f)(blk + 208);
        const int8_t *scs = (const int8_t *)(blk + 192);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = blk + 64 * h, *qh = blk + 128 + 32 * h;
            for (int j = 0; j < 4; j++) {
                const int b = 8 * sb + 4 * h + j;
                const int8_t *q = a->q + 32 * b, *l = a->l + 32 * b;
                for (int half = 0; half < 2; half++) {
                    int iq = 0, il = 0;
                    for (int i = 16 * half; i < 16 * half + 16; i++) {
                        const int v = (((ql[32 * (j & 1) + i] >> (4 * (j >> 1))) & 15) | (((qh[i] >> (2 * j)) & 3) << 4)) - 32;
                        iq += v * q[i];
                        il += v * l[i];
                    }
                    acc += d * (float)scs[8 * h + 2 * j + half] * a->u[b] * (float)(128 * iq + il);
                }
            }
        }
    }
    return acc;
}
#endif


#if defined(__AVX512VNNI__)
/* The K-quants two activation blocks per 512-bit op (as row_q4_512): Q4_K/Q5_K's 32 bytes of qs
 * hold sub-blocks 2k (low nibbles) and 2k + 1 (high), whose activations are 64 contiguous bytes. */
static inline float SFX(row_q45k_512)(int type, const uint8_t *w, int nsb, const rd_act *a) {
    const int bs = type == RD_Q4_K ? 144 : 176, qo = type == RD_Q4_K ? 16 : 48;
    const __m512i low4 = _mm512_set1_epi8(0x0F), s16 = _mm512_set1_epi8(16);
    const __m512i pair = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m256 cacc = _mm256_setzero_ps();
    for (int sb = 0; sb < nsb; sb++) {
        const uint8_t *blk = w + (size_t)bs * sb;
        const int b0 = 8 * sb;
        uint8_t sm[16];
        SFX(k_scale_min)(blk + 4, sm);
        const __m256i smi = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)sm));
        const __m256i mni = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(sm + 8)));
        const __m512 scv = _mm512_castps256_ps512(_mm256_mul_ps(_mm256_set1_ps(SFX(h2f)(blk)),
                                         _mm256_mul_ps(_mm256_cvtepi32_ps(smi), _mm256_loadu_ps(a->u + b0))));
        cacc = _mm256_fmadd_ps(_mm256_set1_ps(SFX(h2f)(blk + 2)),
                               _mm256_mul_ps(_mm256_cvtepi32_ps(mni), _mm256_loadu_ps(a->s + b0)), cacc);
        const __m512i qh = type == RD_Q5_K ? _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 16)))
                                           : _mm512_setzero_si512();
        for (int k = 0; k < 4; k++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(blk + qo + 32 * k));
            __m512i z = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1), low4);
            if (type == RD_Q5_K) {
                const __m512i m = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (2 * k))),
                                                     _mm256_set1_epi8((char)(2 << (2 * k))), 1);
                z = _mm512_or_si512(z, _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(qh, m), s16));
            }
            const int b = b0 + 2 * k;
            const __m512i q = _mm512_loadu_si512(a->q + 32 * b), l = _mm512_loadu_si512(a->l + 32 * b);
            const __m512i p = _mm512_dpbusd_epi32(_mm512_slli_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), z, q), 7), z, l);
            const __m512 scale = _mm512_permutexvar_ps(_mm512_add_epi32(pair, _mm512_set1_epi32(2 * k)), scv);
            if (k & 1) acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, acc1);
            else acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, acc0);
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) - SFX(hsum)(cacc);
}

/* Q6_K, activation blocks (0, 1) and (2, 3) of each half together; AVX-512 has no sign_epi8, so
 * x·sign(w) is a masked negation */
static inline float SFX(row_q6k_512)(const uint8_t *w, int nsb, const rd_act *a) {
    const __m512i low4 = _mm512_set1_epi8(0x0F), three = _mm512_set1_epi8(3), k32 = _mm512_set1_epi8(32);
    const __m512i zero = _mm512_setzero_si512();
    const __m512i sh01 = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    const __m512i sh23 = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(6), 1);
    const __m256i uexp = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    const __m512i quad = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (int sb = 0; sb < nsb; sb++) {
        const uint8_t *blk = w + (size_t)210 * sb;
        const __m256 d = _mm256_set1_ps(SFX(h2f)(blk + 208));
        const int8_t *scs = (const int8_t *)(blk + 192);
        for (int h = 0; h < 2; h++) {
            const int b = 8 * sb + 4 * h;
            const uint8_t *ql = blk + 64 * h;
            const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * h)));
            const __m512i lq = _mm512_loadu_si512(ql);                 /* [ql 0..31 | ql 32..63] */
            /* (d·sc_i)·u_(block of i) for the half's 8 sub-blocks of 16 */
            const __m256 u = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(a->u + b)), uexp);
            const __m512 dsu = _mm512_castps256_ps512(_mm256_mul_ps(_mm256_mul_ps(d,
                _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(scs + 8 * h))))), u));
            for (int jp = 0; jp < 2; jp++) {                          /* blocks 2jp, 2jp + 1 */
                const __m512i nib = jp ? _mm512_and_si512(_mm512_srli_epi16(lq, 4), low4) : _mm512_and_si512(lq, low4);
                const __m512i hb = _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(qh, jp ? sh23 : sh01), three), 4);
                const __m512i wv = _mm512_sub_epi8(_mm512_or_si512(nib, hb), k32);
                const __mmask64 neg = _mm512_movepi8_mask(wv);
                const __m512i aw = _mm512_abs_epi8(wv);
                const int bb = b + 2 * jp;
                const __m512i q = _mm512_loadu_si512(a->q + 32 * bb), l = _mm512_loadu_si512(a->l + 32 * bb);
                const __m512i sq = _mm512_mask_sub_epi8(q, neg, zero, q), sl = _mm512_mask_sub_epi8(l, neg, zero, l);
                const __m512i p = _mm512_dpbusd_epi32(_mm512_slli_epi32(_mm512_dpbusd_epi32(zero, aw, sq), 7), aw, sl);
                const __m512 scale = _mm512_permutexvar_ps(_mm512_add_epi32(quad, _mm512_set1_epi32(4 * jp)), dsu);
                if (jp) acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, acc1);
                else acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, acc0);
            }
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}
#endif

/* One row of W against the quantized x: nb blocks at w.  Rows go one at a time, in memory order:
 * interleaving several rows (to share the x loads) defeats the hardware prefetcher on weights
 * that stream from DRAM, which costs 4x more than the loads it saves. */
static inline __attribute__((always_inline)) float SFX(row)(int type, const uint8_t *w, int nb, const rd_act *a) {
#if defined(__AVX512VNNI__)
    if (type != RD_Q8_0) return SFX(row_q4_512)(type, w, nb, a);
#endif
#if defined(__AVX2__)
    /* two independent chains: one accumulator would wait on the previous block's add */
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float c0 = 0.0f, c1 = 0.0f;
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        acc0 = _mm256_add_ps(acc0, SFX(block)(type, w, b, a, &c0));
        acc1 = _mm256_add_ps(acc1, SFX(block)(type, w, b + 1, a, &c1));
    }
    if (b < nb) acc0 = _mm256_add_ps(acc0, SFX(block)(type, w, b, a, &c0));
    return SFX(hsum)(_mm256_add_ps(acc0, acc1)) + (c0 + c1);
#else
    float acc = 0.0f;
    for (int b = 0; b < nb; b++) {
        const int8_t *q = a->q + 32 * b, *l = a->l + 32 * b;
        int iq = 0, il = 0;
        if (type == RD_Q4_0 || type == RD_Q4_1) {
            const int off = type == RD_Q4_0 ? 2 : 4;
            const uint8_t *blk = w + (type == RD_Q4_0 ? 18 : 20) * b;
            for (int i = 0; i < 16; i++) {
                const int lo = blk[off + i] & 15, hi = blk[off + i] >> 4;
                iq += lo * q[i] + hi * q[i + 16];
                il += lo * l[i] + hi * l[i + 16];
            }
            const float dw = SFX(h2f)(blk);
            acc += dw * a->u[b] * (float)(128 * iq + il) + (type == RD_Q4_0 ? -8.0f * dw : SFX(h2f)(blk + 2)) * a->s[b];
        } else if (type == RD_Q5_0 || type == RD_Q5_1) {
            const int off = type == RD_Q5_0 ? 2 : 4;
            const uint8_t *blk = w + (type == RD_Q5_0 ? 22 : 24) * b;
            uint8_t v[32];                          /* unpacked first: these loops vectorize */
            for (int i = 0; i < 16; i++) {
                v[i] = blk[off + 4 + i] & 15;
                v[i + 16] = blk[off + 4 + i] >> 4;
            }
            uint64_t hb[4];
            for (int k = 0; k < 4; k++) hb[k] = rd_b2b16[blk[off + k]];
            uint8_t h[32];
            memcpy(h, hb, 32);                      /* little-endian: byte j = 16·(bit j of qh) */
            for (int j = 0; j < 32; j++) v[j] |= h[j];
            for (int j = 0; j < 32; j++) {
                iq += v[j] * q[j];
                il += v[j] * l[j];
            }
            const float dw = SFX(h2f)(blk);
            acc += dw * a->u[b] * (float)(128 * iq + il) + (type == RD_Q5_0 ? -16.0f * dw : SFX(h2f)(blk + 2)) * a->s[b];
        } else {
            const uint8_t *blk = w + 34 * b;
            const int8_t *wq = (const int8_t *)(blk + 2);
            for (int i = 0; i < 32; i++) {
                iq += wq[i] * q[i];
                il += wq[i] * l[i];
            }
            acc += SFX(h2f)(blk) * a->u[b] * (float)(128 * iq + il);
        }
    }
    return acc;
#endif
}

/* rows [r0, r1) of W (N x K, type) · quantized x -> y[r - r0] */
static void SFX(gemv)(int type, const uint8_t *W, size_t rb, int K, int r0, int r1, const rd_act *a, float *y) {
    const int nb = K / 32;
    if (type == RD_Q4_0)
        for (int r = r0; r < r1; r++) y[r - r0] = SFX(row)(RD_Q4_0, W + r * rb, nb, a);
    else if (type == RD_Q4_1)
        for (int r = r0; r < r1; r++) y[r - r0] = SFX(row)(RD_Q4_1, W + r * rb, nb, a);
    else if (type == RD_Q5_0)
        for (int r = r0; r < r1; r++) y[r - r0] = SFX(row)(RD_Q5_0, W + r * rb, nb, a);
    else if (type == RD_Q5_1)
        for (int r = r0; r < r1; r++) y[r - r0] = SFX(row)(RD_Q5_1, W + r * rb, nb, a);
    else if (type == RD_Q8_0)
        for (int r = r0; r < r1; r++) y[r - r0] = SFX(row)(RD_Q8_0, W + r * rb, nb, a);
#if defined(__AVX512VNNI__)
    else if (type == RD_Q4_K)
        for (int r = r0; r < r1; r++) y[r - r0] = SFX(row_q45k_512)(RD_Q4_K, W + r * rb, nb / 8, a);
    else if (type == RD_Q5_K)
        for (int r = r0; r < r1; r++) y[r - r0] = SFX(row_q45k_512)(RD_Q5_K, W + r * rb, nb / 8, a);
    else
        for (int r = r0; r < r1; r++) y[r - r0] = SFX(row_q6k_512)(W + r * rb, nb / 8, a);
#else
    else if (type == RD_Q4_K)
        for (int r = r0; r < r1; r++) y[r - r0] = SFX(row_q45k)(RD_Q4_K, W + r * rb, nb / 8, a);
    else if (type == RD_Q5_K)
        for (int r = r0; r < r1; r++) y[r - r0] = SFX(row_q45k)(RD_Q5_K, W + r * rb, nb / 8, a);
    else
        for (int r = r0; r < r1; r++) y[r - r0] = SFX(row_q6k)(W + r * rb, nb / 8, a);
#endif
}

/* ---- f32 pieces of the layer (plain loops: the target decides the vector width) ------------- */

/* h = x / rms(x) · w, in HF's order (x·r, then ·w) */
static void SFX(rmsnorm)(const float *x, const float *w, int D, float eps, float *h) {
    float ss = 0.0f;
#pragma omp simd reduction(+:ss)
    for (int i = 0; i < D; i++) ss += x[i] * x[i];
    const float r = 1.0f / sqrtf(ss / (float)D + eps);
#pragma omp simd
    for (int i = 0; i < D; i++) h[i] = (x[i] * r) * w[i];
}

/* one query head over S = pos + 1 positions: cached [0, pos) plus the current k/v (not yet
 * read back from the cache, so readers never wait for the thread that writes it) */
static void SFX(attend)(const float *q, const float *kc, const float *vc, const float *kcur, const float *vcur,
                        int pos, int Dh, float scale, float *sc, float *out) {
    float mx = -INFINITY;
    for (int s = 0; s <= pos; s++) {
        const float *k = s < pos ? kc + (size_t)s * Dh : kcur;
        float dot = 0.0f;
#pragma omp simd reduction(+:dot)
        for (int i = 0; i < Dh; i++) dot += q[i] * k[i];
        sc[s] = dot * scale;
        mx = fmaxf(mx, sc[s]);
    }
    float sum = 0.0f;
#pragma omp simd reduction(+:sum)
    for (int s = 0; s <= pos; s++) {
        sc[s] = rd_expf(sc[s] - mx);
        sum += sc[s];
    }
    for (int i = 0; i < Dh; i++) out[i] = 0.0f;
    for (int s = 0; s <= pos; s++) {
        const float *v = s < pos ? vc + (size_t)s * Dh : vcur;
        const float p = sc[s];
#pragma omp simd
        for (int i = 0; i < Dh; i++) out[i] += p * v[i];
    }
    const float inv = 1.0f / sum;
#pragma omp simd
    for (int i = 0; i < Dh; i++) out[i] *= inv;
}

/* a[i] = silu(g[i])·u[i] */
static void SFX(swiglu)(const float *g, const float *u, int n, float *a) {
#pragma omp simd
    for (int i = 0; i < n; i++) a[i] = g[i] / (1.0f + rd_expf(-g[i])) * u[i];
}

static const rd_kernels SFX(kernels) = {
    SFX(quantize), SFX(gemv), SFX(rmsnorm), SFX(attend), SFX(swiglu),
};
