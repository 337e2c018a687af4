"""Read and verify a .qcnn file (numpy only: this is the runtime's loader).

`open_qcnn(path)` memory-maps the file, verifies everything before anything is used, and returns
an ir.Model whose large arrays are zero-copy views of the mapping. Verification covers: footer,
identifier, version, the FlatBuffer's own offsets (schema/flatbuf.py), every buffer (inside the
file, 64-byte aligned, no overlap, CRC-32), zero padding between buffers (so every byte of the file
is covered by a check), array sizes against shapes, tensor wiring (each input computed before it
is read) and shapes. Any violation raises QcnnFormatError saying what and where.

Indices are left packed (QuantizedWeights.packed_indices) unless `unpack_indices=True`; the
runtime unpacks them in compiled code.
"""
from __future__ import annotations

import math
import mmap
import os
import stat
import struct
import sys
import zlib
from typing import List, Optional

import numpy as np

from qcnn import QcnnFormatError
from qcnn.schema import flatbuf, ir, packing, shapes
from qcnn.schema.layout import (
    ALIGNMENT,
    FILE_IDENTIFIER,
    FOOTER_MAGIC,
    FOOTER_SIZE,
    SUPPORTED_VERSIONS,
    align_up,
)

# Union and enum values (schema/qcnn.fbs; checked against the generated code in tests).
W_QUANTIZED, W_DENSE = 1, 2
OPT_CONV, OPT_FC, OPT_RELU, OPT_LRN, OPT_POOL, OPT_GAP, OPT_FLATTEN, OPT_SOFTMAX, OPT_CONCAT, OPT_ADD = range(1, 11)
(K_CONV, K_FC, K_RELU, K_LRN, K_MAXPOOL, K_AVGPOOL, K_GAP, K_FLATTEN, K_SOFTMAX, K_CONCAT, K_ADD) = range(11)
_KIND_OPTIONS = {
    K_CONV: OPT_CONV, K_FC: OPT_FC, K_RELU: OPT_RELU, K_LRN: OPT_LRN, K_MAXPOOL: OPT_POOL,
    K_AVGPOOL: OPT_POOL, K_GAP: OPT_GAP, K_FLATTEN: OPT_FLATTEN, K_SOFTMAX: OPT_SOFTMAX,
    K_CONCAT: OPT_CONCAT, K_ADD: OPT_ADD,
}
_CHANNEL_ORDERS = {0: "RGB", 1: "BGR", 2: "GRAY"}
_MAX_DIM = 1 << 24  # any single dimension / channel count beyond this is not a real CNN
_MAX_IMAGE_SIDE = 8192  # preprocessing resize / crop sides (pixels)


class QcnnFile:
    """A verified .qcnn file: `model` (ir.Model over views of the mapping) and the mapping itself."""

    def __init__(self, model: ir.Model, mapping, path: Optional[str], nbytes: int):
        self.model, self._mapping, self.path, self.nbytes = model, mapping, path, nbytes

    def close(self):
        """Release the mapping. Raises BufferError while arrays of the model are still in use."""
        if self._mapping is not None and hasattr(self._mapping, "close"):
            self.model = None
            self._mapping.close()
        self._mapping = None


def open_qcnn(path, unpack_indices: bool = False) -> QcnnFile:
    path = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO named like a model must not wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(path)
            if not stat.S_ISREG(st.st_mode):
                raise QcnnFormatError(f"{path}: not a regular file")
            size = st.st_size
            if size == 0:
                raise QcnnFormatError(f"{path}: empty file")
            mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)  # the mapping keeps its own reference
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such .qcnn file: {path}") from None
    except IsADirectoryError:
        raise QcnnFormatError(f"{path}: is a directory, not a .qcnn file") from None
    try:
        model = parse(mapping, unpack_indices=unpack_indices)
    except QcnnFormatError as exc:
        _close_quietly(mapping)
        raise QcnnFormatError(f"{path}: {exc}") from None
    except BaseException:
        _close_quietly(mapping)
        raise
    return QcnnFile(model, mapping, path, size)


def _close_quietly(mapping):
    try:
        mapping.close()
    except BufferError:  # views made before the error still exist; the GC unmaps later
        pass


def read_model(path, unpack_indices: bool = True) -> ir.Model:
    """Verified ir.Model of a file, indices unpacked to bytes (for tools and tests)."""
    return open_qcnn(path, unpack_indices=unpack_indices).model


def parse(data, unpack_indices: bool = False) -> ir.Model:
    """Verify and decode a whole .qcnn held in a bytes-like object (bytes, mmap, memoryview)."""
    size = len(data)
    if size < 8 + FOOTER_SIZE:
        raise QcnnFormatError(f"file is {size} bytes, too short to be a .qcnn (truncated?)")
    if bytes(data[4:8]) != FILE_IDENTIFIER:
        raise QcnnFormatError(f"not a .qcnn file: bytes 4..8 are {bytes(data[4:8])!r}, expected {FILE_IDENTIFIER!r}")
    magic = bytes(data[size - FOOTER_SIZE : size - FOOTER_SIZE + 4])
    fb_size, fb_crc, reserved = struct.unpack_from("<III", data, size - FOOTER_SIZE + 4)
    if magic != FOOTER_MAGIC or reserved != 0:
        raise QcnnFormatError(f"footer missing or damaged (file truncated or corrupt): last 16 bytes "
                              f"start with {magic!r}, expected {FOOTER_MAGIC!r}")
    if not 8 <= fb_size <= size - FOOTER_SIZE:
        raise QcnnFormatError(f"footer says the metadata is {fb_size} bytes, file has {size}")
    meta = bytes(data[:fb_size])  # small; a private copy can't change under us
    if zlib.crc32(meta) & 0xFFFFFFFF != fb_crc:
        raise QcnnFormatError("metadata checksum mismatch (corrupt FlatBuffer)")
    return _Decoder(data, size, meta, unpack_indices).model()


class _Decoder:
    def __init__(self, data, size, meta, unpack_indices):
        self.data, self.size, self.meta, self.unpack = data, size, meta, unpack_indices
        self.root = flatbuf.root(meta, len(meta), FILE_IDENTIFIER)
        self.buffers: List[tuple] = []
        self.used = set()

    # ------------------------------------------------------------------ buffers
    def _read_buffers(self):
        tables = self.root.tables(10, "buffers") or []
        if not tables:
            raise QcnnFormatError("Model.buffers is missing (buffer 0 must be the empty buffer)")
        spans = []
        for i, t in enumerate(tables):
            off, n, crc = t.u64(0, "offset"), t.u64(1, "size"), t.u32(2, "crc32")
            if i == 0:
                if off or n:
                    raise QcnnFormatError("buffer 0 must be empty")
            else:
                if off % ALIGNMENT:
                    raise QcnnFormatError(f"buffer {i}: offset {off} is not a multiple of {ALIGNMENT}")
                if off < align_up(len(self.meta)) or off + n > self.size - FOOTER_SIZE:
                    raise QcnnFormatError(f"buffer {i}: bytes {off}..{off + n} are outside the data section "
                                          f"{align_up(len(self.meta))}..{self.size - FOOTER_SIZE} (truncated?)")
                spans.append((off, n, i))
            self.buffers.append((off, n, crc))
        # Buffers must not overlap, and every byte between them must be zero padding.
        pos = len(self.meta)
        for off, n, i in sorted(spans):
            if off < pos:
                raise QcnnFormatError(f"buffer {i}: overlaps the previous buffer or the metadata")
            self._check_zero(pos, off)
            pos = off + n
        self._check_zero(pos, self.size - FOOTER_SIZE)
        for off, n, i in spans:
            if zlib.crc32(memoryview(self.data)[off : off + n]) & 0xFFFFFFFF != self.buffers[i][2]:
                raise QcnnFormatError(f"buffer {i} (bytes {off}..{off + n}): checksum mismatch (corrupt data)")

    def _check_zero(self, start, end):
        if end - start >= ALIGNMENT:  # the writer only pads up to the next multiple of 64
            raise QcnnFormatError(f"unexpected gap of {end - start} bytes at {start} between buffers")
        if end > start and any(bytes(self.data[start:end])):
            raise QcnnFormatError(f"padding bytes {start}..{end} are not zero (corrupt file)")

    def array(self, index: int, dtype: str, shape, what: str) -> np.ndarray:
        if not 0 < index < len(self.buffers):
            raise QcnnFormatError(f"{what}: buffer index {index} does not exist ({len(self.buffers)} buffers)")
        if index in self.used:
            raise QcnnFormatError(f"{what}: buffer {index} is used twice")
        self.used.add(index)
        off, n, _ = self.buffers[index]
        itemsize = np.dtype(dtype).itemsize
        count = math.prod(shape)
        if n != count * itemsize:
            raise QcnnFormatError(f"{what}: buffer {index} holds {n} bytes, shape {tuple(shape)} needs {count * itemsize}")
        arr = np.frombuffer(self.data, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=off)
        if sys.byteorder != "little":
            arr = arr.astype(np.dtype(dtype).newbyteorder("="))
        return arr.reshape(shape)

    # ------------------------------------------------------------------ tables
    def _positive(self, value, what, lo=1, hi=_MAX_DIM):
        if not lo <= value <= hi:
            raise QcnnFormatError(f"{what} = {value} is out of range {lo}..{hi}")
        return value

    def _weights(self, t, type_slot, slot, dense_shape, groups, kh, kw, cin_g, cout_g, what):
        wtype = t.u8(type_slot, "weights_type")
        wt = t.table(slot, "weights", required=True)
        if wtype == W_DENSE:
            return self.array(wt.u32(0, "buffer"), "f4", dense_shape, what + " weights")
        if wtype != W_QUANTIZED:
            raise QcnnFormatError(f"{what}: unknown weights type {wtype}")
        subvec = self._positive(wt.i32(0, "subvec"), what + " subvec")
        nsub = self._positive(wt.i32(1, "nsub"), what + " nsub")
        ncode = self._positive(wt.i32(2, "ncode"), what + " ncode (K)", 2, 256)
        bits = wt.i32(3, "index_bits")
        if bits != packing.index_bits(ncode):
            raise QcnnFormatError(f"{what}: index_bits {bits} != ceil(log2 K={ncode})")
        if nsub != -(-cin_g // subvec):
            raise QcnnFormatError(f"{what}: nsub {nsub} != ceil({cin_g} input channels / subvec {subvec})")
        codebooks = self.array(wt.u32(4, "codebooks"), "f4", (groups, nsub, ncode, subvec), what + " codebooks")
        index_shape = (groups, kh, kw, nsub, cout_g)
        count = math.prod(index_shape)
        packed = self.array(wt.u32(5, "indices"), "u1", (packing.packed_nbytes(count, bits),), what + " indices")
        indices = None
        if self.unpack:
            indices = packing.unpack(packed, bits, count).reshape(index_shape)
            if indices.size and int(indices.max()) >= ncode:
                raise QcnnFormatError(f"{what}: index {int(indices.max())} >= K={ncode}")
        return ir.QuantizedWeights(subvec, nsub, ncode, codebooks, indices, packed_indices=packed,
                                   index_shape=index_shape)

    def _bias(self, index, n, what):
        return None if index == 0 else self.array(index, "f4", (n,), what + " bias")

    def _operator(self, i, t, names):
        what = f"operator {i}"
        name = t.string(1, "name", "")
        if name:
            what = f"operator {i} ({name!r})"
        kind = t.u8(0, "kind")
        if kind not in _KIND_OPTIONS:
            raise QcnnFormatError(f"{what}: unknown operator kind {kind}")
        if t.u8(4, "options_type") != _KIND_OPTIONS[kind]:
            raise QcnnFormatError(f"{what}: options type {t.u8(4, 'options_type')} does not match kind {kind}")
        o = t.table(5, "options", required=True)

        def tensor_names(slot, field):
            ids = t.i32s(slot, field) or []
            for j in ids:
                if not 0 <= j < len(names):
                    raise QcnnFormatError(f"{what}: {field} refers to tensor {j}, the graph has {len(names)}")
            return [names[j] for j in ids]

        inputs, outputs = tensor_names(2, "inputs"), tensor_names(3, "outputs")
        if len(outputs) != 1:
            raise QcnnFormatError(f"{what}: needs exactly one output, has {len(outputs)}")
        common = dict(name=name, inputs=inputs, outputs=outputs)
        if kind == K_CONV:
            cin, cout = self._positive(o.i32(0, "cin"), what + " cin"), self._positive(o.i32(1, "cout"), what + " cout")
            kh, kw = self._positive(o.i32(2, "kernel_h"), what + " kernel_h", 1, 4096), self._positive(o.i32(3, "kernel_w"), what + " kernel_w", 1, 4096)
            g = self._positive(o.i32(10, "groups", 1), what + " groups")
            if cin % g or cout % g:
                raise QcnnFormatError(f"{what}: groups {g} does not divide cin {cin} / cout {cout}")
            weights = self._weights(o, 11, 12, (cout, cin // g, kh, kw), g, kh, kw, cin // g, cout // g, what)
            return ir.Conv(cin=cin, cout=cout, kernel=(kh, kw), strides=(o.i32(4, "stride_h", 1), o.i32(5, "stride_w", 1)),
                           pads=(o.i32(6, "pad_top"), o.i32(7, "pad_left"), o.i32(8, "pad_bottom"), o.i32(9, "pad_right")),
                           groups=g, weights=weights, bias=self._bias(o.u32(13, "bias"), cout, what),
                           relu=o.boolean(14, "fused_relu"), **common)
        if kind == K_FC:
            fin, fout = self._positive(o.i32(0, "in_features"), what + " in_features"), self._positive(o.i32(1, "out_features"), what + " out_features")
            weights = self._weights(o, 2, 3, (fout, fin), 1, 1, 1, fin, fout, what)
            return ir.Gemm(in_features=fin, out_features=fout, weights=weights,
                           bias=self._bias(o.u32(4, "bias"), fout, what), relu=o.boolean(5, "fused_relu"), **common)
        if kind == K_LRN:
            size = self._positive(o.i32(0, "size"), what + " size", 1, 4096)
            vals = [o.f32(1, "alpha"), o.f32(2, "beta"), o.f32(3, "bias")]
            if not all(math.isfinite(v) for v in vals):
                raise QcnnFormatError(f"{what}: LRN alpha/beta/bias must be finite, got {vals}")
            return ir.LRN(size=size, alpha=vals[0], beta=vals[1], bias=vals[2], **common)
        if kind in (K_MAXPOOL, K_AVGPOOL):
            kw_ = dict(kernel=(o.i32(0, "kernel_h"), o.i32(1, "kernel_w")), strides=(o.i32(2, "stride_h", 1), o.i32(3, "stride_w", 1)),
                       pads=(o.i32(4, "pad_top"), o.i32(5, "pad_left"), o.i32(6, "pad_bottom"), o.i32(7, "pad_right")),
                       ceil_mode=o.boolean(8, "ceil_mode"))
            if kind == K_AVGPOOL:
                return ir.AveragePool(count_include_pad=o.boolean(9, "count_include_pad"), **kw_, **common)
            return ir.MaxPool(**kw_, **common)
        if kind == K_ADD:
            return ir.Add(relu=o.boolean(0, "fused_relu"), **common)
        simple = {K_RELU: ir.Relu, K_GAP: ir.GlobalAveragePool, K_FLATTEN: ir.Flatten, K_SOFTMAX: ir.Softmax,
                  K_CONCAT: ir.Concat}
        return simple[kind](**common)

    def model(self) -> ir.Model:
        r = self.root
        version = r.u32(0, "version")
        if version not in SUPPORTED_VERSIONS:
            raise QcnnFormatError(f"format version {version} is not supported (this reader knows {SUPPORTED_VERSIONS})")
        if r.u64(3, "file_size") != self.size:
            raise QcnnFormatError(f"file is {self.size} bytes, its header says {r.u64(3, 'file_size')} (truncated?)")
        self._read_buffers()

        graph = r.table(9, "graph", required=True)
        tensors = []
        for i, t in enumerate(graph.tables(0, "tensors") or []):
            name = t.string(0, "name", "")
            shape = tuple(t.i32s(1, "shape") or ())
            if not name or len(shape) not in (1, 3) or min(shape) < 1 or max(shape) > _MAX_DIM:
                raise QcnnFormatError(f"tensor {i} ({name!r}): bad name or shape {shape}")
            tensors.append(ir.TensorInfo(name, shape))
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise QcnnFormatError("tensor names are not unique")
        if not tensors:
            raise QcnnFormatError("the graph has no tensors")
        input_index = graph.i32(1, "input")
        if not 0 <= input_index < len(tensors):
            raise QcnnFormatError(f"graph input refers to tensor {input_index}, the graph has {len(tensors)}")
        input_name = r.string(4, "input_name", "")
        if input_name != names[input_index]:
            raise QcnnFormatError(f"input_name {input_name!r} is not the graph input tensor {names[input_index]!r}")
        input_shape = tuple(r.i32s(5, "input_shape") or ())
        if input_shape != (-1,) + tuple(tensors[input_index].shape):
            raise QcnnFormatError(f"input_shape {input_shape} does not match the input tensor {tensors[input_index].shape}")
        if math.prod(input_shape[1:]) > shapes.MAX_TENSOR_ELEMENTS:  # as for every operator output
            raise QcnnFormatError(f"input_shape {input_shape}: more than {shapes.MAX_TENSOR_ELEMENTS} elements per image")
        if r.i8(6, "input_dtype") != 0:
            raise QcnnFormatError(f"input dtype {r.i8(6, 'input_dtype')} is not supported (float32 only)")

        operators = [self._operator(i, t, names) for i, t in enumerate(graph.tables(3, "operators") or [])]
        if not operators:
            raise QcnnFormatError("the graph has no operators")
        outputs = [names[j] if 0 <= j < len(names) else None for j in graph.i32s(2, "outputs") or []]
        if not outputs or None in outputs:
            raise QcnnFormatError(f"graph outputs {graph.i32s(2, 'outputs')} are missing or refer to no tensor")

        preprocessing = None
        p = r.table(7, "preprocessing")
        if p is not None:
            order = p.i8(3, "channel_order")
            if order not in _CHANNEL_ORDERS:
                raise QcnnFormatError(f"preprocessing: unknown channel order {order}")
            mean, std = p.f32s(0, "mean") or [], p.f32s(1, "std") or []
            if len(mean) != len(std) or not all(math.isfinite(v) for v in mean + std) or any(v == 0 for v in std):
                raise QcnnFormatError(f"preprocessing: bad mean {mean} / std {std}")
            # Image sizes the runtime will allocate (runtime/preprocess.py): keep a file from
            # choosing a multi-gigabyte resize or crop.
            sizes = {"resize_shorter": p.i32(4, "resize_shorter"), "crop_h": p.i32(5, "crop_h"),
                     "crop_w": p.i32(6, "crop_w")}
            for field, value in sizes.items():
                if not 0 <= value <= _MAX_IMAGE_SIDE:
                    raise QcnnFormatError(f"preprocessing: {field} = {value} is out of range 0..{_MAX_IMAGE_SIDE}")
            preprocessing = ir.Preprocessing(mean=mean, std=std, scale=p.f32(2, "scale", 1.0),
                                             channel_order=_CHANNEL_ORDERS[order],
                                             resize_shorter=sizes["resize_shorter"],
                                             crop=(sizes["crop_h"], sizes["crop_w"]))
        metadata = {}
        for kv in r.tables(11, "metadata") or []:
            metadata[kv.string(0, "key", "")] = kv.string(1, "value", "")

        model = ir.Model(input_name=input_name, input_shape=tuple(tensors[input_index].shape), tensors=tensors,
                         operators=operators, outputs=outputs, producer=r.string(1, "producer", ""),
                         source_sha256=r.string(2, "source_sha256", ""), preprocessing=preprocessing,
                         labels=r.strings(8, "labels"), metadata=metadata, version=version)
        self._check_graph(model)
        return model

    def _check_graph(self, model: ir.Model):
        produced = {model.input_name}
        for op in model.operators:
            if op.outputs[0] in produced:
                raise QcnnFormatError(f"operator {op.name!r}: tensor {op.outputs[0]!r} is written twice")
            produced.add(op.outputs[0])
        try:
            inferred = shapes.infer_shapes(model)
        except ValueError as exc:
            raise QcnnFormatError(f"inconsistent graph: {exc}") from None
        for op, shape in zip(model.operators, inferred):
            declared = model.tensor(op.outputs[0]).shape
            if tuple(declared) != tuple(shape):
                raise QcnnFormatError(f"operator {op.name!r}: output {op.outputs[0]!r} is declared {tuple(declared)}, "
                                      f"the operator computes {tuple(shape)}")
        for name in model.outputs:
            if name not in produced:
                raise QcnnFormatError(f"graph output {name!r} is never computed")
