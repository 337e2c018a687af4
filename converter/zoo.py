"""Seeded stand-in weights for the onnx wheel's "light" zoo graphs (tests and benchmarks).

onnx/backend/test/data/light/light_*.onnx keep the real architectures (AlexNet, VGG-19, ZFNet...)
but replace every weight by a ConstantOfShape placeholder. `materialize` swaps those for seeded
He-normal weights (zero biases) so the graphs can be converted and run.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np


def light_zoo_path(name: str) -> str:
    import onnx

    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", f"light_{name}.onnx")
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    return path


def materialize(model, seed: int = 0, bias_std: float = 0.0):
    """Return a copy of `model` with ConstantOfShape weight placeholders replaced by initializers."""
    import onnx
    from onnx import numpy_helper

    rng = np.random.default_rng(seed)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    keep_nodes, new_inits = [], []
    for node in g.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in inits:
            shape = tuple(int(v) for v in inits[node.input[0]])
            if len(shape) >= 2:
                fan_in = int(np.prod(shape[1:]))
                arr = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
            else:
                arr = rng.standard_normal(shape) * bias_std
            new_inits.append(numpy_helper.from_array(arr.astype(np.float32), node.output[0]))
        else:
            keep_nodes.append(node)
    used = {i for n in keep_nodes for i in n.input}
    del g.node[:]
    g.node.extend(keep_nodes)
    kept = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept + new_inits)
    names = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits or i.name in used]
    del g.input[:]
    g.input.extend(inputs)
    # Gemm weights in these Caffe2 graphs are [out][in] with transB=1, so fan_in = shape[1]: as above.
    del names
    return m


def load_light(name: str, seed: int = 0, bias_std: float = 0.0):
    import onnx

    return materialize(onnx.load(light_zoo_path(name)), seed=seed, bias_std=bias_std)
