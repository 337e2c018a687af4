/* AVX2 LUT kernels (any x86-64 with AVX2 + FMA).
 *
 * AVX2's only byte look-up is vpshufb: 16-entry tables, 32 indices per instruction (the table
 * repeated in both 128-bit lanes). Larger tables are split into 16-entry chunks c = 0..NC-1
 * (NC <= 8, K <= 128) and stored "telescoped": chunk c holds T_c XOR T_{c+1} (the last chunk
 * T_{NC-1} as is). Looking chunk c up with u = idx + (0x70 - 16c) (wrapping) keeps the low
 * 4 bits of idx and sets bit 7 (vpshufb then yields 0) exactly when idx's chunk j > c, so
 * XOR over c of the look-ups = XOR_{c >= j} T'_c = T_j[idx & 15]: NC shuffles, NC adds, NC xors.
 * K > 128 uses two halves of 8 chunks on idx & 0x7F, blended on idx's top bit.
 * Accumulation is the AVX-512 scheme at 32 channels per block (see qlut_avx512.c).
 * Compiled without -march: functions carry the target attribute and are only reached after
 * qcnn_isa_detect() reported AVX2 + FMA with OS support. */
#include "qlut_internal.h"

#if QLUT_X86
#include <immintrin.h>

#define T2 __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline))

/* ------------------------------------------------------------------ float tables */

/* NV*8 consecutive entries of P tables (same group/subspace, P input pixels): the codebook
 * slice loaded per channel serves P pixels. Updates each table's running min/max vectors. */
INLINE T2 void build_chunk(const float *x, size_t xstride, int nc, const float *cb, int Kp, float *L,
                           size_t Lstride, __m256 *mn, __m256 *mx, const int NV, const int P) {
    __m256 acc[2][4];
    for (int i = 0; i < P; i++)
        for (int v = 0; v < NV; v++) acc[i][v] = _mm256_setzero_ps();
    for (int c = 0; c < nc; c++)
        for (int v = 0; v < NV; v++) {
            const __m256 dv = _mm256_load_ps(cb + (size_t)c * Kp + 8 * v);
            for (int i = 0; i < P; i++)
                acc[i][v] = _mm256_fmadd_ps(_mm256_broadcast_ss(x + i * xstride + c), dv, acc[i][v]);
        }
    for (int i = 0; i < P; i++)
        for (int v = 0; v < NV; v++) {
            _mm256_store_ps(L + i * Lstride + 8 * v, acc[i][v]);
            mn[i] = _mm256_min_ps(mn[i], acc[i][v]);
            mx[i] = _mm256_max_ps(mx[i], acc[i][v]);
        }
}

INLINE T2 float hreduce(__m256 v, int want_max) {
    __m128 a = _mm256_castps256_ps128(v), b = _mm256_extractf128_ps(v, 1);
    a = want_max ? _mm_max_ps(a, b) : _mm_min_ps(a, b);
    b = _mm_movehl_ps(a, a);
    a = want_max ? _mm_max_ps(a, b) : _mm_min_ps(a, b);
    b = _mm_shuffle_ps(a, a, 1);
    a = want_max ? _mm_max_ss(a, b) : _mm_min_ss(a, b);
    return _mm_cvtss_f32(a);
}

/* Whole tables for P pixels; returns their largest range. */
INLINE T2 float build_px(const float *x, size_t xstride, int nc, const float *cb, int Kp, float *L,
                         size_t Lstride, float *tmin, size_t tstride, const int P) {
    __m256 mn[2], mx[2];
    for (int i = 0; i < P; i++) {
        mn[i] = _mm256_set1_ps(__builtin_inff());
        mx[i] = _mm256_set1_ps(-__builtin_inff());
    }
    int k = 0;
    for (; k + 32 <= Kp; k += 32) build_chunk(x, xstride, nc, cb + k, Kp, L + k, Lstride, mn, mx, 4, P);
    for (; k < Kp; k += 16) build_chunk(x, xstride, nc, cb + k, Kp, L + k, Lstride, mn, mx, 2, P);
    float maxr = 0.0f;
    for (int i = 0; i < P; i++) {
        const float lo = hreduce(mn[i], 0), r = hreduce(mx[i], 1) - lo;
        tmin[i * tstride] = lo;
        maxr = r > maxr ? r : maxr;
    }
    return maxr;
}

/* (group, subspace) outer so its codebook stays in L1 across all pixels. */
T2 float qlut_build_avx2(const qcnn_qconv_prepared *q, const float *x, int h, int w, float *Lf,
                         float *tmin) {
    const int G = q->p.groups, M = q->M, Cs = q->Cs, Kp = q->Kp, Cg = q->Cg;
    const size_t npix = (size_t)h * w, tstride = (size_t)G * M, cin = q->p.cin;
    float maxr = 0.0f;
    for (int g = 0; g < G; g++)
        for (int m = 0; m < M; m++) {
            const int nc = Cg - m * Cs < Cs ? Cg - m * Cs : Cs;
            const float *cb = q->cbt + ((size_t)g * M + m) * Cs * Kp;
            const size_t t0 = (size_t)g * M + m;
            const float *xs = x + g * Cg + m * Cs;
            size_t pix = 0;
            float r;
            for (; pix + 2 <= npix; pix += 2) {
                r = build_px(xs + pix * cin, cin, nc, cb, Kp, Lf + (pix * tstride + t0) * Kp,
                             tstride * Kp, tmin + pix * tstride + t0, tstride, 2);
                maxr = r > maxr ? r : maxr;
            }
            if (pix < npix) {
                r = build_px(xs + pix * cin, cin, nc, cb, Kp, Lf + (pix * tstride + t0) * Kp,
                             tstride * Kp, tmin + pix * tstride + t0, tstride, 1);
                maxr = r > maxr ? r : maxr;
            }
        }
    return maxr;
}

T2 void qlut_quant_avx2(const qcnn_qconv_prepared *q, const float *Lf, const float *tmin,
                        size_t ntab, float inv, uint8_t *lq) {
    const int Kp = q->Kp;
    const __m256 vinv = _mm256_set1_ps(inv), magic = _mm256_set1_ps(12582912.0f); /* 1.5 * 2^23 */
    const __m256i magic_bits = _mm256_castps_si256(magic);
    for (size_t t = 0; t < ntab; t++) {
        const __m256 mn = _mm256_set1_ps(tmin[t]);
        uint8_t *T = lq + t * Kp;
        for (int k = 0; k < Kp; k += 16) {
            __m256i v[2];
            for (int i = 0; i < 2; i++) {
                /* As generic quant1() and the AVX-512 codes16(): the FMA onto 1.5 * 2^23 rounds
                 * (L - min) * inv to the nearest integer (ties to even) in the low mantissa
                 * bits; the packs below saturate anything outside 0..255 (NaN included). */
                const __m256 d = _mm256_sub_ps(_mm256_load_ps(Lf + t * Kp + k + 8 * i), mn);
                v[i] = _mm256_sub_epi32(_mm256_castps_si256(_mm256_fmadd_ps(d, vinv, magic)), magic_bits);
            }
            __m256i w16 = _mm256_permute4x64_epi64(_mm256_packus_epi32(v[0], v[1]), 0xD8);
            _mm_store_si128((__m128i *)(T + k), _mm_packus_epi16(_mm256_castsi256_si128(w16),
                                                                 _mm256_extracti128_si256(w16, 1)));
        }
        /* Telescope each half's chunks in place: chunk c ^= chunk c+1 (ascending, so c+1 is
         * still the original when read). */
        const int half_entries = Kp > 128 ? 128 : Kp;
        for (int h0 = 0; h0 < Kp; h0 += half_entries)
            for (int c = 0; c + 1 < half_entries / 16; c++) {
                __m128i *a = (__m128i *)(T + h0 + 16 * c);
                _mm_store_si128(a, _mm_xor_si128(_mm_load_si128(a), _mm_load_si128(a + 1)));
            }
    }
}

/* ------------------------------------------------------------------ look-up + accumulate */

INLINE T2 __m256i bcast16(const uint8_t *p) {
    return _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i *)p));
}

/* One telescoped half (NC chunks) looked up with 7-bit indices i7. */
INLINE T2 __m256i lookup_half(const uint8_t *tab, __m256i i7, const int NC) {
    if (NC == 1) return _mm256_shuffle_epi8(bcast16(tab), i7);
    __m256i r = _mm256_setzero_si256();
    for (int c = 0; c < NC; c++) {
        const __m256i u = _mm256_add_epi8(i7, _mm256_set1_epi8((char)(0x70 - 16 * c)));
        r = _mm256_xor_si256(r, _mm256_shuffle_epi8(bcast16(tab + 16 * c), u));
    }
    return r;
}

/* NC chunks per half; HALVES = 2 for K > 128. */
INLINE T2 __m256i lookup(const uint8_t *tab, __m256i idx, const int NC, const int HALVES) {
    if (HALVES == 1) return lookup_half(tab, idx, NC);
    const __m256i i7 = _mm256_and_si256(idx, _mm256_set1_epi8(0x7F));
    return _mm256_blendv_epi8(lookup_half(tab, i7, 8), lookup_half(tab + 128, i7, 8), idx);
}

INLINE T2 void flush(__m256i *a, __m256i *b, __m256i c[4]) {
    const __m256i lo = _mm256_sub_epi16(*a, _mm256_slli_epi16(*b, 8));
    c[0] = _mm256_add_epi32(c[0], _mm256_cvtepu16_epi32(_mm256_castsi256_si128(lo)));
    c[1] = _mm256_add_epi32(c[1], _mm256_cvtepu16_epi32(_mm256_extracti128_si256(lo, 1)));
    c[2] = _mm256_add_epi32(c[2], _mm256_cvtepu16_epi32(_mm256_castsi256_si128(*b)));
    c[3] = _mm256_add_epi32(c[3], _mm256_cvtepu16_epi32(_mm256_extracti128_si256(*b, 1)));
    *a = _mm256_setzero_si256();
    *b = _mm256_setzero_si256();
}

/* The QLUT_EPI_* formulas (qlut_internal.h) for channels ob.. of one output pixel (masked tail). */
INLINE T2 void epilogue(const qlut_run *r, const __m256i c[4], int oy, int ox, int g, int ob) {
    const qcnn_qconv_prepared *q = r->q;
    const int Og = q->Og;
    const size_t pix = (size_t)oy * r->ow + ox;
    const __m256 off = _mm256_set1_ps(r->off[pix * q->p.groups + g]), s = _mm256_set1_ps(r->step);
    float *yp = qlut_out(r, oy, ox) + (size_t)g * Og;
    const float *bias = q->p.bias ? q->p.bias + (size_t)g * Og : NULL;
    const int add = r->epi == QLUT_EPI_ADD || r->epi == QLUT_EPI_LAST;
    const int relu = q->p.relu && (r->epi == QLUT_EPI_FULL || r->epi == QLUT_EPI_LAST);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int j = 0; j < 4; j++) {
        const int ch = ob + 8 * j;
        if (ch >= Og) break;
        const __m256i mk = _mm256_cmpgt_epi32(_mm256_set1_epi32(Og - ch), lane);
        const __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(c[j]), s);
        __m256 v;
        if (add) {
            v = _mm256_add_ps(_mm256_maskload_ps(yp + ch, mk), t);
        } else {
            const __m256 ob_ = bias ? _mm256_add_ps(off, _mm256_maskload_ps(bias + ch, mk)) : off;
            v = _mm256_add_ps(t, ob_);
        }
        if (relu) v = _mm256_max_ps(v, _mm256_setzero_ps());
        _mm256_maskstore_ps(yp + ch, mk, v);
    }
}

/* P neighbouring output pixels of row oy, 32 channels from ob, group g; any kernel/stride. */
INLINE T2 void conv_block(const qlut_run *r, int oy, int ox0, int g, int ob, const int P,
                          const int NC, const int HALVES) {
    const qcnn_qconv_prepared *q = r->q;
    const qcnn_qconv_params *p = &q->p;
    const int M = q->M, Kp = q->Kp, KW = p->kw, Ogp = q->Ogp;
    const size_t pixb = (size_t)p->groups * M * Kp;
    const size_t pstep = (size_t)p->stride_w * pixb;
    const size_t col = (size_t)ox0 * p->stride_w * pixb + (size_t)g * M * Kp;
    const uint8_t *ib = q->idx + (size_t)g * p->kh * KW * M * Ogp + ob;
    __m256i a[4], b[4], c[4][4];
    for (int i = 0; i < P; i++) {
        a[i] = b[i] = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) c[i][j] = _mm256_setzero_si256();
    }
    int cnt = 0;
    for (int ky = r->ky0; ky < r->ky1; ky++)
        for (int kx = 0; kx < KW; kx++) {
            const uint8_t *tp = qlut_row(r, oy * p->stride_h + ky) + col + (size_t)kx * pixb;
            const uint8_t *ip = ib + ((size_t)ky * KW + kx) * M * Ogp;
            for (int m = 0; m < M; m++) {
                const __m256i idx = _mm256_loadu_si256((const __m256i *)(ip + (size_t)m * Ogp));
                const uint8_t *t = tp + (size_t)m * Kp;
                __m256i v[4];
                for (int i = 0; i < P; i++) v[i] = lookup(t + i * pstep, idx, NC, HALVES);
                for (int i = 0; i < P; i++) {
                    a[i] = _mm256_add_epi16(a[i], v[i]);
                    b[i] = _mm256_add_epi16(b[i], _mm256_srli_epi16(v[i], 8));
                }
                if (++cnt == 256) {
                    for (int i = 0; i < P; i++) flush(&a[i], &b[i], c[i]);
                    cnt = 0;
                }
            }
        }
    for (int i = 0; i < P; i++) {
        flush(&a[i], &b[i], c[i]);
        epilogue(r, c[i], oy, ox0 + i, g, ob);
    }
}

INLINE T2 void conv_all(const qlut_run *r, const int NC, const int HALVES) {
    const qcnn_qconv_prepared *q = r->q;
    for (int oy = r->oy0; oy < r->oy1; oy++)
        for (int g = 0; g < q->p.groups; g++)
            for (int ox = 0; ox < r->ow;) {
                const int left = r->ow - ox;
                for (int ob = 0; ob < q->Ogp; ob += 32) {
                    if (left >= 4) conv_block(r, oy, ox, g, ob, 4, NC, HALVES);
                    else if (left == 3) conv_block(r, oy, ox, g, ob, 3, NC, HALVES);
                    else if (left == 2) conv_block(r, oy, ox, g, ob, 2, NC, HALVES);
                    else conv_block(r, oy, ox, g, ob, 1, NC, HALVES);
                }
                ox += left >= 4 ? 4 : left;
            }
}

/* ------------------------------------------------------------------ fully connected */

/* One chunk of NB 32-channel blocks; indices stream sequentially (chunked layout). */
INLINE T2 void fc_chunk(const qlut_run *r, const uint8_t *ip, int ob0, const int NB, const int NC,
                        const int HALVES) {
    const int M = r->q->M, Kp = r->q->Kp;
    const uint8_t *tab = r->lq;
    __m256i a[4], b[4], c[4][4];
    for (int i = 0; i < NB; i++) {
        a[i] = b[i] = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) c[i][j] = _mm256_setzero_si256();
    }
    int cnt = 0;
    for (int m = 0; m < M; m++, tab += Kp, ip += NB * 32) {
        for (int i = 0; i < NB; i++) {
            const __m256i v = lookup(tab, _mm256_load_si256((const __m256i *)(ip + 32 * i)), NC, HALVES);
            a[i] = _mm256_add_epi16(a[i], v);
            b[i] = _mm256_add_epi16(b[i], _mm256_srli_epi16(v, 8));
        }
        if (++cnt == 256) {
            for (int i = 0; i < NB; i++) flush(&a[i], &b[i], c[i]);
            cnt = 0;
        }
    }
    for (int i = 0; i < NB; i++) {
        flush(&a[i], &b[i], c[i]);
        epilogue(r, c[i], 0, 0, 0, ob0 + 32 * i);
    }
}

INLINE T2 void fc_all(const qlut_run *r, const int NC, const int HALVES) {
    const qcnn_qconv_prepared *q = r->q;
    const int nblk = q->Ogp / 32, NB = q->fcnb; /* NB == 4 */
    for (int ch = 0; ch * NB < nblk; ch++) {
        const uint8_t *ip = q->idx + (size_t)ch * NB * 32 * q->M;
        const int ob0 = ch * NB * 32;
        switch (nblk - ch * NB < NB ? nblk - ch * NB : NB) {
        case 1: fc_chunk(r, ip, ob0, 1, NC, HALVES); break;
        case 2: fc_chunk(r, ip, ob0, 2, NC, HALVES); break;
        case 3: fc_chunk(r, ip, ob0, 3, NC, HALVES); break;
        default: fc_chunk(r, ip, ob0, 4, NC, HALVES); break;
        }
    }
}

INLINE T2 void run_all(const qlut_run *r, const int NC, const int HALVES) {
    if (r->q->fcnb) fc_all(r, NC, HALVES);
    else conv_all(r, NC, HALVES);
}

T2 void qlut_conv_avx2(const qlut_run *r) {
    switch (r->q->Kp) {
    case 16: run_all(r, 1, 1); break;
    case 32: run_all(r, 2, 1); break;
    case 48: run_all(r, 3, 1); break;
    case 64: run_all(r, 4, 1); break;
    case 80: run_all(r, 5, 1); break;
    case 96: run_all(r, 6, 1); break;
    case 112: run_all(r, 7, 1); break;
    case 128: run_all(r, 8, 1); break;
    default: run_all(r, 8, 2); break;
    }
}
#endif
