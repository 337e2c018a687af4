/* Internal to the LUT kernels (qlut_*.c): the prepared-layer object and the per-ISA hooks.
 * Not part of the ABI; the runtime only sees qcnn_kernels.h. */
#ifndef QLUT_INTERNAL_H
#define QLUT_INTERNAL_H

#include "qcnn_kernels.h"

struct qcnn_qconv_prepared {
    qcnn_qconv_params p; /* copy; codebooks/bias still point at the caller's arrays */
    qcnn_lut_mode mode;
    qcnn_isa isa;     /* ISA actually used */
    int fc;           /* prepared through qcnn_qfc_prepare (1x1 conv on a 1x1 image) */
    int Cg, Og, M, K, Cs;
    int Kp;           /* entries per table in the LUTs (K rounded up to what the ISA looks up) */
    int cblk;         /* output channels per SIMD block (64 AVX-512, 32 AVX2, Og generic) */
    int Ogp;          /* Og rounded up to cblk */
    float *cbt;       /* codebooks transposed [G][M][Cs][Kp]; entries k >= K copy entry 0 so
                       * they never widen a table's min/max */
    uint16_t *cbh;    /* AVX512_BF16 CPUs (int8 mode): the codebooks as bf16 pairs
                       * [G][M][ceil(Cs/2)][Kp][2] = (d[2j][k], d[2j+1][k]), channels past the
                       * subspace's end zero; NULL elsewhere */
    int8_t *cb8;      /* AVX-512 VNNI CPUs (int8 mode, conv layers whose 3 pixels of input bytes
                       * fit QLUT_I8_CHUNK_BYTES, finite codebooks): the codebooks as int8
                       * quads [G][M][ceil(Cs/4)][Kp][4] = d[4j..4j+3][k] / cb8_scale, channels
                       * past the subspace's end zero; NULL elsewhere */
    int32_t *cb8_bias; /* [G][M][Kp]: -128 * the sum of codeword k's int8 entries (the accumulator's
                        * start when the inputs are stored offset by 128, see dot_int8) */
    float *cb8_scale; /* [G][M]: one step per subspace, its largest |codeword entry| / 127 */
    int build;        /* how tables are built: QCNN_TABLE_BUILD_* (qcnn_qconv_set_table_build) */
    const uint8_t *idx; /* [G][KH][KW][M][Ogp]; SIMD layouts permute channels inside a block */
    int fcnb;         /* FC on SIMD: blocks per chunk; idx is then [chunk][M][blocks of chunk][cblk]
                       * so the kernel streams it sequentially, one table load per M per chunk */
    int fcq_bits;     /* > 0: AVX-512 VNNI FC layout "quads" (K <= 32): indices packed at this many
                       * bits, per chunk of FCQ_NB 64-channel blocks [M/4][blocks][4][16 ch x 4
                       * subspaces]; see qlut_avx512.c fcq_chunk. 0: the fcnb layout. */
    void *mem;        /* owned allocation behind cbt (and idx when it is a copy) */
    size_t table_budget; /* bytes of float tables of a pointwise chunk (see qlut_generic.c) */
    size_t row_step_limit; /* larger whole-image tables get one step per input row (qlut_generic.c) */
    size_t row_guess_limit; /* rows of at least this many bytes of float tables guess their step */
    float row_step_share;   /* rows keep the step of the row above when their range fits it this well */
};

/* The int8 table build (qlut_avx512.c) rounds the inputs of this many bytes of pixels at a time,
 * on the stack; layers whose 3 pixels would not fit build in bf16 or fp32. */
#define QLUT_I8_CHUNK_BYTES 16384

/* How a conv kernel call finishes each output (acc = its integer sum of look-ups):
 *   QLUT_EPI_FULL   y = acc*s + (off + bias), ReLU      (all kernel rows in one call)
 *   QLUT_EPI_FIRST  y = acc*s + (off + bias)            (first of several kernel-row calls)
 *   QLUT_EPI_ADD    y = y + acc*s
 *   QLUT_EPI_LAST   y = y + acc*s, ReLU                  (last kernel-row call)
 * Every ISA computes these with the same float operations in the same order. */
enum { QLUT_EPI_FULL = 0, QLUT_EPI_FIRST, QLUT_EPI_ADD, QLUT_EPI_LAST };

/* Everything an ISA's accumulate kernel needs for one call: output rows oy0..oy1-1, summing
 * kernel rows ky0..ky1-1 (all of them, or one when each input row has its own step). */
typedef struct {
    const qcnn_qconv_prepared *q;
    int oh, ow, PH, PW;  /* output size; padded input grid the byte tables live on */
    int oy0, oy1, ky0, ky1, epi; /* epi: QLUT_EPI_* */
    const uint8_t *lq;   /* byte tables [row][PW][G][M][Kp], all-zero on padding pixels */
    int ring;            /* 0: lq holds all PH padded rows; else padded row py is at slot py % ring */
    const float *off;    /* [oh][ow][G]: sum of the table minima each output pixel adds */
    float step;          /* table quantization step s */
    float *y;            /* [oh][ow][cout], or (row sinks) output rows y_row0.. */
    int y_row0;          /* the output row y starts at (0 unless rows go to a sink) */
    void *work;          /* per-run work area of qlut_work_bytes() bytes, 64-byte aligned */
} qlut_run;

/* Where output pixel (oy, ox) starts in r->y. */
static inline float *qlut_out(const qlut_run *r, int oy, int ox) {
    return r->y + ((size_t)(oy - r->y_row0) * r->ow + ox) * r->q->p.cout;
}

/* The byte tables of padded input row py. */
static inline const uint8_t *qlut_row(const qlut_run *r, int py) {
    const size_t row_bytes = (size_t)r->PW * r->q->p.groups * r->q->M * r->q->Kp;
    return r->lq + (size_t)(r->ring ? py % r->ring : py) * row_bytes;
}

/* Builds float tables Lf[h*w][G][M][Kp] and their minima tmin[h*w][G][M]; returns the largest
 * max-min range over all tables. */
typedef float (*qlut_build_fn)(const qcnn_qconv_prepared *q, const float *x, int h, int w,
                               float *Lf, float *tmin);
/* Quantizes ntab consecutive tables: lq = (Lf - tmin) * inv rounded to the nearest integer (ties
 * to even, the product unrounded: quant1() in qlut_generic.c), written in the ISA's table layout.
 * inv must be at most 255 / (the largest Lf - tmin): the SIMD kernels do not clamp. */
typedef void (*qlut_quant_fn)(const qcnn_qconv_prepared *q, const float *Lf, const float *tmin,
                              size_t ntab, float inv, uint8_t *lq);
typedef void (*qlut_conv_fn)(const qlut_run *r);
/* Optional (NULL where an ISA lacks it): builds the tables of an h x w input (conv layers) and
 * quantizes them at once at a step known beforehand (inv = 1/step) into byte tables
 * lq[h*w][G][M][Kp] in the ISA's layout, minima into tmin; returns the largest range (entries
 * beyond 255 steps hold garbage: the caller must check the range against its step). */
typedef float (*qlut_build_quant_fn)(const qcnn_qconv_prepared *q, const float *x, int h, int w, float inv,
                                     float *tmin, uint8_t *lq);

float qlut_build_generic(const qcnn_qconv_prepared *q, const float *x, int h, int w, float *Lf,
                         float *tmin);
void qlut_quant_generic(const qcnn_qconv_prepared *q, const float *Lf, const float *tmin,
                        size_t ntab, float inv, uint8_t *lq);
void qlut_conv_generic(const qlut_run *r);

#if defined(__x86_64__) || defined(_M_X64)
#define QLUT_X86 1
float qlut_build_avx2(const qcnn_qconv_prepared *q, const float *x, int h, int w, float *Lf,
                      float *tmin);
void qlut_quant_avx2(const qcnn_qconv_prepared *q, const float *Lf, const float *tmin,
                     size_t ntab, float inv, uint8_t *lq);
void qlut_conv_avx2(const qlut_run *r);
float qlut_build_avx512(const qcnn_qconv_prepared *q, const float *x, int h, int w, float *Lf,
                        float *tmin);
void qlut_quant_avx512(const qcnn_qconv_prepared *q, const float *Lf, const float *tmin,
                       size_t ntab, float inv, uint8_t *lq);
void qlut_conv_avx512(const qlut_run *r);
float qlut_build_quant_avx512(const qcnn_qconv_prepared *q, const float *x, int h, int w, float inv,
                              float *tmin, uint8_t *lq);
/* Index layouts: position of channel c inside a SIMD block of `blk` bytes. The 16-bit widening
 * trick sums byte pairs (2j, 2j+1) as one word, so channel j goes to byte 2j and channel
 * blk/2 + j to byte 2j+1: the low bytes' sums are channels 0..blk/2-1 in order, the high
 * bytes' sums the rest. */
static inline int qlut_block_pos(int c, int blk) {
    return c < blk / 2 ? 2 * c : 2 * (c - blk / 2) + 1;
}
#else
#define QLUT_X86 0
#endif

/* FC quad layout (fcq_bits > 0): 64-channel blocks per chunk, and the subspaces of a table group. */
#define FCQ_NB 4
#define FCQ_SUB 4
/* Subspaces the tables are laid out for (padded to whole quads, the padding tables all zero). */
static inline int qlut_table_subspaces(const qcnn_qconv_prepared *q) {
    return q->fcq_bits ? (q->M + FCQ_SUB - 1) / FCQ_SUB * FCQ_SUB : q->M;
}

/* Bytes of qlut_run.work the ISA's conv kernel needs. */
size_t qlut_work_bytes(const qcnn_qconv_prepared *q);

#endif
