/* Winograd F(4x4, 3x3) tile-row kernel for AVX2 (vpmaddwd). Same integers and floats as
 * qcnn_wino_row_generic (ops_wino.c), which defines the arithmetic; see qcnn_wino_row in ops.h.
 *
 * The structure of the AVX-512 kernel (ops_wino_x86.c): per superblock of tiles the 6x6
 * windows are transformed in int16 into the work buffer, then per 64 output channels and tile
 * position the int32 sums of every tile run over the input channels in pairs, then the output
 * transform writes 4x4 pixels per tile (or their 2x2 max pool). What differs:
 *  - 16 channels per int16 vector in the input transform (cin is a multiple of 32: two of them);
 *  - AVX2 has no vpdpwssd: each product pair is a vpmaddwd into a temporary and a vpaddd into
 *    the accumulator (the same exact int32 sums);
 *  - 16 ymm registers instead of 32 zmm: blocks of NT2 = 3 tiles x 4 vectors (32 output
 *    channels, half of the 64 the sums buffer holds) of accumulators, one broadcast and one
 *    product; the 4 weight vectors are memory operands of vpmaddwd (read from L1 once per
 *    tile), as in the direct AVX2 kernel (qcnn_iconv_row_avx2).
 * Only called after qcnn_iconv_avx2_available() said the CPU and OS support it.
 */
#include <string.h>

#include "ops.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define T2 __attribute__((target("avx2,fma")))
#define AI __attribute__((always_inline))
#define T 6
#define NT2 3                            /* tiles whose sums are in registers at once */
#define NK 4                             /* accumulator vectors per tile: 32 output channels */
#define HALVES (QCNN_WINO_COUT_CHUNK / 32) /* 32-channel blocks per chunk of sums */

/* acc += lo16(b)*lo16(w) + hi16(b)*hi16(w) per int32 lane, w read from memory. Inline asm:
 * with intrinsics gcc keeps 3 of the 4 weight vectors in registers and spills accumulators
 * instead (12 accumulators + 4 weights + broadcast + product > 16 ymm). */
#define MADDADD(acc, b, wp)                                                                 \
    do {                                                                                   \
        __m256i prod_;                                                                     \
        __asm__("vpmaddwd %[w], %[bv], %[p]\n\tvpaddd %[p], %[a], %[a]"                     \
                : [a] "+x"(acc), [p] "=&x"(prod_)                                          \
                : [bv] "x"(b), [w] "m"(*(const __m256i *)(wp)));                           \
    } while (0)

/* r = B^T d of six int16 vectors (exact: |values| stay <= 25500), as bt6 in ops_wino.c. */
static inline AI T2 void bt6v(const __m256i *d, int ds, __m256i *r, int rs)
{
    const __m256i d0 = d[0], d1 = d[ds], d2 = d[2 * ds], d3 = d[3 * ds], d4 = d[4 * ds], d5 = d[5 * ds];
    const __m256i d4m2 = _mm256_sub_epi16(d4, d2), d3m1 = _mm256_sub_epi16(d3, d1);
    const __m256i d3m1x2 = _mm256_add_epi16(d3m1, d3m1);
    r[0] = _mm256_add_epi16(_mm256_sub_epi16(_mm256_slli_epi16(_mm256_sub_epi16(d0, d2), 2), d2), d4);
    r[rs] = _mm256_sub_epi16(_mm256_add_epi16(d3, d4), _mm256_slli_epi16(_mm256_add_epi16(d1, d2), 2));
    r[2 * rs] = _mm256_add_epi16(_mm256_sub_epi16(d4, d3), _mm256_slli_epi16(_mm256_sub_epi16(d1, d2), 2));
    r[3 * rs] = _mm256_add_epi16(d4m2, d3m1x2);
    r[4 * rs] = _mm256_sub_epi16(d4m2, d3m1x2);
    r[5 * rs] = _mm256_add_epi16(_mm256_sub_epi16(_mm256_slli_epi16(_mm256_sub_epi16(d1, d3), 2), d3), d5);
}

/* v[36][cin] = B^T (window - zp) B, 16 channels at a time. The column pass goes through t in
 * memory (36 vectors do not fit in registers; this way it is one store and one load each). */
static inline AI T2 void input_tile(const uint8_t *x, size_t rs, int cin, __m256i zpv, int16_t *v)
{
    for (int c = 0; c < cin; c += 16) {
        __m256i t[T * T];
        for (int j = 0; j < T; j++) {
            __m256i d[T];
            for (int i = 0; i < T; i++)
                d[i] = _mm256_sub_epi16(
                    _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(x + i * rs + (size_t)j * cin + c))), zpv);
            bt6v(d, 1, t + j, T); /* columns */
        }
        for (int i = 0; i < T; i++) {
            __m256i o[T];
            bt6v(t + i * T, 1, o, 1); /* rows */
            for (int j = 0; j < T; j++)
                _mm256_store_si256((__m256i *)(v + (size_t)(i * T + j) * cin + c), o[j]);
        }
    }
}

/* m[t][pos][co1 - co0 + 0..31] = sx*uscale * sum over cin of v[t][pos][ci] * u[pos][ci][co1 + ...]
 * for one tile position, 32 output channels from co1 and nt tiles (v and m at the first of them),
 * summed exactly in int32 per QCNN_WINO_CIN_CHUNK channels and those chunks added in float. */
static inline AI T2 void sums(const int16_t *v, int cin, const int16_t *u, int cout, int co1, const float *mul,
                              float *m, int pos, const int nt)
{
    const int npair = cin / 2;
    for (int c0 = 0; c0 < cin; c0 += QCNN_WINO_CIN_CHUNK) {
        __m256i acc[NT2][NK];
#pragma GCC unroll 3
        for (int t = 0; t < nt; t++)
#pragma GCC unroll 4
            for (int k = 0; k < NK; k++)
                acc[t][k] = _mm256_setzero_si256();
        const int16_t *up = u + (((size_t)pos * npair + c0 / 2) * cout + co1) * 2;
        const int16_t *vp = v + (size_t)pos * cin + c0;
        const int p1 = (c0 + QCNN_WINO_CIN_CHUNK < cin ? c0 + QCNN_WINO_CIN_CHUNK : cin) / 2;
        for (int p = c0 / 2; p < p1; p++, up += (size_t)cout * 2, vp += 2) {
#pragma GCC unroll 3
            for (int t = 0; t < nt; t++) {
                int32_t pair; /* the tile's channel pair against 8 channels x 2 weights per vector */
                memcpy(&pair, vp + (size_t)t * QCNN_WINO_POS * cin, 4);
                const __m256i b = _mm256_set1_epi32(pair);
#pragma GCC unroll 4
                for (int k = 0; k < NK; k++)
                    MADDADD(acc[t][k], b, up + k * 16);
            }
        }
#pragma GCC unroll 4
        for (int k = 0; k < NK; k++) {
            const __m256 s = _mm256_loadu_ps(mul + (size_t)pos * cout + co1 + k * 8);
#pragma GCC unroll 3
            for (int t = 0; t < nt; t++) {
                float *mp = m + ((size_t)t * QCNN_WINO_POS + pos) * QCNN_WINO_COUT_CHUNK + k * 8;
                __m256 part = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[t][k]), s);
                if (c0) /* a separate add, not an FMA: the portable kernel's rounding */
                    part = _mm256_add_ps(_mm256_load_ps(mp), part);
                _mm256_store_ps(mp, part);
            }
        }
    }
}

/* y = A^T m of six vectors, in at6's order (ops_wino.c); the FMAs multiply by 2, 4 or 8: exact. */
static inline AI T2 void at6v(const __m256 *m, int ms, __m256 *y, int ys)
{
    const __m256 s12 = _mm256_add_ps(m[ms], m[2 * ms]), d12 = _mm256_sub_ps(m[ms], m[2 * ms]);
    const __m256 s34 = _mm256_add_ps(m[3 * ms], m[4 * ms]), d34 = _mm256_sub_ps(m[3 * ms], m[4 * ms]);
    y[0] = _mm256_add_ps(_mm256_add_ps(m[0], s12), s34);
    y[ys] = _mm256_fmadd_ps(d34, _mm256_set1_ps(2.0f), d12);
    y[2 * ys] = _mm256_fmadd_ps(s34, _mm256_set1_ps(4.0f), s12);
    y[3 * ys] = _mm256_add_ps(_mm256_fmadd_ps(d34, _mm256_set1_ps(8.0f), d12), m[5 * ms]);
}

/* The 4x4 outputs of tile tx for channels co0 .. co0+63 from its sums m[36][64], 8 at a time. */
static inline AI T2 void output_tile(const qcnn_wino_row *r, const float *m, int tx, int co0)
{
    const int ncols = r->ow - tx * 4 < 4 ? r->ow - tx * 4 : 4;
    for (int k = 0; k < QCNN_WINO_COUT_CHUNK / 8; k++) {
        const __m256 b = r->bias ? _mm256_loadu_ps(r->bias + co0 + k * 8) : _mm256_setzero_ps();
        __m256 col[T], t[4 * T];
        for (int j = 0; j < T; j++) {
            for (int i = 0; i < T; i++)
                col[i] = _mm256_load_ps(m + (size_t)(i * T + j) * QCNN_WINO_COUT_CHUNK + k * 8);
            at6v(col, 1, t + j, T); /* columns */
        }
        if (r->pool2) { /* 2x2 max of the outputs (bias and ReLU first, as unfused) */
            const int pcols = r->pw - tx * 2 < 2 ? r->pw - tx * 2 : 2;
            for (int i = 0; i < r->nrows; i++) {
                __m256 o[2][4];
                for (int h = 0; h < 2; h++) {
                    at6v(t + (2 * i + h) * T, 1, o[h], 1); /* rows */
                    for (int j = 0; j < 4; j++) {
                        o[h][j] = _mm256_add_ps(o[h][j], b);
                        if (r->relu)
                            o[h][j] = _mm256_max_ps(o[h][j], _mm256_setzero_ps());
                    }
                }
                float *y = r->y + i * r->yrow + (size_t)tx * 2 * r->ypix + co0 + k * 8;
                for (int j = 0; j < pcols; j++)
                    _mm256_storeu_ps(y + (size_t)j * r->ypix,
                                     _mm256_max_ps(_mm256_max_ps(o[0][2 * j], o[0][2 * j + 1]),
                                                   _mm256_max_ps(o[1][2 * j], o[1][2 * j + 1])));
            }
            continue;
        }
        for (int i = 0; i < r->nrows; i++) {
            __m256 o[4];
            at6v(t + i * T, 1, o, 1); /* rows */
            float *y = r->y + i * r->yrow + (size_t)tx * 4 * r->ypix + co0 + k * 8;
            for (int j = 0; j < ncols; j++) {
                __m256 val = _mm256_add_ps(o[j], b);
                if (r->relu)
                    val = _mm256_max_ps(val, _mm256_setzero_ps());
                _mm256_storeu_ps(y + (size_t)j * r->ypix, val);
            }
        }
    }
}

/* Tiles tx0 .. tx0+nsb-1 of the row, as the AVX-512 kernel's superblock(): per tile position
 * and 32 output channels, that block's weights (cin*64 bytes) stay in L1 for every tile. */
static T2 void superblock(const qcnn_wino_row *r, int16_t *v, float *m, int tx0, int nsb)
{
    const __m256i zpv = _mm256_set1_epi16((short)r->zp);
    const size_t vtile = (size_t)QCNN_WINO_POS * r->cin, mtile = (size_t)QCNN_WINO_POS * QCNN_WINO_COUT_CHUNK;
    for (int t = 0; t < nsb; t++) {
        size_t rs;
        const uint8_t *x = qcnn_wino_window(r, tx0 + t, &rs);
        input_tile(x, rs, r->cin, zpv, v + t * vtile);
    }
    for (int co0 = 0; co0 < r->cout; co0 += QCNN_WINO_COUT_CHUNK) {
        for (int pos = 0; pos < QCNN_WINO_POS; pos++)
            for (int h = 0; h < HALVES; h++)
                for (int t0 = 0; t0 < nsb; t0 += NT2) {
                    const int16_t *vb = v + t0 * vtile;
                    float *mb = m + t0 * mtile + h * 32;
                    const int co1 = co0 + h * 32;
                    switch (nsb - t0 < NT2 ? nsb - t0 : NT2) {
                    case 1: sums(vb, r->cin, r->u, r->cout, co1, r->mul, mb, pos, 1); break;
                    case 2: sums(vb, r->cin, r->u, r->cout, co1, r->mul, mb, pos, 2); break;
                    default: sums(vb, r->cin, r->u, r->cout, co1, r->mul, mb, pos, 3); break;
                    }
                }
        for (int t = 0; t < nsb; t++)
            output_tile(r, m + t * mtile, tx0 + t, co0);
    }
}

T2 void qcnn_wino_row_avx2(const qcnn_wino_row *r)
{
    int16_t *v = (int16_t *)((uint8_t *)r->work + qcnn_wino_work_offset(r->cin, 1));
    float *m = (float *)((uint8_t *)r->work + qcnn_wino_work_offset(r->cin, 2));
    const int ntiles = (r->ow + 3) / 4, sb = qcnn_wino_superblock(r->cin);
    for (int tx0 = 0; tx0 < ntiles; tx0 += sb)
        superblock(r, v, m, tx0, ntiles - tx0 < sb ? ntiles - tx0 : sb);
}

#endif
