"""ONNX -> ir.Model (float, not yet quantized).

What is accepted: opset >= 7 graphs as exported by the ONNX zoo, Caffe2 and PyTorch with one
image input (N, C, H, W) or vector input (N, F) whose non-batch dimensions are static.

Steps, in one pass over the (topologically sorted) nodes:
1. constant folding: any node whose inputs are all constants (initializers, Constant nodes,
   ConstantOfShape placeholders, Shape of a tensor whose shape we know, ...) is evaluated with
   onnx's reference evaluator, so e.g. Shape-Gather-Unsqueeze-Concat chains feeding Reshape become
   plain constants. The batch dimension of a Shape result is a sentinel value so that a Reshape to
   (batch, -1) can still be recognized.
2. aliasing: Dropout and Identity (and no-op Reshape/Flatten) are dropped.
3. translation to ir operators with shape inference, fusing on the way
   - BatchNormalization into the preceding Conv/Gemm,
   - Add of a constant (bias) into the preceding Conv/Gemm, MatMul(+Add) into Gemm,
   - Relu into the preceding Conv/Gemm/Add,
   each only when the intermediate tensor has no other consumer and is not a graph output.
Anything else raises ConversionError naming the op type and node name.
"""
from __future__ import annotations

import hashlib
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from qcnn.schema import ir

from .errors import ConversionError

# Stand-in for the dynamic batch size inside folded Shape computations (a prime nobody uses as a
# real dimension); a folded shape holding it at position 0 means "the batch dimension".
BATCH_SENTINEL = 1_000_003

SOURCE_PREPROCESS_KEY = "_source.qcnn.preprocess"

_IGNORED_ATTRS_OK = {"training_mode", "is_test", "consumed_inputs", "spatial", "storage_order"}


def _attrs(node) -> Dict[str, object]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _node_label(node, index: int) -> str:
    return node.name if node.name else f"{node.op_type}_{index}"


def _s(v):
    return v.decode() if isinstance(v, bytes) else v


def load_onnx(path_or_proto):
    """Load and sanity-check an ONNX model; returns (ModelProto, sha256 hex of the file or '')."""
    import onnx

    if not isinstance(path_or_proto, (str, os.PathLike)):
        return path_or_proto, ""
    path = os.fspath(path_or_proto)
    if not os.path.exists(path):
        raise ConversionError(f"model file not found: {path}")
    if os.path.isdir(path):
        raise ConversionError(f"model path is a directory, not an ONNX file: {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConversionError(f"cannot read model file {path}: {exc.strerror}") from None
    try:
        model = onnx.load_model_from_string(data)
    except Exception:
        model = None
    if model is None or len(model.graph.node) == 0:
        raise ConversionError(f"{path} is not an ONNX model (could not parse an ONNX graph)")
    return model, hashlib.sha256(data).hexdigest()


class _Importer:
    def __init__(self, model, input_shape: Optional[Sequence[int]] = None):
        import onnx
        from onnx import numpy_helper

        self.onnx = onnx
        self.model = model
        g = model.graph
        self.opset = 1
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                self.opset = imp.version
        if self.opset < 7:
            raise ConversionError(f"ONNX opset {self.opset} is too old (need >= 7)")
        self.const: Dict[str, np.ndarray] = {}
        for init in g.initializer:
            try:
                self.const[init.name] = numpy_helper.to_array(init)
            except Exception as exc:
                raise ConversionError(f"cannot read initializer {init.name!r}: {exc}") from None
        # The data input: the graph input that is not an initializer.
        data_inputs = [i for i in g.input if i.name not in self.const]
        if len(data_inputs) != 1:
            names = ", ".join(i.name for i in data_inputs) or "none"
            raise ConversionError(f"expected exactly one non-constant graph input, found: {names}")
        inp = data_inputs[0]
        self.input_name = inp.name
        self.input_shape = self._input_shape(inp, input_shape)
        self.shapes: Dict[str, Tuple[int, ...]] = {self.input_name: self.input_shape}
        self.alias: Dict[str, str] = {}
        self.outputs = [o.name for o in g.output]
        self.ops: List[object] = []
        self.producer: Dict[str, object] = {}  # tensor -> ir op producing it
        self.consumers: Dict[str, int] = {}
        self.tensor_order: List[str] = [self.input_name]

    def _input_shape(self, inp, override) -> Tuple[int, ...]:
        dims = []
        tt = inp.type.tensor_type
        if tt.elem_type not in (0, self.onnx.TensorProto.FLOAT):
            raise ConversionError(
                f"graph input {inp.name!r} has element type "
                f"{self.onnx.TensorProto.DataType.Name(tt.elem_type)}, only float32 is supported"
            )
        if tt.HasField("shape"):
            for d in tt.shape.dim:
                dims.append(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None)
        if override is not None:
            override = tuple(int(v) for v in override)
            if dims and len(dims) != len(override):
                raise ConversionError(
                    f"--input-shape has {len(override)} dimensions but input {inp.name!r} has {len(dims)}"
                )
            for have, want in zip(dims[1:], override[1:]):
                if have is not None and have != want:
                    raise ConversionError(
                        f"--input-shape {','.join(map(str, override))} conflicts with the model input "
                        f"{inp.name!r} shape {['?' if d is None else d for d in dims]}"
                    )
            dims = list(override)
        if not dims:
            raise ConversionError(f"input {inp.name!r} has no shape; give --input-shape N,C,H,W")
        if len(dims) not in (2, 4):
            raise ConversionError(f"input {inp.name!r} must be 4-D (N,C,H,W) or 2-D (N,F), got {len(dims)}-D")
        rest = dims[1:]
        if any(d is None for d in rest):
            raise ConversionError(
                f"input {inp.name!r} has dynamic non-batch dimensions "
                f"{['?' if d is None else d for d in dims]}; give --input-shape N,C,H,W"
            )
        return tuple(int(d) for d in rest)

    # ------------------------------------------------------------------ helpers
    def r(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def is_const(self, name: str) -> bool:
        return name == "" or self.r(name) in self.const

    def cval(self, name: str) -> np.ndarray:
        return self.const[self.r(name)]

    def shape(self, name: str, node_label: str) -> Tuple[int, ...]:
        name = self.r(name)
        if name not in self.shapes:
            raise ConversionError(f"node {node_label}: unknown input tensor {name!r}")
        return self.shapes[name]

    def fold(self, node, label: str) -> None:
        """Evaluate a node whose inputs are all known constants."""
        import onnx
        from onnx.reference import ReferenceEvaluator

        feeds = {}
        for i, name in enumerate(node.input):
            if name:
                feeds[f"in{i}"] = self.cval(name)
        clone = onnx.helper.make_node(
            node.op_type,
            [f"in{i}" if n else "" for i, n in enumerate(node.input)],
            [f"out{i}" for i in range(len(node.output))],
            domain=node.domain,
        )
        clone.attribute.extend(node.attribute)
        try:
            ins = [onnx.helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                   for k, v in feeds.items()]
            outs = [onnx.helper.make_empty_tensor_value_info(f"out{i}") for i in range(len(node.output))]
            gm = onnx.helper.make_model(
                onnx.helper.make_graph([clone], "fold", ins, outs),
                opset_imports=[onnx.helper.make_opsetid("", self.opset)],
            )
            results = ReferenceEvaluator(gm).run(None, feeds)
        except Exception as exc:
            raise ConversionError(
                f"cannot evaluate constant node {node.op_type} {label!r}: {str(exc).splitlines()[0][:200]}"
            ) from None
        for out, val in zip(node.output, results):
            if out:
                self.const[out] = np.asarray(val)

    # ------------------------------------------------------------------ main pass
    def run(self) -> ir.Model:
        import onnx

        g = self.model.graph
        nodes = list(g.node)
        # Consumer counts over the raw graph; aliasing adds the alias's consumers to its source below.
        raw_consumers: Dict[str, int] = {}
        for n in nodes:
            for i in n.input:
                if i:
                    raw_consumers[i] = raw_consumers.get(i, 0) + 1
        for o in self.outputs:
            raw_consumers[o] = raw_consumers.get(o, 0) + 1
        self.raw_consumers = raw_consumers

        for idx, node in enumerate(nodes):
            label = _node_label(node, idx)
            if node.domain not in ("", "ai.onnx"):
                raise ConversionError(f"unsupported op {node.domain}.{node.op_type} (node {label!r})")
            op = node.op_type
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                # If / Loop / Scan: folding would evaluate a subgraph; the runtime has no control flow
                raise ConversionError(f"unsupported op {op} (node {label!r}): control flow (subgraphs)")
            if op == "Constant":
                self.fold(node, label)
                continue
            if op == "Shape" and not self.is_const(node.input[0]):
                shp = self.shape(node.input[0], label)
                full = np.array((BATCH_SENTINEL,) + tuple(shp), dtype=np.int64)
                a = _attrs(node)
                start, end = a.get("start", 0), a.get("end", None)
                self.const[node.output[0]] = full[start:end]
                continue
            if all(self.is_const(i) for i in node.input):
                self.fold(node, label)
                continue
            handler = getattr(self, f"op_{op}", None)
            if handler is None:
                raise ConversionError(f"unsupported op {op} (node {label!r})")
            handler(node, label, _attrs(node))

        outs = [self.r(o) for o in self.outputs]
        for o in outs:
            if o == self.input_name or o in self.const:
                raise ConversionError(f"graph output {o!r} is not computed by any supported operator")
        # Keep the ONNX output names: rename the tensor an output resolves to.
        renames = {}
        for orig, res in zip(self.outputs, outs):
            if orig != res and res not in renames:
                renames[res] = orig
        if renames:
            for o in self.ops:
                o.inputs = [renames.get(t, t) for t in o.inputs]
                o.outputs = [renames.get(t, t) for t in o.outputs]
            self.shapes.update({renames[k]: v for k, v in self.shapes.items() if k in renames})
            self.tensor_order = [renames.get(t, t) for t in self.tensor_order]
            outs = [renames.get(t, t) for t in outs]
        used = {self.input_name}
        for o in self.ops:
            used.update(o.inputs)
            used.update(o.outputs)
        tensors = [ir.TensorInfo(t, tuple(self.shapes[t])) for t in dict.fromkeys(self.tensor_order) if t in used]
        return ir.Model(
            input_name=self.input_name,
            input_shape=self.input_shape,
            tensors=tensors,
            operators=self.ops,
            outputs=outs,
            producer=f"{self.model.producer_name} {self.model.producer_version}".strip(),
        )

    # ------------------------------------------------------------------ emission
    def emit(self, op, shape: Tuple[int, ...]) -> None:
        self.ops.append(op)
        out = op.outputs[0]
        self.shapes[out] = tuple(int(d) for d in shape)
        self.producer[out] = op
        self.tensor_order.append(out)

    def fusable(self, tensor: str, types) -> Optional[object]:
        """The producer op of `tensor` if it is of `types` and nobody else reads the tensor."""
        t = self.r(tensor)
        prod = self.producer.get(t)
        if prod is None or not isinstance(prod, types):
            return None
        if self.consumer_count(t) != 1 or t in [self.r(o) for o in self.outputs]:
            return None
        return prod

    def consumer_count(self, t: str) -> int:
        # raw consumers of t plus those of every name aliased to t
        total = self.raw_consumers.get(t, 0)
        for a, src in self.alias.items():
            if self.r(a) == t:
                total += self.raw_consumers.get(a, 0) - 1  # the aliasing node itself consumed t
        return total

    def rename_output(self, op, new: str) -> None:
        old = op.outputs[0]
        self.shapes[new] = self.shapes[old]
        self.producer[new] = op
        self.tensor_order = [new if t == old else t for t in self.tensor_order]
        op.outputs = [new]

    def data_input(self, node, label, i=0) -> str:
        name = node.input[i]
        if self.is_const(name):
            raise ConversionError(f"node {node.op_type} {label!r}: input {i} must not be a constant here")
        return self.r(name)

    def need_const(self, node, label, i) -> np.ndarray:
        if i >= len(node.input) or not node.input[i]:
            raise ConversionError(f"node {node.op_type} {label!r}: missing input {i}")
        if not self.is_const(node.input[i]):
            raise ConversionError(
                f"node {node.op_type} {label!r}: input {node.input[i]!r} must be a constant (weights)"
            )
        val = np.asarray(self.cval(node.input[i]))
        if np.issubdtype(val.dtype, np.floating) and not np.isfinite(val).all():
            bad = int(np.size(val) - np.count_nonzero(np.isfinite(val)))
            raise ConversionError(f"node {node.op_type} {label!r}: initializer {node.input[i]!r} has {bad} "
                                  f"non-finite values (NaN/inf)")
        return val

    # ------------------------------------------------------------------ aliases
    def _alias(self, node, label):
        src = self.data_input(node, label)
        for extra in node.output[1:]:
            if extra and self.raw_consumers.get(extra, 0):
                raise ConversionError(f"node {node.op_type} {label!r}: its second output (mask) is used")
        self.alias[node.output[0]] = src

    def op_Dropout(self, node, label, a):
        self._alias(node, label)

    def op_Identity(self, node, label, a):
        self._alias(node, label)

    # ------------------------------------------------------------------ layers
    def _spatial_pads(self, node, label, a, in_hw, kernel, strides, dilations=(1, 1)):
        auto_pad = _s(a.get("auto_pad", "NOTSET"))
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = []
            begins, ends = [], []
            for size, k, s, d in zip(in_hw, kernel, strides, dilations):
                out = -(-size // s)
                total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
                small, big = total // 2, total - total // 2
                begins.append(small if auto_pad == "SAME_UPPER" else big)
                ends.append(big if auto_pad == "SAME_UPPER" else small)
            return (begins[0], begins[1], ends[0], ends[1])
        if auto_pad == "VALID":
            return (0, 0, 0, 0)
        if auto_pad not in ("NOTSET", ""):
            raise ConversionError(f"node {node.op_type} {label!r}: unknown auto_pad {auto_pad!r}")
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if len(pads) != 4:
            raise ConversionError(f"node {node.op_type} {label!r}: expected 4 pads, got {pads}")
        return tuple(int(p) for p in pads)

    def _four_d(self, node, label, x) -> Tuple[int, int, int]:
        shp = self.shape(x, label)
        if len(shp) != 3:
            raise ConversionError(f"node {node.op_type} {label!r}: expects a 4-D NCHW input, got shape {shp}")
        return shp

    def op_Conv(self, node, label, a):
        x = self.data_input(node, label)
        c, h, w = self._four_d(node, label, x)
        W = self.need_const(node, label, 1).astype(np.float32)
        b = self.need_const(node, label, 2).astype(np.float32) if len(node.input) > 2 and node.input[2] else None
        if W.ndim != 4:
            raise ConversionError(f"node Conv {label!r}: only 2-D convolution is supported (weights {W.shape})")
        groups = int(a.get("group", 1))
        cout, cin_g, kh, kw = W.shape
        if cin_g * groups != c or cout % groups:
            raise ConversionError(
                f"node Conv {label!r}: weights {W.shape} with group={groups} do not match {c} input channels"
            )
        dil = tuple(a.get("dilations", [1, 1]))
        if any(d != 1 for d in dil):
            raise ConversionError(f"node Conv {label!r}: dilated convolution (dilations={list(dil)}) is unsupported")
        strides = tuple(int(s) for s in a.get("strides", [1, 1]))
        pads = self._spatial_pads(node, label, a, (h, w), (kh, kw), strides)
        oh = (h + pads[0] + pads[2] - kh) // strides[0] + 1
        ow = (w + pads[1] + pads[3] - kw) // strides[1] + 1
        if oh <= 0 or ow <= 0:
            raise ConversionError(f"node Conv {label!r}: kernel larger than the padded input")
        op = ir.Conv(label, [x], [node.output[0]], cin=c, cout=cout, kernel=(kh, kw), strides=strides,
                     pads=pads, groups=groups, weights=np.ascontiguousarray(W),
                     bias=None if b is None else b.reshape(cout).copy())
        self.emit(op, (cout, oh, ow))

    def op_Gemm(self, node, label, a):
        if a.get("transA", 0):
            raise ConversionError(f"node Gemm {label!r}: transA=1 is unsupported")
        x = self.data_input(node, label)
        shp = self.shape(x, label)
        if len(shp) != 1:
            raise ConversionError(f"node Gemm {label!r}: expects a 2-D (N, F) input, got shape (N,)+{shp}")
        B = self.need_const(node, label, 1).astype(np.float64)
        W = B if a.get("transB", 0) else B.T
        W = W * float(a.get("alpha", 1.0))
        out_f, in_f = W.shape
        if in_f != shp[0]:
            raise ConversionError(f"node Gemm {label!r}: weights {B.shape} do not match {shp[0]} input features")
        bias = None
        if len(node.input) > 2 and node.input[2]:
            C = self.need_const(node, label, 2).astype(np.float64) * float(a.get("beta", 1.0))
            try:
                bias = np.broadcast_to(C, (1, out_f)).reshape(out_f)
            except ValueError:
                raise ConversionError(f"node Gemm {label!r}: bias of shape {C.shape} is not per-output") from None
        op = ir.Gemm(label, [x], [node.output[0]], in_features=in_f, out_features=out_f,
                     weights=np.ascontiguousarray(W, dtype=np.float32),
                     bias=None if bias is None else bias.astype(np.float32))
        self.emit(op, (out_f,))

    def op_MatMul(self, node, label, a):
        x = self.data_input(node, label)
        shp = self.shape(x, label)
        if len(shp) != 1:
            raise ConversionError(f"node MatMul {label!r}: only (N, F) x constant (F, out) is supported")
        B = self.need_const(node, label, 1)
        if B.ndim != 2 or B.shape[0] != shp[0]:
            raise ConversionError(f"node MatMul {label!r}: weights {B.shape} do not match {shp[0]} features")
        op = ir.Gemm(label, [x], [node.output[0]], in_features=B.shape[0], out_features=B.shape[1],
                     weights=np.ascontiguousarray(B.T, dtype=np.float32), bias=None)
        self.emit(op, (B.shape[1],))

    def op_Add(self, node, label, a):
        consts = [i for i in (0, 1) if self.is_const(node.input[i])]
        if not consts:
            x0, x1 = self.r(node.input[0]), self.r(node.input[1])
            s0, s1 = self.shape(x0, label), self.shape(x1, label)
            if s0 != s1:
                raise ConversionError(f"node Add {label!r}: broadcasting {s0} + {s1} is unsupported")
            self.emit(ir.Add(label, [x0, x1], [node.output[0]]), s0)
            return
        x = self.r(node.input[1 - consts[0]])
        val = np.asarray(self.cval(node.input[consts[0]]), dtype=np.float64)
        prod = self.fusable(x, (ir.Conv, ir.Gemm))
        if prod is None:
            raise ConversionError(
                f"node Add {label!r}: adding a constant is only supported as the bias of a Conv/Gemm/MatMul"
            )
        n = prod.cout if isinstance(prod, ir.Conv) else prod.out_features
        full = (1, n, 1, 1) if isinstance(prod, ir.Conv) else (1, n)
        try:
            vec = np.broadcast_to(val.reshape((1,) * (len(full) - val.ndim) + val.shape) if val.ndim < len(full)
                                  else val, full).reshape(n)
            # must be constant over spatial positions / batch
        except ValueError:
            raise ConversionError(f"node Add {label!r}: constant of shape {val.shape} is not a per-channel bias") from None
        if val.size not in (1, n):
            raise ConversionError(f"node Add {label!r}: constant of shape {val.shape} is not a per-channel bias")
        base = np.zeros(n) if prod.bias is None else prod.bias.astype(np.float64)
        prod.bias = (base + vec).astype(np.float32)
        self.rename_output(prod, node.output[0])

    def op_BatchNormalization(self, node, label, a):
        x = self.r(node.input[0])
        prod = self.fusable(x, (ir.Conv, ir.Gemm))
        if prod is None:
            raise ConversionError(
                f"node BatchNormalization {label!r}: only supported right after a Conv/Gemm (folded into it)"
            )
        for extra in node.output[1:]:
            if extra and self.raw_consumers.get(extra, 0):
                raise ConversionError(f"node BatchNormalization {label!r}: training outputs are unsupported")
        scale, bias, mean, var = (self.need_const(node, label, i).astype(np.float64) for i in (1, 2, 3, 4))
        eps = float(a.get("epsilon", 1e-5))
        k = scale / np.sqrt(var + eps)
        W = prod.weights.astype(np.float64)
        shape = (-1,) + (1,) * (W.ndim - 1)
        prod.weights = (W * k.reshape(shape)).astype(np.float32)
        b = np.zeros(len(k)) if prod.bias is None else prod.bias.astype(np.float64)
        prod.bias = ((b - mean) * k + bias).astype(np.float32)
        self.rename_output(prod, node.output[0])

    def op_Relu(self, node, label, a):
        x = self.data_input(node, label)
        prod = self.fusable(x, (ir.Conv, ir.Gemm, ir.Add))
        if prod is not None and not prod.relu:
            prod.relu = True
            self.rename_output(prod, node.output[0])
            return
        self.emit(ir.Relu(label, [x], [node.output[0]]), self.shape(x, label))

    def op_LRN(self, node, label, a):
        x = self.data_input(node, label)
        shp = self._four_d(node, label, x)
        self.emit(ir.LRN(label, [x], [node.output[0]], size=int(a["size"]), alpha=float(a.get("alpha", 1e-4)),
                         beta=float(a.get("beta", 0.75)), bias=float(a.get("bias", 1.0))), shp)

    def _pool_geometry(self, node, label, a, shp):
        kernel = tuple(int(k) for k in a["kernel_shape"])
        if len(kernel) != 2:
            raise ConversionError(f"node {node.op_type} {label!r}: only 2-D pooling is supported")
        strides = tuple(int(s) for s in a.get("strides", [1, 1]))
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise ConversionError(f"node {node.op_type} {label!r}: dilated pooling is unsupported")
        pads = self._spatial_pads(node, label, a, shp[1:], kernel, strides)
        ceil_mode = bool(a.get("ceil_mode", 0))
        out = pool_output_size(shp[1:], kernel, strides, pads, ceil_mode)
        if min(out) <= 0:
            raise ConversionError(f"node {node.op_type} {label!r}: pooling window larger than the input")
        return kernel, strides, pads, ceil_mode, out

    def op_MaxPool(self, node, label, a):
        x = self.data_input(node, label)
        shp = self._four_d(node, label, x)
        if len(node.output) > 1 and node.output[1] and self.raw_consumers.get(node.output[1], 0):
            raise ConversionError(f"node MaxPool {label!r}: the Indices output is unsupported")
        kernel, strides, pads, ceil_mode, out = self._pool_geometry(node, label, a, shp)
        self.emit(ir.MaxPool(label, [x], [node.output[0]], kernel=kernel, strides=strides, pads=pads,
                             ceil_mode=ceil_mode), (shp[0],) + out)

    def op_AveragePool(self, node, label, a):
        x = self.data_input(node, label)
        shp = self._four_d(node, label, x)
        kernel, strides, pads, ceil_mode, out = self._pool_geometry(node, label, a, shp)
        self.emit(ir.AveragePool(label, [x], [node.output[0]], kernel=kernel, strides=strides, pads=pads,
                                 ceil_mode=ceil_mode, count_include_pad=bool(a.get("count_include_pad", 0))),
                  (shp[0],) + out)

    def op_GlobalAveragePool(self, node, label, a):
        x = self.data_input(node, label)
        shp = self._four_d(node, label, x)
        self.emit(ir.GlobalAveragePool(label, [x], [node.output[0]]), (shp[0], 1, 1))

    def _flatten_or_alias(self, node, label, x, target_rest: Tuple[int, ...]):
        shp = self.shape(x, label)
        if tuple(target_rest) == tuple(shp):
            self.alias[node.output[0]] = x
        elif len(target_rest) == 1 and target_rest[0] == int(np.prod(shp)):
            self.emit(ir.Flatten(label, [x], [node.output[0]]), target_rest)
        else:
            raise ConversionError(
                f"node {node.op_type} {label!r}: reshape of (N,{','.join(map(str, shp))}) to "
                f"(N,{','.join(map(str, target_rest))}) is unsupported (only flattening to (N, -1))"
            )

    def op_Flatten(self, node, label, a):
        x = self.data_input(node, label)
        axis = int(a.get("axis", 1))
        if axis != 1:
            raise ConversionError(f"node Flatten {label!r}: only axis=1 is supported (got {axis})")
        self._flatten_or_alias(node, label, x, (int(np.prod(self.shape(x, label))),))

    def op_Reshape(self, node, label, a):
        x = self.data_input(node, label)
        shp = self.shape(x, label)
        if len(node.input) > 1 and node.input[1]:
            target = [int(v) for v in self.need_const(node, label, 1).reshape(-1)]
        elif "shape" in a:  # opset < 5 style
            target = [int(v) for v in a["shape"]]
        else:
            raise ConversionError(f"node Reshape {label!r}: no target shape")
        full = (BATCH_SENTINEL,) + tuple(shp)
        if not target:
            raise ConversionError(f"node Reshape {label!r}: empty target shape")
        # position 0 must keep the batch: 0 (copy), -1, the sentinel, or a literal 1 (exported with batch 1)
        if target[0] not in (0, -1, BATCH_SENTINEL, 1):
            raise ConversionError(f"node Reshape {label!r}: reshaping the batch dimension ({target}) is unsupported")
        rest = []
        for i, v in enumerate(target[1:], start=1):
            if v == 0 and not a.get("allowzero", 0):
                if i >= len(full):
                    raise ConversionError(f"node Reshape {label!r}: bad target shape {target}")
                v = full[i]
            rest.append(v)
        total = int(np.prod(shp))
        if target[0] == -1:
            if any(v == -1 for v in rest):
                raise ConversionError(f"node Reshape {label!r}: two -1 entries in {target}")
            known = int(np.prod(rest)) if rest else 1
            if known != total:  # the -1 then absorbs part of the features into the batch
                raise ConversionError(f"node Reshape {label!r}: target {target} mixes batch and features")
        if rest.count(-1) > 1:
            raise ConversionError(f"node Reshape {label!r}: two -1 entries in {target}")
        if -1 in rest:
            known = int(np.prod([v for v in rest if v != -1])) if len(rest) > 1 else 1
            if known == 0 or total % known:
                raise ConversionError(f"node Reshape {label!r}: cannot reshape {shp} to {target}")
            rest[rest.index(-1)] = total // known
        if int(np.prod(rest)) != total:
            raise ConversionError(f"node Reshape {label!r}: cannot reshape (N,{shp}) to {target}")
        self._flatten_or_alias(node, label, x, tuple(rest))

    def op_Squeeze(self, node, label, a):
        # (N, C, 1, 1) -> (N, C) as exported after global pooling
        x = self.data_input(node, label)
        shp = self.shape(x, label)
        if len(shp) == 3 and shp[1:] == (1, 1):
            self._flatten_or_alias(node, label, x, (shp[0],))
            return
        raise ConversionError(f"node Squeeze {label!r}: only (N,C,1,1) -> (N,C) is supported")

    def op_Softmax(self, node, label, a):
        x = self.data_input(node, label)
        shp = self.shape(x, label)
        axis = int(a.get("axis", 1 if self.opset < 13 else -1))
        if len(shp) != 1 or axis not in (1, -1):
            raise ConversionError(f"node Softmax {label!r}: only softmax over the features of (N, F) is supported")
        self.emit(ir.Softmax(label, [x], [node.output[0]]), shp)

    def op_Concat(self, node, label, a):
        xs = [self.data_input(node, label, i) for i in range(len(node.input))]
        shps = [self.shape(x, label) for x in xs]
        rank = len(shps[0]) + 1
        axis = int(a.get("axis", 1))
        if axis < 0:
            axis += rank
        if axis != 1 or any(len(s) != len(shps[0]) or s[1:] != shps[0][1:] for s in shps):
            raise ConversionError(f"node Concat {label!r}: only concatenation along channels (axis 1) is supported")
        self.emit(ir.Concat(label, xs, [node.output[0]]), (sum(s[0] for s in shps),) + tuple(shps[0][1:]))


def pool_output_size(hw, kernel, strides, pads, ceil_mode) -> Tuple[int, int]:
    out = []
    for i in range(2):
        span = hw[i] + pads[i] + pads[i + 2] - kernel[i]
        if ceil_mode:
            o = -(-span // strides[i]) + 1
            # the last window must start inside the input or the leading pad (PyTorch/ORT rule)
            if (o - 1) * strides[i] >= hw[i] + pads[i]:
                o -= 1
        else:
            o = span // strides[i] + 1
        out.append(o)
    return tuple(out)


def import_onnx(path_or_proto, input_shape: Optional[Sequence[int]] = None) -> ir.Model:
    """Read an ONNX model into a float ir.Model. `input_shape` is N,C,H,W (or N,F) to fix dynamic dims."""
    proto, digest = load_onnx(path_or_proto)
    model = _Importer(proto, input_shape).run()
    model.source_sha256 = digest
    # qcnn.models writes the expected input normalisation into metadata_props; convert() uses it
    # as the default preprocessing (and removes this key).
    for prop in proto.metadata_props:
        if prop.key == "qcnn.preprocess":
            model.metadata[SOURCE_PREPROCESS_KEY] = prop.value
    if not any(isinstance(o, (ir.Conv, ir.Gemm)) for o in model.operators):
        raise ConversionError("the model has no Conv/Gemm layer to quantize")
    return model
