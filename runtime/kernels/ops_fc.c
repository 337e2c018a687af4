/* Dense fully-connected layer y = W x + b (W [out][in], ONNX Gemm transB=1), fused ReLU.
 * One image is a matrix-vector product: memory-bound on W, so the fast paths just stream W
 * once with wide loads, 4 output rows at a time sharing each load of x. */
#include "ops.h"
#include "qcnn_kernels.h"

static inline float finish(const qcnn_dfc_params *p, int o, float acc)
{
    if (p->bias)
        acc += p->bias[o];
    return (p->relu && acc < 0.0f) ? 0.0f : acc;
}

void qcnn_dfc_ref(const qcnn_dfc_params *p, const float *x, float *y)
{
    for (int o = 0; o < p->out; o++) {
        const float *w = p->weight + (size_t)o * p->in;
        float acc = 0.0f;
        for (ptrdiff_t i = 0; i < p->in; i++)
            acc += w[i] * x[i];
        y[o] = finish(p, o, acc);
    }
}

/* portable: 8 independent partial sums per row (vectorisable without reassociation) */
static void dfc_generic(const qcnn_dfc_params *p, const float *x, float *y)
{
    const int n = p->in, n8 = n & ~7;
    for (int o = 0; o < p->out; o++) {
        const float *w = p->weight + (size_t)o * n;
        float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (ptrdiff_t i = 0; i < n8; i += 8)
            for (ptrdiff_t l = 0; l < 8; l++)
                s[l] += w[i + l] * x[i + l];
        float acc = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
        for (ptrdiff_t i = n8; i < n; i++)
            acc += w[i] * x[i];
        y[o] = finish(p, o, acc);
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

__attribute__((target("avx512f,avx512bw,avx512vl"))) static void
dfc_avx512(const qcnn_dfc_params *p, const float *x, float *y)
{
    const int n = p->in;
    const __mmask16 tail = (__mmask16)((1u << (n & 15)) - 1u);
    const int n16 = n & ~15;
    int o = 0;
    for (; o + 4 <= p->out; o += 4) {
        const float *w0 = p->weight + (size_t)o * n, *w1 = w0 + n, *w2 = w1 + n, *w3 = w2 + n;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < n16; i += 16) {
            const __m512 xv = _mm512_loadu_ps(x + i);
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + i), xv, a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w1 + i), xv, a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w2 + i), xv, a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w3 + i), xv, a3);
        }
        if (tail) {
            const __m512 xv = _mm512_maskz_loadu_ps(tail, x + n16);
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w0 + n16), xv, a0);
            a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w1 + n16), xv, a1);
            a2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w2 + n16), xv, a2);
            a3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w3 + n16), xv, a3);
        }
        y[o] = finish(p, o, _mm512_reduce_add_ps(a0));
        y[o + 1] = finish(p, o + 1, _mm512_reduce_add_ps(a1));
        y[o + 2] = finish(p, o + 2, _mm512_reduce_add_ps(a2));
        y[o + 3] = finish(p, o + 3, _mm512_reduce_add_ps(a3));
    }
    for (; o < p->out; o++) {
        const float *w0 = p->weight + (size_t)o * n;
        __m512 a0 = _mm512_setzero_ps();
        for (int i = 0; i < n16; i += 16)
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + i), _mm512_loadu_ps(x + i), a0);
        if (tail)
            a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, w0 + n16),
                                 _mm512_maskz_loadu_ps(tail, x + n16), a0);
        y[o] = finish(p, o, _mm512_reduce_add_ps(a0));
    }
}

__attribute__((target("avx2,fma"))) static float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) static void dfc_avx2(const qcnn_dfc_params *p, const float *x,
                                                          float *y)
{
    const int n = p->in, n8 = n & ~7;
    int o = 0;
    for (; o + 4 <= p->out; o += 4) {
        const float *w0 = p->weight + (size_t)o * n, *w1 = w0 + n, *w2 = w1 + n, *w3 = w2 + n;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < n8; i += 8) {
            const __m256 xv = _mm256_loadu_ps(x + i);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + i), xv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + i), xv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + i), xv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + i), xv, a3);
        }
        float s0 = hsum256(a0), s1 = hsum256(a1), s2 = hsum256(a2), s3 = hsum256(a3);
        for (int i = n8; i < n; i++) {
            s0 += w0[i] * x[i];
            s1 += w1[i] * x[i];
            s2 += w2[i] * x[i];
            s3 += w3[i] * x[i];
        }
        y[o] = finish(p, o, s0);
        y[o + 1] = finish(p, o + 1, s1);
        y[o + 2] = finish(p, o + 2, s2);
        y[o + 3] = finish(p, o + 3, s3);
    }
    for (; o < p->out; o++) {
        const float *w0 = p->weight + (size_t)o * n;
        __m256 a0 = _mm256_setzero_ps();
        for (int i = 0; i < n8; i += 8)
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + i), _mm256_loadu_ps(x + i), a0);
        float s0 = hsum256(a0);
        for (int i = n8; i < n; i++)
            s0 += w0[i] * x[i];
        y[o] = finish(p, o, s0);
    }
}
#endif

void qcnn_dfc_run(const qcnn_dfc_params *p, int isa, const float *x, float *y)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (isa == QCNN_ISA_AVX512VBMI) {
        dfc_avx512(p, x, y);
        return;
    }
    if (isa == QCNN_ISA_AVX2) {
        dfc_avx2(p, x, y);
        return;
    }
#else
    (void)isa;
#endif
    dfc_generic(p, x, y);
}
