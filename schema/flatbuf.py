"""A small, bounds-checked FlatBuffers reader (read side only, no dependencies).

The runtime must not depend on the `flatbuffers` package, and a .qcnn may come from anywhere, so
every offset is checked against the buffer before it is followed: a hostile file raises
QcnnFormatError naming the field, never reads out of bounds. FlatBuffers offsets (uoffset) only
point forward, and the schema has no recursive tables, so walking a file always terminates.

Field slots are the field's position in its table in schema/qcnn.fbs (a union field takes two
slots: its `_type` byte, then the value). tests/test_schema.py checks this reader against the
flatc-generated code.
"""
from __future__ import annotations

import struct

from qcnn import QcnnFormatError

_U8 = struct.Struct("<B")
_I8 = struct.Struct("<b")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_F32 = struct.Struct("<f")


class Table:
    """A table at absolute position `pos` of `buf` (a bytes-like object of `size` bytes)."""

    __slots__ = ("buf", "size", "pos", "what", "_vt", "_vtlen")

    def __init__(self, buf, size: int, pos: int, what: str):
        self.buf, self.size, self.pos, self.what = buf, size, pos, what
        _need(size, pos, 4, what)
        vt = pos - _I32.unpack_from(buf, pos)[0]
        _need(size, vt, 4, what + " vtable")
        vtlen, tlen = _U16.unpack_from(buf, vt)[0], _U16.unpack_from(buf, vt + 2)[0]
        if vtlen < 4 or vtlen % 2:
            raise QcnnFormatError(f"{what}: bad vtable length {vtlen} at byte {vt}")
        _need(size, vt, vtlen, what + " vtable")
        _need(size, pos, max(tlen, 4), what)
        self._vt, self._vtlen = vt, vtlen

    def _field(self, slot: int, width: int, name: str):
        """Absolute position of a field, or None if absent."""
        entry = 4 + 2 * slot
        if entry + 2 > self._vtlen:
            return None
        off = _U16.unpack_from(self.buf, self._vt + entry)[0]
        if off == 0:
            return None
        at = self.pos + off
        _need(self.size, at, width, f"{self.what}.{name}")
        return at

    def scalar(self, slot: int, fmt: struct.Struct, default, name: str):
        at = self._field(slot, fmt.size, name)
        return default if at is None else fmt.unpack_from(self.buf, at)[0]

    def u8(self, slot, name, default=0):
        return self.scalar(slot, _U8, default, name)

    def i8(self, slot, name, default=0):
        return self.scalar(slot, _I8, default, name)

    def boolean(self, slot, name, default=False):
        return bool(self.scalar(slot, _U8, int(default), name))

    def i32(self, slot, name, default=0):
        return self.scalar(slot, _I32, default, name)

    def u32(self, slot, name, default=0):
        return self.scalar(slot, _U32, default, name)

    def u64(self, slot, name, default=0):
        return self.scalar(slot, _U64, default, name)

    def f32(self, slot, name, default=0.0):
        return self.scalar(slot, _F32, default, name)

    def _target(self, slot: int, name: str):
        at = self._field(slot, 4, name)
        if at is None:
            return None
        target = at + _U32.unpack_from(self.buf, at)[0]
        _need(self.size, target, 4, f"{self.what}.{name}")
        return target

    def table(self, slot: int, name: str, required: bool = False):
        target = self._target(slot, name)
        if target is None:
            if required:
                raise QcnnFormatError(f"{self.what}.{name} is missing")
            return None
        return Table(self.buf, self.size, target, f"{self.what}.{name}")

    def string(self, slot: int, name: str, default=None):
        target = self._target(slot, name)
        if target is None:
            return default
        return _string_at(self.buf, self.size, target, f"{self.what}.{name}")

    def _vector(self, slot: int, elem_size: int, name: str):
        target = self._target(slot, name)
        if target is None:
            return None, 0
        n = _U32.unpack_from(self.buf, target)[0]
        _need(self.size, target + 4, n * elem_size, f"{self.what}.{name} ({n} elements)")
        return target + 4, n

    def scalars(self, slot: int, fmt: struct.Struct, name: str):
        start, n = self._vector(slot, fmt.size, name)
        if start is None:
            return None
        return list(struct.unpack_from(f"<{n}{fmt.format[-1]}", self.buf, start))

    def i32s(self, slot, name):
        return self.scalars(slot, _I32, name)

    def f32s(self, slot, name):
        return self.scalars(slot, _F32, name)

    def _elements(self, slot: int, name: str, read):
        """A vector of offsets: read(target, what) for each element, or None if the field is absent."""
        start, n = self._vector(slot, 4, name)
        if start is None:
            return None
        out = []
        for i in range(n):
            at = start + 4 * i
            out.append(read(at + _U32.unpack_from(self.buf, at)[0], f"{self.what}.{name}[{i}]"))
        return out

    def tables(self, slot: int, name: str):
        return self._elements(slot, name, lambda target, what: Table(self.buf, self.size, target, what))

    def strings(self, slot: int, name: str):
        return self._elements(slot, name, lambda target, what: _string_at(self.buf, self.size, target, what))


def _need(size: int, pos: int, length: int, what: str):
    if pos < 0 or length < 0 or pos + length > size:
        raise QcnnFormatError(f"{what}: offset {pos} + {length} bytes is outside the metadata ({size} bytes)")


def _string_at(buf, size: int, target: int, what: str) -> str:
    _need(size, target, 4, what)
    n = _U32.unpack_from(buf, target)[0]
    _need(size, target + 4, n + 1, what)  # + the terminating NUL FlatBuffers always writes
    raw = bytes(buf[target + 4 : target + 4 + n])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise QcnnFormatError(f"{what}: not valid UTF-8") from None


def root(buf, size: int, identifier: bytes) -> Table:
    """The root table of a FlatBuffer of `size` bytes with a 4-byte file identifier."""
    if size < 8:
        raise QcnnFormatError(f"metadata is {size} bytes, too short for a FlatBuffer")
    if bytes(buf[4:8]) != identifier:
        raise QcnnFormatError(f"not a .qcnn file: bytes 4..8 are {bytes(buf[4:8])!r}, expected {identifier!r}")
    return Table(buf, size, _U32.unpack_from(buf, 0)[0], "Model")
