/* Dense convolution in 8-bit integers: weight packing, input quantization, the portable row
 * kernel and the driver. The VNNI row kernel is in ops_iconv_x86.c; the scheme and the
 * arithmetic are described at qcnn_iconv_params in ops.h.
 *
 * Why it exists: a conv that stays dense (AlexNet's conv1 has 3 input channels, where a LUT
 * has nothing to share) is bound by FMA throughput; vpdpbusd does four times the
 * multiply-adds per instruction, AVX2's vpmaddwd twice (on 16-bit copies of the same values).
 * Both roundings (input per image, weights per channel) are done here in portable C, so every
 * ISA sums the very same integers.
 */
#include <math.h>
#include <string.h>

#include "ops.h"
#include "qcnn_kernels.h"

#define NB 16 /* output channels per block: one zmm of int32 sums */

static int nblocks(const qcnn_iconv_params *p)
{
    return (p->geom.cout / p->geom.groups + NB - 1) / NB;
}

size_t qcnn_iconv_init(qcnn_iconv_params *p, const qcnn_dconv_params *geom)
{
    p->geom = *geom;
    const int cin_g = geom->cin / geom->groups;
    if (cin_g == geom->cin) { /* a kernel row is kw*cin contiguous values */
        p->nseg = 1;
        p->seglen = geom->kw * geom->cin;
    } else {
        p->nseg = geom->kw;
        p->seglen = cin_g;
    }
    p->nquad = (p->seglen + 3) / 4;
    p->wq = NULL;
    p->wq16 = NULL;
    p->wq_amx = NULL;
    p->wscale = NULL;
    p->wsum = NULL;
    p->wino_u = NULL;
    p->wino_uscale = NULL;
    p->wino_always = 0;
    return (size_t)geom->groups * nblocks(p) * geom->kh * p->nseg * p->nquad * NB * 4;
}

size_t qcnn_iconv_channels(const qcnn_iconv_params *p)
{
    return (size_t)p->geom.groups * nblocks(p) * NB;
}

void qcnn_iconv_pack(const qcnn_iconv_params *p, const float *w_onnx, int8_t *wq, float *wscale,
                     int32_t *wsum)
{
    const qcnn_dconv_params *g_ = &p->geom;
    const int G = g_->groups, cin_g = g_->cin / G, cout_g = g_->cout / G, nb = nblocks(p);
    const int KH = g_->kh, KW = g_->kw;
    const size_t per_out = (size_t)cin_g * KH * KW;
    for (int g = 0; g < G; g++)
        for (int c = 0; c < nb * NB; c++) {
            const size_t ch = (size_t)g * nb * NB + c;
            float amax = 0.0f;
            if (c < cout_g) {
                const float *wc = w_onnx + ((size_t)g * cout_g + c) * per_out;
                for (size_t i = 0; i < per_out; i++)
                    amax = fabsf(wc[i]) > amax ? fabsf(wc[i]) : amax;
            }
            wscale[ch] = amax / 127.0f; /* 0 for an all-zero channel: its output is the bias */
            wsum[ch] = 0;
        }
    int8_t *dst = wq;
    for (int g = 0; g < G; g++)
        for (int b = 0; b < nb; b++)
            for (int ky = 0; ky < KH; ky++)
                for (int s = 0; s < p->nseg; s++)
                    for (int q = 0; q < p->nquad; q++)
                        for (int l = 0; l < NB; l++)
                            for (int t = 0; t < 4; t++) {
                                const int co = b * NB + l, e = q * 4 + t;
                                const size_t ch = (size_t)g * nb * NB + co;
                                int v = 0;
                                if (co < cout_g && e < p->seglen && wscale[ch] > 0.0f) {
                                    /* segment element e -> (kx, ci) of the ONNX weight */
                                    const int kx = p->nseg == 1 ? e / cin_g : s;
                                    const int ci = p->nseg == 1 ? e % cin_g : e;
                                    const size_t o = (size_t)g * cout_g + co;
                                    const float w = w_onnx[((o * cin_g + ci) * KH + ky) * KW + kx];
                                    v = (int)lrintf(w / wscale[ch]);
                                    v = v > 127 ? 127 : v < -127 ? -127 : v;
                                    wsum[ch] += v;
                                }
                                *dst++ = (int8_t)v;
                            }
}

void qcnn_iconv_widen(const qcnn_iconv_params *p, int16_t *wq16)
{
    const size_t n = (size_t)p->geom.groups * nblocks(p) * p->geom.kh * p->nseg * p->nquad * NB * 4;
    for (size_t i = 0; i < n; i++)
        wq16[i] = p->wq[i];
}

int qcnn_iconv_avx2_available(void)
{
    static int cached = -1; /* as below: CPUID is slow under a hypervisor */
    if (cached < 0)
        cached = qcnn_isa_detect() >= QCNN_ISA_AVX2;
    return cached;
}

int qcnn_iconv_fast_available(void)
{
    /* CPUID traps to the hypervisor on VMs (slow): ask once. A race only repeats the probe. */
    static int cached = -1;
    if (cached < 0)
        cached = qcnn_cpu_has_avx512vnni();
    return cached;
}

/* Quantized padded input [PH][PW][cin] bytes, then slack (a quad may read up to 3 bytes past
 * the last pixel; their weights are 0), then the per-channel mul/add arrays, then (only with
 * wq16, for the AVX2 kernel) the input again as 16-bit words. */
typedef struct {
    size_t xq, mul, add, xq16, wino_mul, wino_work, total;
} iconv_layout;

#define ALIGN64(n) (((n) + 63) & ~(size_t)63)

static iconv_layout layout(const qcnn_iconv_params *p, int h, int w)
{
    const qcnn_dconv_params *g = &p->geom;
    const size_t ph = (size_t)h + g->pad_top + g->pad_bottom, pw = (size_t)w + g->pad_left + g->pad_right;
    iconv_layout l;
    size_t o = 0;
    /* AMX reads whole 64-byte chunks for 32 pixels at a time: the last tile of the last row
     * reads up to 31 windows and one chunk past the image (its results are dropped). */
    const size_t amx_slack = p->wq_amx ? 32 * (size_t)g->stride_w * g->cin + 128 : 0;
    l.xq = o;  o += ALIGN64(ph * pw * g->cin + 64 + amx_slack);
    l.mul = o; o += ALIGN64(qcnn_iconv_channels(p) * sizeof(float));
    l.add = o; o += ALIGN64(qcnn_iconv_channels(p) * sizeof(float));
    l.xq16 = o; o += p->wq16 ? ALIGN64(ph * pw * g->cin + 64) * 2 : 0;
    /* Winograd: sx * uscale per (tile position, channel), and the tile kernel's work buffer */
    l.wino_mul = o; o += p->wino_u ? ALIGN64((size_t)QCNN_WINO_POS * g->cout * sizeof(float)) : 0;
    l.wino_work = o; o += p->wino_u ? ALIGN64(qcnn_wino_work_bytes(g->cin, g->cout)) : 0;
    l.total = o + 64; /* room to align the base */
    return l;
}

size_t qcnn_iconv_scratch_bytes(const qcnn_iconv_params *p, int h, int w)
{
    return layout(p, h, w).total;
}

/* Range of x, and whether every value is finite (checked on the exponent bits, so the loop
 * vectorises: no float comparisons with NaN involved). */
static int input_range(const float *x, size_t n, float *lo, float *hi)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, x + i, 4);
        bad |= (uint32_t)((u & 0x7F800000u) == 0x7F800000u);
    }
    if (bad)
        return 0;
    float mn = 0.0f, mx = 0.0f; /* the range always holds 0, the padding value */
    for (size_t i = 0; i < n; i++) {
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
    }
    *lo = mn;
    *hi = mx;
    return 1;
}

static void quantize_row(const float *x, size_t n, float inv, float zp, uint8_t *q)
{
    for (size_t i = 0; i < n; i++) {
        float t = x[i] * inv + zp + 0.5f; /* round half up; t >= 0 after the clamp, so trunc = floor */
        t = t < 0.0f ? 0.0f : t > 255.0f ? 255.0f : t;
        q[i] = (uint8_t)(int)t;
    }
}

/* ---------------------------------------------------------------- portable row kernel */
void qcnn_iconv_row_generic(const qcnn_iconv_row *r)
{
    const size_t wblk = (size_t)r->kh * r->nseg * r->nquad * NB * 4;
    for (int b = r->b0; b < r->b1; b++) {
        const int c0 = b * NB;
        const int ncols = r->cout_g - c0 < NB ? r->cout_g - c0 : NB;
        for (int ox = 0; ox < r->ow; ox++) {
            int32_t acc[NB] = {0};
            const int8_t *w = r->w + b * wblk;
            for (int ky = 0; ky < r->kh; ky++)
                for (int s = 0; s < r->nseg; s++) {
                    const uint8_t *xs = r->x + ox * r->xpix + ky * r->xrow + s * r->xseg;
                    for (int q = 0; q < r->nquad; q++, w += NB * 4)
                        for (int l = 0; l < NB; l++)
                            for (int t = 0; t < 4; t++)
                                acc[l] += (int32_t)xs[4 * q + t] * (int32_t)w[4 * l + t];
                }
            float *yp = r->y + ox * r->ypix + c0;
            for (int l = 0; l < ncols; l++) {
                float v = (float)acc[l] * r->mul[c0 + l];
                v = v + r->add[c0 + l];
                yp[l] = (r->relu && v < 0.0f) ? 0.0f : v;
            }
        }
    }
}

/* ---------------------------------------------------------------- driver */
/* What iconv_prepare() leaves for iconv_rows(): the row kernel, its arguments and where the
 * quantized input and per-channel factors sit in the scratch. */
typedef struct {
    void (*row_fn)(const qcnn_iconv_row *);
    void (*wino_fn)(const qcnn_wino_row *); /* set: Winograd tile rows instead of row_fn */
    qcnn_wino_row wr;  /* the fields shared by every tile row */
    qcnn_iconv_row r; /* the fields shared by every row */
    int widen, amx, pool_isa;
    const uint8_t *xq;
    const uint16_t *xq16;
    float *mul, *add;
    int OH, OW;
    size_t prow;
} iconv_ctx;

/* Chooses the kernel, quantizes x into the scratch and fills the per-channel factors. Returns 1
 * when ready, 0 if x holds a NaN or infinity (the caller falls back to fp32), -1 if the kernel
 * does not fit the input (nothing to compute). */
static int iconv_prepare(const qcnn_iconv_params *p, int fast, const float *x, int h, int w, void *scratch,
                         iconv_ctx *c)
{
    const qcnn_dconv_params *g_ = &p->geom;
    if (!qcnn_dconv_out_size(g_, h, w, &c->OH, &c->OW))
        return -1;
    const int C = g_->cin, G = g_->groups, cout_g = g_->cout / G, nb = nblocks(p);
    const size_t n = (size_t)h * w * C;
    int (*range_fn)(const float *, size_t, float *, float *) = input_range;
    void (*quantize_fn)(const float *, size_t, float, float, uint8_t *) = quantize_row;
    c->row_fn = qcnn_iconv_row_generic;
    c->widen = 0; /* the AVX2 kernel reads a 16-bit copy of the quantized input */
    c->amx = 0;
    c->pool_isa = 0; /* qcnn_maxpool's isa code for a fused pooling: the same family */
#if defined(__x86_64__)
    if (fast && p->wq16 && qcnn_iconv_avx2_available()) { /* wq16: the caller asked for AVX2 */
        range_fn = qcnn_iconv_range_avx2;
        quantize_fn = qcnn_iconv_quantize_avx2;
        c->row_fn = qcnn_iconv_row_avx2;
        c->widen = 1;
        c->pool_isa = 1;
    } else if (fast && p->wq_amx && qcnn_iconv_amx_available()) {
        range_fn = qcnn_iconv_range_avx512;
        quantize_fn = qcnn_iconv_quantize_avx512;
        c->row_fn = qcnn_iconv_row_amx;
        c->amx = 1;
        c->pool_isa = 2;
    } else if (fast && qcnn_iconv_fast_available()) {
        range_fn = qcnn_iconv_range_avx512;
        quantize_fn = qcnn_iconv_quantize_avx512;
        c->row_fn = qcnn_iconv_row_vnni;
        c->pool_isa = 2;
    }
#else
    (void)fast;
#endif
    c->wino_fn = NULL;
#if defined(__x86_64__)
    const int wino_pays = c->row_fn == qcnn_iconv_row_avx2 ? qcnn_wino_pays_avx2(g_, c->OH, c->OW)
                                                           : qcnn_wino_pays(g_, c->OH, c->OW);
#else
    const int wino_pays = qcnn_wino_pays(g_, c->OH, c->OW);
#endif
    if (p->wino_u && (p->wino_always || wino_pays)) {
        /* same quantized input; its own kernels (the portable one off x86) */
        c->wino_fn = qcnn_wino_row_generic;
#if defined(__x86_64__)
        if (c->row_fn == qcnn_iconv_row_vnni)
            c->wino_fn = qcnn_wino_row_avx512;
        else if (c->row_fn == qcnn_iconv_row_avx2)
            c->wino_fn = qcnn_wino_row_avx2;
#endif
        c->widen = 0; /* Winograd reads the bytes, not the AVX2 direct kernel's 16-bit copy */
    }
    float lo, hi;
    if (!range_fn(x, n, &lo, &hi))
        return 0;

    /* x ~ sx * (q - zp): 255 steps over [lo, hi] (which holds 0), zp = the code of 0. */
    const float sx = hi > lo ? (hi - lo) / 255.0f : 1.0f;
    const float inv = 1.0f / sx;
    int zp = (int)lrintf(-lo * inv);
    zp = zp < 0 ? 0 : zp > 255 ? 255 : zp;

    uint8_t *base = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    const iconv_layout l = layout(p, h, w);
    uint8_t *xq = base + l.xq;
    float *mul = (float *)(base + l.mul), *add = (float *)(base + l.add);
    const int PW = w + g_->pad_left + g_->pad_right;
    const size_t prow = (size_t)PW * C;
    memset(xq, zp, (size_t)g_->pad_top * prow);
    for (int iy = 0; iy < h; iy++) {
        uint8_t *row = xq + (size_t)(iy + g_->pad_top) * prow;
        memset(row, zp, (size_t)g_->pad_left * C);
        quantize_fn(x + (size_t)iy * w * C, (size_t)w * C, inv, (float)zp, row + (size_t)g_->pad_left * C);
        memset(row + (size_t)(g_->pad_left + w) * C, zp, (size_t)g_->pad_right * C);
    }
    memset(xq + (size_t)(g_->pad_top + h) * prow, zp, (size_t)g_->pad_bottom * prow + 64);
    if (c->amx) /* the slack AMX reads (finite bytes; their sums are dropped) */
        memset(xq + (size_t)(g_->pad_top + h + g_->pad_bottom) * prow + 64, zp,
               32 * (size_t)g_->stride_w * C + 128);
    const size_t nxq = (size_t)(g_->pad_top + h + g_->pad_bottom) * prow + 64;
    uint16_t *xq16 = (uint16_t *)(base + l.xq16);
    if (c->widen)
        for (size_t i = 0; i < nxq; i++) /* vectorised by the compiler; ~1% of the conv */
            xq16[i] = xq[i];

    /* y = sx*sw*(acc - zp*wsum) + bias = acc*mul + add */
    for (int g = 0; g < G; g++)
        for (int ch_ = 0; ch_ < nb * NB; ch_++) {
            const size_t ch = (size_t)g * nb * NB + ch_;
            mul[ch] = sx * p->wscale[ch];
            const float b = (g_->bias && ch_ < cout_g) ? g_->bias[g * cout_g + ch_] : 0.0f;
            add[ch] = b - (float)zp * (float)p->wsum[ch] * mul[ch];
        }

    if (c->wino_fn) {
        float *wmul = (float *)(base + l.wino_mul);
        for (size_t i = 0; i < (size_t)QCNN_WINO_POS * g_->cout; i++)
            wmul[i] = sx * p->wino_uscale[i];
        qcnn_wino_row *wr = &c->wr;
        memset(wr, 0, sizeof *wr);
        wr->xrow = prow;
        wr->cols = PW;
        wr->cin = C;
        wr->cout = g_->cout;
        wr->zp = zp;
        wr->u = p->wino_u;
        wr->mul = wmul;
        wr->bias = g_->bias;
        wr->relu = g_->relu;
        wr->ow = c->OW;
        wr->work = base + l.wino_work;
    }

    qcnn_iconv_row *r = &c->r;
    r->xpix = (size_t)g_->stride_w * C;
    r->xrow = prow;
    r->xseg = p->nseg == 1 ? 0 : (size_t)C;
    r->kh = g_->kh;
    r->nseg = p->nseg;
    r->nquad = p->nquad;
    r->nchunk = (p->nquad + 15) / 16;
    r->cout_g = cout_g;
    r->ow = c->OW;
    r->relu = g_->relu;
    c->xq = xq;
    c->xq16 = c->widen ? xq16 : NULL;
    c->mul = mul;
    c->add = add;
    c->prow = prow;
    return 1;
}

/* Output rows [r0, r1) into y, row r at y + (r - r0)*OW*ystride (between iconv_prepare and, on
 * AMX, qcnn_iconv_amx_begin/end). */
static void iconv_rows(const qcnn_iconv_params *p, iconv_ctx *c, int r0, int r1, float *y, int ystride)
{
    const qcnn_dconv_params *g_ = &p->geom;
    const int G = g_->groups, cin_g = g_->cin / G, cout_g = g_->cout / G, nb = nblocks(p);
    if (c->wino_fn) { /* 4 rows per tile row; a last partial one computes 4 and keeps its share */
        qcnn_wino_row wr = c->wr;
        wr.ypix = (size_t)ystride;
        wr.yrow = (size_t)c->OW * ystride;
        for (int oy = r0; oy < r1; oy += 4) {
            wr.x = c->xq + (size_t)oy * c->prow;
            wr.rows_avail = c->OH + 2 - oy; /* padded input rows from oy (3x3, stride 1) */
            wr.nrows = r1 - oy < 4 ? r1 - oy : 4;
            wr.y = y + (size_t)(oy - r0) * wr.yrow;
            c->wino_fn(&wr);
        }
        return;
    }
    qcnn_iconv_row r = c->r;
    r.ypix = (size_t)ystride;
    const size_t wgroup = (size_t)nb * g_->kh * p->nseg * p->nquad * NB * 4;
    const size_t wgroup_amx = (size_t)(nb + 1) / 2 * 2 * g_->kh * p->nseg * r.nchunk * 16 * NB * 4;
    for (int g = 0; g < G; g++) {
        r.w = c->amx ? p->wq_amx + g * wgroup_amx : p->wq + g * wgroup;
        r.w16 = c->widen ? p->wq16 + g * wgroup : NULL;
        r.mul = c->mul + (size_t)g * nb * NB;
        r.add = c->add + (size_t)g * nb * NB;
        /* As in the fp32 driver: blocks in chunks whose weights stay in L2 while all rows go by. */
        const size_t budget = 512 * 1024, wbytes = wgroup * (c->widen ? 2 : 1);
        const int nchunks = (int)((wbytes + budget - 1) / budget);
        int per = (nb + nchunks - 1) / nchunks;
        if (c->amx) /* whole pairs of blocks (the AMX tiles' 32 channels) */
            per = (per + 1) / 2 * 2;
        for (int b0 = 0; b0 < nb; b0 += per) {
            r.b0 = b0;
            r.b1 = b0 + per < nb ? b0 + per : nb;
            for (int oy = r0; oy < r1; oy++) {
                const size_t xo = (size_t)oy * g_->stride_h * c->prow + (size_t)g * cin_g;
                r.x = c->xq + xo;
                r.x16 = c->widen ? c->xq16 + xo : NULL;
                r.y = y + (size_t)(oy - r0) * c->OW * ystride + (size_t)g * cout_g;
                c->row_fn(&r);
            }
        }
    }
}

int qcnn_iconv_run(const qcnn_iconv_params *p, int fast, const float *x, int h, int w, float *y,
                   int ystride, void *scratch)
{
    iconv_ctx c;
    const int ready = iconv_prepare(p, fast, x, h, w, scratch, &c);
    if (ready <= 0)
        return ready < 0; /* 1: nothing to compute; 0: non-finite input */
    if (c.amx)
        qcnn_iconv_amx_begin();
    iconv_rows(p, &c, 0, c.OH, y, ystride);
    if (c.amx)
        qcnn_iconv_amx_end();
    return 1;
}

/* ---------------------------------------------------------------- conv + max pooling */
/* Conv output rows held at once by the pooled driver: about 256 KB, so they are pooled while
 * still in L2 (an unfused conv writes its whole output, which the pooling then reads back:
 * SqueezeNet's conv0 writes 3.2 MB), plus room for the rows two pooling windows share. */
static int band_rows(const qcnn_iconv_params *p, const qcnn_pool_params *pool, int OW)
{
    const size_t row_bytes = (size_t)OW * p->geom.cout * sizeof(float);
    int rows = (int)(256 * 1024 / (row_bytes ? row_bytes : 1));
    rows = rows < 1 ? 1 : rows;
    if (p->wino_u) /* whole tile rows of 4 when the windows do not overlap */
        return (rows + pool->kh + 3) / 4 * 4;
    return rows + pool->kh;
}

size_t qcnn_iconv_pool_scratch_bytes(const qcnn_iconv_params *p, const qcnn_pool_params *pool, int h, int w)
{
    int OH, OW;
    if (!qcnn_dconv_out_size(&p->geom, h, w, &OH, &OW))
        return qcnn_iconv_scratch_bytes(p, h, w);
    /* the band, then one row for a fused LRN's output (it does not work in place) */
    const size_t band = (size_t)(band_rows(p, pool, OW) + 1) * OW * p->geom.cout * sizeof(float);
    return ALIGN64(qcnn_iconv_scratch_bytes(p, h, w)) + band + 64;
}

int qcnn_iconv_run_maxpool(const qcnn_iconv_params *p, int fast, const float *x, int h, int w,
                           const qcnn_lrn_params *lrn, const qcnn_pool_params *pool, float *y, int poh,
                           int pow_, void *scratch)
{
    iconv_ctx c;
    const int ready = iconv_prepare(p, fast, x, h, w, scratch, &c);
    if (ready <= 0)
        return ready < 0; /* 1: nothing to compute; 0: non-finite input */
    const int OH = c.OH, OW = c.OW, C = p->geom.cout, cap = band_rows(p, pool, OW);
    if (c.wino_fn && !lrn && pool->kh == 2 && pool->kw == 2 && pool->stride_h == 2 && pool->stride_w == 2 &&
        !pool->pad_top && !pool->pad_left && !pool->pad_bottom && !pool->pad_right && poh == OH / 2 &&
        pow_ == OW / 2) {
        /* VGG's pools: every 2x2 window lies inside one 4x4 tile, pooled in registers */
        qcnn_wino_row wr = c.wr;
        wr.pool2 = 1;
        wr.pw = pow_;
        wr.ypix = (size_t)C;
        wr.yrow = (size_t)pow_ * C;
        for (int oy = 0; oy < 2 * poh; oy += 4) {
            wr.x = c.xq + (size_t)oy * c.prow;
            wr.rows_avail = OH + 2 - oy;
            wr.nrows = poh - oy / 2 < 2 ? poh - oy / 2 : 2;
            wr.y = y + (size_t)(oy / 2) * wr.yrow;
            c.wino_fn(&wr);
        }
        return 1;
    }
    const size_t rowf = (size_t)OW * C;
    float *band = (float *)(((uintptr_t)scratch + ALIGN64(qcnn_iconv_scratch_bytes(p, h, w)) + 63) & ~(uintptr_t)63);
    float *lrn_row = band + (size_t)cap * rowf;
    if (c.amx)
        qcnn_iconv_amx_begin();
    int lo = 0, hi = 0; /* the band holds conv rows [lo, hi) */
    for (int py = 0; py < poh; py++) {
        /* pooling window rows [s, e), clipped to the conv output */
        const int s = py * pool->stride_h - pool->pad_top, e = s + pool->kh;
        const int ec = e > OH ? OH : e, sc = s < 0 ? 0 : s > ec ? ec : s;
        if (sc >= hi) { /* nothing kept is needed (stride > window: skip the rows between) */
            lo = hi = sc;
        }
        if (ec > hi) {
            if (ec > lo + cap) { /* full: keep the rows this window shares with the last one */
                memmove(band, band + (size_t)(sc - lo) * rowf, (size_t)(hi - sc) * rowf * sizeof(float));
                lo = sc;
            }
            const int end = lo + cap < OH ? lo + cap : OH;
            iconv_rows(p, &c, hi, end, band + (size_t)(hi - lo) * rowf, C);
            for (int r = hi; lrn && r < end; r++) { /* normalise each new row while in cache */
                float *row = band + (size_t)(r - lo) * rowf;
                qcnn_lrn(row, lrn_row, (size_t)OW, C, lrn->size, lrn->alpha, lrn->beta, lrn->bias, c.pool_isa);
                memcpy(row, lrn_row, rowf * sizeof(float));
            }
            hi = end;
        }
        /* one output row: the window's rows start at the band's row sc; the vertical padding
         * (rows above the conv output) is only counted, never read */
        qcnn_pool_params row = *pool;
        row.pad_top = sc - s;
        row.pad_bottom = pool->kh;
        qcnn_maxpool(&row, band + (size_t)(sc - lo) * rowf, ec - sc, OW, C, y + (size_t)py * pow_ * C, 1, pow_,
                     c.pool_isa);
    }
    if (c.amx)
        qcnn_iconv_amx_end();
    return 1;
}
