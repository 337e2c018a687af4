/* Winograd F(4x4, 3x3) for the int8 dense conv (qcnn_iconv_params.wino_u): weight transform,
 * the portable tile-row kernel (the reference the AVX-512 one in ops_wino_x86.c and the AVX2 one
 * in ops_wino_avx2.c are tested against) and the shared transforms. The scheme is described at
 * qcnn_wino_row in ops.h.
 *
 * Why it exists: VGG-16's conv1_2 (64 -> 64 channels at 224x224, 1.85 G multiply-adds) stays
 * dense and is bound by vpdpbusd's 64 multiply-adds per cycle. Winograd's F(4x4, 3x3) needs 36
 * products per 4x4 outputs instead of 144; done in 16-bit integers (vpdpwssd, 32 per cycle) that
 * is still twice the rate, and the input transform is exact (integer coefficients), so the only
 * new rounding is that of the transformed weights, at 11-13 bits instead of the direct kernel's 8.
 *
 * Transforms (Lavin & Gray 2015): Y = A^T [ (G g G^T) .* (B^T d B) ] A, d a 6x6 input tile,
 * g a 3x3 kernel, Y the 4x4 outputs.
 */
#include <math.h>
#include <string.h>

#include "ops.h"

#define T 6 /* input tile side */

/* G (6x3) and the row sums of |B^T| that bound the transformed input. */
static const double G_[T][3] = {
    {1.0 / 4, 0, 0},
    {-1.0 / 6, -1.0 / 6, -1.0 / 6},
    {-1.0 / 6, 1.0 / 6, -1.0 / 6},
    {1.0 / 24, 1.0 / 12, 1.0 / 6},
    {1.0 / 24, -1.0 / 12, 1.0 / 6},
    {0, 0, 1},
};
static const int BT_ABS_ROW[T] = {10, 10, 10, 6, 6, 10};

int qcnn_wino_applies(const qcnn_dconv_params *g)
{
    return g->kh == 3 && g->kw == 3 && g->stride_h == 1 && g->stride_w == 1 && g->groups == 1 &&
           g->cin % QCNN_WINO_CIN_BLOCK == 0 && g->cout % QCNN_WINO_COUT_BLOCK == 0;
}

/* Winograd pays when its transformed weights come to at most per_tile bytes per tile of a row
 * (they are read once per superblock of a row) and the output has at least min_pixels pixels
 * (they are read from memory once per image in a whole network). */
static int pays(const qcnn_dconv_params *g, int oh, int ow, size_t per_tile, size_t min_pixels)
{
    const size_t ubytes = (size_t)QCNN_WINO_POS * g->cin * g->cout * sizeof(int16_t);
    return ubytes <= (size_t)((ow + 3) / 4) * per_tile && (size_t)oh * ow >= min_pixels;
}

int qcnn_wino_pays(const qcnn_dconv_params *g, int oh, int ow)
{
    return pays(g, oh, ow, 1u << 20, 32 * 32);
}

int qcnn_wino_pays_avx2(const qcnn_dconv_params *g, int oh, int ow)
{
    return pays(g, oh, ow, 3u << 19, 20 * 20);
}

size_t qcnn_wino_weight_count(const qcnn_dconv_params *g)
{
    return (size_t)QCNN_WINO_POS * g->cin * g->cout;
}

/* Largest transformed weight at position (i, j) such that no int32 sum over a chunk of
 * QCNN_WINO_CIN_CHUNK input channels can overflow: |B^T d B| <= 255 * rowsum_i * rowsum_j for
 * inputs in [-255, 255]. (Chunks are summed in float: a bound on all of cin would cost a bit of
 * the weights' precision per doubling of cin.) */
static int weight_limit(int cin, int pos)
{
    const double vmax = 255.0 * BT_ABS_ROW[pos / T] * BT_ABS_ROW[pos % T];
    const int n = cin < QCNN_WINO_CIN_CHUNK ? cin : QCNN_WINO_CIN_CHUNK;
    double lim = floor(2147483647.0 / (vmax * n));
    return lim > 32767 ? 32767 : (int)lim;
}

void qcnn_wino_pack(const qcnn_dconv_params *g, const float *w_onnx, int16_t *u, float *uscale)
{
    const int cin = g->cin, cout = g->cout;
    /* the transformed weights in double first, then one scale per (position, output channel) */
    for (int co = 0; co < cout; co++) {
        double amax[QCNN_WINO_POS] = {0};
        for (int pass = 0; pass < 2; pass++)
            for (int ci = 0; ci < cin; ci++) {
                const float *k = w_onnx + ((size_t)co * cin + ci) * 9;
                double gk[T][3]; /* G k */
                for (int i = 0; i < T; i++)
                    for (int c = 0; c < 3; c++)
                        gk[i][c] = G_[i][0] * k[c] + G_[i][1] * k[3 + c] + G_[i][2] * k[6 + c];
                for (int i = 0; i < T; i++)
                    for (int j = 0; j < T; j++) {
                        const int pos = i * T + j;
                        const double v = gk[i][0] * G_[j][0] + gk[i][1] * G_[j][1] + gk[i][2] * G_[j][2];
                        if (pass == 0) {
                            amax[pos] = fabs(v) > amax[pos] ? fabs(v) : amax[pos];
                            continue;
                        }
                        const int lim = weight_limit(cin, pos);
                        const double s = amax[pos] / lim;
                        long q = s > 0 ? lround(v / s) : 0;
                        q = q > lim ? lim : q < -lim ? -lim : q;
                        /* [pos][cin/2][cout][2]: vpdpwssd multiplies pairs of input channels */
                        u[(((size_t)pos * (cin / 2) + ci / 2) * cout + co) * 2 + (ci & 1)] = (int16_t)q;
                        if (ci == 0)
                            uscale[(size_t)pos * cout + co] = (float)s;
                    }
            }
    }
}

/* The work buffer: a zp-padded copy of a window that runs past the input (tiles at the right
 * and bottom edges), then the SIMD kernel's transformed inputs of a superblock of tiles
 * ([tile][36][cin] int16), then their sums ([tile][36][64] float). */
#define ALIGN64(n) (((n) + 63) & ~(size_t)63)
int qcnn_wino_superblock(int cin)
{
    const size_t per_tile = (size_t)QCNN_WINO_POS * (cin * sizeof(int16_t) + QCNN_WINO_COUT_CHUNK * sizeof(float));
    const size_t n = (512u << 10) / per_tile;
    return n < QCNN_WINO_TILES ? QCNN_WINO_TILES : n > 64 ? 64 : (int)n;
}

size_t qcnn_wino_work_offset(int cin, int what)
{
    const size_t sb = (size_t)qcnn_wino_superblock(cin);
    const size_t patch = ALIGN64((size_t)T * T * cin);
    const size_t v = ALIGN64(sb * QCNN_WINO_POS * cin * sizeof(int16_t));
    const size_t m = sb * QCNN_WINO_POS * QCNN_WINO_COUT_CHUNK * sizeof(float);
    return what == 0 ? 0 : what == 1 ? patch : what == 2 ? patch + v : patch + v + m;
}

size_t qcnn_wino_work_bytes(int cin, int cout)
{
    (void)cout;
    return qcnn_wino_work_offset(cin, 3);
}

/* ---------------------------------------------------------------- portable reference */
/* One 1-D input transform r = B^T d of six values (stride ds), exact in int. */
static void bt6(const int *d, int ds, int *r, int rs)
{
    const int d0 = d[0], d1 = d[ds], d2 = d[2 * ds], d3 = d[3 * ds], d4 = d[4 * ds], d5 = d[5 * ds];
    r[0] = 4 * d0 - 5 * d2 + d4;
    r[rs] = -4 * d1 - 4 * d2 + d3 + d4;
    r[2 * rs] = 4 * d1 - 4 * d2 - d3 + d4;
    r[3 * rs] = -2 * d1 - d2 + 2 * d3 + d4;
    r[4 * rs] = 2 * d1 - d2 - 2 * d3 + d4;
    r[5 * rs] = 4 * d1 - 5 * d3 + d5;
}

/* y = A^T m of six floats (stride ms) in the order the SIMD kernel uses, so both round alike
 * (the factors 2, 4, 8 are exact, so a fused multiply-add gives the same float). */
static void at6(const float *m, int ms, float *y, int ys)
{
    const float s12 = m[ms] + m[2 * ms], d12 = m[ms] - m[2 * ms];
    const float s34 = m[3 * ms] + m[4 * ms], d34 = m[3 * ms] - m[4 * ms];
    y[0] = (m[0] + s12) + s34;
    y[ys] = d12 + 2.0f * d34;
    y[2 * ys] = s12 + 4.0f * s34;
    y[3 * ys] = (d12 + 8.0f * d34) + m[5 * ms];
}

/* The 6x6 window of tile column tx, or a zp-filled copy where it runs past the padded input. */
const uint8_t *qcnn_wino_window(const qcnn_wino_row *r, int tx, size_t *row_stride)
{
    const int x0 = tx * 4, cin = r->cin;
    if (r->rows_avail >= T && x0 + T <= r->cols) {
        *row_stride = r->xrow;
        return r->x + (size_t)x0 * cin;
    }
    uint8_t *patch = (uint8_t *)r->work;
    memset(patch, r->zp, (size_t)T * T * cin);
    const int nr = r->rows_avail < T ? r->rows_avail : T;
    const int nc = r->cols - x0 < T ? r->cols - x0 : T;
    for (int i = 0; i < nr; i++)
        if (nc > 0)
            memcpy(patch + (size_t)i * T * cin, r->x + i * r->xrow + (size_t)x0 * cin, (size_t)nc * cin);
    *row_stride = (size_t)T * cin;
    return patch;
}

void qcnn_wino_row_generic(const qcnn_wino_row *r)
{
    const int cin = r->cin, cout = r->cout, ntiles = (r->ow + 3) / 4;
    int16_t *v = (int16_t *)((uint8_t *)r->work + qcnn_wino_work_offset(cin, 1)); /* [36][cin] */
    for (int tx = 0; tx < ntiles; tx++) {
        size_t rs;
        const uint8_t *x = qcnn_wino_window(r, tx, &rs);
        for (int ci = 0; ci < cin; ci++) {
            int d[QCNN_WINO_POS], t[QCNN_WINO_POS], o[QCNN_WINO_POS];
            for (int i = 0; i < T; i++)
                for (int j = 0; j < T; j++)
                    d[i * T + j] = (int)x[i * rs + (size_t)j * cin + ci] - r->zp;
            for (int j = 0; j < T; j++)
                bt6(d + j, T, t + j, T); /* columns: t = B^T d */
            for (int i = 0; i < T; i++)
                bt6(t + i * T, 1, o + i * T, 1); /* rows: (B^T d) B */
            for (int pos = 0; pos < QCNN_WINO_POS; pos++)
                v[(size_t)pos * cin + ci] = (int16_t)o[pos];
        }
        for (int co = 0; co < cout; co++) {
            float m[QCNN_WINO_POS], t[4 * T], y4[16];
            for (int pos = 0; pos < QCNN_WINO_POS; pos++) {
                const int16_t *u = r->u + ((size_t)pos * (cin / 2) * cout + co) * 2;
                const float s = r->mul[(size_t)pos * cout + co];
                for (int c0 = 0; c0 < cin; c0 += QCNN_WINO_CIN_CHUNK) {
                    int64_t acc = 0; /* exact; qcnn_wino_pack bounds it to int32 */
                    const int c1 = c0 + QCNN_WINO_CIN_CHUNK < cin ? c0 + QCNN_WINO_CIN_CHUNK : cin;
                    for (int ci = c0; ci < c1; ci += 2, u += (size_t)cout * 2)
                        acc += (int64_t)v[(size_t)pos * cin + ci] * u[0] + (int64_t)v[(size_t)pos * cin + ci + 1] * u[1];
                    const float part = (float)(int32_t)acc * s;
                    m[pos] = c0 == 0 ? part : m[pos] + part;
                }
            }
            for (int j = 0; j < T; j++)
                at6(m + j, T, t + j, T); /* columns: A^T m */
            for (int i = 0; i < 4; i++)
                at6(t + i * T, 1, y4 + i * 4, 1); /* rows: (A^T m) A */
            const float b = r->bias ? r->bias[co] : 0.0f;
            for (int i = 0; i < 16; i++) {
                const float val = y4[i] + b;
                y4[i] = (r->relu && val < 0.0f) ? 0.0f : val;
            }
            if (r->pool2) {
                for (int i = 0; i < r->nrows; i++)
                    for (int j = 0; j < 2 && tx * 2 + j < r->pw; j++) {
                        const float *q = y4 + 2 * i * 4 + 2 * j;
                        const float a = q[0] > q[1] ? q[0] : q[1], c = q[4] > q[5] ? q[4] : q[5];
                        r->y[i * r->yrow + (size_t)(tx * 2 + j) * r->ypix + co] = a > c ? a : c;
                    }
                continue;
            }
            for (int i = 0; i < r->nrows; i++)
                for (int j = 0; j < 4 && tx * 4 + j < r->ow; j++)
                    r->y[i * r->yrow + (size_t)(tx * 4 + j) * r->ypix + co] = y4[i * 4 + j];
        }
    }
}
