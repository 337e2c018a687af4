/* Max / average pooling and global average pooling, NHWC (ONNX semantics, dilation 1).
 * For each output pixel the clipped window is walked pixel by pixel and the channel vector is
 * reduced with contiguous, vectorisable loops. */
#include <float.h>
#include <string.h>

#include "ops.h"

int qcnn_pool_out_size(int in, int k, int stride, int pad_begin, int pad_end, int ceil_mode)
{
    const int span = in + pad_begin + pad_end - k;
    if (k < 1 || stride < 1 || span < 0)
        return 0;
    int out = (ceil_mode ? (span + stride - 1) / stride : span / stride) + 1;
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

void qcnn_maxpool(const qcnn_pool_params *p, const float *x, int h, int w, int c, float *y, int oh,
                  int ow)
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
            memcpy(yp, x + ((size_t)y0 * w + x0) * c, (size_t)c * sizeof(float));
            for (int iy = y0; iy < y1; iy++)
                for (int ix = x0; ix < x1; ix++) {
                    const float *xp = x + ((size_t)iy * w + ix) * c;
                    for (ptrdiff_t ch = 0; ch < c; ch++)
                        yp[ch] = xp[ch] > yp[ch] ? xp[ch] : yp[ch];
                }
        }
    }
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
