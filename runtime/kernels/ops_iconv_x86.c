/* int8 dense conv row kernel for AVX-512 VNNI. See ops_iconv.c / qcnn_iconv_params (ops.h).
 *
 * Same tiling as the fp32 kernel (ops_conv_x86.c): P output pixels x NV*16 output channels of
 * int32 sums in registers. Per quad of 4 input bytes: NV weight vectors (16 channels x 4 int8)
 * are loaded once and shared by the P pixels, each pixel's quad is broadcast once, and one
 * vpdpbusd per (pixel, vector) adds 4 products to each of 16 channels. The sums are exact
 * (|acc| <= 255*127*taps), so this kernel and the portable one give identical integers.
 * Only called after qcnn_iconv_fast_available() said the CPU and OS support it.
 */
#include <string.h>

#include "ops.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include "vnni_x86.h"

#define TV __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define NB 16
#define PMAX 12
/* NV*P accumulators + NV weights + 1 broadcast within the 32 zmm registers. */
#define PV(NV) ((NV) == 4 ? 6 : (NV) == 3 ? 8 : 12)


static inline __attribute__((always_inline)) TV void
itile(const qcnn_iconv_row *r, const uint8_t *x, const int8_t *w, size_t wblk, float *y,
      const float *mul, const float *add, __mmask16 last_mask, const int P, const int NV)
{
    __m512i acc[PMAX][4];
#pragma GCC unroll 12
    for (int p = 0; p < P; p++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            acc[p][v] = _mm512_setzero_si512();
    const size_t xpix = r->xpix;
    for (int ky = 0; ky < r->kh; ky++)
        for (int s = 0; s < r->nseg; s++) {
            const uint8_t *xs = x + ky * r->xrow + s * r->xseg;
            for (int q = 0; q < r->nquad; q++, w += NB * 4) {
                __m512i wv[4];
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++)
                    wv[v] = _mm512_loadu_si512(w + v * wblk);
#pragma GCC unroll 12
                for (int p = 0; p < P; p++) {
                    int32_t quad;
                    memcpy(&quad, xs + p * xpix + 4 * q, 4);
                    const __m512i xb = _mm512_set1_epi32(quad);
#pragma GCC unroll 4
                    for (int v = 0; v < NV; v++)
                        DPBUSD(acc[p][v], xb, wv[v]);
                }
            }
        }
    const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
        const __mmask16 m = v == NV - 1 ? last_mask : (__mmask16)0xFFFF;
        const __m512 mv = _mm512_loadu_ps(mul + v * NB), av = _mm512_loadu_ps(add + v * NB);
#pragma GCC unroll 12
        for (int p = 0; p < P; p++) {
            /* mul then add, unfused, like the portable kernel: identical floats */
            __m512 o = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(acc[p][v]), mv), av);
            if (r->relu)
                o = _mm512_max_ps(o, zero);
            _mm512_mask_storeu_ps(y + p * r->ypix + v * NB, m, o);
        }
    }
}

static inline __attribute__((always_inline)) TV void
ichunk(const qcnn_iconv_row *r, const int8_t *w, size_t wblk, float *y, const float *mul,
       const float *add, __mmask16 last_mask, const int NV)
{
    const int P = PV(NV);
    int ox = 0;
    for (; ox + P <= r->ow; ox += P)
        itile(r, r->x + ox * r->xpix, w, wblk, y + ox * r->ypix, mul, add, last_mask, P, NV);
    const uint8_t *x = r->x + ox * r->xpix;
    y += ox * r->ypix;
    switch (r->ow - ox) {
#define TAIL(n)                                                                                    \
    case n:                                                                                        \
        itile(r, x, w, wblk, y, mul, add, last_mask, n, NV);                                       \
        break;
        TAIL(1) TAIL(2) TAIL(3) TAIL(4) TAIL(5) TAIL(6) TAIL(7) TAIL(8) TAIL(9) TAIL(10) TAIL(11)
#undef TAIL
    default:
        break;
    }
}

/* The driver's input passes, 16 floats at a time; same operations as the portable loops, so
 * the same bytes. Returns 0 if x holds a NaN or infinity. */
TV int qcnn_iconv_range_avx512(const float *x, size_t n, float *lo, float *hi)
{
    const __m512i expmask = _mm512_set1_epi32(0x7F800000);
    __m512 mn = _mm512_setzero_ps(), mx = _mm512_setzero_ps();
    __mmask16 bad = 0;
    size_t i = 0;
    for (; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1u);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i); /* masked-off lanes are 0: in range */
        bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(v), expmask), expmask);
        mn = _mm512_min_ps(mn, v);
        mx = _mm512_max_ps(mx, v);
    }
    if (bad)
        return 0;
    *lo = _mm512_reduce_min_ps(mn);
    *hi = _mm512_reduce_max_ps(mx);
    return 1;
}

TV void qcnn_iconv_quantize_avx512(const float *x, size_t n, float inv, float zp, uint8_t *q)
{
    const __m512 vinv = _mm512_set1_ps(inv), vzp = _mm512_set1_ps(zp), half = _mm512_set1_ps(0.5f);
    const __m512 zero = _mm512_setzero_ps(), top = _mm512_set1_ps(255.0f);
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1u);
        __m512 t = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vinv), vzp), half);
        t = _mm512_min_ps(_mm512_max_ps(t, zero), top);
        _mm_mask_storeu_epi8(q + i, m, _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(t)));
    }
}

TV void qcnn_iconv_row_vnni(const qcnn_iconv_row *r)
{
    const size_t wblk = (size_t)r->kh * r->nseg * r->nquad * NB * 4;
    /* the blocks in chunks of at most 4, as even as possible (6 -> 3+3) */
    const int nchunks = (r->b1 - r->b0 + 3) / 4;
    int b = r->b0;
    for (int ch = 0; ch < nchunks; ch++) {
        const int nv = (r->b1 - b + (nchunks - ch) - 1) / (nchunks - ch);
        const int c0 = b * NB;
        const int cend = (b + nv) * NB < r->cout_g ? (b + nv) * NB : r->cout_g;
        const int last_cols = cend - (b + nv - 1) * NB; /* 1..16 */
        const __mmask16 mask = (__mmask16)((1u << last_cols) - 1u);
        const int8_t *w = r->w + b * wblk;
        float *y = r->y + c0;
        switch (nv) {
        case 1: ichunk(r, w, wblk, y, r->mul + c0, r->add + c0, mask, 1); break;
        case 2: ichunk(r, w, wblk, y, r->mul + c0, r->add + c0, mask, 2); break;
        case 3: ichunk(r, w, wblk, y, r->mul + c0, r->add + c0, mask, 3); break;
        default: ichunk(r, w, wblk, y, r->mul + c0, r->add + c0, mask, 4); break;
        }
        b += nv;
    }
}
#endif
