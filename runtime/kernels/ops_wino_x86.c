/* Winograd F(4x4, 3x3) tile-row kernel for AVX-512 VNNI (vpdpwssd). Same integers and floats
 * as qcnn_wino_row_generic (ops_wino.c), which defines the arithmetic; see qcnn_wino_row in ops.h.
 *
 * Per superblock of tiles (as many as keep their inputs and sums within about 512 KB): each
 * tile's 6x6 window is transformed 32 channels at a time in int16 registers into the work
 * buffer; then, per 64 output channels and per tile position, blocks of 6 tiles x 4 vectors of
 * int32 sums run over the input channels in pairs (one 32-bit broadcast of a tile's channel
 * pair, one vpdpwssd per vector: 2 products per lane); the sums are scaled to float and the
 * output transform writes 4x4 pixels per tile.
 * Only called after qcnn_iconv_fast_available() said the CPU and OS support it.
 */
#include <string.h>

#include "ops.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define TV __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define AI __attribute__((always_inline))
#define T 6
#define NT QCNN_WINO_TILES
#define NV (QCNN_WINO_COUT_CHUNK / 16)

/* acc += lo16(x)*lo16(w) + hi16(x)*hi16(w) per int32 lane. Inline asm for the reason given in
 * vnni_x86.h: with the intrinsic gcc copies and spills the accumulators. */
#define DPWSSD(acc, x, w) __asm__("vpdpwssd %[wv], %[xv], %[av]" : [av] "+v"(acc) : [xv] "v"(x), [wv] "v"(w))

/* r = B^T d of six int16 vectors (exact: |values| stay <= 25500), as bt6 in ops_wino.c. */
static inline AI TV void bt6v(const __m512i *d, int ds, __m512i *r, int rs)
{
    const __m512i d0 = d[0], d1 = d[ds], d2 = d[2 * ds], d3 = d[3 * ds], d4 = d[4 * ds], d5 = d[5 * ds];
    const __m512i d4m2 = _mm512_sub_epi16(d4, d2), d3m1 = _mm512_sub_epi16(d3, d1);
    const __m512i d3m1x2 = _mm512_add_epi16(d3m1, d3m1);
    r[0] = _mm512_add_epi16(_mm512_sub_epi16(_mm512_slli_epi16(_mm512_sub_epi16(d0, d2), 2), d2), d4);
    r[rs] = _mm512_sub_epi16(_mm512_add_epi16(d3, d4), _mm512_slli_epi16(_mm512_add_epi16(d1, d2), 2));
    r[2 * rs] = _mm512_add_epi16(_mm512_sub_epi16(d4, d3), _mm512_slli_epi16(_mm512_sub_epi16(d1, d2), 2));
    r[3 * rs] = _mm512_add_epi16(d4m2, d3m1x2);
    r[4 * rs] = _mm512_sub_epi16(d4m2, d3m1x2);
    r[5 * rs] = _mm512_add_epi16(_mm512_sub_epi16(_mm512_slli_epi16(_mm512_sub_epi16(d1, d3), 2), d3), d5);
}

/* v[36][cin] = B^T (window - zp) B, 32 channels at a time. */
static inline AI TV void input_tile(const uint8_t *x, size_t rs, int cin, __m512i zpv, int16_t *v)
{
    for (int c = 0; c < cin; c += 32) {
        __m512i t[T * T];
        for (int j = 0; j < T; j++) {
            __m512i d[T];
            for (int i = 0; i < T; i++)
                d[i] = _mm512_sub_epi16(
                    _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(x + i * rs + (size_t)j * cin + c))), zpv);
            bt6v(d, 1, t + j, T); /* columns */
        }
        for (int i = 0; i < T; i++) {
            __m512i o[T];
            bt6v(t + i * T, 1, o, 1); /* rows */
            for (int j = 0; j < T; j++)
                _mm512_store_si512((void *)(v + (size_t)(i * T + j) * cin + c), o[j]);
        }
    }
}

/* m[t][pos][64] = sx*uscale * sum over cin of v[t][pos][ci] * u[pos][ci][co0 + ...] for one
 * tile position and nt tiles (v and m at the first of them). */
static inline AI TV void sums(const int16_t *v, int cin, const int16_t *u, int cout, int co0, const float *mul,
                              float *m, int pos, const int nt)
{
    const int npair = cin / 2;
    for (int c0 = 0; c0 < cin; c0 += QCNN_WINO_CIN_CHUNK) {
        __m512i acc[NT][NV];
#pragma GCC unroll 6
        for (int t = 0; t < nt; t++)
#pragma GCC unroll 4
            for (int k = 0; k < NV; k++)
                acc[t][k] = _mm512_setzero_si512();
        const int16_t *up = u + (((size_t)pos * npair + c0 / 2) * cout + co0) * 2;
        const int16_t *vp = v + (size_t)pos * cin + c0;
        const int p1 = (c0 + QCNN_WINO_CIN_CHUNK < cin ? c0 + QCNN_WINO_CIN_CHUNK : cin) / 2;
        for (int p = c0 / 2; p < p1; p++, up += (size_t)cout * 2, vp += 2) {
            __m512i w[NV];
#pragma GCC unroll 4
            for (int k = 0; k < NV; k++)
                w[k] = _mm512_loadu_si512((const void *)(up + k * 32));
#pragma GCC unroll 6
            for (int t = 0; t < nt; t++) {
                int32_t pair;
                memcpy(&pair, vp + (size_t)t * QCNN_WINO_POS * cin, 4);
                const __m512i b = _mm512_set1_epi32(pair);
#pragma GCC unroll 4
                for (int k = 0; k < NV; k++)
                    DPWSSD(acc[t][k], b, w[k]);
            }
        }
#pragma GCC unroll 4
        for (int k = 0; k < NV; k++) {
            const __m512 s = _mm512_loadu_ps(mul + (size_t)pos * cout + co0 + k * 16);
#pragma GCC unroll 6
            for (int t = 0; t < nt; t++) {
                float *mp = m + ((size_t)t * QCNN_WINO_POS + pos) * QCNN_WINO_COUT_CHUNK + k * 16;
                __m512 part = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[t][k]), s);
                if (c0) /* a separate add, not an FMA: the portable kernel's rounding */
                    part = _mm512_add_ps(_mm512_load_ps(mp), part);
                _mm512_store_ps(mp, part);
            }
        }
    }
}

/* y = A^T m of six vectors, in at6's order (ops_wino.c). */
static inline AI TV void at6v(const __m512 *m, int ms, __m512 *y, int ys)
{
    const __m512 s12 = _mm512_add_ps(m[ms], m[2 * ms]), d12 = _mm512_sub_ps(m[ms], m[2 * ms]);
    const __m512 s34 = _mm512_add_ps(m[3 * ms], m[4 * ms]), d34 = _mm512_sub_ps(m[3 * ms], m[4 * ms]);
    y[0] = _mm512_add_ps(_mm512_add_ps(m[0], s12), s34);
    y[ys] = _mm512_fmadd_ps(d34, _mm512_set1_ps(2.0f), d12);
    y[2 * ys] = _mm512_fmadd_ps(s34, _mm512_set1_ps(4.0f), s12);
    y[3 * ys] = _mm512_add_ps(_mm512_fmadd_ps(d34, _mm512_set1_ps(8.0f), d12), m[5 * ms]);
}

/* The 4x4 outputs of tile tx for channels co0 .. co0+63 from its sums m[36][64]. */
static inline AI TV void output_tile(const qcnn_wino_row *r, const float *m, int tx, int co0)
{
    const int ncols = r->ow - tx * 4 < 4 ? r->ow - tx * 4 : 4;
    for (int k = 0; k < NV; k++) {
        const __m512 b = r->bias ? _mm512_loadu_ps(r->bias + co0 + k * 16) : _mm512_setzero_ps();
        __m512 col[T], t[4 * T];
        for (int j = 0; j < T; j++) {
            for (int i = 0; i < T; i++)
                col[i] = _mm512_load_ps(m + (size_t)(i * T + j) * QCNN_WINO_COUT_CHUNK + k * 16);
            at6v(col, 1, t + j, T); /* columns */
        }
        if (r->pool2) { /* 2x2 max of the outputs (bias and ReLU first, as unfused) */
            const int pcols = r->pw - tx * 2 < 2 ? r->pw - tx * 2 : 2;
            for (int i = 0; i < r->nrows; i++) {
                __m512 o[2][4];
                for (int h = 0; h < 2; h++) {
                    at6v(t + (2 * i + h) * T, 1, o[h], 1); /* rows */
                    for (int j = 0; j < 4; j++) {
                        o[h][j] = _mm512_add_ps(o[h][j], b);
                        if (r->relu)
                            o[h][j] = _mm512_max_ps(o[h][j], _mm512_setzero_ps());
                    }
                }
                float *y = r->y + i * r->yrow + (size_t)tx * 2 * r->ypix + co0 + k * 16;
                for (int j = 0; j < pcols; j++)
                    _mm512_storeu_ps(y + (size_t)j * r->ypix,
                                     _mm512_max_ps(_mm512_max_ps(o[0][2 * j], o[0][2 * j + 1]),
                                                   _mm512_max_ps(o[1][2 * j], o[1][2 * j + 1])));
            }
            continue;
        }
        for (int i = 0; i < r->nrows; i++) {
            __m512 o[4];
            at6v(t + i * T, 1, o, 1); /* rows */
            float *y = r->y + i * r->yrow + (size_t)tx * 4 * r->ypix + co0 + k * 16;
            for (int j = 0; j < ncols; j++) {
                __m512 val = _mm512_add_ps(o[j], b);
                if (r->relu)
                    val = _mm512_max_ps(val, _mm512_setzero_ps());
                _mm512_storeu_ps(y + (size_t)j * r->ypix, val);
            }
        }
    }
}

/* Tiles tx0 .. tx0+nsb-1 of the row: inputs transformed first; then per 64 output channels and
 * tile position the sums of every tile, NT at a time, so that position's weights are read once
 * for all of them (from L2, not L3: 256 -> 256 channels take 4.7 MB); then the outputs. */
static TV void superblock(const qcnn_wino_row *r, int16_t *v, float *m, int tx0, int nsb)
{
    const __m512i zpv = _mm512_set1_epi16((short)r->zp);
    const size_t vtile = (size_t)QCNN_WINO_POS * r->cin, mtile = (size_t)QCNN_WINO_POS * QCNN_WINO_COUT_CHUNK;
    for (int t = 0; t < nsb; t++) {
        size_t rs;
        const uint8_t *x = qcnn_wino_window(r, tx0 + t, &rs);
        input_tile(x, rs, r->cin, zpv, v + t * vtile);
    }
    for (int co0 = 0; co0 < r->cout; co0 += QCNN_WINO_COUT_CHUNK) {
        for (int pos = 0; pos < QCNN_WINO_POS; pos++)
            for (int t0 = 0; t0 < nsb; t0 += NT) {
                const int16_t *vb = v + t0 * vtile;
                float *mb = m + t0 * mtile;
                switch (nsb - t0 < NT ? nsb - t0 : NT) {
                case 1: sums(vb, r->cin, r->u, r->cout, co0, r->mul, mb, pos, 1); break;
                case 2: sums(vb, r->cin, r->u, r->cout, co0, r->mul, mb, pos, 2); break;
                case 3: sums(vb, r->cin, r->u, r->cout, co0, r->mul, mb, pos, 3); break;
                case 4: sums(vb, r->cin, r->u, r->cout, co0, r->mul, mb, pos, 4); break;
                case 5: sums(vb, r->cin, r->u, r->cout, co0, r->mul, mb, pos, 5); break;
                default: sums(vb, r->cin, r->u, r->cout, co0, r->mul, mb, pos, 6); break;
                }
            }
        for (int t = 0; t < nsb; t++)
            output_tile(r, m + t * mtile, tx0 + t, co0);
    }
}

TV void qcnn_wino_row_avx512(const qcnn_wino_row *r)
{
    int16_t *v = (int16_t *)((uint8_t *)r->work + qcnn_wino_work_offset(r->cin, 1));
    float *m = (float *)((uint8_t *)r->work + qcnn_wino_work_offset(r->cin, 2));
    const int ntiles = (r->ow + 3) / 4, sb = qcnn_wino_superblock(r->cin);
    for (int tx0 = 0; tx0 < ntiles; tx0 += sb)
        superblock(r, v, m, tx0, ntiles - tx0 < sb ? ntiles - tx0 : sb);
}

#endif
