/* int8 dense conv on Intel AMX (Sapphire Rapids and later): the same integers as the portable
 * and VNNI kernels (ops_iconv.c, ops_iconv_x86.c), summed by the tile matrix unit.
 *
 * One tdpbusd multiplies a 16 x 64 tile of uint8 inputs (16 output pixels, 64 input bytes of
 * one kernel row's segment) by a 64 x 16 tile of int8 weights (VNNI-packed: 16 rows of quads x
 * 16 output channels x 4 bytes) into 16 x 16 int32 sums: 16K multiply-adds, 256 vpdpbusd.
 * Tiles: C0..C3 = sums of 32 pixels x 32 channels, A4/A5 = two 16-pixel input tiles, B6/B7 =
 * two 16-channel weight tiles; every (A, B) pair feeds one C.
 *
 * The input tile's rows are the windows of neighbouring output pixels, `xpix` bytes apart in the
 * quantized padded NHWC image, so tileloadd reads them in place (no im2col). A segment is cut into
 * 64-byte chunks; the weights are repacked (qcnn_iconv_pack_amx) with every segment padded to
 * whole chunks of zero quads and the blocks of 16 channels padded to pairs, so there are no
 * partial tiles: input bytes past a segment meet zero weights, and the rows of pixels past the
 * row end (ow not a multiple of 32) are computed and dropped. The scratch holds enough slack
 * behind the image for those reads (qcnn_iconv_scratch_bytes).
 *
 * Linux only hands out the tile registers after arch_prctl(ARCH_REQ_XCOMP_PERM); the check in
 * qcnn_iconv_amx_available() asks for them once per process. QCNN_AMX=0 turns the kernel off.
 */
#define _GNU_SOURCE /* syscall() under -std=c11 */
#include <stdlib.h>
#include <string.h>

#include "ops.h"

#define NB 16

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__) && \
    (__GNUC__ >= 11 || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TAMX __attribute__((target("amx-tile,amx-int8")))
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static int amx_detect(void)
{
    const char *e = getenv("QCNN_AMX");
    if (e && !strcmp(e, "0"))
        return 0;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    if (!((d >> 24) & 1) || !((d >> 25) & 1)) /* AMX-TILE, AMX-INT8 */
        return 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) /* OSXSAVE: xgetbv is allowed */
        return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0x60000) != 0x60000) /* XTILECFG and XTILEDATA enabled by the OS */
        return 0;
    /* The kernel allocates the 8 KB tile state per thread only for processes that ask. */
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0)
        return 0;
    return qcnn_iconv_fast_available(); /* quantize/range passes use the AVX-512 ones */
}

int qcnn_iconv_amx_available(void)
{
    static int cached = -1; /* CPUID and the syscall are slow under a hypervisor: ask once */
    if (cached < 0)
        cached = amx_detect();
    return cached;
}

/* ldtilecfg's 64-byte operand: palette 1, then bytes per row and rows of each tile. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_tilecfg;

/* Tiles 0..7: 16 rows of 64 bytes. A constant in memory: gcc's _tile_loadconfig tells the
 * compiler it reads only 8 bytes, so stores into a local configuration can be dropped. */
static const amx_tilecfg tilecfg = {
    .palette = 1,
    .colsb = {64, 64, 64, 64, 64, 64, 64, 64},
    .rows = {16, 16, 16, 16, 16, 16, 16, 16},
};

TAMX void qcnn_iconv_amx_begin(void) { _tile_loadconfig(&tilecfg); }

/* No tile state left behind for context switches to save. */
TAMX void qcnn_iconv_amx_end(void) { _tile_release(); }

/* y = acc * mul + add (then ReLU) for n channels of one pixel. */
static inline __attribute__((always_inline, target("avx512f"))) void
epilogue(const int32_t *acc, const float *mul, const float *add, float *y, int n, int relu)
{
    for (int l = 0; l < n; l += 16) {
        const __mmask16 m = n - l >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - l)) - 1);
        __m512 v = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(m, acc + l));
        /* multiply, then add: two roundings, as the other kernels (a fused multiply-add would not
         * give the same floats) */
        v = _mm512_add_ps(_mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, mul + l)), _mm512_maskz_loadu_ps(m, add + l));
        if (relu)
            v = _mm512_max_ps(v, _mm512_setzero_ps());
        _mm512_mask_storeu_ps(y + l, m, v);
    }
}

/* Between qcnn_iconv_amx_begin() and qcnn_iconv_amx_end() on the same thread. */
__attribute__((target("amx-tile,amx-int8,avx512f"))) void qcnn_iconv_row_amx(const qcnn_iconv_row *r)
{

    int32_t acc[32 * 32]; /* [pixel][channel] of one 32 x 32 tile pair */
    const size_t chunk = 16 * NB * 4; /* one B tile: 16 quads x 16 channels x 4 bytes */
    const size_t wblk = (size_t)r->kh * r->nseg * r->nchunk * chunk;
    for (int b = r->b0; b < r->b1; b += 2) {
        const int8_t *w0 = r->w + (size_t)b * wblk, *w1 = w0 + wblk;
        const int c0 = b * NB;
        int ncols = r->cout_g - c0 < 2 * NB ? r->cout_g - c0 : 2 * NB;
        if (r->b1 - b < 2 && ncols > NB) /* the pair's second block belongs to the next chunk */
            ncols = NB;
        for (int ox0 = 0; ox0 < r->ow; ox0 += 32) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            size_t wo = 0;
            for (int ky = 0; ky < r->kh; ky++)
                for (int s = 0; s < r->nseg; s++) {
                    const uint8_t *xs = r->x + (size_t)ox0 * r->xpix + ky * r->xrow + s * r->xseg;
                    for (int k = 0; k < r->nchunk; k++, wo += chunk) {
                        _tile_loadd(4, xs + 64 * k, r->xpix);
                        _tile_loadd(5, xs + 64 * k + 16 * r->xpix, r->xpix);
                        _tile_loadd(6, w0 + wo, 64);
                        _tile_loadd(7, w1 + wo, 64);
                        _tile_dpbusd(0, 4, 6);
                        _tile_dpbusd(1, 4, 7);
                        _tile_dpbusd(2, 5, 6);
                        _tile_dpbusd(3, 5, 7);
                    }
                }
            _tile_stored(0, acc, 32 * 4);
            _tile_stored(1, acc + 16, 32 * 4);
            _tile_stored(2, acc + 16 * 32, 32 * 4);
            _tile_stored(3, acc + 16 * 32 + 16, 32 * 4);
            const int npix = r->ow - ox0 < 32 ? r->ow - ox0 : 32;
            for (int p = 0; p < npix; p++)
                epilogue(acc + p * 32, r->mul + c0, r->add + c0, r->y + (size_t)(ox0 + p) * r->ypix + c0,
                         ncols, r->relu);
        }
    }
}

#else
int qcnn_iconv_amx_available(void) { return 0; }
/* Never called: qcnn_iconv_amx_available() is 0. */
void qcnn_iconv_amx_begin(void) { abort(); }
void qcnn_iconv_amx_end(void) { abort(); }
void qcnn_iconv_row_amx(const qcnn_iconv_row *r) { (void)r; abort(); }
#endif

/* The tiles multiply whole 64-byte chunks of a segment: with short segments (a 3-channel first
 * layer: 9 bytes per kernel row) most of every tdpbusd multiplies padding and VNNI is faster
 * (SqueezeNet conv0 3x3x3: 0.38 ms AMX vs 0.24 ms VNNI; AlexNet conv1, 33 of 64 bytes: even). */
int qcnn_iconv_amx_pays(const qcnn_iconv_params *p)
{
    const int nchunk = (p->nquad + 15) / 16;
    return 4 * p->nquad * 2 >= 64 * nchunk; /* at least half of each chunk holds weights */
}

/* Weights in the AMX layout [groups][blocks, rounded up to pairs][kh][nseg][nchunk*16 quads][16][4]
 * from the VNNI layout [groups][blocks][kh][nseg][nquad][16][4]: quads past nquad and the block
 * that completes the last pair are zero. Returns the number of bytes (wq_amx NULL: only count). */
size_t qcnn_iconv_pack_amx(const qcnn_iconv_params *p, int8_t *wq_amx)
{
    const qcnn_dconv_params *g_ = &p->geom;
    const int G = g_->groups, nb = (g_->cout / G + NB - 1) / NB, nb2 = (nb + 1) / 2 * 2;
    const int nchunk = (p->nquad + 15) / 16;
    const size_t qbytes = NB * 4, seg_in = (size_t)p->nquad * qbytes, seg_out = (size_t)nchunk * 16 * qbytes;
    const size_t nseg_rows = (size_t)g_->kh * p->nseg;
    const size_t total = (size_t)G * nb2 * nseg_rows * seg_out;
    if (!wq_amx)
        return total;
    memset(wq_amx, 0, total);
    const int8_t *src = p->wq;
    for (int g = 0; g < G; g++)
        for (int b = 0; b < nb; b++)
            for (size_t s = 0; s < nseg_rows; s++, src += seg_in)
                memcpy(wq_amx + (((size_t)g * nb2 + b) * nseg_rows + s) * seg_out, src, seg_in);
    return total;
}
