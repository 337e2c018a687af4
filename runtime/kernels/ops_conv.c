/* Dense convolution: reference, weight packing, and the driver of the fast row kernels.
 *
 * Fast path scheme (all ISAs): output channels live in vector lanes. For one output row the
 * row kernel computes tiles of P neighbouring output pixels x 16*NV output channels held in
 * registers; each step broadcasts one input value per pixel and multiplies it by a vector
 * of packed weights. Padding is removed up front by copying the input into a zero-filled
 * scratch image, so the inner loops have no bounds checks. A 1x1 stride-1 conv without pads
 * is a GEMM [HW x Cin] x [Cin x Cout]: it is run as one long "row" of H*W pixels.
 */
#include <string.h>

#include "ops.h"
#include "qcnn_kernels.h"

int qcnn_dconv_out_size(const qcnn_dconv_params *p, int h, int w, int *oh, int *ow)
{
    int hp = h + p->pad_top + p->pad_bottom, wp = w + p->pad_left + p->pad_right;
    if (p->stride_h < 1 || p->stride_w < 1 || hp < p->kh || wp < p->kw) {
        *oh = *ow = 0;
        return 0;
    }
    *oh = (hp - p->kh) / p->stride_h + 1;
    *ow = (wp - p->kw) / p->stride_w + 1;
    return 1;
}

static int nblocks(const qcnn_dconv_params *p)
{
    int cout_g = p->cout / p->groups;
    return (cout_g + QCNN_DCONV_NB - 1) / QCNN_DCONV_NB;
}

size_t qcnn_dconv_packed_floats(const qcnn_dconv_params *p)
{
    int cin_g = p->cin / p->groups;
    return (size_t)p->groups * nblocks(p) * p->kh * p->kw * cin_g * QCNN_DCONV_NB;
}

void qcnn_dconv_pack(const qcnn_dconv_params *p, const float *w_onnx, float *packed)
{
    const int G = p->groups, cin_g = p->cin / G, cout_g = p->cout / G, nb = nblocks(p);
    const int KH = p->kh, KW = p->kw, NB = QCNN_DCONV_NB;
    float *dst = packed;
    for (int g = 0; g < G; g++)
        for (int b = 0; b < nb; b++)
            for (int ky = 0; ky < KH; ky++)
                for (int kx = 0; kx < KW; kx++)
                    for (int ci = 0; ci < cin_g; ci++)
                        for (int l = 0; l < NB; l++) {
                            int co = b * NB + l; /* within the group */
                            float v = 0.0f;
                            if (co < cout_g) {
                                size_t o = g * cout_g + co;
                                v = w_onnx[((o * cin_g + ci) * KH + ky) * KW + kx];
                            }
                            *dst++ = v;
                        }
}

void qcnn_dconv_ref(const qcnn_dconv_params *p, const float *x, int h, int w, float *y,
                    int ystride)
{
    int OH, OW;
    if (!qcnn_dconv_out_size(p, h, w, &OH, &OW))
        return;
    const int C = p->cin, G = p->groups, cin_g = C / G, cout_g = p->cout / G;
    for (int oy = 0; oy < OH; oy++)
        for (int ox = 0; ox < OW; ox++)
            for (int co = 0; co < p->cout; co++) {
                const int g = co / cout_g;
                float acc = p->bias ? p->bias[co] : 0.0f;
                for (int ky = 0; ky < p->kh; ky++) {
                    const int iy = oy * p->stride_h - p->pad_top + ky;
                    if (iy < 0 || iy >= h)
                        continue;
                    for (int kx = 0; kx < p->kw; kx++) {
                        const int ix = ox * p->stride_w - p->pad_left + kx;
                        if (ix < 0 || ix >= w)
                            continue;
                        const float *xp = x + ((size_t)iy * w + ix) * C + g * cin_g;
                        for (int ci = 0; ci < cin_g; ci++)
                            acc += xp[ci] *
                                   p->weight[(((size_t)co * cin_g + ci) * p->kh + ky) * p->kw + kx];
                    }
                }
                if (p->relu && acc < 0.0f)
                    acc = 0.0f;
                y[((size_t)oy * OW + ox) * ystride + co] = acc;
            }
}

static int has_pad(const qcnn_dconv_params *p)
{
    return p->pad_top | p->pad_left | p->pad_bottom | p->pad_right;
}

size_t qcnn_dconv_scratch_floats(const qcnn_dconv_params *p, int h, int w)
{
    if (!has_pad(p))
        return 0;
    return (size_t)(h + p->pad_top + p->pad_bottom) * (w + p->pad_left + p->pad_right) * p->cin;
}

/* ---------------------------------------------------------------- portable row kernel */
/* P pixels x 16 channels per tile. With GCC/Clang the 16 channels are four 4-float vectors
 * (vector extensions: SSE on x86-64, NEON on ARM); elsewhere plain loops. Loop indices are
 * ptrdiff_t because the extension is built with -fwrapv, under which int index arithmetic
 * blocks vectorisation. */
#if defined(__aarch64__)
#define GP 4 /* 32 vector registers: 16 accumulators + 4 weights */
#else
#define GP 2 /* 16 vector registers: 8 accumulators + 4 weights */
#endif

#if defined(__GNUC__)
typedef float v4f __attribute__((vector_size(16)));

static inline v4f v4_load(const float *p)
{
    v4f v;
    memcpy(&v, p, sizeof v); /* unaligned load */
    return v;
}

static inline __attribute__((always_inline)) void tile_generic(const qcnn_dconv_row *r,
                                                               const float *x, const float *w,
                                                               float *y, const int P, int ncols,
                                                               const float *bias)
{
    v4f acc[GP][4];
    for (int p = 0; p < P; p++)
        for (int q = 0; q < 4; q++)
            acc[p][q] = (v4f){0.0f, 0.0f, 0.0f, 0.0f};
    for (ptrdiff_t ky = 0; ky < r->kh; ky++)
        for (ptrdiff_t s = 0; s < r->nseg; s++) {
            const float *xs = x + ky * r->xrow + s * r->xseg;
            for (ptrdiff_t k = 0; k < r->seglen; k++, w += QCNN_DCONV_NB) {
                const v4f w0 = v4_load(w), w1 = v4_load(w + 4), w2 = v4_load(w + 8),
                          w3 = v4_load(w + 12);
                for (int p = 0; p < P; p++) {
                    const float xv = xs[p * r->xpix + k];
                    acc[p][0] += xv * w0;
                    acc[p][1] += xv * w1;
                    acc[p][2] += xv * w2;
                    acc[p][3] += xv * w3;
                }
            }
        }
    for (int p = 0; p < P; p++) {
        float o[QCNN_DCONV_NB];
        memcpy(o, acc[p], sizeof o);
        float *yp = y + p * r->ypix;
        for (ptrdiff_t l = 0; l < ncols; l++) {
            const float v = o[l] + (bias ? bias[l] : 0.0f);
            yp[l] = (r->relu && v < 0.0f) ? 0.0f : v;
        }
    }
}
#else
static void tile_generic(const qcnn_dconv_row *r, const float *x, const float *w, float *y, int P,
                         int ncols, const float *bias)
{
    float acc[GP][QCNN_DCONV_NB];
    for (int p = 0; p < P; p++)
        for (int l = 0; l < QCNN_DCONV_NB; l++)
            acc[p][l] = 0.0f;
    for (ptrdiff_t ky = 0; ky < r->kh; ky++)
        for (ptrdiff_t s = 0; s < r->nseg; s++) {
            const float *xs = x + ky * r->xrow + s * r->xseg;
            for (ptrdiff_t k = 0; k < r->seglen; k++, w += QCNN_DCONV_NB)
                for (int p = 0; p < P; p++) {
                    const float xv = xs[p * r->xpix + k];
                    for (ptrdiff_t l = 0; l < QCNN_DCONV_NB; l++)
                        acc[p][l] += xv * w[l];
                }
        }
    for (int p = 0; p < P; p++) {
        float *yp = y + p * r->ypix;
        for (ptrdiff_t l = 0; l < ncols; l++) {
            const float v = acc[p][l] + (bias ? bias[l] : 0.0f);
            yp[l] = (r->relu && v < 0.0f) ? 0.0f : v;
        }
    }
}
#endif

void qcnn_dconv_row_generic(const qcnn_dconv_row *r)
{
    const size_t wblk = (size_t)r->kh * r->nseg * r->seglen * QCNN_DCONV_NB;
    for (int b = r->b0; b < r->b1; b++) {
        const float *w = r->w + b * wblk;
        const int c0 = b * QCNN_DCONV_NB;
        const int ncols = r->cout_g - c0 < QCNN_DCONV_NB ? r->cout_g - c0 : QCNN_DCONV_NB;
        const float *bias = r->bias ? r->bias + c0 : NULL;
        int ox = 0;
        for (; ox + GP <= r->ow; ox += GP)
            tile_generic(r, r->x + ox * r->xpix, w, r->y + ox * r->ypix + c0, GP, ncols, bias);
        for (; ox < r->ow; ox++)
            tile_generic(r, r->x + ox * r->xpix, w, r->y + ox * r->ypix + c0, 1, ncols, bias);
    }
}

/* ---------------------------------------------------------------- driver */
void qcnn_dconv_run(const qcnn_dconv_params *p, int isa, const float *x, int h, int w, float *y,
                    int ystride, float *scratch)
{
    int OH, OW;
    if (!qcnn_dconv_out_size(p, h, w, &OH, &OW))
        return;
    const int C = p->cin, G = p->groups, cin_g = C / G, cout_g = p->cout / G;
    int W = w;
    if (has_pad(p)) { /* zero-padded copy of the input */
        const int Hp = h + p->pad_top + p->pad_bottom;
        W = w + p->pad_left + p->pad_right;
        memset(scratch, 0, (size_t)Hp * W * C * sizeof(float));
        for (int iy = 0; iy < h; iy++)
            memcpy(scratch + ((size_t)(iy + p->pad_top) * W + p->pad_left) * C,
                   x + (size_t)iy * w * C, (size_t)w * C * sizeof(float));
        x = scratch;
    } else if (p->kh == 1 && p->kw == 1 && p->stride_h == 1 && p->stride_w == 1) {
        /* 1x1 stride 1: the image is one row of h*w pixels (longer tiles, fewer row ends) */
        OW = OH * OW;
        W = OW;
        OH = 1;
    }

    void (*row_fn)(const qcnn_dconv_row *) = qcnn_dconv_row_generic;
#if defined(__x86_64__)
    if (isa == QCNN_ISA_AVX2)
        row_fn = qcnn_dconv_row_avx2;
    else if (isa == QCNN_ISA_AVX512VBMI)
        row_fn = qcnn_dconv_row_avx512;
#else
    (void)isa;
#endif

    qcnn_dconv_row r;
    r.xpix = (size_t)p->stride_w * C;
    r.xrow = (size_t)W * C;
    r.kh = p->kh;
    if (cin_g == C) { /* a kernel row is kw*C contiguous floats */
        r.nseg = 1;
        r.seglen = p->kw * C;
        r.xseg = 0;
    } else {
        r.nseg = p->kw;
        r.seglen = cin_g;
        r.xseg = C;
    }
    r.cout_g = cout_g;
    r.ypix = ystride;
    r.ow = OW;
    r.relu = p->relu;
    const int nblk = nblocks(p);
    const size_t wblk = (size_t)p->kh * p->kw * cin_g * QCNN_DCONV_NB; /* floats per block */
    /* Output-channel blocks are processed in groups whose weights stay in L2 while the whole
     * image goes by (rows innermost); otherwise every output row would re-stream all the
     * weights from L3 (VGG: 1.2 MB of weights per row). */
#ifndef QCNN_DCONV_L2_BUDGET
#define QCNN_DCONV_L2_BUDGET (512 * 1024)
#endif
    const size_t budget = QCNN_DCONV_L2_BUDGET / sizeof(float);
    const int ngroups = (int)((nblk * wblk + budget - 1) / budget);
    const int per = (nblk + ngroups - 1) / ngroups;
    for (int g = 0; g < G; g++) {
        r.w = p->packed + g * (nblk * wblk);
        r.bias = p->bias ? p->bias + g * cout_g : NULL;
        for (int b0 = 0; b0 < nblk; b0 += per) {
            r.b0 = b0;
            r.b1 = b0 + per < nblk ? b0 + per : nblk;
            for (int oy = 0; oy < OH; oy++) {
                r.x = x + (size_t)oy * p->stride_h * r.xrow + g * cin_g;
                r.y = y + (size_t)oy * OW * ystride + g * cout_g;
                row_fn(&r);
            }
        }
    }
}
