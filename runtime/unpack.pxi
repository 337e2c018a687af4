# Unpacking of b-bit codeword indices (bit order: schema/README.md, "Packing"; C: kernels/unpack.c).

from libc.stdint cimport uint8_t


cdef extern from "qcnn_kernels.h":
    uint8_t qcnn_unpack_indices(const uint8_t *packed, int bits, size_t count, uint8_t *out) nogil


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
    if count == 0:
        return 0
    cdef uint8_t largest
    with nogil:
        largest = qcnn_unpack_indices(&packed[0], bits, <size_t>count, &out[0])
    return largest
