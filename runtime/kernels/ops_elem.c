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
static size_t count_nonfinite(const float *x, size_t n)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, sizeof u); /* the bits, without breaking strict aliasing */
        bad += (u & 0x7F800000u) == 0x7F800000u;
    }
    return bad;
}

size_t qcnn_nchw_to_nhwc(const float *x, int c, int h, int w, float *y)
{
    /* the inverse of qcnn_nhwc_to_nchw: the graph input arrives NCHW, the kernels want NHWC.
     * For c = 3 (images) this is a gather of three planes per pixel. Returns how many values are
     * NaN or infinite: the int8 kernels would turn them into finite numbers, and the caller
     * refuses such an input instead of answering with a plausible-looking output. */
    const size_t hw = (size_t)h * w;
    if (c == 3) {
        const float *r = x, *g = x + hw, *b = x + 2 * hw;
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
