# Unpacking of b-bit codeword indices (bit order: schema/README.md, "Packing").

from libc.stdint cimport uint8_t, uint64_t


def unpack_indices(const uint8_t[::1] packed, int bits, Py_ssize_t count, uint8_t[::1] out):
    """Unpack `count` codes of `bits` bits (LSB-first bit stream) into `out`; returns the largest code.

    Raises ValueError if the buffers are too small, so a caller never reads past the mapping.
    """
    if bits < 1 or bits > 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if count < 0 or out.shape[0] < count:
        raise ValueError(f"output holds {out.shape[0]} codes, {count} requested")
    if packed.shape[0] < (count * bits + 7) // 8:
        raise ValueError(f"packed indices hold {packed.shape[0]} bytes, {(count * bits + 7) // 8} needed")
    cdef Py_ssize_t i, byte_pos = 0
    cdef uint64_t acc = 0          # bit reservoir, next code in its low bits
    cdef int have = 0              # valid bits in acc
    cdef uint64_t mask = (1 << bits) - 1
    cdef uint8_t code, largest = 0
    with nogil:
        for i in range(count):
            while have < bits:
                acc |= (<uint64_t>packed[byte_pos]) << have
                byte_pos += 1
                have += 8
            code = <uint8_t>(acc & mask)
            acc >>= bits
            have -= bits
            out[i] = code
            if code > largest:
                largest = code
    return largest
