/* int8 dense conv row kernels for AVX-512 VNNI and for AVX2. See ops_iconv.c /
 * qcnn_iconv_params (ops.h).
 *
 * Same tiling as the fp32 kernel (ops_conv_x86.c): P output pixels x NV*16 output channels of
 * int32 sums in registers. Per quad of 4 input bytes: NV weight vectors (16 channels x 4 int8)
 * are loaded once and shared by the P pixels, each pixel's quad is broadcast once, and one
 * vpdpbusd per (pixel, vector) adds 4 products to each of 16 channels. The sums are exact
 * (|acc| <= 255*127*taps), so this kernel and the portable one give identical integers.
 * Only called after qcnn_iconv_fast_available() said the CPU and OS support it.
 *
 * The AVX2 kernel (end of file) sums the same products with vpmaddwd on 16-bit copies of the
 * bytes: vpmaddubsw would do twice as many per instruction but saturates its 16-bit pair sums
 * (255*127*2 > 32767), so it would need 7-bit values and give other integers than VNNI.
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

/* ---------------------------------------------------------------- AVX2 */
#define T2 __attribute__((target("avx2,fma")))
#define P2 3 /* pixels per tile: 3 x 4 accumulators + 1 broadcast + 2 products in 16 ymm */

/* P output pixels x one 16-channel block. A ymm of weights holds 4 channels x one quad (4
 * int16); vpmaddwd against the pixel's quad broadcast to every 64-bit lane leaves each
 * channel's two pair sums in adjacent int32 lanes, added together at the end. */
static inline __attribute__((always_inline)) T2 void
itile2(const qcnn_iconv_row *r, const uint16_t *x, const int16_t *w, float *y, const float *mul,
       const float *add, int ncols, const int P)
{
    __m256i acc[P2][4];
    for (int p = 0; p < P; p++)
        for (int v = 0; v < 4; v++)
            acc[p][v] = _mm256_setzero_si256();
    const size_t xpix = r->xpix;
    for (int ky = 0; ky < r->kh; ky++)
        for (int s = 0; s < r->nseg; s++) {
            const uint16_t *xs = x + ky * r->xrow + s * r->xseg;
            for (int q = 0; q < r->nquad; q++, w += NB * 4) {
                for (int p = 0; p < P; p++) {
                    int64_t quad;
                    memcpy(&quad, xs + p * xpix + 4 * q, 8);
                    const __m256i xb = _mm256_set1_epi64x(quad);
                    for (int v = 0; v < 4; v++)
                        acc[p][v] = _mm256_add_epi32(
                            acc[p][v], _mm256_madd_epi16(xb, _mm256_loadu_si256((const __m256i *)(w + 16 * v))));
                }
            }
        }
    const __m256 zero = _mm256_setzero_ps();
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int p = 0; p < P; p++)
        for (int h = 0; h < 2; h++) {
            /* hadd gives channels (0,1,4,5 | 2,3,6,7) of the 8; the permute puts them in order */
            const __m256i sum = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[p][2 * h], acc[p][2 * h + 1]), 0xD8);
            const int c = 8 * h;
            if (c >= ncols)
                break;
            const __m256i mk = _mm256_cmpgt_epi32(_mm256_set1_epi32(ncols - c), lane);
            /* mul then add, unfused, like the portable kernel: identical floats */
            __m256 o = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_maskload_ps(mul + c, mk)),
                                     _mm256_maskload_ps(add + c, mk));
            if (r->relu)
                o = _mm256_max_ps(o, zero);
            _mm256_maskstore_ps(y + p * r->ypix + c, mk, o);
        }
}

/* The driver's input passes, 8 floats at a time, as the AVX-512 ones above. */
T2 int qcnn_iconv_range_avx2(const float *x, size_t n, float *lo, float *hi)
{
    const __m256i expmask = _mm256_set1_epi32(0x7F800000);
    __m256 mn = _mm256_setzero_ps(), mx = _mm256_setzero_ps();
    __m256i bad = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(v), expmask), expmask));
        mn = _mm256_min_ps(mn, v);
        mx = _mm256_max_ps(mx, v);
    }
    if (!_mm256_testz_si256(bad, bad))
        return 0;
    float l[8], h[8];
    _mm256_storeu_ps(l, mn);
    _mm256_storeu_ps(h, mx);
    float a = 0.0f, b = 0.0f;
    for (int k = 0; k < 8; k++) {
        a = l[k] < a ? l[k] : a;
        b = h[k] > b ? h[k] : b;
    }
    for (; i < n; i++) { /* the tail, as the portable loop */
        uint32_t u;
        memcpy(&u, x + i, 4);
        if ((u & 0x7F800000u) == 0x7F800000u)
            return 0;
        a = x[i] < a ? x[i] : a;
        b = x[i] > b ? x[i] : b;
    }
    *lo = a;
    *hi = b;
    return 1;
}

T2 void qcnn_iconv_quantize_avx2(const float *x, size_t n, float inv, float zp, uint8_t *q)
{
    const __m256 vinv = _mm256_set1_ps(inv), vzp = _mm256_set1_ps(zp), half = _mm256_set1_ps(0.5f);
    const __m256 zero = _mm256_setzero_ps(), top = _mm256_set1_ps(255.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        /* x*inv + zp + 0.5 in the portable kernel's order (mul, add, add: no FMA) */
        __m256 t = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv), vzp), half);
        t = _mm256_min_ps(_mm256_max_ps(t, zero), top);
        const __m256i v = _mm256_cvttps_epi32(t);
        const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        _mm_storel_epi64((__m128i *)(q + i), _mm_packus_epi16(w, w));
    }
    for (; i < n; i++) {
        float t = x[i] * inv + zp + 0.5f;
        t = t < 0.0f ? 0.0f : t > 255.0f ? 255.0f : t;
        q[i] = (uint8_t)(int)t;
    }
}

T2 void qcnn_iconv_row_avx2(const qcnn_iconv_row *r)
{
    const size_t wblk = (size_t)r->kh * r->nseg * r->nquad * NB * 4;
    for (int b = r->b0; b < r->b1; b++) {
        const int c0 = b * NB;
        const int ncols = r->cout_g - c0 < NB ? r->cout_g - c0 : NB;
        const int16_t *w = r->w16 + b * wblk;
        const float *mul = r->mul + c0, *add = r->add + c0;
        float *y = r->y + c0;
        int ox = 0;
        for (; ox + P2 <= r->ow; ox += P2)
            itile2(r, r->x16 + ox * r->xpix, w, y + ox * r->ypix, mul, add, ncols, P2);
        if (r->ow - ox == 2)
            itile2(r, r->x16 + ox * r->xpix, w, y + ox * r->ypix, mul, add, ncols, 2);
        else if (r->ow - ox == 1)
            itile2(r, r->x16 + ox * r->xpix, w, y + ox * r->ypix, mul, add, ncols, 1);
    }
}
#endif
