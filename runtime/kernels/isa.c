/* Run-time ISA detection and selection for the LUT kernels.
 * The extension is compiled without -march, so ISA-specific kernels are only ever called after
 * these checks: the CPU must report the instructions (CPUID) AND the OS must save the wider
 * register state on context switches (XGETBV/XCR0), otherwise using ymm/zmm would fault. */
#include <stdlib.h>
#include <string.h>

#include "qcnn_kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#if defined(_MSC_VER)
#include <immintrin.h>
#include <intrin.h>
static void cpuid(int leaf, int sub, unsigned r[4]) {
    int v[4];
    __cpuidex(v, leaf, sub);
    for (int i = 0; i < 4; i++) r[i] = (unsigned)v[i];
}
static unsigned long long xgetbv0(void) { return _xgetbv(0); }
#else
#include <cpuid.h>
static void cpuid(int leaf, int sub, unsigned r[4]) {
    if (!__get_cpuid_count((unsigned)leaf, (unsigned)sub, &r[0], &r[1], &r[2], &r[3]))
        r[0] = r[1] = r[2] = r[3] = 0;
}
static unsigned long long xgetbv0(void) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#endif

qcnn_isa qcnn_isa_detect(void) {
    unsigned r1[4], r7[4];
    cpuid(0, 0, r1);
    unsigned maxleaf = r1[0];
    cpuid(1, 0, r1);
    const unsigned ecx1 = r1[2];
    const int osxsave = (ecx1 >> 27) & 1, avx = (ecx1 >> 28) & 1, fma = (ecx1 >> 12) & 1;
    if (!osxsave || !avx || maxleaf < 7) return QCNN_ISA_GENERIC;
    const unsigned long long xcr0 = xgetbv0();
    if ((xcr0 & 0x6) != 0x6) return QCNN_ISA_GENERIC; /* OS does not save xmm+ymm state */
    cpuid(7, 0, r7);
    const unsigned ebx7 = r7[1], ecx7 = r7[2];
    const int avx2 = (ebx7 >> 5) & 1;
    if (!(avx2 && fma)) return QCNN_ISA_GENERIC;
    const int f = (ebx7 >> 16) & 1, bw = (ebx7 >> 30) & 1, vl = (ebx7 >> 31) & 1;
    const int vbmi = (ecx7 >> 1) & 1;
    /* opmask (bit 5), upper zmm0-15 (bit 6), zmm16-31 (bit 7) must all be OS-enabled. */
    const int os512 = (xcr0 & 0xE0) == 0xE0;
    if (f && bw && vl && vbmi && os512) return QCNN_ISA_AVX512VBMI;
    return QCNN_ISA_AVX2;
}
/* CPUID leaf 7 (sub-leaf 0) into r7 if the OS saves the AVX-512 state (opmask, zmm); else 0. */
static int leaf7_with_avx512_os(unsigned r7[4]) {
    unsigned r[4];
    cpuid(0, 0, r);
    if (r[0] < 7) return 0;
    cpuid(1, 0, r);
    if (!((r[2] >> 27) & 1)) return 0; /* no OSXSAVE: xgetbv would fault */
    if ((xgetbv0() & 0xE6) != 0xE6) return 0;
    cpuid(7, 0, r7);
    return 1;
}
/* AVX-512 VNNI (vpdpbusd) on top of the F/BW/VL subset, OS-enabled; the int8 dense conv's
 * fast path. Separate from qcnn_isa: some AVX-512 VBMI CPUs lack VNNI and vice versa. */
int qcnn_cpu_has_avx512vnni(void) {
    unsigned r7[4];
    if (!leaf7_with_avx512_os(r7)) return 0;
    const unsigned ebx7 = r7[1], ecx7 = r7[2];
    return ((ebx7 >> 16) & 1) && ((ebx7 >> 30) & 1) && ((ebx7 >> 31) & 1) && ((ecx7 >> 11) & 1);
}
/* AVX-512 BF16 (vdpbf16ps: 32 multiply-adds per instruction, twice an fp32 FMA's) on top of the
 * F subset, OS-enabled; the int8 LUT path's table build. CPUID leaf 7 sub-leaf 1, EAX bit 5. */
int qcnn_cpu_has_avx512bf16(void) {
    unsigned r7[4], r[4];
    if (!leaf7_with_avx512_os(r7) || !((r7[1] >> 16) & 1) || r7[0] < 1) return 0;
    cpuid(7, 1, r);
    return (r[0] >> 5) & 1;
}
#else
qcnn_isa qcnn_isa_detect(void) { return QCNN_ISA_GENERIC; }
int qcnn_cpu_has_avx512vnni(void) { return 0; }
int qcnn_cpu_has_avx512bf16(void) { return 0; }
#endif

qcnn_isa qcnn_isa_select(void) {
    qcnn_isa best = qcnn_isa_detect();
    const char *e = getenv("QCNN_ISA");
    if (!e || !*e) return best;
    qcnn_isa want = best;
    if (!strcmp(e, "generic")) want = QCNN_ISA_GENERIC;
    else if (!strcmp(e, "avx2")) want = QCNN_ISA_AVX2;
    else if (!strcmp(e, "avx512vbmi")) want = QCNN_ISA_AVX512VBMI;
    /* Only ever lower: asking for an ISA the CPU lacks (or an unknown name) gives the best one. */
    return want < best ? want : best;
}

const char *qcnn_isa_name(qcnn_isa isa) {
    switch (isa) {
    case QCNN_ISA_GENERIC: return "generic";
    case QCNN_ISA_AVX2: return "avx2";
    case QCNN_ISA_AVX512VBMI: return "avx512vbmi";
    }
    return "unknown";
}
