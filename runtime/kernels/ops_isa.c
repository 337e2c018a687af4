/* Which ISA the dense ops run with. The CPU probe itself belongs to isa.c (qcnn_isa_detect /
 * qcnn_isa_select in qcnn_kernels.h); this file only maps a request onto it. */
#include "ops.h"
#include "qcnn_kernels.h"

/* ---- TEMPORARY stand-in (ops helper) until runtime/kernels/isa.c lands: weak, so the real
 * definitions in isa.c win at link time. Delete this block once isa.c is merged. ---- */
#if defined(__GNUC__)
__attribute__((weak)) qcnn_isa qcnn_isa_detect(void)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vbmi"))
        return QCNN_ISA_AVX512VBMI;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return QCNN_ISA_AVX2;
#endif
    return QCNN_ISA_GENERIC;
}
__attribute__((weak)) qcnn_isa qcnn_isa_select(void) { return qcnn_isa_detect(); }
#endif
/* ---- end of TEMPORARY stand-in ---- */

int qcnn_ops_resolve_isa(int requested)
{
    if (requested < 0)
        return (int)qcnn_isa_select();
    if (requested > (int)QCNN_ISA_AVX512VBMI)
        return -1;
#if !defined(__x86_64__)
    return requested == QCNN_ISA_GENERIC ? 0 : -1;
#else
    return requested <= (int)qcnn_isa_detect() ? requested : -1;
#endif
}
