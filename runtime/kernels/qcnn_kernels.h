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

#ifdef __cplusplus
}
#endif
#endif /* QCNN_KERNELS_H */
