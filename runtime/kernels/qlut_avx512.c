/* AVX-512 VBMI LUT kernels (Zen 4, Ice Lake and later).
 *
 * Tables hold 64/128/256 byte entries. One look-up instruction serves 64 output channels:
 *   K <= 64   vpermb     (one zmm table)
 *   K <= 128  vpermi2b   (two zmm tables)
 *   K <= 256  2x vpermi2b, blended on the index's top bit
 * Byte results are summed without widening instructions: the 64 bytes are added as 32 words
 * into one accumulator and their high bytes (>> 8) into a second. Channels were permuted at
 * prepare time (qlut_block_pos) so low bytes are channels 0..31 and high bytes 32..63; the low
 * bytes' sum is recovered as words - (high << 8). A byte is <= 255, so 256 terms fit 16 bits:
 * the 16-bit sums move to 32 bits every <= 256 terms.
 * Compiled without -march: every function carries the target attribute and is only reached
 * after qcnn_isa_detect() said the CPU and OS support it. */
#include "qlut_internal.h"

#if QLUT_X86
#include <immintrin.h>

#include "vnni_x86.h"
#include <math.h>
#include <string.h>

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi")))
#define INLINE static inline __attribute__((always_inline))

/* ------------------------------------------------------------------ float tables
 * A table is the Kp dot products of one input pixel's subspace with that subspace's codewords.
 * Builds run (group, subspace) outer so the codebook stays in L1 across all pixels, and P pixels
 * at a time so each codebook vector loaded serves P pixels. Two kinds of products:
 *  - fp32 FMAs (any AVX-512 CPU);
 *  - bf16 pairs (vdpbf16ps, AVX512_BF16: Zen 4, Sapphire Rapids, Cooper Lake): 16 pairs of bf16
 *    products added to 16 floats, 32 multiply-adds per instruction against an FMA's 16 at the
 *    same throughput. The subspace's input channels are rounded to bf16 16 at a time, and each
 *    pair (x[2j], x[2j+1]) is broadcast against q->cbh, the codewords' matching pairs. An odd last
 *    pair's second input is a masked-off zero and its codeword entry zero. Sums stay fp32; each
 *    term is off by a relative <= 2^-8. */
#define T512BF __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512bf16")))

/* acc[i][v] = the 16v..16v+15 entries of pixel i's table, fp32 products. */
INLINE T512 void dot_fp32(__m512 acc[4][16], const float *x, size_t xstride, int nc, const float *cb,
                          int Kp, const int NV, const int P) {
    for (int i = 0; i < P; i++)
        for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
    for (int c = 0; c < nc; c++) {
        const float *d = cb + (size_t)c * Kp;
        for (int v = 0; v < NV; v++) {
            const __m512 dv = _mm512_load_ps(d + 16 * v);
            for (int i = 0; i < P; i++)
                acc[i][v] = _mm512_fmadd_ps(_mm512_set1_ps(x[i * xstride + c]), dv, acc[i][v]);
        }
    }
}

/* The same with bf16 products; cbh: the codebook's bf16 pairs [ceil(nc/2)][Kp][2]. */
INLINE T512BF void dot_bf16(__m512 acc[4][16], const float *x, size_t xstride, int nc,
                            const uint16_t *cbh, int Kp, const int NV, const int P) {
    for (int i = 0; i < P; i++)
        for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
    for (int c0 = 0; c0 < nc; c0 += 16) {
        const int n = nc - c0 < 16 ? nc - c0 : 16;
        uint32_t xp[4][8] __attribute__((aligned(32))); /* pixel i's pair j, as a 32-bit word */
        for (int i = 0; i < P; i++) {
            const __m512 xv = _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), x + i * xstride + c0);
            _mm256_store_si256((__m256i *)xp[i], (__m256i)_mm512_cvtneps_pbh(xv));
        }
        for (int j = 0; j < (n + 1) / 2; j++) {
            const uint16_t *d = cbh + (size_t)(c0 / 2 + j) * Kp * 2;
            for (int v = 0; v < NV; v++) {
                const __m512bh dv = (__m512bh)_mm512_load_si512(d + 32 * v);
                for (int i = 0; i < P; i++)
                    acc[i][v] = _mm512_dpbf16_ps(acc[i][v], (__m512bh)_mm512_set1_epi32((int)xp[i][j]), dv);
            }
        }
    }
}

/* r[i] = min (or max) over the 16 lanes of v[i]: a butterfly that halves the vector count and
 * the lanes per table at each of 4 levels (45 ops for 16 tables, against ~8 per table for one
 * _mm512_reduce_min_ps each). */
INLINE T512 __m512 reduce16(const __m512 *v, const int is_max) {
#define OP(a, b) (is_max ? _mm512_max_ps(a, b) : _mm512_min_ps(a, b))
    __m512 w[8], u[4], s[2];
    for (int i = 0; i < 8; i++) /* 128-bit lanes 0,1 hold table 2i, lanes 2,3 table 2i+1 */
        w[i] = OP(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                  _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++) /* lane l holds table 4i + l */
        u[i] = OP(_mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0x88),
                  _mm512_shuffle_f32x4(w[2 * i], w[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++) /* lane l: 2 floats of table 8i + l, 2 of table 8i + 4 + l */
        s[i] = OP(_mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0x44),
                  _mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0xEE));
    /* lane l: tables l, 4 + l, 8 + l, 12 + l; permute to table order */
    const __m512 r = OP(_mm512_shuffle_ps(s[0], s[1], 0x88), _mm512_shuffle_ps(s[0], s[1], 0xDD));
#undef OP
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), r);
}

/* One pixel (FC): no codebook to share between pixels, and a table is only Cs x NV FMAs, so the
 * per-table horizontal min/max dominated (fc8: 1 FMA per table). Here 16 consecutive subspaces
 * are built, then folded together by reduce16; their minima are contiguous in tmin. Same sums
 * (0 + x0*d0 + x1*d1 ...) and, min/max being exact, the same minima and largest range. */
INLINE T512 float build_fc(const qcnn_qconv_prepared *q, const float *x, float *Lf, float *tmin,
                           const int NV) {
    const int M = q->M, Cs = q->Cs, Kp = q->Kp, Cg = q->Cg;
    __m512 maxr = _mm512_setzero_ps();
    for (int m0 = 0; m0 < M; m0 += 16) {
        const int nt = M - m0 < 16 ? M - m0 : 16;
        __m512 mn[16], mx[16];
        for (int j = 0; j < 16; j++) {
            const int m = m0 + (j < nt ? j : 0); /* unused slots repeat table m0: no effect */
            const int nc = Cg - m * Cs < Cs ? Cg - m * Cs : Cs;
            const float *cb = q->cbt + (size_t)m * Cs * Kp, *xs = x + (size_t)m * Cs;
            __m512 acc[2];
            for (int v = 0; v < NV; v++) acc[v] = _mm512_setzero_ps();
            for (int c = 0; c < nc; c++)
                for (int v = 0; v < NV; v++)
                    acc[v] = _mm512_fmadd_ps(_mm512_set1_ps(xs[c]), _mm512_load_ps(cb + (size_t)c * Kp + 16 * v), acc[v]);
            mn[j] = mx[j] = acc[0];
            for (int v = 0; v < NV; v++) {
                if (j < nt) _mm512_store_ps(Lf + (size_t)m * Kp + 16 * v, acc[v]);
                if (v) {
                    mn[j] = _mm512_min_ps(mn[j], acc[v]);
                    mx[j] = _mm512_max_ps(mx[j], acc[v]);
                }
            }
        }
        const __m512 lo = reduce16(mn, 0), hi = reduce16(mx, 1);
        /* max(r, maxr) keeps maxr when r is NaN, like the scalar `r > maxr ? r : maxr`. */
        maxr = _mm512_max_ps(_mm512_sub_ps(hi, lo), maxr);
        _mm512_mask_storeu_ps(tmin + m0, (__mmask16)((1u << nt) - 1), lo);
    }
    return _mm512_reduce_max_ps(maxr);
}

/* A table's minimum; t: its NV vectors. */
INLINE T512 float table_min(const __m512 *t, const int NV) {
    __m512 mn = t[0];
    for (int v = 1; v < NV; v++) mn = _mm512_min_ps(mn, t[v]);
    return _mm512_reduce_min_ps(mn);
}

/* A table's minimum (returned) and its max - min range (*range). */
INLINE T512 float table_min_range(const __m512 *t, const int NV, float *range) {
    __m512 mx = t[0];
    for (int v = 1; v < NV; v++) mx = _mm512_max_ps(mx, t[v]);
    const float lo = table_min(t, NV);
    *range = _mm512_reduce_max_ps(mx) - lo;
    return lo;
}

/* Stores P tables (pixel i's at L + i * Lstride) and their minima (tmin[i * tstride]); returns
 * the largest of their ranges. */
INLINE T512 float store_tables(__m512 acc[4][16], float *L, size_t Lstride, float *tmin, size_t tstride,
                               const int NV, const int P) {
    float maxr = 0.0f;
    for (int i = 0; i < P; i++) {
        for (int v = 0; v < NV; v++) _mm512_store_ps(L + i * Lstride + 16 * v, acc[i][v]);
        float r;
        tmin[i * tstride] = table_min_range(acc[i], NV, &r);
        maxr = r > maxr ? r : maxr;
    }
    return maxr;
}

/* A table entry's code: round-to-nearest-even((L - min) * inv), the product unrounded, as the
 * generic quant1() and the AVX2 kernel compute it. One FMA of d = L - min onto 1.5 * 2^23 leaves
 * the code in the float's low mantissa bits: the low byte of each dword is the code, with no
 * convert, clamp or pack. No clamp is needed: every caller's step covers the range of the tables
 * it quantizes, so d * inv <= 255 plus an ulp, which rounds to 255 (a guessed row step that
 * does not is redone, bytes and all). Subtracting min first keeps the code's low bits where
 * tables sit far from zero: folding it into the FMA's addend (L * inv - min * inv) raised
 * AlexNet's int8 output error 0.165 -> 0.217 (3 photos, seeded weights). On Zen 4 the switch
 * from clamp, truncate and packs took VGG conv3_2's table build + quantize (bf16 products,
 * guessed row steps, C harness) 2.47 -> 2.07 ms, with quant_tables' range from the same d. */
INLINE T512 __m512i codes16(__m512 d, __m512 vinv) {
    return _mm512_castps_si512(_mm512_fmadd_ps(d, vinv, _mm512_set1_ps(12582912.0f)));
}

/* vpermt2b selectors: byte 0 of each dword of vectors a, b to bytes 0..15, 16..31 (and of c, d
 * to bytes 32..47, 48..63). */
#define SEL4(j) 4 * (j), 4 * (j) + 4, 4 * (j) + 8, 4 * (j) + 12
static const uint8_t LOW_BYTES_AB[64] = {SEL4(0), SEL4(4), SEL4(8), SEL4(12), SEL4(16), SEL4(20), SEL4(24), SEL4(28)};
static const uint8_t LOW_BYTES_CD[64] = {[32] = SEL4(0), SEL4(4), SEL4(8), SEL4(12), SEL4(16), SEL4(20), SEL4(24), SEL4(28)};
#undef SEL4

/* The low bytes of 4 x 16 dwords (codes16) as 64 bytes in order. */
INLINE T512 __m512i gather_low_bytes(const __m512i c[4], __m512i sel_ab, __m512i sel_cd) {
    const __m512i ab = _mm512_permutex2var_epi8(c[0], sel_ab, c[1]);
    const __m512i cd = _mm512_permutex2var_epi8(c[2], sel_cd, c[3]);
    return _mm512_mask_blend_epi8((__mmask64)0xFFFFFFFF00000000ull, ab, cd);
}

/* Instead of store_tables, when the step is known before the build (a guessed row step,
 * qlut_generic.c): quantizes P tables straight from the accumulators into bytes (pixel i's at
 * lq + i * lqstride), so the float tables never go to memory. Stores the minima; returns the
 * largest range (the caller checks it against the guess). NV is a multiple of 4 (Kp >= 64). */
INLINE T512 float quant_tables(__m512 acc[4][16], uint8_t *lq, size_t lqstride, float *tmin, size_t tstride,
                               float inv, const int NV, const int P) {
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i sel_ab = _mm512_loadu_si512(LOW_BYTES_AB), sel_cd = _mm512_loadu_si512(LOW_BYTES_CD);
    float lo[4];
    for (int i = 0; i < P; i++) /* all minima first: their reductions overlap */
        lo[i] = tmin[i * tstride] = table_min(acc[i], NV);
    /* The largest range as the largest L - min: the same float as max(L) - min (rounding is
     * monotonic), from the differences the codes need anyway. */
    __m512 maxd = _mm512_setzero_ps();
    for (int i = 0; i < P; i++) {
        const __m512 vlo = _mm512_set1_ps(lo[i]);
        for (int v = 0; v + 4 <= NV; v += 4) {
            __m512i c4[4];
            for (int u = 0; u < 4; u++) {
                const __m512 d = _mm512_sub_ps(acc[i][v + u], vlo);
                maxd = _mm512_max_ps(d, maxd);
                c4[u] = codes16(d, vinv);
            }
            _mm512_storeu_si512(lq + i * lqstride + 16 * v, gather_low_bytes(c4, sel_ab, sel_cd));
        }
    }
    return _mm512_reduce_max_ps(maxd);
}

/* Every table of an h x w input: Lf[h*w][G][M][Kp], minima tmin[h*w][G][M]; returns the largest
 * range. One definition for both product kinds: NAME's target, dot function and codebook.
 * QUANT: quantize at `inv` into byte tables lq (same layout, bytes) instead of storing Lf. */
#define DEFINE_BUILD_ALL(NAME, TARGET, DOT, CB_TYPE, CB_OF)                                          \
    INLINE TARGET float NAME(const qcnn_qconv_prepared *q, const float *x, int h, int w, float *Lf,   \
                             float *tmin, float inv, uint8_t *lq, const int NV, const int P,         \
                             const int QUANT) {                                                      \
        const int G = q->p.groups, M = q->M, Cs = q->Cs, Kp = q->Kp, Cg = q->Cg, cin = q->p.cin;      \
        const size_t npix = (size_t)h * w, tstride = (size_t)G * M;                                  \
        float maxr = 0.0f;                                                                           \
        for (int g = 0; g < G; g++)                                                                  \
            for (int m = 0; m < M; m++) {                                                            \
                const size_t t0 = (size_t)g * M + m;                                                 \
                const int nc = Cg - m * Cs < Cs ? Cg - m * Cs : Cs; /* the last may be short */      \
                const CB_TYPE *cb = CB_OF(q, t0);                                                    \
                const float *xs = x + g * Cg + m * Cs;                                               \
                for (size_t pix = 0; pix < npix;) {                                                  \
                    /* P pixels at a time; a rest of 2 (P = 3) shares the codebook loads too:    \
                     * SqueezeNet's classifier runs in chunks of 2 pixels (build 0.297 -> 0.272 ms). */ \
                    const int n = pix + P <= npix ? P : P == 3 && pix + 2 <= npix ? 2 : 1;           \
                    __m512 acc[4][16];                                                               \
                    float r;                                                                         \
                    const size_t e0 = (pix * tstride + t0) * Kp; /* first entry, in Lf or lq */     \
                    float *tm = tmin + pix * tstride + t0;                                           \
                    if (n == P) {                                                                    \
                        DOT(acc, xs + pix * cin, cin, nc, cb, Kp, NV, P);                            \
                        r = QUANT ? quant_tables(acc, lq + e0, tstride * Kp, tm, tstride, inv, NV, P) \
                                  : store_tables(acc, Lf + e0, tstride * Kp, tm, tstride, NV, P);    \
                    } else if (P == 3 && n == 2) {                                                   \
                        DOT(acc, xs + pix * cin, cin, nc, cb, Kp, NV, 2);                            \
                        r = QUANT ? quant_tables(acc, lq + e0, tstride * Kp, tm, tstride, inv, NV, 2) \
                                  : store_tables(acc, Lf + e0, tstride * Kp, tm, tstride, NV, 2);    \
                    } else {                                                                         \
                        DOT(acc, xs + pix * cin, cin, nc, cb, Kp, NV, 1);                            \
                        r = QUANT ? quant_tables(acc, lq + e0, tstride * Kp, tm, tstride, inv, NV, 1) \
                                  : store_tables(acc, Lf + e0, tstride * Kp, tm, tstride, NV, 1);    \
                    }                                                                                \
                    maxr = r > maxr ? r : maxr;                                                      \
                    pix += n;                                                                        \
                }                                                                                    \
            }                                                                                        \
        return maxr;                                                                                 \
    }
#define CB_FP32(q, t) ((q)->cbt + (t) * (q)->Cs * (q)->Kp)

#define CB_BF16(q, t) ((q)->cbh + (t) * (((q)->Cs + 1) / 2) * (q)->Kp * 2)
DEFINE_BUILD_ALL(build_all, T512, dot_fp32, float, CB_FP32)
DEFINE_BUILD_ALL(build_all_bf16, T512BF, dot_bf16, uint16_t, CB_BF16)


/* ------------------------------------------------------------------ int8 table builds
 * Products u8 x s8 summed in fours into int32 (vpdpbusd: 64 multiply-adds per instruction, twice
 * vdpbf16ps's). Each pixel's input channels are rounded to 8 bits with one step per pixel:
 * non-negative pixels (after a ReLU) as u8 = round(x * 255 / max x), others as
 * round(x * 127 / max |x|) + 128, the offset taken back by starting the sums at
 * cb8_bias = -128 * the codeword's entry sum. The codewords are int8 at one step per subspace
 * (cb8_scale). The integer sums are exact; a table is sum * (pixel step * subspace step) in
 * fp32, then min/range/quantization as for the other builds. */
#define T512VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni")))

/* Rounds n pixels of x (cin floats each) to bytes xb[n][G][M][4 * quads] (channels past a
 * subspace's end zero), their steps to xstep[n] and whether they are offset by 128 to off[n]. */
static T512VNNI void quantize_inputs(const qcnn_qconv_prepared *q, const float *x, int n, uint8_t *xb,
                                     float *xstep, int *off) {
    const int G = q->p.groups, M = q->M, Cs = q->Cs, Cg = q->Cg, cin = q->p.cin;
    const int quads = (Cs + 3) / 4;
    const size_t pixb = (size_t)G * M * quads * 4;
    /* Subspaces of whole quads tile each group exactly: the bytes are the channels in order. */
    const int contiguous = Cs % 4 == 0 && Cg % Cs == 0;
    for (int i = 0; i < n; i++) {
        const float *xp = x + (size_t)i * cin;
        __m512 vmax = _mm512_set1_ps(-INFINITY), vmin = _mm512_set1_ps(INFINITY);
        __mmask16 nan = 0;
        for (int c = 0; c < cin; c += 16) {
            const __mmask16 mk = cin - c >= 16 ? 0xFFFF : (__mmask16)((1u << (cin - c)) - 1);
            const __m512 v = _mm512_maskz_loadu_ps(mk, xp + c);
            vmax = _mm512_mask_max_ps(vmax, mk, vmax, v);
            vmin = _mm512_mask_min_ps(vmin, mk, vmin, v);
            nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        }
        const float mx = _mm512_reduce_max_ps(vmax), mn = _mm512_reduce_min_ps(vmin);
        float inv, add;
        if (mn >= 0.0f) { /* also all zero */
            xstep[i] = mx / 255.0f;
            inv = mx > 0.0f ? 255.0f / mx : 0.0f;
            add = 0.0f;
            off[i] = 0;
        } else {
            const float a = mx > -mn ? mx : -mn;
            xstep[i] = a / 127.0f;
            inv = 127.0f / a;
            add = 128.0f;
            off[i] = 1;
        }
        if (nan) xstep[i] = NAN; /* NaN in: NaN tables out (max/min skip it) */
        uint8_t *d = xb + (size_t)i * pixb;
        const __m512 vinv = _mm512_set1_ps(inv), vadd = _mm512_set1_ps(add);
        if (contiguous) {
            /* x * inv + add rounds to 0..255: cvtepi32_epi8 keeps the right byte. One FMA, as
             * the fmaf below, so both layouts round alike. */
            for (int c = 0; c < cin; c += 16) {
                const __mmask16 mk = cin - c >= 16 ? 0xFFFF : (__mmask16)((1u << (cin - c)) - 1);
                const __m512 v = _mm512_maskz_loadu_ps(mk, xp + c);
                _mm_mask_storeu_epi8(d + c, mk, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(_mm512_fmadd_ps(v, vinv, vadd))));
            }
        } else {
            memset(d, 0, pixb);
            for (int g = 0; g < G; g++)
                for (int m = 0; m < M; m++) {
                    const int nc = Cg - m * Cs < Cs ? Cg - m * Cs : Cs;
                    for (int c = 0; c < nc; c++)
                        d[((size_t)g * M + m) * quads * 4 + c] =
                            (uint8_t)(int)lrintf(fmaf(xp[g * Cg + m * Cs + c], inv, add));
                }
        }
    }
}

/* P pixels' tables of subspace t: acc[i][v] as in dot_fp32. xb: pixel 0's bytes of this
 * subspace, pixb apart; cb8: the subspace's quads [quads][Kp][4]. */
INLINE T512VNNI void dot_int8(__m512 acc[4][16], const uint8_t *xb, size_t pixb, const float *xstep,
                              const int *off, int quads, const int8_t *cb8, const int32_t *bias,
                              float cstep, int Kp, const int NV, const int P, const int QUADS) {
    if (QUADS) quads = QUADS; /* known at compile time: the loop unrolls, the sums stay in registers */
    typedef int32_t quad_t __attribute__((may_alias, aligned(1)));
    /* the integer sums live in acc's registers (cast), then turn into floats in place */
    for (int i = 0; i < P; i++)
        for (int v = 0; v < NV; v++)
            acc[i][v] = _mm512_castsi512_ps(off[i] ? _mm512_load_si512(bias + 16 * v) : _mm512_setzero_si512());
    for (int j = 0; j < quads; j++) {
        const int8_t *d = cb8 + (size_t)j * Kp * 4;
        for (int v = 0; v < NV; v++) {
            const __m512i dv = _mm512_load_si512(d + 64 * v);
            for (int i = 0; i < P; i++) /* a broadcast memory operand: no register per pixel */
                acc[i][v] = _mm512_castsi512_ps(_mm512_dpbusd_epi32(
                    _mm512_castps_si512(acc[i][v]), _mm512_set1_epi32(*(const quad_t *)(xb + i * pixb + 4 * j)), dv));
        }
    }
    for (int i = 0; i < P; i++) {
        const __m512 sc = _mm512_set1_ps(xstep[i] * cstep);
        for (int v = 0; v < NV; v++) acc[i][v] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_castps_si512(acc[i][v])), sc);
    }
}

/* build_all's int8 twin: the inputs are rounded a chunk of pixels at a time, then built
 * (subspace outer, as there). */
INLINE T512VNNI float build_all_int8(const qcnn_qconv_prepared *q, const float *x, int h, int w, float *Lf,
                                     float *tmin, float inv, uint8_t *lq, const int NV, const int P,
                                     const int QUANT, const int QUADS) {
    const int G = q->p.groups, M = q->M, Kp = q->Kp, cin = q->p.cin, quads = (q->Cs + 3) / 4;
    const size_t npix = (size_t)h * w, tstride = (size_t)G * M, pixb = tstride * quads * 4;
    enum { MAX_CHUNK = 256 }; /* pixels per pass: keeps the stack use near 18 KB */
    uint8_t xb[QLUT_I8_CHUNK_BYTES] __attribute__((aligned(64)));
    float xstep[MAX_CHUNK];
    int off[MAX_CHUNK];
    size_t chunk = QLUT_I8_CHUNK_BYTES / pixb;
    chunk = chunk > MAX_CHUNK ? MAX_CHUNK : chunk < (size_t)P ? (size_t)P : chunk; /* prepare
                                                  checked that P = 3 pixels fit */
    float maxr = 0.0f;
    for (size_t p0 = 0; p0 < npix; p0 += chunk) {
        const int n = (int)(npix - p0 < chunk ? npix - p0 : chunk);
        quantize_inputs(q, x + p0 * cin, n, xb, xstep, off);
        /* The next pixels' inputs (the next chunk, or the caller's next segment, or the next
         * row: the image is contiguous) come from L3 or DRAM: ask for them now, while this
         * chunk's tables are built, rather than stall on them in quantize_inputs. */
        { /* addresses past the image are harmless: a prefetch never faults */
            const uintptr_t nx = (uintptr_t)(x + p0 * cin) + (size_t)n * cin * sizeof(float);
            for (size_t b = 0; b < (size_t)n * cin * sizeof(float); b += 64)
                _mm_prefetch((const char *)(nx + b), _MM_HINT_T0);
        }
        for (size_t t0 = 0; t0 < tstride; t0++) {
            const int8_t *cb = q->cb8 + t0 * quads * Kp * 4;
            const int32_t *bias = q->cb8_bias + t0 * Kp;
            const float cstep = q->cb8_scale[t0];
            for (int i = 0; i < n;) {
                const int b = i + P <= n ? P : P == 3 && i + 2 <= n ? 2 : 1;
                __m512 acc[4][16];
                float r;
                const size_t pix = p0 + i;
                const size_t e0 = (pix * tstride + t0) * Kp;
                float *tm = tmin + pix * tstride + t0;
                const uint8_t *xs = xb + (size_t)i * pixb + t0 * quads * 4;
                if (b == P) {
                    dot_int8(acc, xs, pixb, xstep + i, off + i, quads, cb, bias, cstep, Kp, NV, P, QUADS);
                    r = QUANT ? quant_tables(acc, lq + e0, tstride * Kp, tm, tstride, inv, NV, P)
                              : store_tables(acc, Lf + e0, tstride * Kp, tm, tstride, NV, P);
                } else if (P == 3 && b == 2) {
                    dot_int8(acc, xs, pixb, xstep + i, off + i, quads, cb, bias, cstep, Kp, NV, 2, QUADS);
                    r = QUANT ? quant_tables(acc, lq + e0, tstride * Kp, tm, tstride, inv, NV, 2)
                              : store_tables(acc, Lf + e0, tstride * Kp, tm, tstride, NV, 2);
                } else {
                    dot_int8(acc, xs, pixb, xstep + i, off + i, quads, cb, bias, cstep, Kp, NV, 1, QUADS);
                    r = QUANT ? quant_tables(acc, lq + e0, tstride * Kp, tm, tstride, inv, NV, 1)
                              : store_tables(acc, Lf + e0, tstride * Kp, tm, tstride, NV, 1);
                }
                maxr = r > maxr || r != r ? r : maxr; /* a NaN range (NaN inputs) is kept */
                i += b;
            }
        }
    }
    return maxr;
}

/* P pixels per block by table size: the accumulators (P x NV zmm) must stay in registers. */
#define BUILD_SWITCH(FN, q, x, h, w, Lf, tmin)                                                      \
    switch ((q)->Kp) {                                                                              \
    case 16: return FN(q, x, h, w, Lf, tmin, 0.0f, NULL, 1, 4, 0);                                  \
    case 32: return FN(q, x, h, w, Lf, tmin, 0.0f, NULL, 2, 4, 0);                                  \
    case 64: return FN(q, x, h, w, Lf, tmin, 0.0f, NULL, 4, 4, 0);                                  \
    case 128: return FN(q, x, h, w, Lf, tmin, 0.0f, NULL, 8, 3, 0);                                 \
    default: return FN(q, x, h, w, Lf, tmin, 0.0f, NULL, 16, 1, 0);                                \
    }
/* The same building straight into byte tables (conv layers: Kp is 64, 128 or 256). */
#define BUILD_QUANT_SWITCH(FN, q, x, h, w, inv, tmin, lq)                                            \
    switch ((q)->Kp) {                                                                              \
    case 64: return FN(q, x, h, w, NULL, tmin, inv, lq, 4, 4, 1);                                   \
    case 128: return FN(q, x, h, w, NULL, tmin, inv, lq, 8, 3, 1);                                  \
    default: return FN(q, x, h, w, NULL, tmin, inv, lq, 16, 1, 1);                                  \
    }

static T512BF float build_bf16(const qcnn_qconv_prepared *q, const float *x, int h, int w, float *Lf,
                               float *tmin) {
    BUILD_SWITCH(build_all_bf16, q, x, h, w, Lf, tmin)
}

static T512BF float build_quant_bf16(const qcnn_qconv_prepared *q, const float *x, int h, int w,
                                    float inv, float *tmin, uint8_t *lq) {
    BUILD_QUANT_SWITCH(build_all_bf16, q, x, h, w, inv, tmin, lq)
}

/* build_all_int8 with the quads per subspace fixed where they are 1 or 2 (C's <= 8). */
#define BUILD_ALL_INT8_1(q, x, h, w, Lf, tmin, inv, lq, NV, P, QUANT) \
    build_all_int8(q, x, h, w, Lf, tmin, inv, lq, NV, P, QUANT, 1)
#define BUILD_ALL_INT8_2(q, x, h, w, Lf, tmin, inv, lq, NV, P, QUANT) \
    build_all_int8(q, x, h, w, Lf, tmin, inv, lq, NV, P, QUANT, 2)
#define BUILD_ALL_INT8_N(q, x, h, w, Lf, tmin, inv, lq, NV, P, QUANT) \
    build_all_int8(q, x, h, w, Lf, tmin, inv, lq, NV, P, QUANT, 0)

static T512VNNI float build_int8(const qcnn_qconv_prepared *q, const float *x, int h, int w, float *Lf,
                                 float *tmin) {
    const int quads = (q->Cs + 3) / 4;
    if (quads == 1) BUILD_SWITCH(BUILD_ALL_INT8_1, q, x, h, w, Lf, tmin)
    if (quads == 2) BUILD_SWITCH(BUILD_ALL_INT8_2, q, x, h, w, Lf, tmin)
    BUILD_SWITCH(BUILD_ALL_INT8_N, q, x, h, w, Lf, tmin)
}

static T512VNNI float build_quant_int8(const qcnn_qconv_prepared *q, const float *x, int h, int w,
                                       float inv, float *tmin, uint8_t *lq) {
    const int quads = (q->Cs + 3) / 4;
    if (quads == 1) BUILD_QUANT_SWITCH(BUILD_ALL_INT8_1, q, x, h, w, inv, tmin, lq)
    if (quads == 2) BUILD_QUANT_SWITCH(BUILD_ALL_INT8_2, q, x, h, w, inv, tmin, lq)
    BUILD_QUANT_SWITCH(BUILD_ALL_INT8_N, q, x, h, w, inv, tmin, lq)
}

T512 float qlut_build_quant_avx512(const qcnn_qconv_prepared *q, const float *x, int h, int w, float inv,
                                   float *tmin, uint8_t *lq) {
    if (q->build == QCNN_TABLE_BUILD_INT8) return build_quant_int8(q, x, h, w, inv, tmin, lq);
    if (q->build == QCNN_TABLE_BUILD_BF16) return build_quant_bf16(q, x, h, w, inv, tmin, lq);
    BUILD_QUANT_SWITCH(build_all, q, x, h, w, inv, tmin, lq)
}

T512 float qlut_build_avx512(const qcnn_qconv_prepared *q, const float *x, int h, int w, float *Lf,
                             float *tmin) {
    if (q->build == QCNN_TABLE_BUILD_INT8) return build_int8(q, x, h, w, Lf, tmin);
    if (q->build == QCNN_TABLE_BUILD_BF16) return build_bf16(q, x, h, w, Lf, tmin);
    if (h * w == 1 && q->p.groups == 1 && q->Kp <= 32 && q->M >= 16)
        return q->Kp == 16 ? build_fc(q, x, Lf, tmin, 1) : build_fc(q, x, Lf, tmin, 2);
    BUILD_SWITCH(build_all, q, x, h, w, Lf, tmin)
}

T512 void qlut_quant_avx512(const qcnn_qconv_prepared *q, const float *Lf, const float *tmin,
                           size_t ntab, float inv, uint8_t *lq) {
    /* Tables are consecutive in Lf and lq and Kp is a power of 2 >= 16: walk the entries 64 at
     * a time (4 vectors, maybe of different tables). */
    const int sh = __builtin_ctz((unsigned)q->Kp);
    const size_t n = ntab << sh;
    const __m512 vinv = _mm512_set1_ps(inv);
    const __m512i sel_ab = _mm512_loadu_si512(LOW_BYTES_AB), sel_cd = _mm512_loadu_si512(LOW_BYTES_CD);
    size_t e = 0;
    for (; e + 64 <= n; e += 64) {
        __m512i c[4];
        for (int u = 0; u < 4; u++) {
            const size_t eu = e + 16 * u;
            c[u] = codes16(_mm512_sub_ps(_mm512_load_ps(Lf + eu), _mm512_set1_ps(tmin[eu >> sh])), vinv);
        }
        _mm512_storeu_si512(lq + e, gather_low_bytes(c, sel_ab, sel_cd));
    }
    for (; e < n; e += 16) { /* vpmovdb keeps each dword's low byte */
        const __m512 d = _mm512_sub_ps(_mm512_load_ps(Lf + e), _mm512_set1_ps(tmin[e >> sh]));
        _mm_storeu_si128((__m128i *)(lq + e), _mm512_cvtepi32_epi8(codes16(d, vinv)));
    }
}

/* ------------------------------------------------------------------ look-up + accumulate */

/* 64 table bytes selected by 64 indices from a table held in KC zmm registers t0..t3 (KC = 1,
 * 2 or 4; the unused ones are ignored). */
INLINE T512 __m512i lookup_regs(__m512i idx, __m512i t0, __m512i t1, __m512i t2, __m512i t3,
                                const int KC) {
    if (KC == 1) return _mm512_permutexvar_epi8(idx, t0);
    const __m512i lo = _mm512_permutex2var_epi8(t0, idx, t1);
    if (KC == 2) return lo;
    return _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, _mm512_permutex2var_epi8(t2, idx, t3));
}

/* The same with the table read from memory. */
INLINE T512 __m512i lookup(const uint8_t *tab, __m512i idx, const int KC) {
    const __m512i t0 = _mm512_load_si512(tab);
    const __m512i t1 = KC >= 2 ? _mm512_load_si512(tab + 64) : t0;
    const __m512i t2 = KC == 4 ? _mm512_load_si512(tab + 128) : t0;
    const __m512i t3 = KC == 4 ? _mm512_load_si512(tab + 192) : t0;
    return lookup_regs(idx, t0, t1, t2, t3, KC);
}

/* Move 16-bit pair sums (a: word sums, b: high-byte sums) into 32-bit channel-ordered sums c;
 * when `fresh`, c holds nothing yet and is written, not added to (zeroing it first cost 3.5% of
 * VGG's conv4 kernel: 2 KB per block). The kernels keep a and b in registers and c in memory,
 * where an empty asm taking c's address puts it: c is touched once per 256 terms, and gcc would
 * otherwise hold c in registers and spill the accumulators instead. (The noinline flush this
 * replaced took a and b by address, which forced them into memory too: 5-13% slower.) */
INLINE T512 void flush(__m512i *a, __m512i *b, __m512i c[4], const int fresh) {
    const __m512i lo = _mm512_sub_epi16(*a, _mm512_slli_epi16(*b, 8));
    const __m512i v[4] = {_mm512_cvtepu16_epi32(_mm512_castsi512_si256(lo)),
                          _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(lo, 1)),
                          _mm512_cvtepu16_epi32(_mm512_castsi512_si256(*b)),
                          _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(*b, 1))};
    for (int j = 0; j < 4; j++) c[j] = fresh ? v[j] : _mm512_add_epi32(c[j], v[j]);
    *a = _mm512_setzero_si512();
    *b = _mm512_setzero_si512();
}

INLINE T512 void accumulate(__m512i *a, __m512i *b, __m512i v) {
    *a = _mm512_add_epi16(*a, v);
    *b = _mm512_add_epi16(*b, _mm512_srli_epi16(v, 8));
}

/* The QLUT_EPI_* formulas (qlut_internal.h) for channels ob.. of one output pixel (masked tail). */
INLINE T512 void epilogue(const qlut_run *r, const __m512i c[4], int oy, int ox, int g, int ob) {
    const qcnn_qconv_prepared *q = r->q;
    const int Og = q->Og;
    const size_t pix = (size_t)oy * r->ow + ox;
    const __m512 off = _mm512_set1_ps(r->off[pix * q->p.groups + g]), s = _mm512_set1_ps(r->step);
    float *yp = qlut_out(r, oy, ox) + (size_t)g * Og;
    const float *bias = q->p.bias ? q->p.bias + (size_t)g * Og : NULL;
    const int add = r->epi == QLUT_EPI_ADD || r->epi == QLUT_EPI_LAST;
    const int relu = q->p.relu && (r->epi == QLUT_EPI_FULL || r->epi == QLUT_EPI_LAST);
    for (int j = 0; j < 4; j++) {
        const int ch = ob + 16 * j;
        if (ch >= Og) break;
        const __mmask16 mk = Og - ch >= 16 ? 0xFFFF : (__mmask16)((1u << (Og - ch)) - 1);
        const __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(c[j]), s);
        __m512 v;
        if (add) {
            v = _mm512_add_ps(_mm512_maskz_loadu_ps(mk, yp + ch), t);
        } else {
            const __m512 ob_ = bias ? _mm512_add_ps(off, _mm512_maskz_loadu_ps(mk, bias + ch)) : off;
            v = _mm512_add_ps(t, ob_);
        }
        if (relu) v = _mm512_max_ps(v, _mm512_setzero_ps());
        _mm512_mask_storeu_ps(yp + ch, mk, v);
    }
}

#define PBLK 4 /* output pixels per block of the any-stride kernel (6: no faster) */

/* P neighbouring output pixels of row oy, 64 channels from ob, group g; any kernel/stride. */
INLINE T512 void conv_block(const qlut_run *r, int oy, int ox0, int g, int ob, const int P,
                            const int KC) {
    const qcnn_qconv_prepared *q = r->q;
    const qcnn_qconv_params *p = &q->p;
    const int M = q->M, Kp = q->Kp, KW = p->kw, Ogp = q->Ogp;
    const size_t pixb = (size_t)p->groups * M * Kp; /* bytes of tables per padded pixel */
    const size_t pstep = (size_t)p->stride_w * pixb; /* next output pixel's input pixel */
    const size_t col = (size_t)ox0 * p->stride_w * pixb + (size_t)g * M * Kp;
    const uint8_t *ib = q->idx + (size_t)g * p->kh * KW * M * Ogp + ob;
    __m512i a[PBLK], b[PBLK], c[PBLK * 4]; /* c in memory: see flush */
    for (int i = 0; i < P; i++) a[i] = b[i] = _mm512_setzero_si512();
    __asm__ volatile("" : : "r"(c) : "memory");
    int cnt = 0, fresh = 1;
    for (int ky = r->ky0; ky < r->ky1; ky++)
        for (int kx = 0; kx < KW; kx++) {
            const uint8_t *tp = qlut_row(r, oy * p->stride_h + ky) + col + (size_t)kx * pixb;
            const uint8_t *ip = ib + ((size_t)ky * KW + kx) * M * Ogp;
            for (int m = 0; m < M; m++) {
                const __m512i idx = _mm512_loadu_si512(ip + (size_t)m * Ogp);
                for (int i = 0; i < P; i++)
                    accumulate(&a[i], &b[i], lookup(tp + i * pstep + (size_t)m * Kp, idx, KC));
                if (++cnt == 256) {
                    for (int i = 0; i < P; i++) flush(&a[i], &b[i], c + 4 * i, fresh);
                    cnt = fresh = 0;
                }
            }
        }
    for (int i = 0; i < P; i++) {
        flush(&a[i], &b[i], c + 4 * i, fresh);
        epilogue(r, c + 4 * i, oy, ox0 + i, g, ob);
    }
}

/* Output pixels per stride-1 block: 6 holds 12 accumulators, 3 index vectors and a table in
 * registers; 8 made gcc spill (Zen 4, paired: VGG conv3 11.7 -> 10.5 ms, conv4 6.1 -> 5.3,
 * AlexNet conv3 0.48 -> 0.43, together with flush's register handling). */
#define PS1 6
/* ... and with 5 kernel columns (5 index vectors): 4 (AlexNet conv2, paired: 0.777 -> 0.751 and
 * 0.748 -> 0.723 ms; 5 was the same as 4). */
#define PS1_K5 4

/* Stride-1 variant with the kernel width KW known at compile time: for each (kernel row,
 * subspace) the KW index vectors stay in registers and each input pixel's table is loaded once
 * and used for every (output pixel, kernel column) pair it meets, instead of once per pair. */
INLINE T512 void conv_block_s1(const qlut_run *r, int oy, int ox0, int g, int ob, const int P,
                               const int KW, const int KC) {
    const qcnn_qconv_prepared *q = r->q;
    const qcnn_qconv_params *p = &q->p;
    const int M = q->M, Kp = q->Kp, Ogp = q->Ogp;
    const size_t pixb = (size_t)p->groups * M * Kp;
    const size_t col = (size_t)ox0 * pixb + (size_t)g * M * Kp;
    const uint8_t *ib = q->idx + (size_t)g * p->kh * KW * M * Ogp + ob;
    __m512i a[PS1], b[PS1], c[PS1 * 4]; /* c in memory: see flush */
    for (int i = 0; i < P; i++) a[i] = b[i] = _mm512_setzero_si512();
    __asm__ volatile("" : : "r"(c) : "memory");
    int cnt = 0, fresh = 1;
    for (int ky = r->ky0; ky < r->ky1; ky++) {
        const uint8_t *tp = qlut_row(r, oy * p->stride_h + ky) + col;
        const uint8_t *ip = ib + (size_t)ky * KW * M * Ogp;
        for (int m = 0; m < M; m++) {
            if (cnt + KW > 256) {
                for (int i = 0; i < P; i++) flush(&a[i], &b[i], c + 4 * i, fresh);
                cnt = fresh = 0;
            }
            cnt += KW;
            __m512i idx[8];
            for (int kx = 0; kx < KW; kx++)
                idx[kx] = _mm512_loadu_si512(ip + ((size_t)kx * M + m) * Ogp);
#pragma GCC unroll 16
            for (int j = 0; j < P + KW - 1; j++) {
                const uint8_t *t = tp + j * pixb + (size_t)m * Kp;
                __m512i t0 = _mm512_load_si512(t);
                __m512i t1 = KC >= 2 ? _mm512_load_si512(t + 64) : t0;
                const __m512i t2 = KC == 4 ? _mm512_load_si512(t + 128) : t0;
                const __m512i t3 = KC == 4 ? _mm512_load_si512(t + 192) : t0;
                /* Pin the table in registers: otherwise gcc re-reads it from memory as the
                 * operand of every vpermt2b (which overwrites one source) - measured 3-5% slower. */
                __asm__("" : "+v"(t0), "+v"(t1));
#pragma GCC unroll 8
                for (int kx = 0; kx < KW; kx++) {
                    const int i = j - kx; /* output pixel this (input pixel, column) feeds */
                    if (i < 0 || i >= P) continue;
                    accumulate(&a[i], &b[i], lookup_regs(idx[kx], t0, t1, t2, t3, KC));
                }
            }
        }
    }
    for (int i = 0; i < P; i++) flush(&a[i], &b[i], c + 4 * i, fresh);
    for (int i = 0; i < P; i++) epilogue(r, c + 4 * i, oy, ox0 + i, g, ob);
}

_Static_assert(PS1 == 6, "conv_all_s1 switches over block sizes 1..6");
INLINE T512 void conv_all_s1(const qlut_run *r, const int KW, const int KC) {
    const qcnn_qconv_prepared *q = r->q;
    for (int oy = r->oy0; oy < r->oy1; oy++)
        for (int g = 0; g < q->p.groups; g++)
            for (int ox = 0; ox < r->ow;) {
                /* Split the rest of the row evenly into blocks of <= pmax pixels (13 -> 5 + 4 + 4). */
                const int left = r->ow - ox, pmax = KW == 5 ? PS1_K5 : PS1;
                const int np = (left + (left + pmax - 1) / pmax - 1) / ((left + pmax - 1) / pmax);
                for (int ob = 0; ob < q->Ogp; ob += 64) {
                    switch (np) {
                    case 1: conv_block_s1(r, oy, ox, g, ob, 1, KW, KC); break;
                    case 2: conv_block_s1(r, oy, ox, g, ob, 2, KW, KC); break;
                    case 3: conv_block_s1(r, oy, ox, g, ob, 3, KW, KC); break;
                    case 4: conv_block_s1(r, oy, ox, g, ob, 4, KW, KC); break;
                    case 5: conv_block_s1(r, oy, ox, g, ob, 5, KW, KC); break;
                    default: conv_block_s1(r, oy, ox, g, ob, PS1, KW, KC); break;
                    }
                }
                ox += np;
            }
}

INLINE T512 void conv_all(const qlut_run *r, const int KC) {
    const qcnn_qconv_prepared *q = r->q;
    for (int oy = r->oy0; oy < r->oy1; oy++)
        for (int g = 0; g < q->p.groups; g++)
            for (int ox = 0; ox < r->ow;) {
                const int left = r->ow - ox;
                for (int ob = 0; ob < q->Ogp; ob += 64) {
                    if (left >= PBLK) conv_block(r, oy, ox, g, ob, PBLK, KC);
                    else if (left == 3) conv_block(r, oy, ox, g, ob, 3, KC);
                    else if (left == 2) conv_block(r, oy, ox, g, ob, 2, KC);
                    else conv_block(r, oy, ox, g, ob, 1, KC);
                }
                ox += left >= PBLK ? PBLK : left;
            }
}

/* Pointwise (1x1, stride 1): an output pixel reads one input pixel, so no table is shared
 * between kernel columns. Instead each pixel's table stays in registers for NB channel blocks
 * and each index vector serves P pixels: (KC*P + NB) / (P*NB) 64-byte loads per look-up
 * instead of KC + 1/P (conv_block). SqueezeNet's classifier conv (512 -> 1000, 4/128, 13x13)
 * on Zen 4: look-ups 0.48 -> 0.36 ms, the layer 1.15 -> 0.96 ms (paired); its tables and
 * indices (64 KB a pixel, 128 KB) come from L2. */
/* PW_P pixels x PW_NB channel blocks per call (KC = 4 tables take 4 registers: 2 blocks). On
 * Zen 4, 2 x 4, 1 x 8 and 2 x 3 ran alike; 3 x 4 was slower (gcc spills accumulators). */
#define PW_P 2
#define PW_NB 4
INLINE T512 void pw_block(const qlut_run *r, int oy, int ox0, int g, int ob0, const int P,
                          const int NB, const int KC) {
    const qcnn_qconv_prepared *q = r->q;
    const int M = q->M, Kp = q->Kp, Ogp = q->Ogp;
    const size_t pixb = (size_t)q->p.groups * M * Kp;
    const uint8_t *tp = qlut_row(r, oy) + (size_t)ox0 * pixb + (size_t)g * M * Kp;
    const uint8_t *ip = q->idx + (size_t)g * M * Ogp + ob0;
    /* Fixed sizes (a[P * NB] would be a VLA, which lives on the stack); c in memory: see flush. */
    __m512i a[PW_P * PW_NB], b[PW_P * PW_NB], c[PW_P * PW_NB * 4];
    for (int i = 0; i < P * NB; i++) a[i] = b[i] = _mm512_setzero_si512();
    __asm__ volatile("" : : "r"(c) : "memory");
    int cnt = 0, fresh = 1;
    for (int m = 0; m < M; m++, tp += Kp, ip += Ogp) {
        if (cnt == 256) {
            for (int i = 0; i < P * NB; i++) flush(&a[i], &b[i], c + 4 * i, fresh);
            cnt = fresh = 0;
        }
        cnt++;
        __m512i t[PW_P][4];
        for (int i = 0; i < P; i++)
            for (int k = 0; k < 4; k++) {
                if (k >= KC) { /* unused by lookup_regs */
                    t[i][k] = t[i][0];
                    continue;
                }
                t[i][k] = _mm512_load_si512(tp + i * pixb + 64 * k);
                __asm__("" : "+v"(t[i][k])); /* keep the tables in registers (see conv_block_s1) */
            }
        for (int j = 0; j < NB; j++) {
            const __m512i idx = _mm512_loadu_si512(ip + 64 * j);
            for (int i = 0; i < P; i++)
                accumulate(&a[i * NB + j], &b[i * NB + j],
                           lookup_regs(idx, t[i][0], t[i][1], t[i][2], t[i][3], KC));
        }
    }
    for (int i = 0; i < P * NB; i++) flush(&a[i], &b[i], c + 4 * i, fresh);
    for (int i = 0; i < P; i++)
        for (int j = 0; j < NB; j++) epilogue(r, c + 4 * (i * NB + j), oy, ox0 + i, g, ob0 + 64 * j);
}

INLINE T512 void pw_pixels(const qlut_run *r, int oy, int ox, int g, int ob, int nb, const int P,
                           const int KC) {
    const int NB = KC == 4 ? 2 : PW_NB;
    for (; nb >= NB; nb -= NB, ob += 64 * NB) pw_block(r, oy, ox, g, ob, P, NB, KC);
    /* the rest (< NB blocks); the NB tests keep unreachable variants from being compiled */
    switch (nb) {
    case 3: if (NB > 3) pw_block(r, oy, ox, g, ob, P, 3, KC); break;
    case 2: if (NB > 2) pw_block(r, oy, ox, g, ob, P, 2, KC); break;
    case 1: pw_block(r, oy, ox, g, ob, P, 1, KC); break;
    default: break;
    }
}

INLINE T512 void pw_all(const qlut_run *r, const int KC) {
    const qcnn_qconv_prepared *q = r->q;
    const int nblk = q->Ogp / 64;
    for (int oy = r->oy0; oy < r->oy1; oy++)
        for (int g = 0; g < q->p.groups; g++) {
            int ox = 0;
            for (; ox + PW_P <= r->ow; ox += PW_P) pw_pixels(r, oy, ox, g, 0, nblk, PW_P, KC);
            for (; ox < r->ow; ox++) pw_pixels(r, oy, ox, g, 0, nblk, 1, KC);
        }
}

/* ------------------------------------------------------------------ fully connected */

/* One chunk of NB channel blocks: each table is loaded once per subspace and used for NB
 * blocks; indices stream sequentially (chunked layout, see qcnn_qconv_prepared.fcnb). */
INLINE T512 void fc_chunk(const qlut_run *r, const uint8_t *ip, int ob0, const int NB, const int KC) {
    const int M = r->q->M, Kp = r->q->Kp;
    const uint8_t *tab = r->lq;
    __m512i a[8], b[8], c[8][4]; /* c in memory: see flush */
    for (int i = 0; i < NB; i++) a[i] = b[i] = _mm512_setzero_si512();
    __asm__ volatile("" : : "r"(c) : "memory");
    int cnt = 0, fresh = 1;
    for (int m = 0; m < M; m++, tab += Kp, ip += NB * 64) {
        /* Kp < 64: the 64-byte table holding subspace m also holds its 64/Kp - 1 neighbours
         * (indices were offset at prepare time). The bytes past the last subspace are never
         * selected. */
        const __m512i t0 = _mm512_load_si512(Kp < 64 ? r->lq + (size_t)m * Kp / 64 * 64 : tab);
        const __m512i t1 = KC >= 2 ? _mm512_load_si512(tab + 64) : t0;
        const __m512i t2 = KC == 4 ? _mm512_load_si512(tab + 128) : t0;
        const __m512i t3 = KC == 4 ? _mm512_load_si512(tab + 192) : t0;
        for (int i = 0; i < NB; i++) {
            accumulate(&a[i], &b[i], lookup_regs(_mm512_load_si512(ip + 64 * i), t0, t1, t2, t3, KC));
        }
        if (++cnt == 256) {
            for (int i = 0; i < NB; i++) flush(&a[i], &b[i], c[i], fresh);
            cnt = fresh = 0;
        }
    }
    for (int i = 0; i < NB; i++) {
        flush(&a[i], &b[i], c[i], fresh);
        epilogue(r, c[i], 0, 0, 0, ob0 + 64 * i);
    }
}

INLINE T512 void fc_all(const qlut_run *r, const int KC) {
    const qcnn_qconv_prepared *q = r->q;
    const int nblk = q->Ogp / 64, NB = q->fcnb; /* NB == 8 */
    for (int ch = 0; ch * NB < nblk; ch++) {
        const uint8_t *ip = q->idx + (size_t)ch * NB * 64 * q->M;
        const int ob0 = ch * NB * 64;
        switch (nblk - ch * NB < NB ? nblk - ch * NB : NB) {
        case 1: fc_chunk(r, ip, ob0, 1, KC); break;
        case 2: fc_chunk(r, ip, ob0, 2, KC); break;
        case 3: fc_chunk(r, ip, ob0, 3, KC); break;
        case 4: fc_chunk(r, ip, ob0, 4, KC); break;
        case 5: fc_chunk(r, ip, ob0, 5, KC); break;
        case 6: fc_chunk(r, ip, ob0, 6, KC); break;
        case 7: fc_chunk(r, ip, ob0, 7, KC); break;
        default: fc_chunk(r, ip, ob0, 8, KC); break;
        }
    }
}

/* ------------------------------------------------------------------ fully connected, quads */
#define T512Q __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni")))

/* The index stream is read once per image and, for AlexNet's fc6 (5.9 MB), from DRAM even when
 * runs follow each other (it does not survive the rest of the network in cache). Software
 * prefetch beyond what the hardware prefetcher does: into L2, 32 KB ahead of the loads. With the
 * caches flushed before each run (Zen 4, C loop, medians of 40) it took fc6 0.41 -> 0.33 ms, fc7
 * 0.19 -> 0.16, fc8 0.16 -> 0.135 against 8 KB ahead into L1 (which did no better than no
 * prefetch there; 16-64 KB into L2 ran alike, non-temporal was slower). On a Xeon (Sapphire Rapids
 * class) 8 KB into L1 had taken fc6 0.77 -> 0.69 ms and fc7 0.35 -> 0.32; L2 at 32 KB was not
 * measured there. Prefetching past the end of the indices is harmless: a prefetch never faults. */
#define FCQ_PREFETCH 32768
#define FCQ_PREFETCH_HINT _MM_HINT_T1

/* One chunk of NB 64-channel blocks in the quad layout (qcnn_qconv_prepared.fcq_bits): per
 * group of 4 subspaces, their tables (4*Kp bytes, KC = 1 or 2 registers) serve every channel;
 * each 64-byte index vector (16 channels x 4 subspaces) is unpacked from 8*B bytes, looked up
 * once, and vpdpbusd adds each channel's 4 bytes to its int32 sum: 5 instructions per 64
 * look-ups, and the same integer sums as fc_chunk. */
INLINE T512Q void fcq_chunk(const qlut_run *r, const uint8_t *ip, int ob0, const int NB, const int KC,
                            const int B) {
    const int Q = qlut_table_subspaces(r->q) / FCQ_SUB, Kp = r->q->Kp;
    /* unpack: qword j of the vector gets bytes B*j.. (its 8 values), then value i of each qword
     * is the byte at bit offset B*i, masked to B bits; the subspace's table offset s*Kp is or-ed
     * in (s = byte % 4). */
    uint8_t sp[64], sh[64], off[64];
    for (int b = 0; b < 64; b++) {
        sp[b] = (uint8_t)(B * (b / 8) + b % 8);
        sh[b] = (uint8_t)(B * (b % 8));
        off[b] = (uint8_t)((b % FCQ_SUB) * Kp);
    }
    const __m512i spread = _mm512_loadu_si512(sp), shifts = _mm512_loadu_si512(sh);
    const __m512i offs = _mm512_loadu_si512(off), mask = _mm512_set1_epi8((char)((1 << B) - 1));
    const __m512i ones = _mm512_set1_epi8(1);
    __m512i acc[FCQ_NB][4];
    for (int i = 0; i < NB; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_si512();
    const uint8_t *tab = r->lq;
    for (int qd = 0; qd < Q; qd++, tab += FCQ_SUB * Kp) {
        const __m512i t0 = _mm512_load_si512(tab);
        const __m512i t1 = KC == 2 ? _mm512_load_si512(tab + 64) : t0;
        for (int i = 0; i < NB; i++)
            for (int j = 0; j < 4; j++, ip += 8 * B) {
                _mm_prefetch((const char *)ip + FCQ_PREFETCH, FCQ_PREFETCH_HINT);
                __m512i idx = _mm512_permutexvar_epi8(spread, _mm512_loadu_si512(ip));
                idx = _mm512_multishift_epi64_epi8(shifts, idx);
                idx = _mm512_ternarylogic_epi32(idx, mask, offs, 0xEA); /* (idx & mask) | offs */
                const __m512i v = KC == 1 ? _mm512_permutexvar_epi8(idx, t0)
                                          : _mm512_permutex2var_epi8(t0, idx, t1);
                DPBUSD(acc[i][j], v, ones);
            }
    }
    for (int i = 0; i < NB; i++) epilogue(r, acc[i], 0, 0, 0, ob0 + 64 * i);
}

INLINE T512Q void fcq_all(const qlut_run *r, const int KC, const int B) {
    const qcnn_qconv_prepared *q = r->q;
    const int nblk = q->Ogp / 64, Q = qlut_table_subspaces(q) / FCQ_SUB;
    const uint8_t *ip = q->idx;
    for (int ch = 0; ch * FCQ_NB < nblk; ch++) {
        const int nbc = nblk - ch * FCQ_NB < FCQ_NB ? nblk - ch * FCQ_NB : FCQ_NB;
        switch (nbc) {
        case 1: fcq_chunk(r, ip, ch * FCQ_NB * 64, 1, KC, B); break;
        case 2: fcq_chunk(r, ip, ch * FCQ_NB * 64, 2, KC, B); break;
        case 3: fcq_chunk(r, ip, ch * FCQ_NB * 64, 3, KC, B); break;
        default: fcq_chunk(r, ip, ch * FCQ_NB * 64, 4, KC, B); break;
        }
        ip += (size_t)Q * nbc * 4 * 8 * B;
    }
}

static T512Q void fcq_dispatch(const qlut_run *r) {
    const int KC = r->q->Kp == 16 ? 1 : 2; /* 4 tables of 16 (one zmm) or of 32 entries (two) */
    switch (r->q->fcq_bits) {
#define BITS(b)                                                                                        case b:                                                                                                if (KC == 1) fcq_all(r, 1, b);                                                                     else fcq_all(r, 2, b);                                                                             break;
        BITS(1) BITS(2) BITS(3) BITS(4)
#undef BITS
    default: fcq_all(r, 2, 5); break;
    }
}

T512 void qlut_conv_avx512(const qlut_run *r) {
    if (r->q->fcq_bits) {
        fcq_dispatch(r);
        return;
    }
    if (r->q->fcnb) {
        switch (r->q->Kp) {
        case 16: case 32: case 64: fc_all(r, 1); break;
        case 128: fc_all(r, 2); break;
        default: fc_all(r, 4); break;
        }
        return;
    }
    const int KC = r->q->Kp == 64 ? 1 : r->q->Kp == 128 ? 2 : 4;
    if (r->q->p.stride_w == 1 && (r->q->p.kw == 3 || r->q->p.kw == 5)) {
        /* The common AlexNet/VGG shapes get the table-reusing kernel. */
        if (r->q->p.kw == 3) {
            if (KC == 1) conv_all_s1(r, 3, 1);
            else if (KC == 2) conv_all_s1(r, 3, 2);
            else conv_all_s1(r, 3, 4);
        } else {
            if (KC == 1) conv_all_s1(r, 5, 1);
            else if (KC == 2) conv_all_s1(r, 5, 2);
            else conv_all_s1(r, 5, 4);
        }
        return;
    }
    if (r->q->p.kh == 1 && r->q->p.kw == 1 && r->q->p.stride_h == 1 && r->q->p.stride_w == 1) {
        if (KC == 1) pw_all(r, 1);
        else if (KC == 2) pw_all(r, 2);
        else pw_all(r, 4);
        return;
    }
    if (KC == 1) conv_all(r, 1);
    else if (KC == 2) conv_all(r, 2);
    else conv_all(r, 4);
}
#endif
