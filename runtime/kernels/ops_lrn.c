/* Local response normalisation across channels (ONNX LRN), NHWC.
 *
 * Channels are contiguous per pixel, so the window sum sq[c] = sum_k x[c+k-lo]^2 is computed
 * as `size` shifted, vectorisable passes over a block of channels (squares are recomputed
 * rather than stored: cheaper than a second buffer). For beta = 0.75 (AlexNet, CaffeNet,
 * ZFNet), d^-0.75 = 1 / (sqrt(d) * sqrt(sqrt(d))), which vectorises into sqrt instructions
 * instead of a powf call per element.
 */
#include <math.h>

#include "ops.h"

enum { LRN_BLOCK = 64 };

/* always_inline so each ISA wrapper below gets its own vectorised copy */
static inline __attribute__((always_inline)) void lrn_body(const float *x, float *y, size_t npix,
                                                           int C, int size, float alpha,
                                                           float beta, float bias)
{
    const int lo = (size - 1) / 2;   /* floor((size-1)/2) channels below */
    const int hi = size - 1 - lo;    /* ceil((size-1)/2) channels above */
    const float scale = alpha / (float)size;
    const int fast = beta == 0.75f;
    float sq[LRN_BLOCK];
    for (size_t i = 0; i < npix; i++, x += C, y += C) {
        for (int c0 = 0; c0 < C; c0 += LRN_BLOCK) {
            const int n = C - c0 < LRN_BLOCK ? C - c0 : LRN_BLOCK;
            for (int j = 0; j < n; j++)
                sq[j] = 0.0f;
            for (int k = -lo; k <= hi; k++) {
                /* channels c in [c0, c0+n) whose neighbour c+k exists */
                int a = c0, b = c0 + n;
                if (a + k < 0)
                    a = -k;
                if (b + k > C)
                    b = C - k;
                const float *xs = x + k;
                for (int c = a; c < b; c++)
                    sq[c - c0] += xs[c] * xs[c];
            }
            if (fast) {
                for (int j = 0; j < n; j++) {
                    const float d = bias + scale * sq[j];
                    const float s = sqrtf(d);
                    y[c0 + j] = x[c0 + j] / (s * sqrtf(s));
                }
            } else {
                for (int j = 0; j < n; j++)
                    y[c0 + j] = x[c0 + j] * powf(bias + scale * sq[j], -beta);
            }
        }
    }
}

static void lrn_generic(const float *x, float *y, size_t npix, int C, int size, float alpha,
                        float beta, float bias)
{
    lrn_body(x, y, npix, C, size, alpha, beta, bias);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void
lrn_avx512(const float *x, float *y, size_t npix, int C, int size, float alpha, float beta,
           float bias)
{
    lrn_body(x, y, npix, C, size, alpha, beta, bias);
}
__attribute__((target("avx2,fma"))) static void lrn_avx2(const float *x, float *y, size_t npix,
                                                          int C, int size, float alpha,
                                                          float beta, float bias)
{
    lrn_body(x, y, npix, C, size, alpha, beta, bias);
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
