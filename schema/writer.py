"""Write an ir.Model as a .qcnn file (needs the `flatbuffers` package: the converter's side only).

File layout (schema/README.md has the full description):
    [FlatBuffer: graph + metadata][zero pad to 64][buffer 1][pad]...[buffer n][pad][16-byte footer]
Large arrays live outside the FlatBuffer at 64-byte aligned absolute offsets so a reader can mmap
the file and hand them to SIMD code without a copy. The FlatBuffer holds those offsets, which
depend on its own size: it is built twice, the second time with the real offsets. All scalar
fields are written even when they equal their default (ForceDefaults), so both builds have the
same size.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import zlib
from typing import List, Optional

import numpy as np

from qcnn.schema import ir, packing, shapes
from qcnn.schema.layout import ALIGNMENT, FOOTER_MAGIC, FOOTER_SIZE, align_up

try:
    import flatbuffers
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "writing .qcnn files needs the 'flatbuffers' package: pip install 'qcnn[convert]'"
    ) from exc

from qcnn.schema.fb import (
    AddOptions,
    Buffer,
    ConcatOptions,
    Conv2DOptions,
    DenseWeights,
    FlattenOptions,
    FullyConnectedOptions,
    GlobalAveragePoolOptions,
    Graph,
    KeyValue,
    LRNOptions,
    Model,
    Operator,
    Pool2DOptions,
    Preprocessing,
    QuantizedWeights,
    ReluOptions,
    SoftmaxOptions,
    Tensor,
)
from qcnn.schema.fb.ChannelOrder import ChannelOrder
from qcnn.schema.fb.OperatorKind import OperatorKind
from qcnn.schema.fb.OperatorOptions import OperatorOptions
from qcnn.schema.fb.Weights import Weights

PRODUCER = "qcnn"


class _Buffers:
    """Collects the large arrays; buffer 0 is the empty buffer, as in TFLite."""

    def __init__(self):
        self.blobs: List[bytes] = [b""]

    def add(self, array: Optional[np.ndarray], dtype: str) -> int:
        if array is None:
            return 0
        data = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
        self.blobs.append(data)
        return len(self.blobs) - 1

    def layout(self, data_start: int):
        """(offset, size) of every buffer when the data section starts at data_start."""
        spans, pos = [], data_start
        for i, blob in enumerate(self.blobs):
            if i == 0:
                spans.append((0, 0))
                continue
            spans.append((pos, len(blob)))
            pos = align_up(pos + len(blob), ALIGNMENT)
        return spans, pos


def _check_array(name: str, array: np.ndarray, shape, what: str):
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name}: {what} has shape {tuple(array.shape)}, expected {tuple(shape)}")


def _weights(b, bufs: _Buffers, op, weights, dense_shape, index_shape):
    """Serialize ir weights; returns (union type, offset)."""
    if isinstance(weights, ir.QuantizedWeights):
        q = weights
        bits = packing.index_bits(q.ncode)
        _check_array(op.name, q.codebooks, (index_shape[0], q.nsub, q.ncode, q.subvec), "codebooks")
        if q.packed_indices is not None:
            packed = np.asarray(q.packed_indices, dtype=np.uint8)
            count = int(np.prod(index_shape))
            if packed.size != packing.packed_nbytes(count, bits):
                raise ValueError(f"{op.name}: packed indices have {packed.size} bytes")
        else:
            _check_array(op.name, q.indices, index_shape, "indices")
            if q.indices.size and int(q.indices.max()) >= q.ncode:
                raise ValueError(f"{op.name}: index {int(q.indices.max())} >= K={q.ncode}")
            packed = packing.pack(q.indices, bits)
        cb = bufs.add(q.codebooks, "f4")
        ix = bufs.add(packed, "u1")
        QuantizedWeights.Start(b)
        QuantizedWeights.AddSubvec(b, q.subvec)
        QuantizedWeights.AddNsub(b, q.nsub)
        QuantizedWeights.AddNcode(b, q.ncode)
        QuantizedWeights.AddIndexBits(b, bits)
        QuantizedWeights.AddCodebooks(b, cb)
        QuantizedWeights.AddIndices(b, ix)
        return Weights.QuantizedWeights, QuantizedWeights.End(b)
    if weights is None:
        raise ValueError(f"{op.name}: missing weights")
    _check_array(op.name, weights, dense_shape, "dense weights")
    buf = bufs.add(weights, "f4")
    DenseWeights.Start(b)
    DenseWeights.AddBuffer(b, buf)
    return Weights.DenseWeights, DenseWeights.End(b)


def _int_vector(b, values):
    b.StartVector(4, len(values), 4)
    for v in reversed(list(values)):
        b.PrependInt32(int(v))
    return b.EndVector()


def _float_vector(b, values):
    b.StartVector(4, len(values), 4)
    for v in reversed(list(values)):
        b.PrependFloat32(float(v))
    return b.EndVector()


def _offset_vector(b, offsets):
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _operator_options(b, bufs, op):
    """Serialize one operator's options table; returns (kind, union type, offset)."""
    if isinstance(op, ir.Conv):
        kh, kw = op.kernel
        g = op.groups
        if op.cin % g or op.cout % g:
            raise ValueError(f"{op.name}: channels {op.cin}->{op.cout} not divisible by groups {g}")
        dense_shape = (op.cout, op.cin // g, kh, kw)
        wq = op.weights
        nsub = wq.nsub if isinstance(wq, ir.QuantizedWeights) else 0
        index_shape = (g, kh, kw, nsub, op.cout // g)
        wt, woff = _weights(b, bufs, op, op.weights, dense_shape, index_shape)
        if op.bias is not None:
            _check_array(op.name, op.bias, (op.cout,), "bias")
        bias = bufs.add(op.bias, "f4")
        Conv2DOptions.Start(b)
        Conv2DOptions.AddCin(b, op.cin)
        Conv2DOptions.AddCout(b, op.cout)
        Conv2DOptions.AddKernelH(b, kh)
        Conv2DOptions.AddKernelW(b, kw)
        Conv2DOptions.AddStrideH(b, op.strides[0])
        Conv2DOptions.AddStrideW(b, op.strides[1])
        Conv2DOptions.AddPadTop(b, op.pads[0])
        Conv2DOptions.AddPadLeft(b, op.pads[1])
        Conv2DOptions.AddPadBottom(b, op.pads[2])
        Conv2DOptions.AddPadRight(b, op.pads[3])
        Conv2DOptions.AddGroups(b, g)
        Conv2DOptions.AddWeightsType(b, wt)
        Conv2DOptions.AddWeights(b, woff)
        Conv2DOptions.AddBias(b, bias)
        Conv2DOptions.AddFusedRelu(b, bool(op.relu))
        return OperatorKind.CONV_2D, OperatorOptions.Conv2DOptions, Conv2DOptions.End(b)
    if isinstance(op, ir.Gemm):
        wq = op.weights
        nsub = wq.nsub if isinstance(wq, ir.QuantizedWeights) else 0
        index_shape = (1, 1, 1, nsub, op.out_features)
        wt, woff = _weights(b, bufs, op, op.weights, (op.out_features, op.in_features), index_shape)
        if op.bias is not None:
            _check_array(op.name, op.bias, (op.out_features,), "bias")
        bias = bufs.add(op.bias, "f4")
        FullyConnectedOptions.Start(b)
        FullyConnectedOptions.AddInFeatures(b, op.in_features)
        FullyConnectedOptions.AddOutFeatures(b, op.out_features)
        FullyConnectedOptions.AddWeightsType(b, wt)
        FullyConnectedOptions.AddWeights(b, woff)
        FullyConnectedOptions.AddBias(b, bias)
        FullyConnectedOptions.AddFusedRelu(b, bool(op.relu))
        return (OperatorKind.FULLY_CONNECTED, OperatorOptions.FullyConnectedOptions,
                FullyConnectedOptions.End(b))
    if isinstance(op, ir.Relu):
        ReluOptions.Start(b)
        return OperatorKind.RELU, OperatorOptions.ReluOptions, ReluOptions.End(b)
    if isinstance(op, ir.LRN):
        LRNOptions.Start(b)
        LRNOptions.AddSize(b, op.size)
        LRNOptions.AddAlpha(b, op.alpha)
        LRNOptions.AddBeta(b, op.beta)
        LRNOptions.AddBias(b, op.bias)
        return OperatorKind.LRN, OperatorOptions.LRNOptions, LRNOptions.End(b)
    if isinstance(op, (ir.MaxPool, ir.AveragePool)):
        Pool2DOptions.Start(b)
        Pool2DOptions.AddKernelH(b, op.kernel[0])
        Pool2DOptions.AddKernelW(b, op.kernel[1])
        Pool2DOptions.AddStrideH(b, op.strides[0])
        Pool2DOptions.AddStrideW(b, op.strides[1])
        Pool2DOptions.AddPadTop(b, op.pads[0])
        Pool2DOptions.AddPadLeft(b, op.pads[1])
        Pool2DOptions.AddPadBottom(b, op.pads[2])
        Pool2DOptions.AddPadRight(b, op.pads[3])
        Pool2DOptions.AddCeilMode(b, bool(op.ceil_mode))
        is_avg = isinstance(op, ir.AveragePool)
        Pool2DOptions.AddCountIncludePad(b, bool(op.count_include_pad) if is_avg else False)
        kind = OperatorKind.AVERAGE_POOL_2D if is_avg else OperatorKind.MAX_POOL_2D
        return kind, OperatorOptions.Pool2DOptions, Pool2DOptions.End(b)
    if isinstance(op, ir.GlobalAveragePool):
        GlobalAveragePoolOptions.Start(b)
        return (OperatorKind.GLOBAL_AVERAGE_POOL, OperatorOptions.GlobalAveragePoolOptions,
                GlobalAveragePoolOptions.End(b))
    if isinstance(op, ir.Flatten):
        FlattenOptions.Start(b)
        return OperatorKind.FLATTEN, OperatorOptions.FlattenOptions, FlattenOptions.End(b)
    if isinstance(op, ir.Softmax):
        SoftmaxOptions.Start(b)
        return OperatorKind.SOFTMAX, OperatorOptions.SoftmaxOptions, SoftmaxOptions.End(b)
    if isinstance(op, ir.Concat):
        ConcatOptions.Start(b)
        return OperatorKind.CONCAT, OperatorOptions.ConcatOptions, ConcatOptions.End(b)
    if isinstance(op, ir.Add):
        AddOptions.Start(b)
        AddOptions.AddFusedRelu(b, bool(op.relu))
        return OperatorKind.ADD, OperatorOptions.AddOptions, AddOptions.End(b)
    raise ValueError(f"cannot serialize operator {op!r}")


_CHANNEL_ORDER = {"RGB": ChannelOrder.RGB, "BGR": ChannelOrder.BGR, "GRAY": ChannelOrder.GRAY}


def _build_flatbuffer(model: ir.Model, data_start: int):
    """Build the FlatBuffer with buffers laid out from data_start; returns (bytes, buffers)."""
    b = flatbuffers.Builder(1 << 16)
    b.ForceDefaults(True)
    bufs = _Buffers()
    tensor_index = {t.name: i for i, t in enumerate(model.tensors)}
    if len(tensor_index) != len(model.tensors):
        raise ValueError("duplicate tensor names")

    def tensor_ids(names, op_name):
        try:
            return [tensor_index[n] for n in names]
        except KeyError as exc:
            raise ValueError(f"{op_name}: unknown tensor {exc.args[0]!r}") from None

    # Operators (their options register the large arrays in execution order).
    op_offsets = []
    for op in model.operators:
        kind, opt_type, opt_off = _operator_options(b, bufs, op)
        name = b.CreateString(op.name)
        ins = _int_vector(b, tensor_ids(op.inputs, op.name))
        outs = _int_vector(b, tensor_ids(op.outputs, op.name))
        Operator.Start(b)
        Operator.AddKind(b, kind)
        Operator.AddName(b, name)
        Operator.AddInputs(b, ins)
        Operator.AddOutputs(b, outs)
        Operator.AddOptionsType(b, opt_type)
        Operator.AddOptions(b, opt_off)
        op_offsets.append(Operator.End(b))

    tensor_offsets = []
    for t in model.tensors:
        name = b.CreateString(t.name)
        shape = _int_vector(b, t.shape)
        Tensor.Start(b)
        Tensor.AddName(b, name)
        Tensor.AddShape(b, shape)
        tensor_offsets.append(Tensor.End(b))
    tensors_vec = _offset_vector(b, tensor_offsets)
    ops_vec = _offset_vector(b, op_offsets)
    outputs_vec = _int_vector(b, tensor_ids(model.outputs, "graph outputs"))
    Graph.Start(b)
    Graph.AddTensors(b, tensors_vec)
    Graph.AddInput(b, tensor_ids([model.input_name], "graph input")[0])
    Graph.AddOutputs(b, outputs_vec)
    Graph.AddOperators(b, ops_vec)
    graph = Graph.End(b)

    pre = None
    if model.preprocessing is not None:
        p = model.preprocessing
        if p.channel_order not in _CHANNEL_ORDER:
            raise ValueError(f"channel_order must be one of {sorted(_CHANNEL_ORDER)}, got {p.channel_order!r}")
        mean = _float_vector(b, p.mean)
        std = _float_vector(b, p.std)
        Preprocessing.Start(b)
        Preprocessing.AddMean(b, mean)
        Preprocessing.AddStd(b, std)
        Preprocessing.AddScale(b, p.scale)
        Preprocessing.AddChannelOrder(b, _CHANNEL_ORDER[p.channel_order])
        Preprocessing.AddResizeShorter(b, p.resize_shorter)
        Preprocessing.AddCropH(b, p.crop[0])
        Preprocessing.AddCropW(b, p.crop[1])
        pre = Preprocessing.End(b)

    labels = None
    if model.labels is not None:
        labels = _offset_vector(b, [b.CreateString(str(s)) for s in model.labels])

    kv_offsets = []
    for key, value in sorted(model.metadata.items()):
        k, v = b.CreateString(str(key)), b.CreateString(str(value))
        KeyValue.Start(b)
        KeyValue.AddKey(b, k)
        KeyValue.AddValue(b, v)
        kv_offsets.append(KeyValue.End(b))
    metadata = _offset_vector(b, kv_offsets)

    spans, data_end = bufs.layout(data_start)
    buffer_offsets = []
    for (offset, size), blob in zip(spans, bufs.blobs):
        Buffer.Start(b)
        Buffer.AddOffset(b, offset)
        Buffer.AddSize(b, size)
        Buffer.AddCrc32(b, zlib.crc32(blob) & 0xFFFFFFFF)
        buffer_offsets.append(Buffer.End(b))
    buffers_vec = _offset_vector(b, buffer_offsets)

    producer = b.CreateString(model.producer or PRODUCER)
    sha = b.CreateString(model.source_sha256 or "")
    input_name = b.CreateString(model.input_name)
    input_shape = _int_vector(b, (-1,) + tuple(model.input_shape))
    Model.Start(b)
    Model.AddVersion(b, model.version)
    Model.AddProducer(b, producer)
    Model.AddSourceSha256(b, sha)
    Model.AddFileSize(b, data_end + FOOTER_SIZE)
    Model.AddInputName(b, input_name)
    Model.AddInputShape(b, input_shape)
    Model.AddInputDtype(b, 0)
    if pre is not None:
        Model.AddPreprocessing(b, pre)
    if labels is not None:
        Model.AddLabels(b, labels)
    Model.AddGraph(b, graph)
    Model.AddBuffers(b, buffers_vec)
    Model.AddMetadata(b, metadata)
    root = Model.End(b)
    b.Finish(root, file_identifier=b"QCNN")
    return bytes(b.Output()), bufs, spans, data_end


def check_model(model: ir.Model):
    """Refuse to write a model whose declared shapes disagree with what its operators compute."""
    names = [t.name for t in model.tensors]
    if model.input_name not in names:
        raise ValueError(f"input {model.input_name!r} is not among the tensors")
    if tuple(model.tensor(model.input_name).shape) != tuple(model.input_shape):
        raise ValueError(f"input shape {model.input_shape} != tensor shape {model.tensor(model.input_name).shape}")
    for op, shape in zip(model.operators, shapes.infer_shapes(model)):
        declared = tuple(model.tensor(op.outputs[0]).shape)
        if declared != tuple(shape):
            raise ValueError(f"{op.name}: output {op.outputs[0]!r} declared {declared}, computes {tuple(shape)}")


def serialize(model: ir.Model) -> bytes:
    """The complete .qcnn file as bytes."""
    check_model(model)
    fb, _, _, _ = _build_flatbuffer(model, 0)
    data_start = align_up(len(fb), ALIGNMENT)
    fb, bufs, spans, data_end = _build_flatbuffer(model, data_start)
    if align_up(len(fb), ALIGNMENT) != data_start:  # cannot happen with ForceDefaults; be sure
        raise AssertionError("FlatBuffer size changed between the two builds")
    out = bytearray(data_end + FOOTER_SIZE)
    out[: len(fb)] = fb
    for (offset, size), blob in zip(spans[1:], bufs.blobs[1:]):
        out[offset : offset + size] = blob
    fb_crc = zlib.crc32(fb) & 0xFFFFFFFF
    out[data_end:] = FOOTER_MAGIC + struct.pack("<III", len(fb), fb_crc, 0)
    return bytes(out)


def write_model(model: ir.Model, path) -> int:
    """Write `model` to `path` atomically (see write_atomic); returns the number of bytes written."""
    data = serialize(model)
    write_atomic(path, data)
    return len(data)


def write_atomic(path, data=None, copy_from=None, make_folder=False):
    """Write `data` (bytes), or the contents of the file `copy_from`, to `path` atomically.

    The bytes go to a temporary file in the same folder, are fsync'ed, then renamed over `path`:
    a crash or Ctrl-C at any point leaves either the old file or the complete new one, never a
    half-written one, and the temporary file is removed. The file gets the usual mode (umask).
    This is the one place the project writes its output files (.qcnn, ONNX, reports).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if make_folder:
        os.makedirs(folder, exist_ok=True)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"output folder does not exist: {folder}")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as f:
            if copy_from is not None:
                with open(copy_from, "rb") as src:
                    shutil.copyfileobj(src, f)
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def sha256_of_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
