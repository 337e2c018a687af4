/* Dense conv row kernels for x86: AVX2+FMA and AVX-512. See ops_conv.c for the scheme.
 *
 * Each tile keeps P output pixels x NV*16 output channels of accumulators in registers.
 * Per input value: NV (AVX-512) or 2 (AVX2) weight vector loads are shared by P pixels, and
 * each pixel's input value is broadcast once, so loads stay well below FMAs.
 * The tile functions are always_inline with P and NV passed as literals, so every (P, NV)
 * pair becomes its own fully unrolled copy whose accumulators the compiler keeps in registers.
 * Only called after qcnn_ops_resolve_isa() confirmed the CPU supports the ISA.
 */
#include <string.h>

#include "ops.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define NB QCNN_DCONV_NB

/* ------------------------------------------------------------------ AVX-512 */
#define T512 __attribute__((target("avx512f,avx512bw,avx512vl")))
/* Pixels per tile for NV vectors of output channels: NV*P accumulators + NV weight
 * registers must fit the 32 zmm registers (4 -> 6x4, 3 -> 8x3, 2 -> 12x2, 1 -> 12x1). */
#define P512MAX 12
#define P512(NV) ((NV) >= 3 ? 8 : 12)

static inline __attribute__((always_inline)) T512 void
tile512(const qcnn_dconv_row *r, const float *x, const float *w, size_t wblk, float *y,
        const float *bias, __mmask16 last_mask, const int P, const int NV)
{
    __m512 acc[P512MAX][4];
#pragma GCC unroll 12
    for (int p = 0; p < P; p++)
#pragma GCC unroll 4
        for (int v = 0; v < NV; v++)
            acc[p][v] = _mm512_setzero_ps();
    const size_t xpix = r->xpix;
    for (int ky = 0; ky < r->kh; ky++)
        for (int s = 0; s < r->nseg; s++) {
            const float *xs = x + ky * r->xrow + s * r->xseg;
            for (int k = 0; k < r->seglen; k++, w += NB) {
                __m512 wv[4];
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++)
                    wv[v] = _mm512_loadu_ps(w + v * wblk);
#pragma GCC unroll 12
                for (int p = 0; p < P; p++) {
                    const __m512 xv = _mm512_set1_ps(xs[p * xpix + k]);
#pragma GCC unroll 4
                    for (int v = 0; v < NV; v++)
                        acc[p][v] = _mm512_fmadd_ps(xv, wv[v], acc[p][v]);
                }
            }
        }
    const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int v = 0; v < NV; v++) {
        const __mmask16 m = v == NV - 1 ? last_mask : (__mmask16)0xFFFF;
        const __m512 b = bias ? _mm512_maskz_loadu_ps(m, bias + v * NB) : zero;
#pragma GCC unroll 12
        for (int p = 0; p < P; p++) {
            __m512 o = _mm512_add_ps(acc[p][v], b);
            if (r->relu)
                o = _mm512_max_ps(o, zero);
            _mm512_mask_storeu_ps(y + p * r->ypix + v * NB, m, o);
        }
    }
}

/* one chunk of NV blocks along the whole row */
static inline __attribute__((always_inline)) T512 void
chunk512(const qcnn_dconv_row *r, const float *w, size_t wblk, float *y, const float *bias,
         __mmask16 last_mask, const int NV)
{
    const int P = P512(NV);
    int ox = 0;
    for (; ox + P <= r->ow; ox += P)
        tile512(r, r->x + ox * r->xpix, w, wblk, y + ox * r->ypix, bias, last_mask, P, NV);
    const float *x = r->x + ox * r->xpix;
    y += ox * r->ypix;
    switch (r->ow - ox) {
#define TAIL(n)                                                                                    \
    case n:                                                                                        \
        tile512(r, x, w, wblk, y, bias, last_mask, n, NV);                                        \
        break;
        TAIL(1) TAIL(2) TAIL(3) TAIL(4) TAIL(5) TAIL(6) TAIL(7) TAIL(8) TAIL(9) TAIL(10) TAIL(11)
#undef TAIL
    default:
        break;
    }
}

T512 void qcnn_dconv_row_avx512(const qcnn_dconv_row *r)
{
    const size_t wblk = (size_t)r->kh * r->nseg * r->seglen * NB;
    /* split the group's blocks into chunks of at most 4, as even as possible (6 -> 3+3) */
    const int nchunks = (r->b1 - r->b0 + 3) / 4;
    int b = r->b0;
    for (int ch = 0; ch < nchunks; ch++) {
        const int nv = (r->b1 - b + (nchunks - ch) - 1) / (nchunks - ch);
        const int c0 = b * NB;
        const int cend = (b + nv) * NB < r->cout_g ? (b + nv) * NB : r->cout_g;
        const int last_cols = cend - (b + nv - 1) * NB; /* 1..16 */
        const __mmask16 mask = (__mmask16)((1u << last_cols) - 1u);
        const float *w = r->w + b * wblk;
        float *y = r->y + c0;
        const float *bias = r->bias ? r->bias + c0 : NULL;
        switch (nv) {
        case 1: chunk512(r, w, wblk, y, bias, mask, 1); break;
        case 2: chunk512(r, w, wblk, y, bias, mask, 2); break;
        case 3: chunk512(r, w, wblk, y, bias, mask, 3); break;
        default: chunk512(r, w, wblk, y, bias, mask, 4); break;
        }
        b += nv;
    }
}

/* ------------------------------------------------------------------ AVX2 */
#define T256 __attribute__((target("avx2,fma")))
#define P256 6 /* 6 pixels x 16 channels = 12 accumulators + 2 weights + 1 broadcast */

static inline __attribute__((always_inline)) T256 void
tile256(const qcnn_dconv_row *r, const float *x, const float *w, float *y, const float *bias,
        int ncols, const int P)
{
    __m256 acc[P256][2];
#pragma GCC unroll 6
    for (int p = 0; p < P; p++)
        acc[p][0] = acc[p][1] = _mm256_setzero_ps();
    const size_t xpix = r->xpix;
    for (int ky = 0; ky < r->kh; ky++)
        for (int s = 0; s < r->nseg; s++) {
            const float *xs = x + ky * r->xrow + s * r->xseg;
            for (int k = 0; k < r->seglen; k++, w += NB) {
                const __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
#pragma GCC unroll 6
                for (int p = 0; p < P; p++) {
                    const __m256 xv = _mm256_broadcast_ss(xs + p * xpix + k);
                    acc[p][0] = _mm256_fmadd_ps(xv, w0, acc[p][0]);
                    acc[p][1] = _mm256_fmadd_ps(xv, w1, acc[p][1]);
                }
            }
        }
    const __m256 zero = _mm256_setzero_ps();
    float bb[NB];
    for (int l = 0; l < NB; l++)
        bb[l] = (bias && l < ncols) ? bias[l] : 0.0f;
    const __m256 b0 = _mm256_loadu_ps(bb), b1 = _mm256_loadu_ps(bb + 8);
#pragma GCC unroll 6
    for (int p = 0; p < P; p++) {
        __m256 o0 = _mm256_add_ps(acc[p][0], b0), o1 = _mm256_add_ps(acc[p][1], b1);
        if (r->relu) {
            o0 = _mm256_max_ps(o0, zero);
            o1 = _mm256_max_ps(o1, zero);
        }
        float *yp = y + p * r->ypix;
        if (ncols == NB) {
            _mm256_storeu_ps(yp, o0);
            _mm256_storeu_ps(yp + 8, o1);
        } else { /* partial block: never write past this group's channels */
            float t[NB];
            _mm256_storeu_ps(t, o0);
            _mm256_storeu_ps(t + 8, o1);
            memcpy(yp, t, (size_t)ncols * sizeof(float));
        }
    }
}

T256 void qcnn_dconv_row_avx2(const qcnn_dconv_row *r)
{
    const size_t wblk = (size_t)r->kh * r->nseg * r->seglen * NB;
    for (int b = r->b0; b < r->b1; b++) {
        const int c0 = b * NB;
        const int ncols = r->cout_g - c0 < NB ? r->cout_g - c0 : NB;
        const float *w = r->w + b * wblk;
        const float *bias = r->bias ? r->bias + c0 : NULL;
        float *y = r->y + c0;
        int ox = 0;
        for (; ox + P256 <= r->ow; ox += P256)
            tile256(r, r->x + ox * r->xpix, w, y + ox * r->ypix, bias, ncols, P256);
        const float *x = r->x + ox * r->xpix;
        float *yt = y + ox * r->ypix;
        switch (r->ow - ox) {
        case 1: tile256(r, x, w, yt, bias, ncols, 1); break;
        case 2: tile256(r, x, w, yt, bias, ncols, 2); break;
        case 3: tile256(r, x, w, yt, bias, ncols, 3); break;
        case 4: tile256(r, x, w, yt, bias, ncols, 4); break;
        case 5: tile256(r, x, w, yt, bias, ncols, 5); break;
        default: break;
        }
    }
}

#endif /* __x86_64__ */
