/* AVX-512 VNNI helper shared by the int8 dense conv (ops_iconv_x86.c) and the FC quad kernel
 * (qlut_avx512.c). Include only from code compiled with the avx512vnni target attribute. */
#ifndef QCNN_VNNI_X86_H
#define QCNN_VNNI_X86_H

/* acc += the four u8 x s8 products of each int32 lane of x and w (vpdpbusd), in place.
 * Inline asm because gcc, given the intrinsic, copies every accumulator before and after each
 * vpdpbusd and spills the rest to the stack (measured on the int8 conv: 1.6x fp32 speed instead
 * of 3.4x). */
#define DPBUSD(acc, x, w) __asm__("vpdpbusd %[wv], %[xv], %[av]" : [av] "+v"(acc) : [xv] "v"(x), [wv] "v"(w))

#endif
