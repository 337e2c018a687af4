"""The oracle: a .qcnn (or ir.Model) back to a dense ONNX graph that onnxruntime can run.

Quantized layers get their dense weights rebuilt from codebooks and indices (W_hat exactly, as
float32), everything else is copied, fused ReLUs become Relu nodes again. The runtime's LUT
inference is tested against onnxruntime running this graph.
"""
from __future__ import annotations

import os
from typing import List

import numpy as np

from qcnn.schema import ir

from .forward import dense_weights


def decode_to_onnx(model_or_path, opset: int = 13):
    """ir.Model or path of a .qcnn -> onnx.ModelProto (opset 13, dynamic batch)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if isinstance(model_or_path, ir.Model):
        model = model_or_path
    else:
        from qcnn.schema.reader import read_model

        model = read_model(os.fspath(model_or_path))
    nodes: List = []
    inits: List = []
    shapes = {t.name: tuple(t.shape) for t in model.tensors}

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    def with_relu(op, relu: bool):
        """Output name of the main node; adds a Relu node when the ReLU was fused."""
        if not relu:
            return op.outputs[0]
        pre = op.outputs[0] + "__prerelu"
        nodes.append(helper.make_node("Relu", [pre], [op.outputs[0]], name=op.name + "__relu"))
        return pre

    for op in model.operators:
        if isinstance(op, (ir.Conv, ir.Gemm)):
            ins = [op.inputs[0], const(op.name + "__W", dense_weights(op))]
            if op.bias is not None:
                ins.append(const(op.name + "__B", op.bias))
            pending = len(nodes)
            out = with_relu(op, op.relu)
            if isinstance(op, ir.Conv):
                node = helper.make_node("Conv", ins, [out], name=op.name, kernel_shape=list(op.kernel),
                                        strides=list(op.strides), pads=list(op.pads), group=op.groups,
                                        dilations=[1, 1])
            else:
                node = helper.make_node("Gemm", ins, [out], name=op.name, transB=1)
            nodes.insert(pending, node)
        elif isinstance(op, ir.Add):
            pending = len(nodes)
            out = with_relu(op, op.relu)
            nodes.insert(pending, helper.make_node("Add", list(op.inputs), [out], name=op.name))
        elif isinstance(op, ir.Relu):
            nodes.append(helper.make_node("Relu", op.inputs, op.outputs, name=op.name))
        elif isinstance(op, ir.LRN):
            nodes.append(helper.make_node("LRN", op.inputs, op.outputs, name=op.name, size=op.size,
                                          alpha=float(op.alpha), beta=float(op.beta), bias=float(op.bias)))
        elif isinstance(op, ir.MaxPool):
            nodes.append(helper.make_node("MaxPool", op.inputs, op.outputs, name=op.name, kernel_shape=list(op.kernel),
                                          strides=list(op.strides), pads=list(op.pads), ceil_mode=int(op.ceil_mode)))
        elif isinstance(op, ir.AveragePool):
            nodes.append(helper.make_node("AveragePool", op.inputs, op.outputs, name=op.name,
                                          kernel_shape=list(op.kernel), strides=list(op.strides), pads=list(op.pads),
                                          ceil_mode=int(op.ceil_mode), count_include_pad=int(op.count_include_pad)))
        elif isinstance(op, ir.GlobalAveragePool):
            nodes.append(helper.make_node("GlobalAveragePool", op.inputs, op.outputs, name=op.name))
        elif isinstance(op, ir.Flatten):
            nodes.append(helper.make_node("Flatten", op.inputs, op.outputs, name=op.name, axis=1))
        elif isinstance(op, ir.Softmax):
            nodes.append(helper.make_node("Softmax", op.inputs, op.outputs, name=op.name, axis=-1))
        elif isinstance(op, ir.Concat):
            nodes.append(helper.make_node("Concat", list(op.inputs), op.outputs, name=op.name, axis=1))
        else:
            raise TypeError(f"cannot decode operator {type(op).__name__}")

    def vi(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N"] + list(shapes[name]))

    graph = helper.make_graph(nodes, "qcnn_decoded", [vi(model.input_name)], [vi(o) for o in model.outputs], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="qcnn decode")
    proto.ir_version = min(proto.ir_version, 8)
    onnx.checker.check_model(proto)
    return proto
