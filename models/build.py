"""Deterministic, offline ONNX model builders for qcnn (test and benchmark models).

    qcnn-models NAME [NAME ...] --out DIR [--seed S]
    qcnn-models all --out DIR
    qcnn-models --list

Models
------
alexnet, zfnet, vgg19
    The ONNX model-zoo graphs shipped inside the onnx wheel (onnx/backend/test/data/light/light_*.onnx).
    There every weight is a ConstantOfShape node fed by a graph input holding the shape
    (e.g. ``conv1_w_0__SHAPE``). We replace each such node by a real initializer, drop the shape
    inputs (and the zoo's unused inputs) from graph.input, reset vgg19's two stored random biases
    (conv1_1_b_0, conv1_2_b_0) to zero like all others, and keep everything else: op graph, node
    and tensor names, Dropout/LRN/Softmax, the Reshape to a constant [1, N] and the opset (9). Since
    the initializers are no longer graph inputs the IR version is raised from 3 to 4 (IR 3 demands that
    every initializer also be an input).
caffenet, vgg16
    Written with onnx.helper, opset 13, after the published architectures: Caffe model zoo
    bvlc_reference_caffenet (AlexNet with pooling *before* LRN, groups of 2 in conv2/4/5, input
    1x3x227x227) and VGG-16 (configuration D: 13 conv3x3 + 3 fc, input 1x3x224x224). Input ``data``,
    output ``prob`` (Softmax), Dropout kept as in the zoo graphs, Flatten before fc6.
mnist-mlp3, mnist-mlp5, mnist-lenet
    Trained nets (models/train_mnist.py), committed in models/onnx/; the builder copies the file, so
    the seed does not apply. Float test errors are in models/mnist_results.json.

Random weights (all but mnist-*)
--------------------------------
He initialisation: weights ~ Normal(0, sqrt(2 / fan_in)), fan_in = (in_channels / group) * kh * kw
for Conv and the input width for Gemm; biases are zero (except the last layer's, below). Each tensor
draws from its own generator seeded by (seed, crc32(tensor name)), so the weights do not depend on node
order, and the same seed gives a byte-identical file.

Logit calibration. He-init keeps activations at roughly unit scale through the ReLU layers, so
nothing saturates (LRN with alpha 1e-4..5e-4 is close to identity at that scale), but the logits of a
random ReLU net carry a large input-independent offset per class: every input got the same top-1 class
(seen on AlexNet, ZFNet, CaffeNet), which would make top-1 agreement a meaningless test of a quantised
model. So the builder runs the net in onnxruntime on CALIB_COUNT (= 8) fixed, seeded, image-like probe
inputs (multi-scale blocky noise normalised to zero mean / unit std, like a normalised photo) and
adjusts only the *last* Gemm:
  * bias := minus the mean logit per class over the probes (rounded to multiples of 1/64), which
    removes the offset, so real images get different top-1 classes;
  * weights *= 2**k, k chosen so the remaining logit spread has std close to LOGIT_STD (= 3): a
    sane softmax, neither flat nor one-hot. A power of two is exact in float32.
The probe session runs single-threaded and the power-of-two / 1/64 rounding absorbs last-bit differences
between onnxruntime runs, so the same seed gives the same bytes (tested in one process; across CPUs
with other SIMD kernels a bias could in rare cases round the other way). The factor is recorded in the metadata (``qcnn.logit_scale``).

Metadata (metadata_props)
-------------------------
``qcnn.preprocess``: JSON {"scale", "mean", "std", "layout", "input", ...}; the network input is
``(pixel * scale - mean[c]) / std[c]`` with pixels as 0..255 in the given channel order. For the random
ImageNet-sized nets we declare the usual ImageNet normalisation (RGB, scale 1/255, mean
[0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]); their weights are random, so it only fixes the
input scale, but it matters: feeding Caffe-style 0..255 inputs instead multiplies every activation
by ~60 and saturates the softmax. Also ``qcnn.model`` (name), ``qcnn.seed``, ``qcnn.weights`` (how they were made).
"""

import argparse
import json
import os
import sys
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcnn.schema.writer import write_atomic

from ._data import load_mnist  # noqa: F401  (re-exported: qcnn.models.build.load_mnist)

HERE = os.path.dirname(os.path.abspath(__file__))
ONNX_DIR = os.path.join(HERE, "onnx")
LOGIT_STD = 3.0
CALIB_COUNT = 8
IMAGENET_PREPROCESS = {
    "scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    "layout": "NCHW", "channel_order": "RGB",
}

ZOO_FILES = {
    "alexnet": "light_bvlc_alexnet.onnx",
    "zfnet": "light_zfnet512.onnx",
    "vgg19": "light_vgg19.onnx",
}
MNIST_NAMES = ("mnist-mlp3", "mnist-mlp5", "mnist-lenet")
MODEL_NAMES = ("alexnet", "zfnet", "vgg19", "caffenet", "vgg16") + MNIST_NAMES


# ---------------------------------------------------------------------------------------------
# weights


def _rng(seed, name):
    """Generator private to one tensor: independent of the order in which tensors are made."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def he_weight(name, shape, seed, group=1):
    """He-normal weight; `shape` is [out, in/group, kh, kw] (Conv) or [out, in] (Gemm, transB=1)."""
    shape = [int(d) for d in shape]
    fan_in = int(np.prod(shape[1:]))  # in/group * kh * kw, or the Gemm input width
    std = np.sqrt(2.0 / fan_in)
    w = _rng(seed, name).standard_normal(shape, dtype=np.float32) * np.float32(std)
    return numpy_helper.from_array(w.astype(np.float32), name)


def zero_bias(name, n):
    return numpy_helper.from_array(np.zeros([int(n)], dtype=np.float32), name)


# ---------------------------------------------------------------------------------------------
# zoo graphs


def zoo_path(name):
    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", ZOO_FILES[name])


def _build_zoo(name, seed):
    path = zoo_path(name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found (this onnx wheel does not ship the light model zoo)")
    src = onnx.load(path)
    g = src.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    new_inits = []
    new_nodes = []
    replaced = set()
    for node in g.node:
        if node.op_type != "ConstantOfShape":
            new_nodes.append(node)
            continue
        shape = consts[node.input[0]].astype(np.int64).tolist()
        out = node.output[0]
        replaced.add(out)
        if len(shape) == 1:  # a bias
            new_inits.append(zero_bias(out, shape[0]))
        else:
            # Grouped convs need no special case: the shape is already [out, in/group, kh, kw].
            new_inits.append(he_weight(out, shape, seed))
    used = {i for n in new_nodes for i in n.input}
    # Float initializers that were real values in the zoo file (vgg19's conv1_x biases): biases, reset
    # to zero like the others so every weight comes from the same scheme.
    keep_inits = []
    for t in g.initializer:
        if t.name.endswith("__SHAPE") or t.name not in used:
            continue  # shape feeders (their nodes are gone) and unused zoo leftovers
        if t.data_type == TensorProto.FLOAT and t.name not in replaced:
            arr = numpy_helper.to_array(t)
            if arr.ndim == 1:
                keep_inits.append(zero_bias(t.name, arr.shape[0]))
                continue
        keep_inits.append(t)
    inits = keep_inits + new_inits
    init_names = {t.name for t in inits}
    inputs = [i for i in g.input if i.name not in init_names and i.name in used]
    graph = helper.make_graph(new_nodes, g.name or name, inputs, list(g.output), initializer=inits)
    model = helper.make_model(graph, opset_imports=list(src.opset_import), producer_name="qcnn.models.build")
    model.ir_version = 4  # initializers are no longer listed as inputs (allowed from IR 4)
    return model


# ---------------------------------------------------------------------------------------------
# helper-built nets (opset 13)


class _Net:
    """Small sequential graph builder: each call appends a node fed by the previous output."""

    def __init__(self, seed, input_name, input_shape):
        self.seed = seed
        self.nodes, self.inits = [], []
        self.cur = input_name
        self.channels = input_shape[1]
        self.input = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape)

    def _add(self, op, name, extra_inputs=(), **attrs):
        self.nodes.append(helper.make_node(op, [self.cur, *extra_inputs], [name], name=name, **attrs))
        self.cur = name

    def conv(self, name, cout, k, stride=1, pad=0, group=1):
        w, b = f"{name}_w", f"{name}_b"
        self.inits += [he_weight(w, [cout, self.channels // group, k, k], self.seed), zero_bias(b, cout)]
        self._add("Conv", name, [w, b], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
                  group=group)
        self.channels = cout

    def fc(self, name, nin, nout):
        w, b = f"{name}_w", f"{name}_b"
        self.inits += [he_weight(w, [nout, nin], self.seed), zero_bias(b, nout)]
        self._add("Gemm", name, [w, b], transB=1)

    def relu(self, name):
        self._add("Relu", name)

    def pool(self, name, k, s):
        self._add("MaxPool", name, kernel_shape=[k, k], strides=[s, s])

    def lrn(self, name):
        self._add("LRN", name, size=5, alpha=1e-4, beta=0.75, bias=1.0)

    def op(self, op, name, **attrs):
        self._add(op, name, **attrs)

    def model(self, graph_name, out_name, out_shape):
        self.nodes[-1].output[0] = out_name
        graph = helper.make_graph(self.nodes, graph_name, [self.input],
                                  [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)],
                                  initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="qcnn.models.build")
        m.ir_version = 7
        return m


def _build_caffenet(seed):
    n = _Net(seed, "data", [1, 3, 227, 227])
    n.conv("conv1", 96, 11, stride=4), n.relu("relu1"), n.pool("pool1", 3, 2), n.lrn("norm1")  # 55 -> 27
    n.conv("conv2", 256, 5, pad=2, group=2), n.relu("relu2"), n.pool("pool2", 3, 2), n.lrn("norm2")  # 13
    n.conv("conv3", 384, 3, pad=1), n.relu("relu3")
    n.conv("conv4", 384, 3, pad=1, group=2), n.relu("relu4")
    n.conv("conv5", 256, 3, pad=1, group=2), n.relu("relu5"), n.pool("pool5", 3, 2)  # 6
    n.op("Flatten", "flatten", axis=1)
    n.fc("fc6", 256 * 6 * 6, 4096), n.relu("relu6"), n.op("Dropout", "drop6")
    n.fc("fc7", 4096, 4096), n.relu("relu7"), n.op("Dropout", "drop7")
    n.fc("fc8", 4096, 1000), n.op("Softmax", "prob", axis=1)
    return n.model("caffenet", "prob", [1, 1000])


def _build_vgg16(seed):
    n = _Net(seed, "data", [1, 3, 224, 224])
    for stage, (width, reps) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], start=1):
        for r in range(1, reps + 1):
            n.conv(f"conv{stage}_{r}", width, 3, pad=1)
            n.relu(f"relu{stage}_{r}")
        n.pool(f"pool{stage}", 2, 2)  # 224 -> 7 after five pools
    n.op("Flatten", "flatten", axis=1)
    n.fc("fc6", 512 * 7 * 7, 4096), n.relu("relu6"), n.op("Dropout", "drop6")
    n.fc("fc7", 4096, 4096), n.relu("relu7"), n.op("Dropout", "drop7")
    n.fc("fc8", 4096, 1000), n.op("Softmax", "prob", axis=1)
    return n.model("vgg16", "prob", [1, 1000])


# ---------------------------------------------------------------------------------------------
# logit calibration


def input_shape(model):
    inp = model.graph.input[0]
    return [d.dim_value for d in inp.type.tensor_type.shape.dim]


def calibration_inputs(seed, shape, count=CALIB_COUNT):
    """Image-like probe inputs: multi-scale blocky noise (spatially correlated like a photo),
    normalised to zero mean and unit std, as a normalised image would be."""
    rng = _rng(seed, "calibration-input")
    n, c, h, w = shape
    out = []
    for _ in range(count):
        x = np.zeros(shape, np.float32)
        for cells, amp in ((4, 1.0), (16, 0.6), (56, 0.3), (h, 0.2)):
            z = rng.standard_normal((n, c, cells, cells), dtype=np.float32) * np.float32(amp)
            rep = -(-h // cells)
            x += np.repeat(np.repeat(z, rep, 2), rep, 3)[:, :, :h, :w]
        out.append(((x - x.mean()) / x.std()).astype(np.float32))
    return out


def _calibrate_last_layer(model, seed):
    """Centre and scale the logits of a random net; returns the power-of-two weight factor.

    Runs CALIB_COUNT probe inputs, sets the last Gemm's bias to minus the mean logit per class (a
    random ReLU net otherwise adds a large input-independent offset and predicts the same class for
    every input) and scales its weights by 2**k so the remaining, input-dependent part of the logits
    has std ~ LOGIT_STD. Bias values are rounded to multiples of 1/64 so last-bit differences between
    onnxruntime runs cannot change the file.
    """
    import onnxruntime as ort

    g = model.graph
    last = [n for n in g.node if n.op_type == "Gemm"][-1]
    logits = last.output[0]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info(logits, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1  # summation order independent of the machine's core count
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    z = np.concatenate([sess.run([logits], {g.input[0].name: x})[0]
                        for x in calibration_inputs(seed, input_shape(model))]).astype(np.float64)
    mean = z.mean(axis=0)
    spread = float((z - mean).std())
    if not np.isfinite(spread) or spread == 0.0:
        raise RuntimeError(f"degenerate logits while calibrating (std={spread})")
    factor = 2.0 ** round(np.log2(LOGIT_STD / spread))
    inits = {t.name: t for t in g.initializer}
    w, b = inits[last.input[1]], inits[last.input[2]]
    w.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(w) * np.float32(factor)).astype(np.float32), w.name))
    bias = np.round(-mean * factor * 64.0) / 64.0
    b.CopyFrom(numpy_helper.from_array(bias.astype(np.float32), b.name))
    return factor


# ---------------------------------------------------------------------------------------------
# public API


def _meta(model, props):
    helper.set_model_props(model, {k: str(v) for k, v in props.items()})


def build_model(name, seed=0):
    """Return the ONNX model `name` (see MODEL_NAMES); random weights come from `seed`."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    if name in MNIST_NAMES:
        path = os.path.join(ONNX_DIR, name + ".onnx")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing (train it with models/train_mnist.py)")
        return onnx.load(path)
    seed = int(seed)
    if name in ZOO_FILES:
        model = _build_zoo(name, seed)
    elif name == "caffenet":
        model = _build_caffenet(seed)
    else:
        model = _build_vgg16(seed)
    factor = _calibrate_last_layer(model, seed)
    pre = dict(IMAGENET_PREPROCESS, input=input_shape(model))
    _meta(model, {
        "qcnn.model": name,
        "qcnn.seed": seed,
        "qcnn.weights": "random He-normal (std sqrt(2/fan_in)), zero biases",
        "qcnn.logit_scale": repr(factor),
        "qcnn.preprocess": json.dumps(pre, sort_keys=True),
        "qcnn.output": model.graph.output[0].name,
    })
    onnx.checker.check_model(model)
    return model


def serialize(model):
    return model.SerializeToString(deterministic=True)


def write_model(name, path, seed=0):
    """Build `name` and write it to `path` atomically (temp file in the same folder + os.replace)."""
    if name in MNIST_NAMES:
        build_model(name)  # validates that the committed file exists
        write_atomic(path, make_folder=True, copy_from=os.path.join(ONNX_DIR, name + ".onnx"))
    else:
        write_atomic(path, make_folder=True, data=serialize(build_model(name, seed)))
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(prog="qcnn-models", description="Write reproducible ONNX models.")
    ap.add_argument("names", nargs="*", metavar="NAME", help="model names, or 'all'")
    ap.add_argument("--out", help="output folder (files are NAME.onnx)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    ap.add_argument("--list", action="store_true", help="list the model names and exit")
    args = ap.parse_args(argv)
    if args.list:
        for n in MODEL_NAMES:
            print(n)
        return 0
    names = list(MODEL_NAMES) if args.names == ["all"] else args.names
    if not names:
        print("qcnn-models: give model names, 'all' or --list", file=sys.stderr)
        return 2
    bad = [n for n in names if n not in MODEL_NAMES]
    if bad:
        print(f"qcnn-models: unknown model {bad[0]!r} (known: {', '.join(MODEL_NAMES)})", file=sys.stderr)
        return 2
    if not args.out:
        print("qcnn-models: --out DIR is required", file=sys.stderr)
        return 2
    for n in names:
        path = write_model(n, os.path.join(args.out, n + ".onnx"), args.seed)
        print(f"{path} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
