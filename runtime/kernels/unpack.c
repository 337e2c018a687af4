/* Unpacking of b-bit codeword indices: LSB-first bit stream, see schema/README.md ("Packing").
 *
 * Eight codes of b bits fill exactly b bytes, so the stream is read b bytes at a time into one
 * 64-bit word and split with constant shifts: one specialised loop per b lets the compiler unroll.
 * The largest code is returned so the caller can check every code is < K in the same pass. */
#include <string.h>

#include "qcnn_kernels.h"

#define UNPACK_GROUPS(B)                                                                          \
    for (size_t g = 0; g < groups; g++) {                                                        \
        uint64_t word = 0;                                                                       \
        memcpy(&word, packed + g * (B), (B)); /* little-endian hosts; see below */               \
        for (int j = 0; j < 8; j++) {                                                            \
            uint8_t code = (uint8_t)(word & ((1u << (B)) - 1u));                                 \
            word >>= (B);                                                                        \
            out[g * 8 + j] = code;                                                               \
            largest = code > largest ? code : largest;                                           \
        }                                                                                        \
    }

uint8_t qcnn_unpack_indices(const uint8_t *packed, int bits, size_t count, uint8_t *out)
{
    uint8_t largest = 0;
    size_t groups = count / 8;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    groups = 0; /* the word trick assumes little-endian; the bit loop below is portable */
#endif
    switch (bits) {
    case 1: UNPACK_GROUPS(1) break;
    case 2: UNPACK_GROUPS(2) break;
    case 3: UNPACK_GROUPS(3) break;
    case 4: UNPACK_GROUPS(4) break;
    case 5: UNPACK_GROUPS(5) break;
    case 6: UNPACK_GROUPS(6) break;
    case 7: UNPACK_GROUPS(7) break;
    case 8:
        memcpy(out, packed, groups * 8);
        for (size_t i = 0; i < groups * 8; i++)
            largest = out[i] > largest ? out[i] : largest;
        break;
    default: return 0;
    }
    /* The tail (and big-endian hosts): one bit at a time. */
    for (size_t i = groups * 8; i < count; i++) {
        unsigned code = 0;
        for (int b = 0; b < bits; b++) {
            size_t bit = i * (size_t)bits + (size_t)b;
            code |= (unsigned)((packed[bit >> 3] >> (bit & 7)) & 1u) << b;
        }
        out[i] = (uint8_t)code;
        largest = (uint8_t)code > largest ? (uint8_t)code : largest;
    }
    return largest;
}
