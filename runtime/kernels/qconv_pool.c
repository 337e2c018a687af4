/* A table conv, optionally an LRN, and the MaxPool that reads the result, fused
 * (qcnn_qconv_run_maxpool, ops.h).
 *
 * The conv hands over its output rows one by one (qcnn_qconv_run_rows); they go to a band of a
 * few rows in the scratch, are normalised (LRN) as they arrive, and each pooled row is taken as
 * soon as the last row of its window is done, while the band is still in cache. The conv's full output is never written: on Zen 4
 * writing it cost VGG-16's conv2_2 about 0.3 ms of its 7.4 (the lines are fetched before being
 * overwritten), and the MaxPool reading it back another 0.28 ms. */
#include <string.h>

#include "ops.h"
#include "qcnn_kernels.h"

typedef struct {
    const qcnn_pool_params *pool;
    int oh, ow, cout;   /* the conv's output */
    float *y;           /* pooled output [poh][pow][cout] */
    int poh, pow, isa;
    float *band;        /* conv rows lo .. hi - 1, room for cap rows */
    int cap, lo, hi, py; /* py: the next pooled row */
    const qcnn_lrn_params *lrn; /* or NULL */
    float *lrn_row;     /* the LRN's output row (it does not work in place) */
} band_pool;

/* Rows the band holds: one window. When it is full, the rows the next window shares with the
 * last (kh - stride, if any) move to the front. On Zen 4 kh + stride_h rows (229 KB for VGG's
 * conv2_2) ran slower than kh (115 KB): conv2_2 7.44 vs 7.35 ms. */
static int band_cap(const qcnn_pool_params *pool) { return pool->kh; }

/* Pooled row py's window: its first row s (maybe above the image, in the padding) and the
 * conv rows [sc, ec) it covers. */
static void window_rows(const band_pool *b, int py, int *s, int *sc, int *ec) {
    *s = py * b->pool->stride_h - b->pool->pad_top;
    const int e = *s + b->pool->kh;
    *ec = e > b->oh ? b->oh : e;
    *sc = *s < 0 ? 0 : *s > *ec ? *ec : *s;
}

static float *band_row(void *ctx, int oy) {
    band_pool *b = ctx;
    const size_t rowf = (size_t)b->ow * b->cout;
    if (oy - b->lo >= b->cap) { /* full: keep only the rows the next window still needs */
        int s, sc = oy, ec;
        if (b->py < b->poh) window_rows(b, b->py, &s, &sc, &ec);
        const int keep = sc < oy ? sc : oy; /* > oy: rows between windows, none kept */
        if (b->hi > keep)
            memmove(b->band, b->band + (size_t)(keep - b->lo) * rowf, (size_t)(b->hi - keep) * rowf * sizeof(float));
        b->lo = keep;
    }
    return b->band + (size_t)(oy - b->lo) * rowf;
}

static void band_done(void *ctx, int oy) {
    band_pool *b = ctx;
    const size_t rowf = (size_t)b->ow * b->cout;
    b->hi = oy + 1;
    if (b->lrn) {
        float *row = b->band + (size_t)(oy - b->lo) * rowf;
        qcnn_lrn(row, b->lrn_row, (size_t)b->ow, b->cout, b->lrn->size, b->lrn->alpha, b->lrn->beta,
                 b->lrn->bias, b->isa);
        memcpy(row, b->lrn_row, rowf * sizeof(float));
    }
    while (b->py < b->poh) {
        int s, sc, ec;
        window_rows(b, b->py, &s, &sc, &ec);
        if (ec > b->hi) break;
        /* one pooled row from the window's rows; the rows above the image are only counted */
        qcnn_pool_params row = *b->pool;
        row.pad_top = sc - s;
        row.pad_bottom = b->pool->kh;
        qcnn_maxpool(&row, b->band + (size_t)(sc - b->lo) * rowf, ec - sc, b->ow, b->cout,
                     b->y + (size_t)b->py * b->pow * b->cout, 1, b->pow, b->isa);
        b->py++;
    }
}

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

size_t qcnn_qconv_pool_scratch_bytes(const qcnn_qconv_prepared *q, const qcnn_pool_params *pool, int h,
                                     int w, int ow, int cout) {
    /* the band, then the LRN's row */
    return align64(qcnn_qconv_scratch_bytes(q, h, w)) + (size_t)(band_cap(pool) + 1) * ow * cout * sizeof(float) + 64;
}

int qcnn_qconv_run_maxpool(const qcnn_qconv_prepared *q, const float *x, int h, int w, int oh, int ow,
                           int cout, const qcnn_lrn_params *lrn, const qcnn_pool_params *pool, float *y, int poh,
                           int pow_, int isa, void *scratch, float *lut_step) {
    if (!qcnn_qconv_runs_by_rows(q, h, w)) return 0;
    const size_t conv_bytes = align64(qcnn_qconv_scratch_bytes(q, h, w));
    band_pool b = {pool, oh, ow, cout, y, poh, pow_, isa, NULL, band_cap(pool), 0, 0, 0, lrn, NULL};
    b.band = (float *)(((uintptr_t)scratch + conv_bytes + 63) & ~(uintptr_t)63);
    b.lrn_row = b.band + (size_t)b.cap * ow * cout;
    const qcnn_qconv_row_sink sink = {band_row, band_done, &b};
    return qcnn_qconv_run_rows(q, x, h, w, &sink, scratch, lut_step);
}
