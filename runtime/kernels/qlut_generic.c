/* Prepared LUT conv / fc: layer preparation, the per-image driver, and the portable C kernels
 * (float and int8 tables). The x86 kernels in qlut_avx2.c / qlut_avx512.c plug into the same
 * driver through the hooks declared in qlut_internal.h. */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* posix_memalign, madvise(MADV_HUGEPAGE) under -std=c11 */
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "qlut_internal.h"

#define ALIGN64(n) (((size_t)(n) + 63) & ~(size_t)63)

static void *align_ptr(void *p) { return (void *)(((uintptr_t)p + 63) & ~(uintptr_t)63); }

/* A layer's codebooks and indices (released with free()). Those of 2 MB or more are read once
 * per image from DRAM (AlexNet's fc6 indices: 5.9 MB); on Linux they get transparent huge pages
 * where the system allows them, so the stream costs a TLB miss per 2 MB instead of per 4 KB:
 * with the caches flushed before each run (Zen 4), fc6 0.25-0.30 -> 0.22-0.24 ms and fc7
 * 0.135-0.14 -> 0.115-0.125 ms. */
static void *alloc_layer_memory(size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const size_t huge = (size_t)2 << 20;
    if (bytes >= huge) {
        void *m = NULL;
        if (posix_memalign(&m, huge, bytes) != 0) return NULL;
        madvise(m, bytes, MADV_HUGEPAGE); /* advice only: its failure changes nothing */
        return m;
    }
#endif
    return malloc(bytes);
}

/* ------------------------------------------------------------------ preparation */

static const char *check_params(const qcnn_qconv_params *p) {
    if (p->cin <= 0 || p->cout <= 0 || p->groups <= 0) return "cin, cout and groups must be > 0";
    if (p->cin % p->groups || p->cout % p->groups)
        return "cin and cout must be multiples of groups";
    if (p->kh <= 0 || p->kw <= 0 || p->stride_h <= 0 || p->stride_w <= 0)
        return "kernel size and strides must be > 0";
    if (p->pad_top < 0 || p->pad_left < 0 || p->pad_bottom < 0 || p->pad_right < 0)
        return "pads must be >= 0";
    if (p->subvec <= 0 || p->ncode < 1 || p->ncode > 256)
        return "subvec must be > 0 and ncode in 1..256";
    int cg = p->cin / p->groups;
    if (p->nsub != (cg + p->subvec - 1) / p->subvec)
        return "nsub must equal ceil((cin/groups)/subvec)";
    if (!p->codebooks || !p->indices) return "codebooks and indices are required";
    return NULL;
}

static int table_entries(qcnn_isa isa, qcnn_lut_mode mode, int K, int fc) {
    if (mode != QCNN_LUT_INT8 || isa == QCNN_ISA_GENERIC) return K;
    /* AVX-512 FC with small K: 4 (K <= 16) or 2 (K <= 32) consecutive subspaces share one 64-byte
     * vpermb table, their indices offset at prepare time; tables stay small to build. */
    if (isa == QCNN_ISA_AVX512VBMI && fc && K <= 32) return K <= 16 ? 16 : 32;
    if (isa == QCNN_ISA_AVX512VBMI) return K <= 64 ? 64 : K <= 128 ? 128 : 256;
    /* AVX2: 16-entry vpshufb chunks; above 128 entries two halves of 8 chunks. */
    return K <= 128 ? (K + 15) / 16 * 16 : 256;
}

/* fp32 -> bf16 rounded to nearest even, denormals flushed to zero: what vcvtneps2bf16 does to
 * the inputs, done here to the codewords. NaN stays NaN. */
static uint16_t bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    if ((u & 0x7f800000u) == 0) u &= 0x80000000u;
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* q->cb8, cb8_bias and cb8_scale (allocated) from q->cbt: each subspace's entries rounded to int8
 * at its largest |entry| / 127 (qlut_internal.h). */
static void fill_int8_codebooks(qcnn_qconv_prepared *q) {
    const int M = q->M, Cs = q->Cs, Kp = q->Kp, quads = (Cs + 3) / 4;
    for (size_t gm = 0; gm < (size_t)q->p.groups * M; gm++) {
        const int m = (int)(gm % M), nc = q->Cg - m * Cs < Cs ? q->Cg - m * Cs : Cs;
        float amax = 0.0f;
        for (int c = 0; c < nc; c++)
            for (int k = 0; k < Kp; k++) {
                const float a = fabsf(q->cbt[(gm * Cs + c) * Kp + k]);
                amax = a > amax ? a : amax;
            }
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        q->cb8_scale[gm] = amax / 127.0f;
        for (int k = 0; k < Kp; k++) {
            int32_t sum = 0;
            for (int c = 0; c < 4 * quads; c++) {
                const float d = c < nc ? q->cbt[(gm * Cs + c) * Kp + k] : 0.0f;
                const int8_t v = (int8_t)lrintf(d * inv); /* |d * inv| <= 127 */
                q->cb8[((gm * quads + c / 4) * Kp + k) * 4 + c % 4] = v;
                sum += v;
            }
            q->cb8_bias[gm * Kp + k] = -128 * sum;
        }
    }
}

static qcnn_qconv_prepared *prepare(const qcnn_qconv_params *p, qcnn_isa isa, qcnn_lut_mode mode,
                                    int fc, const char **err) {
    const char *e = check_params(p);
    if (!e && mode != QCNN_LUT_REF && mode != QCNN_LUT_FLOAT && mode != QCNN_LUT_INT8)
        e = "unknown LUT mode";
    if (!e) {
        /* Every index must address a codeword: checked once here, never in the hot loops. */
        size_t n = (size_t)p->kh * p->kw * p->nsub * p->cout;
        for (size_t i = 0; i < n; i++)
            if (p->indices[i] >= p->ncode) {
                e = "an index is >= ncode";
                break;
            }
    }
    if (e) {
        if (err) *err = e;
        return NULL;
    }
    qcnn_isa best = qcnn_isa_detect();
    if (isa > best) isa = best;
    if (mode != QCNN_LUT_INT8) isa = QCNN_ISA_GENERIC;

    qcnn_qconv_prepared *q = calloc(1, sizeof *q);
    if (!q) goto oom;
    q->table_budget = QCNN_TABLE_BUDGET_DEFAULT;
    q->row_step_limit = QCNN_ROW_STEP_LIMIT_DEFAULT;
    q->row_guess_limit = QCNN_ROW_GUESS_LIMIT_DEFAULT;
    q->row_step_share = QCNN_ROW_STEP_SHARE_DEFAULT;
    q->p = *p;
    q->fc = fc;
    q->mode = mode;
    q->isa = isa;
    q->Cg = p->cin / p->groups;
    q->Og = p->cout / p->groups;
    q->M = p->nsub;
    q->K = p->ncode;
    q->Cs = p->subvec;
    q->Kp = table_entries(isa, mode, q->K, fc);
    q->cblk = isa == QCNN_ISA_AVX512VBMI ? 64 : isa == QCNN_ISA_AVX2 ? 32 : q->Og;
    q->Ogp = (q->Og + q->cblk - 1) / q->cblk * q->cblk;

    const int G = p->groups, M = q->M, Cs = q->Cs, K = q->K, Kp = q->Kp;
    const size_t T = (size_t)p->kh * p->kw * M; /* look-ups per output channel and pixel */
    size_t cb_bytes = ALIGN64((size_t)G * M * Cs * Kp * sizeof(float));
    size_t idx_bytes = isa == QCNN_ISA_GENERIC ? 0 : (size_t)G * T * q->Ogp;
#if QLUT_X86
    if (fc && isa == QCNN_ISA_AVX512VBMI && K <= 32 && qcnn_cpu_has_avx512vnni()) {
        int bits = 1;
        while ((1 << bits) < K) bits++;
        q->fcq_bits = bits;
        /* + 64: the kernel loads whole 64-byte vectors of which it uses 8*bits bytes */
        idx_bytes = (size_t)qlut_table_subspaces(q) * q->Ogp * bits / 8 + 64;
    }
#endif
    const int pairs = (Cs + 1) / 2, quads = (Cs + 3) / 4;
    /* FC layers with small tables keep fp32: their build (qlut_avx512.c build_fc) is a few FMAs
     * per table, bound by the min/max folds, not by products. */
    const int bf16_build = isa == QCNN_ISA_AVX512VBMI && qcnn_cpu_has_avx512bf16() &&
                           !(fc && Kp <= 32 && M >= 16);
    const size_t cbh_bytes = bf16_build ? ALIGN64((size_t)G * M * pairs * Kp * 2 * sizeof(uint16_t))
                                 : 0;
    const int int8_build = isa == QCNN_ISA_AVX512VBMI && qcnn_cpu_has_avx512vnni() && !fc &&
                           (size_t)G * M * quads * 4 * 3 <= QLUT_I8_CHUNK_BYTES;
    const size_t cb8_bytes = int8_build ? ALIGN64((size_t)G * M * quads * Kp * 4) +
                                              ALIGN64((size_t)G * M * Kp * sizeof(int32_t)) +
                                              ALIGN64((size_t)G * M * sizeof(float))
                                        : 0;
    q->mem = alloc_layer_memory(cb_bytes + ALIGN64(idx_bytes) + cbh_bytes + cb8_bytes + 64);
    if (!q->mem) goto oom;
    q->cbt = align_ptr(q->mem);
    for (int g = 0; g < G; g++)
        for (int m = 0; m < M; m++)
            for (int c = 0; c < Cs; c++)
                for (int k = 0; k < Kp; k++)
                    q->cbt[(((size_t)g * M + m) * Cs + c) * Kp + k] =
                        p->codebooks[(((size_t)g * M + m) * K + (k < K ? k : 0)) * Cs + c];
    if (cbh_bytes) {
        q->cbh = (uint16_t *)((uint8_t *)q->cbt + cb_bytes + ALIGN64(idx_bytes));
        for (int g = 0; g < G; g++)
            for (int m = 0; m < M; m++) {
                const int nc = q->Cg - m * Cs < Cs ? q->Cg - m * Cs : Cs;
                for (int c = 0; c < 2 * pairs; c++)
                    for (int k = 0; k < Kp; k++) {
                        const size_t gm = (size_t)g * M + m;
                        const float d = c < nc ? q->cbt[(gm * Cs + c) * Kp + k] : 0.0f;
                        q->cbh[((gm * pairs + c / 2) * Kp + k) * 2 + c % 2] = bf16_round(d);
                    }
            }
        q->build = QCNN_TABLE_BUILD_BF16;
    }
    int codebooks_finite = 1; /* int8 codewords would turn NaN/inf into numbers: keep them float */
    for (size_t i = 0; cb8_bytes && i < (size_t)G * M * Cs * Kp && codebooks_finite; i++)
        codebooks_finite = isfinite(q->cbt[i]);
    if (cb8_bytes && codebooks_finite) {
        q->cb8 = (int8_t *)((uint8_t *)q->cbt + cb_bytes + ALIGN64(idx_bytes) + cbh_bytes);
        q->cb8_bias = (int32_t *)((uint8_t *)q->cb8 + ALIGN64((size_t)G * M * quads * Kp * 4));
        q->cb8_scale = (float *)((uint8_t *)q->cb8_bias + ALIGN64((size_t)G * M * Kp * sizeof(int32_t)));
        fill_int8_codebooks(q);
    }
    if (q->cb8) q->build = QCNN_TABLE_BUILD_INT8; /* the fastest, where it runs */
    {
        const char *e = getenv("QCNN_TABLE_BUILD");
        if (e && !strcmp(e, "fp32")) q->build = QCNN_TABLE_BUILD_FP32;
        else if (e && !strcmp(e, "int8") && q->cb8) q->build = QCNN_TABLE_BUILD_INT8;
        else if (e && !strcmp(e, "bf16") && q->cbh) q->build = QCNN_TABLE_BUILD_BF16;
    }
    if (isa == QCNN_ISA_GENERIC) {
        q->idx = p->indices; /* generic kernels read the file layout directly */
    } else {
#if QLUT_X86
        uint8_t *d = (uint8_t *)q->cbt + cb_bytes;
        const int blk = q->cblk;
        memset(d, 0, idx_bytes);
        if (fc && q->fcq_bits) {
            /* FC quads (AVX-512 VNNI, K <= 32): one 64-byte index vector = 16 output channels x 4
             * consecutive subspaces, so one look-up in the 4 subspaces' shared table (4*Kp <= 128
             * bytes) gives 4 bytes per channel that vpdpbusd sums straight into int32. The values
             * are stored at fcq_bits bits each (LSB first, 8*bits bytes per vector): index bytes
             * are what an FC layer streams from memory, and they shrink by 8/bits. */
            const int B = q->fcq_bits, nblk = q->Ogp / 64, Q = qlut_table_subspaces(q) / FCQ_SUB;
            size_t bit = 0;
            for (int ch = 0; ch * FCQ_NB < nblk; ch++) {
                const int nbc = nblk - ch * FCQ_NB < FCQ_NB ? nblk - ch * FCQ_NB : FCQ_NB;
                for (int qd = 0; qd < Q; qd++)
                    for (int i = 0; i < nbc; i++)
                        for (int j = 0; j < 4; j++)
                            for (int e = 0; e < 64; e++, bit += B) {
                                const int o = (ch * FCQ_NB + i) * 64 + j * 16 + e / FCQ_SUB;
                                const int m = qd * FCQ_SUB + e % FCQ_SUB;
                                const unsigned v = (o < q->Og && m < M) ? p->indices[(size_t)m * q->Og + o] : 0;
                                for (int t = 0; t < B; t++)
                                    d[(bit + t) >> 3] |= (uint8_t)(((v >> t) & 1u) << ((bit + t) & 7));
                            }
            }
        } else if (fc) {
            /* FC (1x1 conv, T = M): chunks of fcnb channel blocks, each chunk [M][blocks][blk]. */
            const int nb = q->fcnb = isa == QCNN_ISA_AVX512VBMI ? 8 : 4, nblk = q->Ogp / blk;
            /* Subspaces sharing one 64-byte table (Kp < 64, AVX-512 only): index m % share
             * looks in the share's (m % share)-th quarter/half. */
            const int share = isa == QCNN_ISA_AVX512VBMI && Kp < 64 ? 64 / Kp : 1;
            /* Where output o's index of subspace m goes: base[o] + m * step[o]. Computed once per
             * channel so the loop over all M x Og indices (millions for fc6) is a plain scatter. */
            size_t *base = malloc((size_t)q->Og * sizeof *base), *step = malloc((size_t)q->Og * sizeof *step);
            if (!base || !step) {
                free(base);
                free(step);
                goto oom;
            }
            for (int o = 0; o < q->Og; o++) {
                const int bk = o / blk, ch = bk / nb;
                const int nbc = nblk - ch * nb < nb ? nblk - ch * nb : nb;
                base[o] = (size_t)ch * nb * blk * M + (size_t)(bk - ch * nb) * blk + qlut_block_pos(o % blk, blk);
                step[o] = (size_t)nbc * blk;
            }
            for (int m = 0; m < M; m++) {
                const uint8_t *src = p->indices + (size_t)m * q->Og;
                const uint8_t add = (uint8_t)((m % share) * Kp);
                for (int o = 0; o < q->Og; o++)
                    d[base[o] + (size_t)m * step[o]] = (uint8_t)(src[o] + add);
            }
            free(base);
            free(step);
        } else {
            for (size_t gt = 0; gt < (size_t)G * T; gt++)
                for (int o = 0; o < q->Og; o++)
                    d[gt * q->Ogp + o / blk * blk + qlut_block_pos(o % blk, blk)] =
                        p->indices[gt * q->Og + o];
        }
        q->idx = d;
#endif
    }
    return q;
oom:
    qcnn_qconv_free(q);
    if (err) *err = "out of memory";
    return NULL;
}

qcnn_qconv_prepared *qcnn_qconv_prepare(const qcnn_qconv_params *p, qcnn_isa isa,
                                        qcnn_lut_mode mode, const char **err) {
    return prepare(p, isa, mode, 0, err);
}

void qcnn_qconv_free(qcnn_qconv_prepared *q) {
    if (!q) return;
    free(q->mem);
    free(q);
}

qcnn_isa qcnn_qconv_isa(const qcnn_qconv_prepared *q) { return q->isa; }

int qcnn_qconv_set_table_build(qcnn_qconv_prepared *q, int kind) {
    if (kind == QCNN_TABLE_BUILD_FP32 || (kind == QCNN_TABLE_BUILD_BF16 && q->cbh) ||
        (kind == QCNN_TABLE_BUILD_INT8 && q->cb8))
        q->build = kind;
    return q->build;
}
int qcnn_qconv_table_build(const qcnn_qconv_prepared *q) { return q->build; }
int qcnn_qconv_set_bf16_build(qcnn_qconv_prepared *q, int on) {
    if (on) return qcnn_qconv_set_table_build(q, QCNN_TABLE_BUILD_BF16) == QCNN_TABLE_BUILD_BF16;
    qcnn_qconv_set_table_build(q, QCNN_TABLE_BUILD_FP32);
    return 0;
}
int qcnn_qconv_bf16_build(const qcnn_qconv_prepared *q) { return q->build == QCNN_TABLE_BUILD_BF16; }

size_t qlut_work_bytes(const qcnn_qconv_prepared *q) {
    /* The generic kernels accumulate one output pixel's channels of a group here. */
    return ALIGN64((size_t)q->Ogp * 4);
}

/* Float tables are an intermediate: built, quantized to bytes, dropped. Whole-image tables are
 * MBs (AlexNet conv2 4.5 MB, conv3..5 2.8-4.2 MB, SqueezeNet's last conv at 4/128 11 MB); after
 * another program ran, writing them can cost a trip to DRAM per line.
 *  - A pointwise layer (1x1, stride 1, no padding; not FC) reads exactly one input pixel per
 *    output pixel, so its pixels need not share one int8 step: it runs in chunks of
 *    qcnn_qconv_pointwise_chunk() pixels, each built, quantized and looked up with its own
 *    (smaller or equal) step. At least CHUNK_MIN_PIXELS pixels: the AVX-512 kernel shares each
 *    index load between 2 pixels. SqueezeNet's classifier conv at 4/128 (64 KB of float tables
 *    per pixel) runs in chunks of 2 pixels, as fast as in chunks of 16 (1 MB); on inputs whose
 *    pixels differ in scale its table error fell from 4.2% to 1.75%.
 *  - Other int8 layers (by default all: q->row_step_limit is 0) give each input row its own step:
 *    a row is built, quantized at once into a ring of kh rows, and every output row is summed one
 *    kernel row at a time (integer sums of one step each, combined in float: QLUT_EPI_*). One
 *    build, tables that stay in cache (VGG's 224x224 layer has 205 MB of float tables per image),
 *    and steps no larger than one per image. It replaced one step per image, whose tables were
 *    either built in one pass and streamed through memory or built twice row by row (once for the
 *    step): on Zen 4 VGG-16 conv1_2 went 41 -> 26 ms, AlexNet kept its time with a lower error.
 *    The limit is the same on every CPU, so the values are too; layers at or under it use one step
 *    for the whole image, built in one pass. */
#define CHUNK_MIN_PIXELS 2

static size_t pixel_table_bytes(const qcnn_qconv_prepared *q) {
    return (size_t)q->p.groups * q->M * q->Kp * sizeof(float);
}

int qcnn_qconv_pointwise_chunk(const qcnn_qconv_prepared *q) {
    const qcnn_qconv_params *p = &q->p;
    if (q->mode == QCNN_LUT_REF || q->fc || p->kh != 1 || p->kw != 1 || p->stride_h != 1 ||
        p->stride_w != 1 || p->pad_top || p->pad_left || p->pad_bottom || p->pad_right)
        return 0;
    const size_t n = q->table_budget / pixel_table_bytes(q);
    return n < CHUNK_MIN_PIXELS ? CHUNK_MIN_PIXELS : n > 65536 ? 65536 : (int)n;
}

/* 1: one int8 step per input row, tables streamed through a ring of kh rows (see above). */
static int row_step_tables(const qcnn_qconv_prepared *q, int h, int w) {
    return q->mode == QCNN_LUT_INT8 && !q->fc && h > 1 && !qcnn_qconv_pointwise_chunk(q) &&
           (size_t)h * w * pixel_table_bytes(q) > q->row_step_limit;
}


void qcnn_qconv_set_table_budget(qcnn_qconv_prepared *q, size_t bytes) { q->table_budget = bytes; }
size_t qcnn_qconv_table_budget(const qcnn_qconv_prepared *q) { return q->table_budget; }
void qcnn_qconv_set_row_step_limit(qcnn_qconv_prepared *q, size_t bytes) { q->row_step_limit = bytes; }
size_t qcnn_qconv_row_step_limit(const qcnn_qconv_prepared *q) { return q->row_step_limit; }
void qcnn_qconv_set_row_guess_limit(qcnn_qconv_prepared *q, size_t bytes) { q->row_guess_limit = bytes; }
size_t qcnn_qconv_row_guess_limit(const qcnn_qconv_prepared *q) { return q->row_guess_limit; }
void qcnn_qconv_set_row_step_share(qcnn_qconv_prepared *q, float share) { q->row_step_share = share; }
float qcnn_qconv_row_step_share(const qcnn_qconv_prepared *q) { return q->row_step_share; }

/* Scratch layout of one run (each part 64-byte aligned). */
typedef struct {
    size_t Lf, tmin, lq, tsum, off, row_step, work, total;
} scratch_layout;

static scratch_layout layout(const qcnn_qconv_prepared *q, int h, int w) {
    const qcnn_qconv_params *p = &q->p;
    scratch_layout s = {0};
    int oh, ow;
    qcnn_conv_out_size(h, w, p->kh, p->kw, p->stride_h, p->stride_w, p->pad_top, p->pad_left,
                       p->pad_bottom, p->pad_right, &oh, &ow);
    size_t PH = (size_t)h + p->pad_top + p->pad_bottom, PW = (size_t)w + p->pad_left + p->pad_right;
    size_t tabs = (size_t)h * w * p->groups * q->M;
    size_t o = 0;
    const int row_steps = row_step_tables(q, h, w);
    const size_t row_tabs = (size_t)w * p->groups * q->M;
    const size_t lf_tabs = row_steps ? row_tabs : tabs; /* one row */
    const size_t lq_rows = row_steps ? (size_t)p->kh : PH; /* a ring of kh rows */
    s.Lf = o;   o += ALIGN64(lf_tabs * q->Kp * sizeof(float));
    s.tmin = o; o += ALIGN64((row_steps ? row_tabs : tabs) * sizeof(float));
    if (q->mode == QCNN_LUT_INT8) {
        s.lq = o;   o += ALIGN64(lq_rows * PW * p->groups * qlut_table_subspaces(q) * q->Kp);
        s.tsum = o; o += ALIGN64(PH * PW * p->groups * sizeof(float));
        s.off = o;  o += ALIGN64((size_t)oh * ow * p->groups * sizeof(float));
        s.row_step = o; o += ALIGN64(PH * sizeof(float));
    }
    s.work = o; o += qlut_work_bytes(q);
    s.total = o + 64; /* slack to align the caller's pointer */
    return s;
}

size_t qcnn_qconv_scratch_bytes(const qcnn_qconv_prepared *q, int h, int w) {
    if (q->mode == QCNN_LUT_REF)
        return (q->fc ? qcnn_qfc_ref_scratch_floats(&(qcnn_qfc_params){.nsub = q->M, .ncode = q->K})
                      : qcnn_qconv_ref_scratch_floats(&q->p, h, w)) * sizeof(float) + 64;
    const int chunk = qcnn_qconv_pointwise_chunk(q);
    if (chunk && (size_t)h * w > (size_t)chunk) return layout(q, 1, chunk).total;
    return layout(q, h, w).total;
}

/* ------------------------------------------------------------------ portable kernels */

float qlut_build_generic(const qcnn_qconv_prepared *q, const float *x, int h, int w, float *Lf,
                         float *tmin) {
    const int G = q->p.groups, M = q->M, Cs = q->Cs, Kp = q->Kp, Cg = q->Cg;
    float maxr = 0.0f;
    for (size_t pix = 0; pix < (size_t)h * w; pix++)
        for (int g = 0; g < G; g++)
            for (int m = 0; m < M; m++) {
                const float *xs = x + pix * q->p.cin + g * Cg + m * Cs;
                const float *cb = q->cbt + ((size_t)g * M + m) * Cs * Kp;
                const int nc = Cg - m * Cs < Cs ? Cg - m * Cs : Cs; /* last subspace may be short */
                const size_t t = (pix * G + g) * M + m;
                float *L = Lf + t * Kp;
                /* Same summation order as the reference (0 + x0*d0 + x1*d1 ...). */
                for (int k = 0; k < Kp; k++) L[k] = 0.0f;
                for (int c = 0; c < nc; c++) {
                    const float xc = xs[c], *d = cb + (size_t)c * Kp;
                    for (int k = 0; k < Kp; k++) L[k] += xc * d[k];
                }
                float mn = L[0], mx = L[0];
                for (int k = 1; k < Kp; k++) {
                    mn = L[k] < mn ? L[k] : mn;
                    mx = L[k] > mx ? L[k] : mx;
                }
                tmin[t] = mn;
                if (mx - mn > maxr) maxr = mx - mn;
            }
    return maxr;
}

/* A table entry's code: d * inv (d = L - min >= 0) rounded to the nearest integer, ties to even,
 * with the product unrounded: the FMA onto 1.5 * 2^23 rounds once, in the float's low mantissa
 * bits. The SIMD kernels do exactly this (codes16 in qlut_avx512.c), so every ISA gets the same
 * bytes. Clamped to 0..255 (NaN -> 0), which callers' steps never need. */
static inline uint8_t quant1(float d, float inv) {
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    const float f = fmaf(d, inv, magic);
    if (!(f >= magic)) return 0; /* also catches NaN */
    if (f >= magic + 255.0f) return 255;
    return (uint8_t)(f - magic); /* exact: an integer 0..254 */
}

void qlut_quant_generic(const qcnn_qconv_prepared *q, const float *Lf, const float *tmin,
                        size_t ntab, float inv, uint8_t *lq) {
    const int Kp = q->Kp;
    for (size_t t = 0; t < ntab; t++)
        for (int k = 0; k < Kp; k++)
            lq[t * Kp + k] = quant1(Lf[t * Kp + k] - tmin[t], inv);
}

/* The epilogue formulas every int8 kernel uses (QLUT_EPI_*, qlut_internal.h). */
static void epilogue_generic(const qlut_run *r, const uint32_t *acc, int oy, int ox, int g) {
    const qcnn_qconv_prepared *q = r->q;
    const int Og = q->Og;
    const float off = r->off[((size_t)oy * r->ow + ox) * q->p.groups + g];
    float *yp = qlut_out(r, oy, ox) + (size_t)g * Og;
    const float *b = q->p.bias ? q->p.bias + (size_t)g * Og : NULL;
    const int add = r->epi == QLUT_EPI_ADD || r->epi == QLUT_EPI_LAST;
    const int relu = q->p.relu && (r->epi == QLUT_EPI_FULL || r->epi == QLUT_EPI_LAST);
    for (int o = 0; o < Og; o++) {
        const float t = (float)acc[o] * r->step;
        float v = add ? yp[o] + t : t + (b ? off + b[o] : off);
        yp[o] = relu && v < 0.0f ? 0.0f : v;
    }
}

void qlut_conv_generic(const qlut_run *r) {
    const qcnn_qconv_prepared *q = r->q;
    const qcnn_qconv_params *p = &q->p;
    const int G = p->groups, M = q->M, Kp = q->Kp, Og = q->Og, Ogp = q->Ogp;
    uint32_t *acc = r->work;
    for (int oy = r->oy0; oy < r->oy1; oy++)
        for (int ox = 0; ox < r->ow; ox++)
            for (int g = 0; g < G; g++) {
                memset(acc, 0, (size_t)Og * sizeof *acc);
                for (int ky = r->ky0; ky < r->ky1; ky++)
                    for (int kx = 0; kx < p->kw; kx++) {
                        /* Padding pixels have all-zero tables: no bounds checks needed. */
                        const uint8_t *tabs = qlut_row(r, oy * p->stride_h + ky) +
                                              ((size_t)(ox * p->stride_w + kx) * G + g) * M * Kp;
                        const uint8_t *ip = q->idx + (((size_t)g * p->kh + ky) * p->kw + kx) * M * Ogp;
                        for (int m = 0; m < M; m++) {
                            const uint8_t *t = tabs + (size_t)m * Kp, *ii = ip + (size_t)m * Ogp;
                            for (int o = 0; o < Og; o++) acc[o] += t[ii[o]];
                        }
                    }
                epilogue_generic(r, acc, oy, ox, g);
            }
}

/* Float tables, generic C: same sums as the reference but with the codebooks pre-transposed
 * and the tables built in one vectorizable pass. */
static void conv_float_generic(const qcnn_qconv_prepared *q, const float *Lf, int h, int w,
                               int oh, int ow, float *y, float *acc) {
    const qcnn_qconv_params *p = &q->p;
    const int G = p->groups, M = q->M, Kp = q->Kp, Og = q->Og;
    for (int oy = 0; oy < oh; oy++)
        for (int ox = 0; ox < ow; ox++)
            for (int g = 0; g < G; g++) {
                for (int o = 0; o < Og; o++) acc[o] = p->bias ? p->bias[g * Og + o] : 0.0f;
                for (int ky = 0; ky < p->kh; ky++) {
                    int iy = oy * p->stride_h + ky - p->pad_top;
                    if (iy < 0 || iy >= h) continue;
                    for (int kx = 0; kx < p->kw; kx++) {
                        int ix = ox * p->stride_w + kx - p->pad_left;
                        if (ix < 0 || ix >= w) continue;
                        const float *tabs = Lf + (((size_t)iy * w + ix) * G + g) * M * Kp;
                        const uint8_t *ip = q->idx + (((size_t)g * p->kh + ky) * p->kw + kx) * M * Og;
                        for (int m = 0; m < M; m++) {
                            const float *t = tabs + (size_t)m * Kp;
                            const uint8_t *ii = ip + (size_t)m * Og;
                            for (int o = 0; o < Og; o++) acc[o] += t[ii[o]];
                        }
                    }
                }
                float *yp = y + ((size_t)oy * ow + ox) * p->cout + (size_t)g * Og;
                for (int o = 0; o < Og; o++) yp[o] = p->relu && acc[o] < 0.0f ? 0.0f : acc[o];
            }
}

/* ------------------------------------------------------------------ per-image driver */

/* tsum = 0 + tmin[m=0] + tmin[1] + ... per (pixel, group) of one input row, written at the
 * row's padded position; four sums at a time so their adds overlap instead of waiting on each
 * other (add latency). */
static void row_minima_sums(const qcnn_qconv_prepared *q, int w, int PW, const float *tm, float *trow) {
    const int G = q->p.groups, M = q->M;
    memset(trow, 0, (size_t)PW * G * sizeof(float));
    float *tr = trow + (size_t)q->p.pad_left * G;
    const size_t n = (size_t)w * G;
    size_t j = 0;
    for (; j + 4 <= n; j += 4) {
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
        for (int m = 0; m < M; m++) {
            a0 += tm[j * M + m];
            a1 += tm[(j + 1) * M + m];
            a2 += tm[(j + 2) * M + m];
            a3 += tm[(j + 3) * M + m];
        }
        tr[j] = a0;
        tr[j + 1] = a1;
        tr[j + 2] = a2;
        tr[j + 3] = a3;
    }
    for (; j < n; j++) {
        float a = 0.0f;
        for (int m = 0; m < M; m++) a += tm[j * M + m];
        tr[j] = a;
    }
}

/* off = 0 + tsum[ky=0][kx=0] + tsum[0][1] + ... per (pixel, group) of output row oy, in that
 * order; kernel taps outermost for the same reason (a 5x5 kernel is a chain of 25 adds). */
static void output_row_offsets(const qcnn_qconv_prepared *q, const float *tsum, int PW, int ow, int oy,
                               float *orow) {
    const qcnn_qconv_params *p = &q->p;
    const int G = p->groups;
    memset(orow, 0, (size_t)ow * G * sizeof(float));
    for (int ky = 0; ky < p->kh; ky++)
        for (int kx = 0; kx < p->kw; kx++) {
            const float *trow = tsum + ((size_t)(oy * p->stride_h + ky) * PW + kx) * G;
            if (p->stride_w == 1)
                for (size_t j = 0; j < (size_t)ow * G; j++) orow[j] += trow[j];
            else
                for (int ox = 0; ox < ow; ox++)
                    for (int g = 0; g < G; g++)
                        orow[(size_t)ox * G + g] += trow[(size_t)ox * p->stride_w * G + g];
        }
}

/* The ISA's three hooks. */
typedef struct {
    qlut_build_fn build;
    qlut_quant_fn quant;
    qlut_conv_fn conv;
    qlut_build_quant_fn build_quant; /* may be NULL */
} qlut_fns;

static qlut_fns isa_fns(const qcnn_qconv_prepared *q) {
    qlut_fns f = {qlut_build_generic, qlut_quant_generic, qlut_conv_generic, NULL};
#if QLUT_X86
    if (q->isa == QCNN_ISA_AVX2) f = (qlut_fns){qlut_build_avx2, qlut_quant_avx2, qlut_conv_avx2, NULL};
    else if (q->isa == QCNN_ISA_AVX512VBMI)
        f = (qlut_fns){qlut_build_avx512, qlut_quant_avx512, qlut_conv_avx512, qlut_build_quant_avx512};
#else
    (void)q;
#endif
    return f;
}

/* The step that maps a largest table range to 255; constant tables (range 0) quantize to 0
 * whatever the step. */
static float step_for_range(float maxr) { return maxr > 1e-30f ? maxr / 255.0f : 1.0f; }

/* The rest of a padded row whose image pixels' byte tables are written: zero tables on the
 * padding pixels, and the row's minima sums. */
static void finish_padded_row(const qcnn_qconv_prepared *q, int w, int PW, const float *tmin, uint8_t *row,
                              float *trow) {
    const qcnn_qconv_params *p = &q->p;
    const size_t pix_bytes = (size_t)p->groups * q->M * q->Kp;
    memset(row, 0, (size_t)p->pad_left * pix_bytes);
    memset(row + (size_t)(p->pad_left + w) * pix_bytes, 0, (size_t)p->pad_right * pix_bytes);
    row_minima_sums(q, w, PW, tmin, trow);
}

/* One padded input row of byte tables and its minima sums. Lrow/tmin: the row's float tables and
 * minima, or NULL for a row of padding. Padding pixels get zero tables and zero offsets, so the
 * kernels need no bounds checks. */
static void write_padded_row(const qcnn_qconv_prepared *q, qlut_quant_fn quant, int w, int PW,
                             const float *Lrow, const float *tmin, float inv, uint8_t *row, float *trow) {
    const qcnn_qconv_params *p = &q->p;
    const int G = p->groups, M = q->M;
    const size_t pix_bytes = (size_t)G * M * q->Kp;
    if (!Lrow) {
        memset(row, 0, (size_t)PW * pix_bytes);
        memset(trow, 0, (size_t)PW * G * sizeof(float));
        return;
    }
    quant(q, Lrow, tmin, (size_t)w * G * M, inv, row + (size_t)p->pad_left * pix_bytes);
    finish_padded_row(q, w, PW, tmin, row, trow);
}

/* A row's step is guessed from the row above: its largest table range times STEP_MARGIN. With a
 * guess the row is built and quantized in segments of about SEGMENT_BYTES of float tables, each
 * while it is still in L1/L2, instead of writing the whole row's float tables (VGG-16: 0.9 MB a
 * row, more than L2) and reading them back. A row whose tables do not fit the guess (a range >
 * the guess) is built once more at GUESS_RETRY times the guess. A row that does not fit that
 * either, or whose largest range is under half its guess, goes back to the exact path: built
 * whole, step = its own largest range / 255. So every table is quantized without clipping, with
 * a step at most twice the row's own. The first image row has no guess.
 * The retry: on VGG-16 (real photos) 10-40% of a layer's rows outgrow the guess, mostly by
 * 0-12%, and the exact path costs about twice a guessed build (its float tables leave L2). On
 * Zen 4 the retry took VGG-16's nine table convs 30.4 -> 29.5 ms (medians of alternating runs,
 * one photo), their error against float tables +1-4% on the layers whose rows it retried. */
#define STEP_MARGIN 1.125f
#define GUESS_RETRY 1.25f
#define SEGMENT_BYTES ((size_t)32 << 10)

/* Builds and quantizes input row xr into bytes dst (w pixels) at the guessed range `guess`;
 * returns the row's largest range, or ROW_OUTGREW_GUESS if a table's range exceeded the guess
 * (also for NaN; dst and tmin are then partly written, the caller redoes the row), or
 * ROW_UNDER_GUESS if the largest range is under half the guess (the row deserves a finer step). */
#define ROW_OUTGREW_GUESS -1.0f
#define ROW_UNDER_GUESS -2.0f
static float build_row_guessed(const qcnn_qconv_prepared *q, const float *xr, int w, float guess,
                               float *Lf, float *tmin, uint8_t *dst, qlut_fns f) {
    const size_t tabs_px = (size_t)q->p.groups * q->M;
    const size_t px_float_bytes = tabs_px * q->Kp * sizeof(float);
    int seg = (int)(SEGMENT_BYTES / px_float_bytes);
    seg = seg < 3 ? 3 : seg; /* the AVX-512 build shares codebook loads between 3 pixels */
    const float inv = 1.0f / step_for_range(guess);
    float maxr = 0.0f;
    for (int x0 = 0; x0 < w; x0 += seg) {
        const int n = w - x0 < seg ? w - x0 : seg;
        const float *xs = xr + (size_t)x0 * q->p.cin;
        uint8_t *d = dst + (size_t)x0 * tabs_px * q->Kp;
        /* fused where the ISA has it: the float tables stay in registers */
        const float r = f.build_quant ? f.build_quant(q, xs, 1, n, inv, tmin + x0 * tabs_px, d)
                                      : f.build(q, xs, 1, n, Lf, tmin + x0 * tabs_px);
        if (!(r <= guess)) return ROW_OUTGREW_GUESS; /* also for NaN */
        maxr = r > maxr ? r : maxr;
        if (!f.build_quant) f.quant(q, Lf, tmin + x0 * tabs_px, (size_t)n * tabs_px, inv, d);
    }
    return maxr >= 0.5f * guess ? maxr : ROW_UNDER_GUESS;
}

/* One step per input row (row_step_tables): rows are built, quantized and looked up as the
 * output rows need them. A row may keep the step of the row built before it (row_step_share,
 * qcnn_kernels.h), and the kernel rows of an output row that share a step are summed in one
 * call. r is set up by run_tables. Returns the largest step. */
static float run_row_steps(const qcnn_qconv_prepared *q, const float *x, int h, int w, qlut_run *r,
                           float *Lf, float *tmin, uint8_t *ring, float *tsum, float *off,
                           float *row_step, qlut_fns f, const qcnn_qconv_row_sink *sink) {
    const qcnn_qconv_params *p = &q->p;
    const int G = p->groups, M = q->M, kh = p->kh;
    const size_t row_bytes = (size_t)r->PW * G * M * q->Kp;
    r->lq = ring;
    r->ring = kh;
    float maxstep = 0.0f, guess = 0.0f, prev_step = 0.0f;
    int oy = 0;
    for (int py = 0; oy < r->oh; py++) {
        /* Row py overwrites py - kh: every output row reading that one is done (see below). */
        const int iy = py - p->pad_top;
        uint8_t *row = ring + (size_t)(py % kh) * row_bytes;
        float *trow = tsum + (size_t)py * r->PW * G;
        if (py % p->stride_h >= kh) {
            /* a row between windows (stride > kernel height): no output row reads it */
        } else if (iy < 0 || iy >= h) {
            write_padded_row(q, f.quant, w, r->PW, NULL, NULL, 0.0f, row, trow);
            row_step[py] = 0.0f;
        } else {
            const float *xr = x + (size_t)iy * w * p->cin;
            const size_t pix_bytes = (size_t)G * M * q->Kp;
            const int guessing = guess > 1e-30f && guess < 1e38f &&
                                 (size_t)w * pix_bytes * sizeof(float) >= q->row_guess_limit;
            uint8_t *dst = row + (size_t)p->pad_left * pix_bytes;
            float range = guessing ? build_row_guessed(q, xr, w, guess, Lf, tmin, dst, f) : -1.0f;
            if (guessing && range == ROW_OUTGREW_GUESS) {
                guess *= GUESS_RETRY;
                range = build_row_guessed(q, xr, w, guess, Lf, tmin, dst, f);
            }
            float step;
            if (range >= 0.0f) {
                step = step_for_range(guess);
                finish_padded_row(q, w, r->PW, tmin, row, trow);
                /* while rows fit the guess well, keep it (their steps are then equal) */
                if (!(q->row_step_share > 0.0f && range >= q->row_step_share * guess))
                    guess = range * STEP_MARGIN;
            } else { /* no guess, or the row did not fit it */
                range = f.build(q, xr, 1, w, Lf, tmin);
                step = step_for_range(range);
                if (q->row_step_share > 0.0f && prev_step > 0.0f && range <= 255.0f * prev_step &&
                    range >= q->row_step_share * 255.0f * prev_step)
                    step = prev_step;
                write_padded_row(q, f.quant, w, r->PW, Lf, tmin, 1.0f / step, row, trow);
                guess = range * STEP_MARGIN;
            }
            prev_step = step;
            row_step[py] = step;
            maxstep = step > maxstep ? step : maxstep;
        }
        /* Output rows whose last input row is py: their kernel rows one at a time, each with its
         * own step. Rows of padding add nothing and are skipped (unless no row is left: then
         * one zero pass still writes off + bias). */
        for (; oy < r->oh && oy * p->stride_h + kh - 1 == py; oy++) {
            output_row_offsets(q, tsum, r->PW, r->ow, oy, off + (size_t)oy * r->ow * G);
            int first = -1, last = -1; /* the kernel rows on image rows */
            for (int ky = 0; ky < kh; ky++) {
                const int y_in = oy * p->stride_h + ky - p->pad_top;
                if (y_in >= 0 && y_in < h) {
                    if (first < 0) first = ky;
                    last = ky;
                }
            }
            if (first < 0) first = last = 0;
            r->oy0 = oy;
            r->oy1 = oy + 1;
            if (sink) {
                r->y = sink->row(sink->ctx, oy);
                r->y_row0 = oy;
            }
            /* kernel rows of one step are summed in one call */
            for (int ky = first; ky <= last;) {
                const float s = row_step[oy * p->stride_h + ky];
                int ky1 = ky + 1;
                while (ky1 <= last && row_step[oy * p->stride_h + ky1] == s) ky1++;
                r->ky0 = ky;
                r->ky1 = ky1;
                r->step = s;
                r->epi = ky == first && ky1 > last ? QLUT_EPI_FULL
                         : ky == first             ? QLUT_EPI_FIRST
                         : ky1 > last              ? QLUT_EPI_LAST
                                                   : QLUT_EPI_ADD;
                f.conv(r);
                ky = ky1;
            }
            if (sink) sink->done(sink->ctx, oy);
        }
    }
    return maxstep;
}

/* Build the tables of an h x w input, quantize them (int8 mode) with one step (or one per input
 * row) and look them up into y. s: 64-byte aligned scratch laid out by layout(q, h, w). Returns
 * the (largest) step (0: float). */
static float run_tables(const qcnn_qconv_prepared *q, const float *x, int h, int w, float *y,
                        uint8_t *s, const qcnn_qconv_row_sink *sink) {
    const qcnn_qconv_params *p = &q->p;
    qlut_run r;
    memset(&r, 0, sizeof r);
    r.q = q;
    qcnn_conv_out_size(h, w, p->kh, p->kw, p->stride_h, p->stride_w, p->pad_top, p->pad_left,
                       p->pad_bottom, p->pad_right, &r.oh, &r.ow);
    if (r.oh <= 0 || r.ow <= 0) return 0.0f;
    r.PH = h + p->pad_top + p->pad_bottom;
    r.PW = w + p->pad_left + p->pad_right;
    r.oy0 = 0;
    r.oy1 = r.oh;
    r.ky0 = 0;
    r.ky1 = p->kh;
    r.epi = QLUT_EPI_FULL;
    r.y = y;
    scratch_layout sl = layout(q, h, w);
    float *Lf = (float *)(s + sl.Lf), *tmin = (float *)(s + sl.tmin);
    float *tsum = (float *)(s + sl.tsum), *off = (float *)(s + sl.off);
    r.work = s + sl.work;
    r.off = off;
    const qlut_fns f = isa_fns(q);
    if (row_step_tables(q, h, w))
        return run_row_steps(q, x, h, w, &r, Lf, tmin, s + sl.lq, tsum, off, (float *)(s + sl.row_step), f,
                             sink);

    const float maxr = f.build(q, x, h, w, Lf, tmin);
    if (q->mode == QCNN_LUT_FLOAT) {
        conv_float_generic(q, Lf, h, w, r.oh, r.ow, y, (float *)r.work);
        return 0.0f;
    }

    /* One step for the whole image (or pointwise chunk) so byte sums over pixels and subspaces
     * stay exact integers. */
    const float step = step_for_range(maxr);
    r.step = step;
    const float inv = 1.0f / step;

    const int G = p->groups, M = q->M;
    const size_t pix_bytes = (size_t)G * M * q->Kp;
    uint8_t *lq = s + sl.lq;
    r.lq = lq;
    for (int py = 0; py < r.PH; py++) {
        const int iy = py - p->pad_top;
        const size_t t0 = (size_t)iy * w * G * M;
        const int image_row = iy >= 0 && iy < h;
        write_padded_row(q, f.quant, w, r.PW, image_row ? Lf + t0 * q->Kp : NULL, image_row ? tmin + t0 : NULL,
                         inv, lq + (size_t)py * r.PW * pix_bytes, tsum + (size_t)py * r.PW * G);
    }
    if (q->fcq_bits) /* the padding subspaces of the last quad look up zeros */
        memset(lq + (size_t)M * q->Kp, 0, (size_t)(qlut_table_subspaces(q) - M) * q->Kp);
    for (int oy = 0; oy < r.oh; oy++) output_row_offsets(q, tsum, r.PW, r.ow, oy, off + (size_t)oy * r.ow * G);
    f.conv(&r);
    return step;
}

void qcnn_qconv_run(const qcnn_qconv_prepared *q, const float *x, int h, int w, float *y,
                    void *scratch, float *lut_step) {
    const qcnn_qconv_params *p = &q->p;
    uint8_t *s = align_ptr(scratch);
    if (lut_step) *lut_step = 0.0f;
    if (q->mode == QCNN_LUT_REF) {
        if (q->fc) {
            qcnn_qfc_params f = {p->cin, p->cout, q->Cs, q->M, q->K, p->codebooks, p->indices,
                                 p->bias, p->relu};
            qcnn_qfc_ref(&f, x, y, (float *)s);
        } else {
            qcnn_qconv_ref(p, x, h, w, y, (float *)s);
        }
        return;
    }
    const int chunk = qcnn_qconv_pointwise_chunk(q);
    if (!chunk) {
        const float step = run_tables(q, x, h, w, y, s, NULL);
        if (lut_step) *lut_step = step;
        return;
    }
    /* Pointwise: the input pixels are the output pixels, in the same order. Each chunk is run as
     * a 1 x n image with its own step; the largest step is reported (it bounds every look-up). */
    const size_t npix = (size_t)h * w;
    float maxstep = 0.0f;
    for (size_t p0 = 0; p0 < npix; p0 += (size_t)chunk) {
        const int n = npix - p0 < (size_t)chunk ? (int)(npix - p0) : chunk;
        const float step = run_tables(q, x + p0 * p->cin, 1, n, y + p0 * p->cout, s, NULL);
        maxstep = step > maxstep ? step : maxstep;
    }
    if (lut_step) *lut_step = maxstep;
}

int qcnn_qconv_runs_by_rows(const qcnn_qconv_prepared *q, int h, int w) {
    return row_step_tables(q, h, w);
}

int qcnn_qconv_run_rows(const qcnn_qconv_prepared *q, const float *x, int h, int w,
                        const qcnn_qconv_row_sink *sink, void *scratch, float *lut_step) {
    if (!row_step_tables(q, h, w)) return 0;
    const float step = run_tables(q, x, h, w, NULL, align_ptr(scratch), sink);
    if (lut_step) *lut_step = step;
    return 1;
}

/* ------------------------------------------------------------------ fully connected */

qcnn_qfc_prepared *qcnn_qfc_prepare(const qcnn_qfc_params *f, qcnn_isa isa, qcnn_lut_mode mode,
                                    const char **err) {
    qcnn_qconv_params p = {f->in, f->out, 1, 1, 1, 1, 1, 0, 0, 0, 0, f->subvec, f->nsub,
                           f->ncode, f->codebooks, f->indices, f->bias, f->relu};
    return prepare(&p, isa, mode, 1, err);
}

size_t qcnn_qfc_scratch_bytes(const qcnn_qfc_prepared *q) { return qcnn_qconv_scratch_bytes(q, 1, 1); }

void qcnn_qfc_run(const qcnn_qfc_prepared *q, const float *x, float *y, void *scratch,
                  float *lut_step) {
    qcnn_qconv_run(q, x, 1, 1, y, scratch, lut_step);
}

void qcnn_qfc_free(qcnn_qfc_prepared *q) { qcnn_qconv_free(q); }
