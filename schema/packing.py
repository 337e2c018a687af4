"""b-bit packing of codeword indices (b = ceil(log2 K), 1..8 bits).

Bit order (see schema/README.md): the indices form one little-endian bit stream. Element i occupies
stream bits [i*b, i*b + b), least significant bit first; stream bit j is bit (j % 8) of byte j // 8.
The last byte is zero-padded. So for b = 8 the stream is just the bytes, and for b = 4 element 0 is
the low nibble of byte 0.

The writer packs here with numpy; the runtime unpacks in compiled code (runtime/unpack.pxi), and
`unpack` below is the numpy reference used by tools and tests.
"""
from __future__ import annotations

import numpy as np


def index_bits(ncode: int) -> int:
    """Bits needed to store an index into a codebook of `ncode` codewords: ceil(log2 ncode)."""
    if not 2 <= ncode <= 256:
        raise ValueError(f"ncode (K) must be in 2..256, got {ncode}")
    return int(ncode - 1).bit_length()


def packed_nbytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def pack(indices: np.ndarray, bits: int) -> np.ndarray:
    """Pack a uint8 array (any shape, C order) into a uint8 byte stream of `bits` bits per element."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    flat = np.ascontiguousarray(indices, dtype=np.uint8).ravel()
    if flat.size and int(flat.max()) >> bits:
        raise ValueError(f"index value {int(flat.max())} does not fit in {bits} bits")
    if bits == 8:
        return flat.copy()
    # (count, bits) matrix of the bits of each element, LSB first, then one bit stream.
    bit_matrix = (flat[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(bit_matrix.ravel(), bitorder="little")


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of pack: a uint8 array of `count` indices."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    packed = np.frombuffer(packed, dtype=np.uint8) if not isinstance(packed, np.ndarray) else packed
    need = packed_nbytes(count, bits)
    if packed.size < need:
        raise ValueError(f"packed indices hold {packed.size} bytes, {need} needed for {count} x {bits} bits")
    if bits == 8:
        return np.array(packed[:count], dtype=np.uint8)
    stream = np.unpackbits(packed[:need], count=count * bits, bitorder="little").reshape(count, bits)
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    return (stream.astype(np.uint16) * weights).sum(axis=1, dtype=np.uint16).astype(np.uint8)
