/* Max / average pooling and global average pooling, NHWC (ONNX semantics, dilation 1).
 * For each output pixel the clipped window is walked pixel by pixel and the channel vector is
 * reduced with contiguous, vectorisable loops. */
#include <float.h>
#include <string.h>

#include "ops.h"

int qcnn_pool_out_size(int in, int k, int stride, int pad_begin, int pad_end, int ceil_mode)
{
    const int span = in + pad_begin + pad_end - k;
    if (k < 1 || stride < 1 || (span < 0 && !ceil_mode))
        return 0;
    /* ceil(span / stride) also for a window wider than the padded input (span < 0): ONNX and
     * onnxruntime then give one output, whose window is clipped to the input. */
    int out = (ceil_mode ? (span >= 0 ? (span + stride - 1) / stride : -((-span) / stride))
                         : span / stride) + 1;
    /* ONNX/PyTorch: the last window must start inside the input or the left padding */
    if (ceil_mode && (out - 1) * stride >= in + pad_begin)
        out--;
    return out;
}

/* Window [start, end) in input coordinates along one axis; *full is the extent used as the
 * count_include_pad divisor (padding counts, ceil-mode overhang past the padding does not). */
static void window(int o, int stride, int pad_begin, int k, int in, int pad_end, int *start,
                   int *end, int *full)
{
    int s = o * stride - pad_begin, e = s + k;
    if (e > in + pad_end)
        e = in + pad_end;
    *full = e - s;
    *start = s < 0 ? 0 : s;
    *end = e > in ? in : e;
}

void qcnn_maxpool_ref(const qcnn_pool_params *p, const float *x, int h, int w, int c, float *y,
                      int oh, int ow)
{
    for (int oy = 0; oy < oh; oy++)
        for (int ox = 0; ox < ow; ox++) {
            int y0, y1, fy, x0, x1, fx;
            window(oy, p->stride_h, p->pad_top, p->kh, h, p->pad_bottom, &y0, &y1, &fy);
            window(ox, p->stride_w, p->pad_left, p->kw, w, p->pad_right, &x0, &x1, &fx);
            for (int ch = 0; ch < c; ch++) {
                float m = 0.0f; /* stays 0 if the window holds no input element */
                for (int iy = y0; iy < y1; iy++)
                    for (int ix = x0; ix < x1; ix++) {
                        const float v = x[((size_t)iy * w + ix) * c + ch];
                        if ((iy == y0 && ix == x0) || v > m)
                            m = v;
                    }
                y[((size_t)oy * ow + ox) * c + ch] = m;
            }
        }
}

/* Max over the window for channels [c0, c0+CB): CB is a compile-time constant so the running
 * maximum lives in vector registers instead of being re-stored to y for every window pixel. */
static inline __attribute__((always_inline)) void max_chunk(const float *x, int w, int c, int y0,
                                                            int y1, int x0, int x1, float *yp,
                                                            const int CB)
{
    float m[128];
    const float *first = x + ((size_t)y0 * w + x0) * c;
    for (ptrdiff_t j = 0; j < CB; j++)
        m[j] = first[j];
    for (int iy = y0; iy < y1; iy++)
        for (int ix = x0; ix < x1; ix++) {
            const float *xp = x + ((size_t)iy * w + ix) * c;
            for (ptrdiff_t j = 0; j < CB; j++)
                m[j] = xp[j] > m[j] ? xp[j] : m[j];
        }
    for (ptrdiff_t j = 0; j < CB; j++)
        yp[j] = m[j];
}

static inline __attribute__((always_inline)) void
maxpool_body(const qcnn_pool_params *p, const float *x, int h, int w, int c, float *y, int oh,
             int ow, const int CB)
{
    for (int oy = 0; oy < oh; oy++) {
        int y0, y1, fy;
        window(oy, p->stride_h, p->pad_top, p->kh, h, p->pad_bottom, &y0, &y1, &fy);
        for (int ox = 0; ox < ow; ox++) {
            int x0, x1, fx;
            window(ox, p->stride_w, p->pad_left, p->kw, w, p->pad_right, &x0, &x1, &fx);
            float *yp = y + ((size_t)oy * ow + ox) * c;
            if (y0 >= y1 || x0 >= x1) { /* window entirely in padding */
                memset(yp, 0, (size_t)c * sizeof(float));
                continue;
            }
            /* chunks of CB, then at most one of each smaller power of two (96 = 64 + 32) */
            int c0 = 0;
            for (; c0 + CB <= c; c0 += CB)
                max_chunk(x + c0, w, c, y0, y1, x0, x1, yp + c0, CB);
#define MAX_STEP(n)                                                                                \
    if (CB > (n) && c0 + (n) <= c) {                                                               \
        max_chunk(x + c0, w, c, y0, y1, x0, x1, yp + c0, (n));                                     \
        c0 += (n);                                                                                 \
    }
            MAX_STEP(64) MAX_STEP(32) MAX_STEP(16) MAX_STEP(8) MAX_STEP(4)
#undef MAX_STEP
            for (; c0 < c; c0++)
                max_chunk(x + c0, w, c, y0, y1, x0, x1, yp + c0, 1);
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void
maxpool_avx512(const qcnn_pool_params *p, const float *x, int h, int w, int c, float *y, int oh,
               int ow)
{
    maxpool_body(p, x, h, w, c, y, oh, ow, 128); /* 8 zmm */
}
__attribute__((target("avx2,fma"))) static void maxpool_avx2(const qcnn_pool_params *p,
                                                              const float *x, int h, int w, int c,
                                                              float *y, int oh, int ow)
{
    maxpool_body(p, x, h, w, c, y, oh, ow, 64); /* 8 ymm */
}
#endif

void qcnn_maxpool(const qcnn_pool_params *p, const float *x, int h, int w, int c, float *y, int oh,
                  int ow, int isa)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (isa == 2) {
        maxpool_avx512(p, x, h, w, c, y, oh, ow);
        return;
    }
    if (isa == 1) {
        maxpool_avx2(p, x, h, w, c, y, oh, ow);
        return;
    }
#else
    (void)isa;
#endif
    maxpool_body(p, x, h, w, c, y, oh, ow, 32); /* 8 SSE / NEON registers */
}

void qcnn_avgpool(const qcnn_pool_params *p, const float *x, int h, int w, int c, float *y, int oh,
                  int ow)
{
    for (int oy = 0; oy < oh; oy++) {
        int y0, y1, fy;
        window(oy, p->stride_h, p->pad_top, p->kh, h, p->pad_bottom, &y0, &y1, &fy);
        for (int ox = 0; ox < ow; ox++) {
            int x0, x1, fx;
            window(ox, p->stride_w, p->pad_left, p->kw, w, p->pad_right, &x0, &x1, &fx);
            float *yp = y + ((size_t)oy * ow + ox) * c;
            memset(yp, 0, (size_t)c * sizeof(float));
            const int count = (y1 - y0) * (x1 - x0);
            if (y0 >= y1 || x0 >= x1)
                continue;
            for (int iy = y0; iy < y1; iy++)
                for (int ix = x0; ix < x1; ix++) {
                    const float *xp = x + ((size_t)iy * w + ix) * c;
                    for (ptrdiff_t ch = 0; ch < c; ch++)
                        yp[ch] += xp[ch];
                }
            const float inv = 1.0f / (float)(p->count_include_pad ? fy * fx : count);
            for (ptrdiff_t ch = 0; ch < c; ch++)
                yp[ch] *= inv;
        }
    }
}

void qcnn_global_avgpool(const float *x, int h, int w, int c, float *y)
{
    const size_t n = (size_t)h * w;
    memset(y, 0, (size_t)c * sizeof(float));
    for (size_t i = 0; i < n; i++)
        for (ptrdiff_t ch = 0; ch < c; ch++)
            y[ch] += x[i * c + ch];
    const float inv = 1.0f / (float)n;
    for (ptrdiff_t ch = 0; ch < c; ch++)
        y[ch] *= inv;
}
