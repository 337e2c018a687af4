/* Which ISA the dense ops run with. The CPU probe itself is isa.c's (qcnn_isa_detect /
 * qcnn_isa_select, CPUID + XGETBV); this file only maps a request onto it. The avx512 tier
 * (QCNN_ISA_AVX512VBMI) implies the F/BW/VL subset the dense-op kernels use. */
#include "ops.h"
#include "qcnn_kernels.h"

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
