/* Reference product-quantized conv / fc (paper Eq. 6): float look-up tables and plain loops.
 * This is the oracle every fast variant is tested against, so it favours obviousness over speed. */
#include "qcnn_kernels.h"

void qcnn_conv_out_size(int h, int w, int kh, int kw, int stride_h, int stride_w, int pad_top,
                        int pad_left, int pad_bottom, int pad_right, int *oh, int *ow) {
    int nh = h + pad_top + pad_bottom - kh, nw = w + pad_left + pad_right - kw;
    /* A kernel larger than the padded input gives an empty output (not a negative size). */
    *oh = nh < 0 ? 0 : nh / stride_h + 1;
    *ow = nw < 0 ? 0 : nw / stride_w + 1;
}

size_t qcnn_qconv_ref_scratch_floats(const qcnn_qconv_params *p, int h, int w) {
    /* One table of ncode entries per (input pixel, group, subspace). */
    return (size_t)h * w * p->groups * p->nsub * p->ncode;
}

void qcnn_qconv_ref(const qcnn_qconv_params *p, const float *x, int h, int w, float *y,
                    float *scratch) {
    const int G = p->groups, M = p->nsub, K = p->ncode, Cs = p->subvec;
    const int Cg = p->cin / G, Og = p->cout / G;
    int oh, ow;
    qcnn_conv_out_size(h, w, p->kh, p->kw, p->stride_h, p->stride_w, p->pad_top, p->pad_left,
                       p->pad_bottom, p->pad_right, &oh, &ow);

    /* 1. Look-up tables: L[iy][ix][g][m][k] = <x[iy][ix][g*Cg + m*Cs ...], D[g][m][k]>.
     *    Channels past Cg in the last subspace are the zero padding: they add nothing. */
    float *L = scratch;
    for (int iy = 0; iy < h; iy++)
        for (int ix = 0; ix < w; ix++)
            for (int g = 0; g < G; g++)
                for (int m = 0; m < M; m++)
                    for (int k = 0; k < K; k++) {
                        const float *xs = x + ((size_t)iy * w + ix) * p->cin + g * Cg + m * Cs;
                        const float *d = p->codebooks + (((size_t)g * M + m) * K + k) * Cs;
                        float acc = 0.0f;
                        for (int c = 0; c < Cs && m * Cs + c < Cg; c++) acc += xs[c] * d[c];
                        L[((((size_t)iy * w + ix) * G + g) * M + m) * K + k] = acc;
                    }

    /* 2. y = bias + sum over kernel taps and subspaces of the table entry each index selects. */
    for (int oy = 0; oy < oh; oy++)
        for (int ox = 0; ox < ow; ox++)
            for (int g = 0; g < G; g++)
                for (int o = 0; o < Og; o++) {
                    float acc = p->bias ? p->bias[g * Og + o] : 0.0f;
                    for (int ky = 0; ky < p->kh; ky++) {
                        int iy = oy * p->stride_h + ky - p->pad_top;
                        if (iy < 0 || iy >= h) continue; /* zero padding */
                        for (int kx = 0; kx < p->kw; kx++) {
                            int ix = ox * p->stride_w + kx - p->pad_left;
                            if (ix < 0 || ix >= w) continue;
                            const float *Lp = L + (((size_t)iy * w + ix) * G + g) * M * K;
                            const uint8_t *ip =
                                p->indices + ((((size_t)g * p->kh + ky) * p->kw + kx) * M) * Og + o;
                            for (int m = 0; m < M; m++) acc += Lp[m * K + ip[(size_t)m * Og]];
                        }
                    }
                    if (p->relu && acc < 0.0f) acc = 0.0f;
                    y[((size_t)oy * ow + ox) * p->cout + g * Og + o] = acc;
                }
}

size_t qcnn_qfc_ref_scratch_floats(const qcnn_qfc_params *p) {
    return (size_t)p->nsub * p->ncode;
}

void qcnn_qfc_ref(const qcnn_qfc_params *p, const float *x, float *y, float *scratch) {
    const int M = p->nsub, K = p->ncode, Cs = p->subvec;
    float *L = scratch;
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++) {
            const float *d = p->codebooks + ((size_t)m * K + k) * Cs;
            float acc = 0.0f;
            for (int c = 0; c < Cs && m * Cs + c < p->in; c++) acc += x[m * Cs + c] * d[c];
            L[(size_t)m * K + k] = acc;
        }
    for (int o = 0; o < p->out; o++) {
        float acc = p->bias ? p->bias[o] : 0.0f;
        for (int m = 0; m < M; m++) acc += L[(size_t)m * K + p->indices[(size_t)m * p->out + o]];
        if (p->relu && acc < 0.0f) acc = 0.0f;
        y[o] = acc;
    }
}
