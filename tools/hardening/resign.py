"""Recompute the checksums of a (mutated) .qcnn file.

A mutation that only changes bytes is caught by the CRCs long before any structural check runs.
To test the structural checks (offsets, sizes, shapes, wiring, union types) the harness re-signs
the file after mutating it: every buffer's crc32 field is set to the CRC of the bytes it now
points at (when that range is inside the file), then the footer CRC of the FlatBuffer is
recomputed. Best effort: parts too broken to locate are left as they are.
"""
from __future__ import annotations

import struct
import zlib

from qcnn import QcnnFormatError
from qcnn.schema import flatbuf
from qcnn.schema.layout import FILE_IDENTIFIER, FOOTER_SIZE


def resign(data: bytes) -> bytes:
    """`data` with buffer CRCs and the footer CRC made consistent with its current bytes."""
    size = len(data)
    if size < 8 + FOOTER_SIZE:
        return data
    out = bytearray(data)
    fb_size = struct.unpack_from("<I", out, size - 12)[0]
    if not 8 <= fb_size <= size - FOOTER_SIZE:
        return data
    try:
        meta = bytes(out[:fb_size])
        root = flatbuf.root(meta, fb_size, FILE_IDENTIFIER)
        for t in root.tables(10, "buffers") or []:
            off, n = t.u64(0, "offset"), t.u64(1, "size")
            at = t._field(2, 4, "crc32")
            if at is not None and off + n <= size:
                struct.pack_into("<I", out, at, zlib.crc32(bytes(out[off:off + n])) & 0xFFFFFFFF)
    except (QcnnFormatError, struct.error, OverflowError):
        pass  # buffer table unreadable: only the footer gets re-signed
    struct.pack_into("<I", out, size - 8, zlib.crc32(bytes(out[:fb_size])) & 0xFFFFFFFF)
    return bytes(out)
