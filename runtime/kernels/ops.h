/* qcnn non-quantized ops: dense conv / fully-connected, ReLU, LRN, pooling, softmax, add,
 * concat, layout transpose.
 *
 * Same conventions as qcnn_kernels.h: float32, channels-last (NHWC) activations [H][W][C],
 * one image per call, caller-owned buffers (no allocation), thread-safe (no global state
 * except the read-only CPU feature probe).
 *
 * Every op has a plain C implementation that defines its meaning (ONNX semantics). Where
 * speed matters (dense conv, FC) a separate fast path exists per ISA and is tested against
 * the plain one; the ISA is passed in explicitly as a qcnn_isa value (see qcnn_kernels.h),
 * normally obtained from qcnn_ops_resolve_isa().
 */
#ifndef QCNN_OPS_H
#define QCNN_OPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ ISA choice */
/* requested < 0: the runtime's choice (qcnn_isa_select()). Otherwise a qcnn_isa value; returns
 * it if this CPU can run it, or -1 if it cannot. */
int qcnn_ops_resolve_isa(int requested);

/* ------------------------------------------------------------------ dense convolution */
/* ONNX Conv with dilation 1: groups, strides, pads (top, left, bottom, right), bias, fused ReLU. */
typedef struct {
    int cin, cout, groups;
    int kh, kw, stride_h, stride_w;
    int pad_top, pad_left, pad_bottom, pad_right;
    int relu;            /* 1: y = max(y, 0) */
    const float *weight; /* ONNX layout [cout][cin/groups][kh][kw]; used by qcnn_dconv_ref only */
    const float *packed; /* qcnn_dconv_pack() output; used by qcnn_dconv_run */
    const float *bias;   /* [cout] or NULL */
} qcnn_dconv_params;

/* Output size (floor rule); returns 0 when the padded input is smaller than the kernel. */
int qcnn_dconv_out_size(const qcnn_dconv_params *p, int h, int w, int *oh, int *ow);

/* Packed weight layout, shared by every fast path:
 *   [groups][ceil(cout_g/16)][kh][kw][cin_g][16]   (16 output channels of a group in a row,
 *   zero-filled past cout_g), so the inner loop loads whole vectors of output channels. */
#define QCNN_DCONV_NB 16
size_t qcnn_dconv_packed_floats(const qcnn_dconv_params *p);
void qcnn_dconv_pack(const qcnn_dconv_params *p, const float *w_onnx, float *packed);

/* Output y: pixel (oy, ox) channel co at y[(oy*OW + ox)*ystride + co]. ystride = cout for a
 * dense [OH][OW][cout] tensor; larger to write into a channel slice of a wider tensor (e.g.
 * straight into a Concat's output, y pointing at the slice's first channel).
 *
 * Plain reference: direct loops over the ONNX-layout weights. */
void qcnn_dconv_ref(const qcnn_dconv_params *p, const float *x, int h, int w, float *y,
                    int ystride);

/* Fast path (register-blocked micro-kernel on the packed weights). scratch must hold
 * qcnn_dconv_scratch_floats(p, h, w) floats (a zero-padded copy of the input when the conv
 * has padding; 0 otherwise, scratch may then be NULL). */
size_t qcnn_dconv_scratch_floats(const qcnn_dconv_params *p, int h, int w);
void qcnn_dconv_run(const qcnn_dconv_params *p, int isa, const float *x, int h, int w, float *y,
                    int ystride, float *scratch);

/* ------------------------------------------------------------------ dense convolution, int8 */
/* The same ONNX Conv computed in 8-bit integers where the CPU has AVX-512 VNNI (one vpdpbusd
 * does 64 multiply-adds, four times an fp32 FMA) or AVX2 (vpmaddwd on the same values widened
 * to 16 bits: 16 exact multiply-adds, twice an fp32 FMA): the input image is quantized per
 * image to uint8 (asymmetric: scale sx and zero point zp covering [min(x, 0), max(x, 0)]), the
 * weights once per output channel to int8 (symmetric, scale sw[c] = max|w_c|/127), products are
 * summed exactly in int32 and y = sx*sw[c]*(acc - zp*sum_c(wq)) + bias. Padding holds the zero point,
 * i.e. the value 0. Every ISA computes the same integers, so results are bit-identical across
 * ISAs; the error against fp32 is that of the two roundings (about 1% of an output's scale).
 *
 * Packed weights [groups][ceil(cout_g/16)][kh][nseg][nquad][16][4] int8: each kernel row is
 * nseg segments of seglen contiguous input values (one segment of kw*cin when groups == 1,
 * else kw segments of cin_g), rounded up to quads of 4 (vpdpbusd's unit) with zero weights. */
typedef struct {
    qcnn_dconv_params geom; /* geometry, relu and bias (weight/packed pointers unused) */
    int nseg, seglen, nquad;
    const int8_t *wq;     /* packed int8 weights (qcnn_iconv_pack) */
    const int16_t *wq16;  /* the same values widened to int16 for the AVX2 kernel, or NULL */
    const int8_t *wq_amx; /* the same values in the AMX kernel's layout (qcnn_iconv_pack_amx), or NULL */
    const float *wscale;  /* [groups][ceil(cout_g/16)*16]: sw per channel, 0 past cout_g */
    const int32_t *wsum;  /* same layout: sum of the channel's int8 weights */
    /* Winograd F(4x4, 3x3) instead of the direct kernels (see qcnn_wino_row), or NULL: */
    const int16_t *wino_u;     /* qcnn_wino_pack's transformed weights */
    const float *wino_uscale;  /* and their scales */
    int wino_always;           /* 1: Winograd at every image size; 0: where qcnn_wino_pays(_avx2) */
} qcnn_iconv_params;

/* Fills nseg/seglen/nquad from geom; returns the number of packed weight bytes. */
size_t qcnn_iconv_init(qcnn_iconv_params *p, const qcnn_dconv_params *geom);
/* Channel arrays (wscale, wsum) hold this many entries. */
size_t qcnn_iconv_channels(const qcnn_iconv_params *p);
void qcnn_iconv_pack(const qcnn_iconv_params *p, const float *w_onnx, int8_t *wq, float *wscale,
                     int32_t *wsum);
/* wq16[i] = wq[i]: what the AVX2 kernel reads (vpmaddwd multiplies 16-bit values). */
void qcnn_iconv_widen(const qcnn_iconv_params *p, int16_t *wq16);
/* 1 if this CPU can run the VNNI kernel (AVX-512 F/BW/VL/VNNI, OS-enabled). */
int qcnn_iconv_fast_available(void);
/* 1 if it can run the AVX2 kernel (AVX2, OS-enabled). */
int qcnn_iconv_avx2_available(void);
/* 1 if it can run the AMX kernel (AMX-TILE/INT8, OS-enabled and granted to this process, plus
 * the VNNI kernel's AVX-512 for the quantize pass), unless the environment says QCNN_AMX=0. */
int qcnn_iconv_amx_available(void);
/* 1 if the AMX kernel is expected to beat VNNI on this layer (see ops_iconv_amx.c). */
int qcnn_iconv_amx_pays(const qcnn_iconv_params *p);
/* Repack p->wq for the AMX kernel into wq_amx (NULL: only count); returns its size in bytes. */
size_t qcnn_iconv_pack_amx(const qcnn_iconv_params *p, int8_t *wq_amx);
size_t qcnn_iconv_scratch_bytes(const qcnn_iconv_params *p, int h, int w);
/* y as for qcnn_dconv_run. fast: 1 = a SIMD kernel: AVX2 when p->wq16 is set (and the CPU
 * has it), else AMX when p->wq_amx is set (and the CPU has it), else VNNI if available;
 * 0 = portable C. All of them compute the same integers.
 * Returns 0 (and writes nothing) if x holds a NaN or infinity: the caller then runs the fp32
 * kernel, whose result is defined for them. */
int qcnn_iconv_run(const qcnn_iconv_params *p, int fast, const float *x, int h, int w, float *y,
                   int ystride, void *scratch);


/* ------------------------------------------------------------------ int8 conv, Winograd */
/* Winograd F(4x4, 3x3) for 3x3 stride-1 ungrouped int8 convs (ops_wino.c): the same uint8
 * input as qcnn_iconv_params (per image scale sx, zero point zp), transformed per 6x6 window
 * and 32 channels exactly in int16 (V = B^T (q - zp) B, |V| <= 25500); the weights transformed
 * once in double (U = G w G^T) and rounded per (tile position, output channel) to int16 with the
 * largest range for which no int32 sum over 64 channels can overflow (11-13 bits); 36 int32
 * sums per tile, output channel and 64 input channels, added in float (vpdpwssd: 32 products per instruction, 4x fewer
 * products than direct; on AVX2 vpmaddwd, 16), scaled to float by sx * uscale, then Y = A^T M A + bias in float.
 * Every ISA computes the same integers and the same floats. */
#define QCNN_WINO_POS 36        /* 6x6 positions of a tile */
#define QCNN_WINO_CIN_BLOCK 32  /* input channels per int16 vector */
#define QCNN_WINO_CIN_CHUNK 64  /* input channels summed exactly in int32, then in float */
#define QCNN_WINO_COUT_BLOCK 64 /* output channels per chunk of sums */
#define QCNN_WINO_COUT_CHUNK 64 /* output channels summed at once (4 vectors) */
#define QCNN_WINO_TILES 6       /* tiles whose sums are in registers at once */
int qcnn_wino_applies(const qcnn_dconv_params *g);
/* 1 if Winograd is expected to beat the direct VNNI kernel for an oh x ow output. Its
 * transformed weights (72*cin*cout bytes, 8x the direct int8 weights) are read once per
 * superblock of a row of tiles, so it pays when they come to under 1 MB per tile of the row
 * (measured on Zen 4: 64->64 at 224x224 1.4x faster, 256->256 at 56x56 1.5x; 256->512 at
 * 28x28 even; 512->512 at 14x14 2.3x slower), and on at least 32x32 output pixels: in a whole
 * network they come from memory once per image, which small outputs do not repay (SqueezeNet's
 * 64->256 at 13x13: 0.13 ms direct, 0.19 Winograd; its 32->128 at 27x27: 0.15 and 0.13, a gain
 * within run-to-run noise, so direct too). */
int qcnn_wino_pays(const qcnn_dconv_params *g, int oh, int ow);
/* The same against the direct AVX2 kernel: there Winograd's 4x fewer products run at the same
 * rate (vpmaddwd both) instead of half of vpdpbusd's, so it pays more often: to 1.5 MB of weights per tile of the row
 * and from 20x20 output pixels on. Measured on Zen 4 with isa="avx2" (medians, weights evicted
 * from the caches before each run as in a network): 256->512 at 28x28 (1.35 MB per tile) 12.1 ms
 * direct, 7.7 Winograd; 512->512 at 28x28 (2.7 MB) 23.8 and 20.6, at 40x40 47.7 and 48.7, at 14x14
 * 5.7 and 11.4; 256->256 at 20x20 3.3 and 2.6, at 16x16 1.9 and 2.1, at 14x14 1.4 and 2.2;
 * 128->128 at 16x16 0.77 and 0.51, 64->256 at 13x13 0.43 and 0.41. */
int qcnn_wino_pays_avx2(const qcnn_dconv_params *g, int oh, int ow);
size_t qcnn_wino_weight_count(const qcnn_dconv_params *g); /* int16 values of U */
/* u: [36][cin/2][cout][2] int16; uscale: [36][cout] */
void qcnn_wino_pack(const qcnn_dconv_params *g, const float *w_onnx, int16_t *u, float *uscale);

/* One row of 4x4 tiles: output rows oy .. oy+nrows-1 (4 computed), every column. */
typedef struct {
    const uint8_t *x;  /* padded quantized input at row oy, column 0 */
    size_t xrow;       /* bytes between input rows */
    int rows_avail;    /* padded input rows from oy on (windows past them read zp) */
    int cols;          /* padded input columns */
    int cin, cout, zp;
    const int16_t *u;
    const float *mul;  /* [36][cout]: sx * uscale */
    const float *bias; /* [cout] or NULL */
    int relu, ow, nrows;
    float *y;          /* output row oy, column 0, channel 0 */
    size_t ypix, yrow; /* floats between output pixels / rows */
    /* 1: y takes the 2x2 stride-2 max pool of the outputs instead (each tile's 4x4 pooled to
     * 2x2 in registers): y at pooled row oy/2, nrows pooled rows (1..2), pw pooled columns */
    int pool2, pw;
    void *work;        /* qcnn_wino_work_bytes(cin, cout) bytes, 64-aligned */
} qcnn_wino_row;
size_t qcnn_wino_work_bytes(int cin, int cout);
/* tiles the SIMD kernel transforms and sums at once (inputs and sums within ~512 KB) */
int qcnn_wino_superblock(int cin);
/* byte offset in the work buffer of 0: the edge window copy, 1: inputs, 2: sums, 3: end */
size_t qcnn_wino_work_offset(int cin, int what);
const uint8_t *qcnn_wino_window(const qcnn_wino_row *r, int tx, size_t *row_stride);
void qcnn_wino_row_generic(const qcnn_wino_row *r);
#if defined(__x86_64__)
void qcnn_wino_row_avx512(const qcnn_wino_row *r);
void qcnn_wino_row_avx2(const qcnn_wino_row *r); /* ops_wino_avx2.c: vpmaddwd, 16 ymm */
#endif

/* ------------------------------------------------------------------ dense fully connected */
/* y[o] = bias[o] + sum_i W[o][i] x[i]  (ONNX Gemm with transB=1), W float32 [out][in]. */
typedef struct {
    int in, out;
    int relu;
    const float *weight; /* [out][in] */
    const float *bias;   /* [out] or NULL */
} qcnn_dfc_params;

void qcnn_dfc_ref(const qcnn_dfc_params *p, const float *x, float *y);
void qcnn_dfc_run(const qcnn_dfc_params *p, int isa, const float *x, float *y);

/* ------------------------------------------------------------------ elementwise / layout */
void qcnn_relu(const float *x, float *y, size_t n); /* x == y allowed */
void qcnn_add(const float *a, const float *b, float *y, size_t n, int relu); /* y may alias a or b */
/* Softmax over the last axis of a [rows][n] array (max-subtracted, so no overflow). */
void qcnn_softmax(const float *x, float *y, int rows, int n);
/* Copy an NHWC tensor [npix][cx] into channels [c_offset, c_offset+cx) of y [npix][cy]. */
void qcnn_copy_channels(const float *x, size_t npix, int cx, float *y, int cy, int c_offset);
/* [h][w][c] -> [c][h][w] (what ONNX Flatten sees). */
void qcnn_nhwc_to_nchw(const float *x, int h, int w, int c, float *y);
/* [c][h][w] -> [h][w][c] (the graph input); returns the number of NaN or infinite values.
 * isa: 2 = AVX-512 for c = 3 (images), else portable C. */
size_t qcnn_nchw_to_nhwc(const float *x, int c, int h, int w, float *y, int isa);

/* ------------------------------------------------------------------ LRN */
/* ONNX LRN across channels: sq[c] = sum of x[c']^2 over c' in [c - floor((size-1)/2),
 * c + ceil((size-1)/2)] (clipped to the tensor); y = x / (bias + alpha/size * sq)^beta.
 * x and y must not alias. qcnn_lrn_ref is the plain formula; qcnn_lrn is the vectorised one
 * (isa: a qcnn_isa value), with a powf-free path for beta == 0.75. */
void qcnn_lrn_ref(const float *x, float *y, size_t npix, int c, int size, float alpha, float beta,
                  float bias);
void qcnn_lrn(const float *x, float *y, size_t npix, int c, int size, float alpha, float beta,
              float bias, int isa);

/* ------------------------------------------------------------------ pooling */
typedef struct {
    int kh, kw, stride_h, stride_w;
    int pad_top, pad_left, pad_bottom, pad_right;
    int count_include_pad; /* AveragePool only: divisor counts padding (not ceil overhang) */
} qcnn_pool_params;

/* ONNX output size along one axis (dilation 1). ceil_mode=1 rounds up, but then drops the last
 * window if it would start past the input plus left padding. Returns <= 0 if invalid. */
int qcnn_pool_out_size(int in, int k, int stride, int pad_begin, int pad_end, int ceil_mode);

/* x [h][w][c] -> y [oh][ow][c]; oh/ow come from the caller (see qcnn_pool_out_size). Padding
 * never wins a max; windows without any input element produce 0. x and y must not overlap.
 * qcnn_maxpool_ref: plain loops; qcnn_maxpool: register-blocked over channels (isa: qcnn_isa). */
void qcnn_maxpool_ref(const qcnn_pool_params *p, const float *x, int h, int w, int c, float *y,
                      int oh, int ow);
void qcnn_maxpool(const qcnn_pool_params *p, const float *x, int h, int w, int c, float *y, int oh,
                  int ow, int isa);
void qcnn_avgpool(const qcnn_pool_params *p, const float *x, int h, int w, int c, float *y, int oh,
                  int ow);
/* [h][w][c] -> [c] mean over all pixels. */
void qcnn_global_avgpool(const float *x, int h, int w, int c, float *y);

/* ONNX LRN's attributes, for an LRN fused between a conv and its max pooling. */
typedef struct {
    int size;
    float alpha, beta, bias;
} qcnn_lrn_params;

/* The conv (its ReLU included), optionally an LRN (lrn != NULL; AlexNet's conv1 -> LRN -> pool),
 * then a max pooling of the result, fused: conv rows are computed a band at a time into the
 * scratch, normalised and pooled while still in cache, so neither the conv's nor the LRN's full
 * output is written. y: [poh][pow][cout], poh/pow as for qcnn_maxpool (qcnn_pool_out_size on the
 * conv's output). Same values as qcnn_iconv_run, qcnn_lrn, qcnn_maxpool; same return values. */
size_t qcnn_iconv_pool_scratch_bytes(const qcnn_iconv_params *p, const qcnn_pool_params *pool, int h, int w);
int qcnn_iconv_run_maxpool(const qcnn_iconv_params *p, int fast, const float *x, int h, int w,
                           const qcnn_lrn_params *lrn, const qcnn_pool_params *pool, float *y, int poh,
                           int pow_, void *scratch);

/* The same for a product-quantized conv (qcnn_kernels.h) run by rows (qcnn_qconv_runs_by_rows),
 * optionally an LRN (lrn != NULL; AlexNet's conv2), and the MaxPool reading the result
 * (qconv_pool.c): the conv's rows go to a band of one pool window in the scratch, are normalised
 * as they arrive and pooled as their windows complete. oh, ow, cout: the conv's output; isa:
 * qcnn_lrn's and qcnn_maxpool's. Returns 0 without running when the layer is not run by rows
 * (the caller then runs the steps apart), else 1 with the values of qcnn_qconv_run, qcnn_lrn,
 * qcnn_maxpool; lut_step as for qcnn_qconv_run. */
struct qcnn_qconv_prepared;
size_t qcnn_qconv_pool_scratch_bytes(const struct qcnn_qconv_prepared *q, const qcnn_pool_params *pool, int h,
                                     int w, int ow, int cout);
int qcnn_qconv_run_maxpool(const struct qcnn_qconv_prepared *q, const float *x, int h, int w, int oh, int ow,
                           int cout, const qcnn_lrn_params *lrn, const qcnn_pool_params *pool, float *y, int poh,
                           int pow_, int isa, void *scratch, float *lut_step);

/* ------------------------------------------------------------------ internal (ops_conv*.c) */
/* One output row of one group of a dense conv, as handed to the per-ISA row kernels. The input
 * has no padding left to handle (the driver zero-pads a copy when needed). */
typedef struct {
    const float *x;   /* input at (oy*stride_h, 0), channel g*cin_g */
    size_t xpix;      /* floats between neighbouring output pixels' windows (stride_w*C) */
    size_t xrow;      /* floats between input rows */
    size_t xseg;      /* floats between kernel-column segments */
    int kh, nseg, seglen; /* per kernel row: nseg segments of seglen contiguous floats */
    const float *w;   /* packed weights of group g: ceil(cout_g/16) blocks of kh*nseg*seglen*16 floats */
    int b0, b1;       /* compute 16-channel blocks [b0, b1) of the group */
    int cout_g;       /* valid output channels of the group */
    float *y;         /* output at (oy, 0), channel g*cout_g */
    size_t ypix;      /* floats between output pixels (cout) */
    int ow;
    const float *bias; /* at channel g*cout_g, or NULL */
    int relu;
} qcnn_dconv_row;

/* One output row of one group of the int8 conv (see qcnn_iconv_params). */
typedef struct {
    const uint8_t *x;  /* quantized padded input at (oy*stride_h, 0), channel g*cin_g */
    const uint16_t *x16; /* the same values as 16-bit words (AVX2 kernel only; same offsets) */
    size_t xpix, xrow, xseg; /* bytes between output pixels' windows / input rows / segments */
    int kh, nseg, nquad;
    int nchunk;        /* AMX kernel: 64-byte chunks per segment (its weights' layout) */
    const int8_t *w;   /* packed weights of the group: blocks of kh*nseg*nquad*64 bytes (AMX:
                        * kh*nseg*nchunk*1024) */
    const int16_t *w16; /* the same widened (AVX2 kernel only) */
    int b0, b1, cout_g, ow;
    float *y;          /* output at (oy, 0), channel g*cout_g */
    size_t ypix;
    const float *mul, *add; /* per channel of the group: y = acc*mul + add (then ReLU) */
    int relu;
} qcnn_iconv_row;

void qcnn_iconv_row_generic(const qcnn_iconv_row *r);
void qcnn_iconv_row_amx(const qcnn_iconv_row *r);
void qcnn_iconv_amx_begin(void); /* load the tile configuration (this thread) */
void qcnn_iconv_amx_end(void);   /* release the tiles */
#if defined(__x86_64__)
void qcnn_iconv_row_vnni(const qcnn_iconv_row *r);
int qcnn_iconv_range_avx512(const float *x, size_t n, float *lo, float *hi);
void qcnn_iconv_quantize_avx512(const float *x, size_t n, float inv, float zp, uint8_t *q);
void qcnn_iconv_row_avx2(const qcnn_iconv_row *r);
int qcnn_iconv_range_avx2(const float *x, size_t n, float *lo, float *hi);
void qcnn_iconv_quantize_avx2(const float *x, size_t n, float inv, float zp, uint8_t *q);
#endif

void qcnn_dconv_row_generic(const qcnn_dconv_row *r);
#if defined(__x86_64__)
void qcnn_dconv_row_avx2(const qcnn_dconv_row *r);
void qcnn_dconv_row_avx512(const qcnn_dconv_row *r);
#endif

#ifdef __cplusplus
}
#endif
#endif /* QCNN_OPS_H */
