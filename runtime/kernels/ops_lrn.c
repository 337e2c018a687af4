/* Local response normalisation across channels (ONNX LRN), NHWC.
 *
 * Channels are contiguous per pixel. Per block of channels, the squares (with zeros past
 * either end of the channel range) are written once into a small row t, so the window sum
 * sq[j] = sum_k t[j + k] is `size` shifted passes with no bounds checks, which vectorise.
 * For beta = 0.75 (AlexNet, CaffeNet, ZFNet), d^-0.75 = 1 / (sqrt(d) * sqrt(sqrt(d))):
 * vector sqrt instructions instead of a powf call per element (AVX-512: two refined rsqrt14
 * estimates, no sqrt/divide at all). The AVX-512 kernel keeps windows of up to 33 channels in
 * registers; it is bound by its multiplies (Zen 4, 55x55x96: 136 us with the row of squares,
 * 101 us in registers).
 */
#include <math.h>

#include "ops.h"

enum { LRN_BLOCK = 64, LRN_MAXC = 4096, LRN_MAXSIZE = 64 };

void qcnn_lrn_ref(const float *x, float *y, size_t npix, int C, int size, float alpha, float beta,
                  float bias);

/* always_inline so each ISA wrapper below gets its own vectorised copy */
static inline __attribute__((always_inline)) void lrn_body(const float *x, float *y, size_t npix,
                                                           int C, int size, float alpha,
                                                           float beta, float bias)
{
    const int lo = (size - 1) / 2; /* floor((size-1)/2) channels below, the rest above */
    const float scale = alpha / (float)size;
    const int fast = beta == 0.75f;
    float t[LRN_BLOCK + LRN_MAXSIZE], sq[LRN_BLOCK];
    for (size_t i = 0; i < npix; i++, x += C, y += C) {
        for (int c0 = 0; c0 < C; c0 += LRN_BLOCK) {
            const int n = C - c0 < LRN_BLOCK ? C - c0 : LRN_BLOCK;
            /* t[j] = x[c0 - lo + j]^2 where that channel exists, else 0 (three plain loops) */
            const int m = n + size - 1;
            int j0 = lo - c0 > 0 ? lo - c0 : 0;    /* first j with a channel >= 0 */
            int j1 = C - c0 + lo < m ? C - c0 + lo : m; /* first j past channel C-1 */
            for (ptrdiff_t j = 0; j < j0; j++)
                t[j] = 0.0f;
            for (ptrdiff_t j = j0; j < j1; j++)
                t[j] = x[c0 - lo + j] * x[c0 - lo + j];
            for (ptrdiff_t j = j1; j < m; j++)
                t[j] = 0.0f;
            for (ptrdiff_t j = 0; j < n; j++)
                sq[j] = t[j];
            for (ptrdiff_t k = 1; k < size; k++)
                for (ptrdiff_t j = 0; j < n; j++)
                    sq[j] += t[j + k];
            if (fast) {
                for (ptrdiff_t j = 0; j < n; j++) {
                    const float s = sqrtf(bias + scale * sq[j]);
                    y[c0 + j] = x[c0 + j] / (s * sqrtf(s));
                }
            } else {
                for (ptrdiff_t j = 0; j < n; j++)
                    y[c0 + j] = x[c0 + j] * powf(bias + scale * sq[j], -beta);
            }
        }
    }
}

static void lrn_generic(const float *x, float *y, size_t npix, int C, int size, float alpha,
                        float beta, float bias)
{
    if (size > LRN_MAXSIZE) /* absurd window: the plain loops have no size limit */
        qcnn_lrn_ref(x, y, npix, C, size, alpha, beta, bias);
    else
        lrn_body(x, y, npix, C, size, alpha, beta, bias);
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* Explicit SIMD for the common case (beta = 0.75, C and size not huge): per pixel, write the
 * squares once into a zero-bordered row t (t[lo + c] = x[c]^2), then each vector of window
 * sums is `size` unaligned loads of t, with no bounds logic at all. */

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl")))
/* 1/sqrt(v): 14-bit estimate + one Newton step (~23 bits, a few ulp) */
T512 static inline __m512 rsqrt_nr512(__m512 v)
{
    const __m512 r = _mm512_rsqrt14_ps(v);
    const __m512 hv = _mm512_mul_ps(_mm512_set1_ps(0.5f), v);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(_mm512_mul_ps(hv, r), r, _mm512_set1_ps(1.5f)));
}

/* x * d^-0.75 with d = bias + scale * sq: r = d^-0.5 by a refined estimate, then x * r * r *
 * rsqrt(r) with that second estimate's Newton step folded into the products (s' = s * (1.5 -
 * 0.5 * r * s * s), so x r^2 s' = (x r)(r s)(1.5 - 0.5 (r s) s)): 11 multiplies instead of 13.
 * The kernel is bound by them (one zmm multiply per cycle on Zen 4). */
T512 static inline __m512 lrn_scale512(__m512 sq, __m512 x, __m512 vscale, __m512 vbias)
{
    const __m512 half = _mm512_set1_ps(0.5f), three_halves = _mm512_set1_ps(1.5f);
    const __m512 d = _mm512_fmadd_ps(vscale, sq, vbias), r0 = _mm512_rsqrt14_ps(d);
    const __m512 r = _mm512_mul_ps(r0, _mm512_fnmadd_ps(_mm512_mul_ps(_mm512_mul_ps(d, r0), r0), half, three_halves));
    const __m512 s0 = _mm512_rsqrt14_ps(r), rs = _mm512_mul_ps(r, s0);
    const __m512 e = _mm512_fnmadd_ps(_mm512_mul_ps(rs, s0), half, three_halves);
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(x, r), rs), e);
}

/* Windows of at most 33 channels (|offset| <= 16): the squares of the previous, current and next
 * 16 channels stay in registers and each offset's neighbours come from one vpermt2ps of two of
 * them, instead of squares written to a row and read back unaligned (stores that loads straddle
 * cannot forward: 55x55x96 took 143 us that way on Zen 4). Channels past C are masked-off zeros. */
T512 static void lrn_avx512_regs(const float *x, float *y, size_t npix, int C, int size, __m512 vscale,
                                 __m512 vbias)
{
    const int lo = (size - 1) / 2, hi = size - 1 - lo;
    /* offset s: lane j takes channel j + s of (prev, cur) for s < 0, of (cur, next) for s > 0 */
    __m512i below[16], above[16];
    for (int s = 1; s <= 16; s++) {
        below[s - 1] = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                        _mm512_set1_epi32(16 - s));
        above[s - 1] = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                        _mm512_set1_epi32(s));
    }
    for (size_t i = 0; i < npix; i++, x += C, y += C) {
        __m512 prev = _mm512_setzero_ps();
        __mmask16 m = C >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << C) - 1u);
        __m512 xc = _mm512_maskz_loadu_ps(m, x), cur = _mm512_mul_ps(xc, xc);
        for (int c = 0; c < C; c += 16) {
            const int cn = c + 16;
            const __mmask16 mn = cn >= C ? 0 : C - cn >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (C - cn)) - 1u);
            const __m512 xn = _mm512_maskz_loadu_ps(mn, x + cn), next = _mm512_mul_ps(xn, xn);
            /* summed from the lowest channel up, as the other kernels do */
            __m512 sq = lo ? _mm512_permutex2var_ps(prev, below[lo - 1], cur) : cur;
            for (int s = lo - 1; s >= 1; s--)
                sq = _mm512_add_ps(sq, _mm512_permutex2var_ps(prev, below[s - 1], cur));
            if (lo)
                sq = _mm512_add_ps(sq, cur);
            for (int s = 1; s <= hi; s++)
                sq = _mm512_add_ps(sq, _mm512_permutex2var_ps(cur, above[s - 1], next));
            _mm512_mask_storeu_ps(y + c, m, lrn_scale512(sq, xc, vscale, vbias));
            prev = cur;
            cur = next;
            xc = xn;
            m = mn;
        }
    }
}

T512 static void lrn_avx512(const float *x, float *y, size_t npix, int C, int size, float alpha,
                            float beta, float bias)
{
    if (beta != 0.75f || C > LRN_MAXC || size > LRN_MAXSIZE) {
        lrn_generic(x, y, npix, C, size, alpha, beta, bias);
        return;
    }
    const int lo = (size - 1) / 2;
    const __m512 vscale = _mm512_set1_ps(alpha / (float)size), vbias = _mm512_set1_ps(bias);
    if (size <= 33) { /* every window within one vector of its centre's */
        lrn_avx512_regs(x, y, npix, C, size, vscale, vbias);
        return;
    }
    float t[LRN_MAXC + 2 * LRN_MAXSIZE + 16]; /* lo + C + size + 16 floats */
    const int C16 = C & ~15;
    const __mmask16 tail = (__mmask16)((1u << (C & 15)) - 1u);
    /* borders stay zero for every pixel: t[0, lo) and t[lo+C, lo+C+size+16) */
    for (int j = 0; j < lo; j++)
        t[j] = 0.0f;
    for (int j = lo + C; j < lo + C + size + 16; j++)
        t[j] = 0.0f;
    for (size_t i = 0; i < npix; i++, x += C, y += C) {
        for (int c = 0; c < C16; c += 16) {
            const __m512 v = _mm512_loadu_ps(x + c);
            _mm512_storeu_ps(t + lo + c, _mm512_mul_ps(v, v));
        }
        if (tail) {
            const __m512 v = _mm512_maskz_loadu_ps(tail, x + C16);
            _mm512_mask_storeu_ps(t + lo + C16, tail, _mm512_mul_ps(v, v));
        }
        for (int c = 0; c < C; c += 16) {
            __m512 sq = _mm512_loadu_ps(t + c);
            for (int k = 1; k < size; k++)
                sq = _mm512_add_ps(sq, _mm512_loadu_ps(t + c + k));
            const __m512 d = _mm512_fmadd_ps(vscale, sq, vbias);
            /* d^-0.75 = r * r * rsqrt(r) with r = d^-0.5: no sqrt or divide instructions */
            const __m512 r = rsqrt_nr512(d);
            const __m512 f = _mm512_mul_ps(_mm512_mul_ps(r, r), rsqrt_nr512(r));
            const __mmask16 m = c + 16 <= C ? (__mmask16)0xFFFF : tail;
            _mm512_mask_storeu_ps(y + c, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + c), f));
        }
    }
}

#define T256 __attribute__((target("avx2,fma")))
T256 static void lrn_avx2(const float *x, float *y, size_t npix, int C, int size, float alpha,
                          float beta, float bias)
{
    if (beta != 0.75f || C > LRN_MAXC || size > LRN_MAXSIZE) {
        lrn_generic(x, y, npix, C, size, alpha, beta, bias);
        return;
    }
    const int lo = (size - 1) / 2;
    const float scale = alpha / (float)size;
    float t[LRN_MAXC + 2 * LRN_MAXSIZE + 16]; /* lo + C + size + 16 floats */
    const __m256 vscale = _mm256_set1_ps(scale), vbias = _mm256_set1_ps(bias);
    const int C8 = C & ~7;
    for (int j = 0; j < lo; j++)
        t[j] = 0.0f;
    for (int j = lo + C; j < lo + C + size + 16; j++)
        t[j] = 0.0f;
    for (size_t i = 0; i < npix; i++, x += C, y += C) {
        int c = 0;
        for (; c < C8; c += 8) {
            const __m256 v = _mm256_loadu_ps(x + c);
            _mm256_storeu_ps(t + lo + c, _mm256_mul_ps(v, v));
        }
        for (; c < C; c++)
            t[lo + c] = x[c] * x[c];
        for (c = 0; c < C8; c += 8) {
            __m256 sq = _mm256_loadu_ps(t + c);
            for (int k = 1; k < size; k++)
                sq = _mm256_add_ps(sq, _mm256_loadu_ps(t + c + k));
            const __m256 d = _mm256_fmadd_ps(vscale, sq, vbias);
            const __m256 s = _mm256_sqrt_ps(d);
            const __m256 den = _mm256_mul_ps(s, _mm256_sqrt_ps(s));
            _mm256_storeu_ps(y + c, _mm256_div_ps(_mm256_loadu_ps(x + c), den));
        }
        for (; c < C; c++) { /* channel tail: same formula, scalar */
            float sq = 0.0f;
            for (int k = 0; k < size; k++)
                sq += t[c + k];
            const float s = sqrtf(bias + scale * sq);
            y[c] = x[c] / (s * sqrtf(s));
        }
    }
}
#endif

void qcnn_lrn_ref(const float *x, float *y, size_t npix, int C, int size, float alpha, float beta,
                  float bias)
{
    const int lo = (size - 1) / 2, hi = size - 1 - lo;
    for (size_t i = 0; i < npix; i++)
        for (int c = 0; c < C; c++) {
            float sq = 0.0f;
            for (int j = c - lo; j <= c + hi; j++)
                if (j >= 0 && j < C)
                    sq += x[i * C + j] * x[i * C + j];
            y[i * C + c] = x[i * C + c] / powf(bias + alpha / size * sq, beta);
        }
}

void qcnn_lrn(const float *x, float *y, size_t npix, int c, int size, float alpha, float beta,
              float bias, int isa)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (isa == 2) {
        lrn_avx512(x, y, npix, c, size, alpha, beta, bias);
        return;
    }
    if (isa == 1) {
        lrn_avx2(x, y, npix, c, size, alpha, beta, bias);
        return;
    }
#else
    (void)isa;
#endif
    lrn_generic(x, y, npix, c, size, alpha, beta, bias);
}
