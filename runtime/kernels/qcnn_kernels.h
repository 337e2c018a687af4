/* qcnn compute kernels: the C ABI between the Cython runtime (runtime/_core.pyx) and the kernels.
 *
 * Conventions (all kernels):
 *  - Activations are float32, channels-last (NHWC), one image per call: x[(y*W + x)*C + c].
 *  - The caller owns every buffer, including scratch (so one Model can run on many threads).
 *  - Kernels never allocate in the hot path and never call BLAS.
 *  - Each kernel family has a portable reference implementation (generic C, float) that every
 *    fast variant is tested against.
 */
#ifndef QCNN_KERNELS_H
#define QCNN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ ISA dispatch */
typedef enum {
    QCNN_ISA_GENERIC = 0,   /* portable C, the reference */
    QCNN_ISA_AVX2 = 1,      /* AVX2 + FMA */
    QCNN_ISA_AVX512VBMI = 2 /* AVX-512 F/BW/VL/VBMI (+VNNI where used) */
} qcnn_isa;

/* Best ISA this CPU supports (CPUID + OS XSAVE state), ignoring QCNN_ISA. */
qcnn_isa qcnn_isa_detect(void);
/* qcnn_isa_detect() unless the environment variable QCNN_ISA=generic|avx2|avx512vbmi asks for a
 * lower one. Asking for an ISA the CPU lacks falls back to the best available one. */
qcnn_isa qcnn_isa_select(void);
const char *qcnn_isa_name(qcnn_isa isa);
/* 1 if the CPU and OS support AVX-512 VNNI (with F/BW/VL); the int8 dense conv uses it. */
int qcnn_cpu_has_avx512vnni(void);
int qcnn_cpu_has_avx512bf16(void);

/* ------------------------------------------------------------------ quantized conv (LUT) */
/* Weights of a product-quantized convolution (paper Eq. 6).
 * Input channels of each group are split into `nsub` subspaces of `subvec` channels
 * (the last one zero-padded when cin/groups is not a multiple of subvec).
 *   codebooks: float32 [groups][nsub][ncode][subvec]
 *   indices:   uint8   [groups][kh][kw][nsub][cout/groups]   (output channel fastest)
 *   bias:      float32 [cout] or NULL
 */
typedef struct {
    int cin, cout, groups;
    int kh, kw, stride_h, stride_w;
    int pad_top, pad_left, pad_bottom, pad_right;
    int subvec, nsub, ncode;
    const float *codebooks;
    const uint8_t *indices;
    const float *bias;
    int relu; /* 1: apply ReLU to the output (fused) */
} qcnn_qconv_params;

/* Output size for an input of h x w. */
void qcnn_conv_out_size(int h, int w, int kh, int kw, int stride_h, int stride_w, int pad_top,
                        int pad_left, int pad_bottom, int pad_right, int *oh, int *ow);

/* Reference: float look-up tables, plain loops.
 * scratch must hold qcnn_qconv_ref_scratch_floats(p, h, w) floats. */
size_t qcnn_qconv_ref_scratch_floats(const qcnn_qconv_params *p, int h, int w);
void qcnn_qconv_ref(const qcnn_qconv_params *p, const float *x, int h, int w, float *y,
                    float *scratch);

/* ------------------------------------------------------------------ quantized fully connected */
/* y[o] = bias[o] + sum_m <x_m, codebooks[m][indices[m][o]]>
 *   codebooks: float32 [nsub][ncode][subvec]  (input zero-padded to nsub*subvec)
 *   indices:   uint8   [nsub][out]            (output fastest) */
typedef struct {
    int in, out;
    int subvec, nsub, ncode;
    const float *codebooks;
    const uint8_t *indices;
    const float *bias;
    int relu;
} qcnn_qfc_params;

size_t qcnn_qfc_ref_scratch_floats(const qcnn_qfc_params *p);
void qcnn_qfc_ref(const qcnn_qfc_params *p, const float *x, float *y, float *scratch);

/* ------------------------------------------------------------------ prepared (fast) LUT kernels */
/* The fast path prepares a layer once at load time (re-lays out indices and codebooks for the
 * chosen ISA, checks every index < ncode) and then runs it any number of times, from any number
 * of threads, each with its own caller-provided scratch. No allocation happens in run().
 *
 * LUT modes:
 *   QCNN_LUT_REF    the float reference above (oracle), wrapped in the prepared API
 *   QCNN_LUT_FLOAT  float tables, portable C loops (no padding checks in the inner loop)
 *   QCNN_LUT_INT8   tables quantized to unsigned bytes: per image, each table t gets an offset
 *                   min_k L_t[k] and all tables share one step s = max_t(max-min)/255, so
 *                   L_t[k] ~= min_t + s*q_t[k] with q in 0..255 and |error| <= s/2 per look-up.
 *                   Byte sums are exact integers; y = bias + sum(min_t) + s*sum(q).
 *                   (Pointwise layers: one step per chunk of pixels instead of per image.)
 * The ISA actually used is min(requested, qcnn_isa_detect()); QCNN_LUT_REF/FLOAT are generic C.
 */
typedef enum { QCNN_LUT_REF = 0, QCNN_LUT_FLOAT = 1, QCNN_LUT_INT8 = 2 } qcnn_lut_mode;

typedef struct qcnn_qconv_prepared qcnn_qconv_prepared;
/* FC layers are prepared as 1x1 convolutions on a 1x1 image; same object type. */
typedef struct qcnn_qconv_prepared qcnn_qfc_prepared;

/* Returns NULL on invalid parameters or allocation failure; *err (if err != NULL) then points
 * to a static message. The prepared object keeps pointers to p->codebooks and p->bias (not
 * copies): they must outlive it. Indices are copied into the kernel's own layout. */
qcnn_qconv_prepared *qcnn_qconv_prepare(const qcnn_qconv_params *p, qcnn_isa isa,
                                        qcnn_lut_mode mode, const char **err);
qcnn_isa qcnn_qconv_isa(const qcnn_qconv_prepared *q);
/* Scratch bytes for an h x w input (includes slack so any scratch pointer alignment works). */
size_t qcnn_qconv_scratch_bytes(const qcnn_qconv_prepared *q, int h, int w);
/* y: [oh][ow][cout]. lut_step (may be NULL) receives the int8 step s used for this image
 * (0 for float modes), so callers/tests can bound the quantization error. Pointwise layers
 * (1x1, stride 1, no padding) are run in chunks of qcnn_qconv_pointwise_chunk() pixels, each
 * with its own step; lut_step then receives the largest. */
void qcnn_qconv_run(const qcnn_qconv_prepared *q, const float *x, int h, int w, float *y,
                    void *scratch, float *lut_step);
void qcnn_qconv_free(qcnn_qconv_prepared *q);
/* Output rows handed to the caller as they are finished (a fused max pooling: qconv_pool.c):
 * output row oy is written at row(ctx, oy) (ow x cout floats), then done(ctx, oy) is called
 * once it is final. Rows come in order 0, 1, ... oh - 1. */
typedef struct {
    float *(*row)(void *ctx, int oy);
    void (*done)(void *ctx, int oy);
    void *ctx;
} qcnn_qconv_row_sink;
/* 1 if an h x w input is run an output row at a time (int8 tables with one step per input row,
 * qcnn_qconv_set_row_step_limit), which qcnn_qconv_run_rows needs. */
int qcnn_qconv_runs_by_rows(const qcnn_qconv_prepared *q, int h, int w);
/* qcnn_qconv_run with the output rows going to sink instead of y: the same values. Returns 0
 * without running when the layer is not run by rows (qcnn_qconv_runs_by_rows). */
int qcnn_qconv_run_rows(const qcnn_qconv_prepared *q, const float *x, int h, int w,
                        const qcnn_qconv_row_sink *sink, void *scratch, float *lut_step);
/* Pixels per chunk of a pointwise layer (see qcnn_qconv_run); 0 if the layer is not pointwise. */
int qcnn_qconv_pointwise_chunk(const qcnn_qconv_prepared *q);
/* Bytes of float tables a pointwise layer's chunk holds (results depend on it through the chunk
 * size, so the default is the same on every CPU). Set it before sharing the prepared layer
 * between threads. 128 KB: smaller chunks get finer steps, and on Zen 4 ran as fast as chunks
 * of 256 KB - 1 MB or faster (measured on 4 layer shapes). */
#define QCNN_TABLE_BUDGET_DEFAULT ((size_t)128 << 10)
void qcnn_qconv_set_table_budget(qcnn_qconv_prepared *q, size_t bytes);
size_t qcnn_qconv_table_budget(const qcnn_qconv_prepared *q);
/* Int8 convs (not pointwise, not FC) whose whole-image float tables exceed this many bytes
 * quantize each input row with its own step and stream the rows (qlut_generic.c); by default
 * (0) all of them. It changes the values (finer steps), so the default is the same on every CPU. */
#define QCNN_ROW_STEP_LIMIT_DEFAULT ((size_t)0)
void qcnn_qconv_set_row_step_limit(qcnn_qconv_prepared *q, size_t bytes);
size_t qcnn_qconv_row_step_limit(const qcnn_qconv_prepared *q);
/* Row-step layers whose float tables of one input row reach this many bytes guess each row's
 * step from the row above and build + quantize the row in cache-sized segments; a row that
 * outgrows the guess is retried once at 1.25x it, then built exactly (qlut_generic.c,
 * build_row_guessed). 512 KB: on Zen 4 (1 MB L2)
 * VGG-16's 0.9 MB rows ran 5-20% faster (layer by layer); AlexNet's 0.2 MB rows gained nothing. Changes the
 * values (a step up to 2x the row's own), so the default is the same on every CPU. */
#define QCNN_ROW_GUESS_LIMIT_DEFAULT ((size_t)512 << 10)
void qcnn_qconv_set_row_guess_limit(qcnn_qconv_prepared *q, size_t bytes);
size_t qcnn_qconv_row_guess_limit(const qcnn_qconv_prepared *q);
/* Row-step layers: a row whose largest range r fits the step s of the row built before it with
 * r >= share * 255 * s keeps s (a step at most 1/share times its own), and a guessing row that
 * fits its guess g with r >= share * g keeps g for the next row; kernel rows of equal step are
 * then summed in one call, with one epilogue (16-bit -> 32-bit, convert, scale, add into y)
 * instead of one per kernel row. 0.8 on Zen 4: AlexNet's four table convs 1.64 -> 1.55 ms (conv2
 * 0.69 -> 0.63), their error against float tables +4-5% (0.7: 1.54 ms, +8-9%). 0: every row its
 * own step. Changes the values, so the default is the same on every CPU. */
#define QCNN_ROW_STEP_SHARE_DEFAULT 0.8f
void qcnn_qconv_set_row_step_share(qcnn_qconv_prepared *q, float share);
float qcnn_qconv_row_step_share(const qcnn_qconv_prepared *q);

/* How int8 tables are built on AVX-512 (other ISAs and modes: always fp32):
 *   QCNN_TABLE_BUILD_FP32  fp32 FMAs;
 *   QCNN_TABLE_BUILD_BF16  bf16 dot products (vdpbf16ps, AVX512_BF16; inputs and codewords rounded
 *                          to bf16 first, so each product is off by a relative <= 2^-7). On random
 *                          8/128 layers the output error grew 1.11e-2 -> 1.13e-2 (relative L2
 *                          against float tables), 1-2% of the int8 tables' own error;
 *   QCNN_TABLE_BUILD_INT8  int8 dot products (vpdpbusd, AVX512_VNNI; conv layers, up to ~5400
 *                          input channels): each pixel's inputs rounded to 8 bits with one step
 *                          per pixel (u8 up to its max when none is negative, else int8 offset by
 *                          128), the codewords to int8 with one step per subspace (qlut_avx512.c,
 *                          int8 table builds). Zen 4: VGG-16's nine table convs 8% faster than
 *                          bf16; output error against float tables +2.5% (AlexNet) and +6%
 *                          (VGG-16), seeded weights; SqueezeNet's top-1/top-5 unchanged.
 * The default is the first of int8, bf16, fp32 the layer and CPU can run (FC layers: bf16 or fp32,
 * and fp32 for those with K <= 32 and >= 16 subspaces, whose fp32 build is already fast; layers
 * whose codewords are not all finite: never int8). The environment variable
 * QCNN_TABLE_BUILD=fp32|bf16|int8 read at prepare time picks another where it can run.
 * qcnn_qconv_set_table_build returns the kind now in effect (asking for one the layer or CPU
 * cannot run keeps the current one). Set it before sharing the layer between threads. */
typedef enum { QCNN_TABLE_BUILD_FP32 = 0, QCNN_TABLE_BUILD_BF16 = 1, QCNN_TABLE_BUILD_INT8 = 2 } qcnn_table_build;
int qcnn_qconv_set_table_build(qcnn_qconv_prepared *q, int kind);
int qcnn_qconv_table_build(const qcnn_qconv_prepared *q);
/* 1: bf16 (the same as set_table_build(q, on ? BF16 : FP32) == BF16). */
int qcnn_qconv_set_bf16_build(qcnn_qconv_prepared *q, int on);
int qcnn_qconv_bf16_build(const qcnn_qconv_prepared *q);

qcnn_qfc_prepared *qcnn_qfc_prepare(const qcnn_qfc_params *p, qcnn_isa isa, qcnn_lut_mode mode,
                                    const char **err);
size_t qcnn_qfc_scratch_bytes(const qcnn_qfc_prepared *q);
void qcnn_qfc_run(const qcnn_qfc_prepared *q, const float *x, float *y, void *scratch,
                  float *lut_step);
void qcnn_qfc_free(qcnn_qfc_prepared *q);

/* ------------------------------------------------------------------ index unpacking */
/* Unpack `count` codes of `bits` (1..8) bits from an LSB-first bit stream of at least
 * ceil(count * bits / 8) bytes into out[count]; returns the largest code. */
uint8_t qcnn_unpack_indices(const uint8_t *packed, int bits, size_t count, uint8_t *out);

#ifdef __cplusplus
}
#endif
#endif /* QCNN_KERNELS_H */
