/* Elementwise and layout ops: ReLU, Add, Softmax, channel concat, NHWC -> NCHW.
 * Plain loops written so the compiler vectorises them; they are memory-bound anyway. */
#include <math.h>
#include <string.h>

#include "ops.h"

void qcnn_relu(const float *x, float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void qcnn_add(const float *a, const float *b, float *y, size_t n, int relu)
{
    if (relu) {
        for (size_t i = 0; i < n; i++) {
            float v = a[i] + b[i];
            y[i] = v > 0.0f ? v : 0.0f;
        }
    } else {
        for (size_t i = 0; i < n; i++)
            y[i] = a[i] + b[i];
    }
}

void qcnn_softmax(const float *x, float *y, int rows, int n)
{
    for (int r = 0; r < rows; r++, x += n, y += n) {
        float m = -INFINITY;
        for (ptrdiff_t i = 0; i < n; i++)
            m = x[i] > m ? x[i] : m;
        /* sum in double: 1000 classes of tiny terms */
        double s = 0.0;
        for (ptrdiff_t i = 0; i < n; i++) {
            y[i] = expf(x[i] - m);
            s += y[i];
        }
        const float inv = (float)(1.0 / s);
        for (ptrdiff_t i = 0; i < n; i++)
            y[i] *= inv;
    }
}

void qcnn_copy_channels(const float *x, size_t npix, int cx, float *y, int cy, int c_offset)
{
    y += c_offset;
    for (size_t i = 0; i < npix; i++)
        memcpy(y + i * cy, x + i * cx, (size_t)cx * sizeof(float));
}

void qcnn_nhwc_to_nchw(const float *x, int h, int w, int c, float *y)
{
    /* blocked transpose of the [hw][c] matrix so both sides stay in cache */
    const size_t hw = (size_t)h * w;
    enum { B = 32 };
    for (size_t p0 = 0; p0 < hw; p0 += B) {
        const size_t p1 = p0 + B < hw ? p0 + B : hw;
        for (int c0 = 0; c0 < c; c0 += B) {
            const int c1 = c0 + B < c ? c0 + B : c;
            for (int ch = c0; ch < c1; ch++)
                for (size_t p = p0; p < p1; p++)
                    y[(size_t)ch * hw + p] = x[p * c + ch];
        }
    }
}

/* How many of x[0..n) are NaN or infinite (exponent bits all ones). Integer compares on the
 * raw bits, which gcc vectorizes (the transposes below do not vectorize, and counting inside
 * them doubled their time). */
static inline size_t nonfinite_bits(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u); /* the bits, without breaking strict aliasing */
    return (u & 0x7F800000u) == 0x7F800000u;
}

static size_t count_nonfinite(const float *x, size_t n)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += nonfinite_bits(x[i]);
    return bad;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define T512F __attribute__((target("avx512f")))

/* The 3-plane gather 16 pixels at a time: each output vector of 16 interleaved floats is one
 * two-source permute of the r and g vectors, then b's lanes merged in by a masked permute; the
 * non-finite count comes from the same vectors (exponent bits all ones), so it costs 2 ops per
 * 16 values. 224 x 224 x 3 on Zen 4: 17 us, against 43-50 us for the scalar gather without the
 * count (66 us with it). */
static T512F size_t nchw3_avx512(const float *r, const float *g, const float *b, size_t hw, float *y)
{
    int32_t rg_idx[3][16], b_idx[3][16];
    __mmask16 b_lanes[3];
    for (int k = 0; k < 3; k++) { /* output vector k holds interleaved values 16k .. 16k + 15 */
        b_lanes[k] = 0;
        for (int j = 0; j < 16; j++) {
            const int q = 16 * k + j, pix = q / 3, ch = q % 3;
            rg_idx[k][j] = ch == 1 ? 16 + pix : pix; /* r is the first source, g the second */
            b_idx[k][j] = pix;
            if (ch == 2) b_lanes[k] |= (__mmask16)(1u << j);
        }
    }
    __m512i rgi[3], bi[3];
    for (int k = 0; k < 3; k++) {
        rgi[k] = _mm512_loadu_si512(rg_idx[k]);
        bi[k] = _mm512_loadu_si512(b_idx[k]);
    }
    const __m512i expo = _mm512_set1_epi32(0x7F800000);
    size_t bad = 0, p = 0;
    for (; p + 16 <= hw; p += 16) {
        const __m512 vr = _mm512_loadu_ps(r + p), vg = _mm512_loadu_ps(g + p), vb = _mm512_loadu_ps(b + p);
        for (int k = 0; k < 3; k++)
            _mm512_storeu_ps(y + 3 * p + 16 * k,
                             _mm512_mask_permutexvar_ps(_mm512_permutex2var_ps(vr, rgi[k], vg), b_lanes[k], bi[k], vb));
        const __m512 v[3] = {vr, vg, vb};
        for (int k = 0; k < 3; k++) {
            const __m512i e = _mm512_and_si512(_mm512_castps_si512(v[k]), expo);
            bad += (size_t)__builtin_popcount(_mm512_cmpeq_epi32_mask(e, expo));
        }
    }
    for (; p < hw; p++) {
        y[3 * p] = r[p];
        y[3 * p + 1] = g[p];
        y[3 * p + 2] = b[p];
        bad += nonfinite_bits(r[p]) + nonfinite_bits(g[p]) + nonfinite_bits(b[p]);
    }
    return bad;
}
#endif

size_t qcnn_nchw_to_nhwc(const float *x, int c, int h, int w, float *y, int isa)
{
    /* the inverse of qcnn_nhwc_to_nchw: the graph input arrives NCHW, the kernels want NHWC.
     * For c = 3 (images) this is a gather of three planes per pixel. Returns how many values are
     * NaN or infinite: the int8 kernels would turn them into finite numbers, and the caller
     * refuses such an input instead of answering with a plausible-looking output. */
    const size_t hw = (size_t)h * w;
    if (c == 3) {
        const float *r = x, *g = x + hw, *b = x + 2 * hw;
#if defined(__x86_64__) && defined(__GNUC__)
        if (isa == 2)
            return nchw3_avx512(r, g, b, hw, y);
#else
        (void)isa;
#endif
        for (size_t p = 0; p < hw; p++) {
            y[3 * p] = r[p];
            y[3 * p + 1] = g[p];
            y[3 * p + 2] = b[p];
        }
        return count_nonfinite(x, 3 * hw);
    }
    enum { B = 32 };
    for (size_t p0 = 0; p0 < hw; p0 += B) {
        const size_t p1 = p0 + B < hw ? p0 + B : hw;
        for (int c0 = 0; c0 < c; c0 += B) {
            const int c1 = c0 + B < c ? c0 + B : c;
            for (size_t p = p0; p < p1; p++)
                for (int ch = c0; ch < c1; ch++)
                    y[p * c + ch] = x[(size_t)ch * hw + p];
        }
    }
    return count_nonfinite(x, (size_t)c * hw);
}
