"""Time the product-quantized (LUT) kernels on AlexNet's layer shapes at the paper's settings,
against onnxruntime running the equivalent dense Conv / Gemm (fp32, one thread).

    taskset -c 1 python benchmarks/bench_qkernels.py [--runs 50] [--layers conv2,fc6] [--variants ...]

Weights are random (speed does not depend on their values). Each variant is timed as the median
(or --stat min) of --runs calls of kernel.run() (including its small Python-side argument checks)
after warm-up, pinned to one CPU. Prints a markdown table of ms and speed-ups over onnxruntime,
then the int8 error against the float reference on the same layers.
"""
import argparse
import os
import statistics
import subprocess
import time

import numpy as np

from qcnn.runtime import _core

# name: (kind, H, W, cin, cout, groups, k, stride, pad, Cs, K)
LAYERS = {
    "conv2": ("conv", 27, 27, 96, 256, 2, 5, 1, 2, 8, 128),
    "conv3": ("conv", 13, 13, 256, 384, 1, 3, 1, 1, 8, 128),
    "conv4": ("conv", 13, 13, 384, 384, 2, 3, 1, 1, 8, 128),
    "conv5": ("conv", 13, 13, 384, 256, 2, 3, 1, 1, 8, 128),
    "sq_conv10": ("conv", 13, 13, 512, 1000, 1, 1, 1, 0, 4, 128),
    "vgg_conv1_2": ("conv", 224, 224, 64, 64, 1, 3, 1, 1, 6, 128),
    "vgg_conv3_2": ("conv", 56, 56, 256, 256, 1, 3, 1, 1, 6, 128),
    "vgg_conv5_1": ("conv", 14, 14, 512, 512, 1, 3, 1, 1, 6, 128),
    "fc6": ("fc", 1, 1, 9216, 4096, 1, 1, 1, 0, 4, 32),
    "fc7": ("fc", 1, 1, 4096, 4096, 1, 1, 1, 0, 4, 32),
    "fc8": ("fc", 1, 1, 4096, 1000, 1, 1, 1, 0, 1, 16),
}


STAT = statistics.median


def time_ms(fn, runs):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return STAT(ts) * 1e3


def make_weights(spec, rng):
    kind, H, W, cin, cout, G, k, s, pad, Cs, K = spec
    M = -(-(cin // G) // Cs)
    cb = rng.standard_normal((G, M, K, Cs)).astype(np.float32)
    idx = rng.integers(0, K, size=(G, k, k, M, cout // G), dtype=np.uint8)
    bias = rng.standard_normal(cout).astype(np.float32)
    x = np.abs(rng.standard_normal((H, W, cin))).astype(np.float32)  # post-ReLU-like input
    return cb, idx, bias, x


def make_kernel(spec, weights, isa, lut, relu=True):
    """Returns run() -> int8 step, and the output array it writes."""
    kind, H, W, cin, cout, G, k, s, pad, Cs, K = spec
    cb, idx, bias, x = weights
    M = cb.shape[1]
    if kind == "fc":
        kern = _core.QFcKernel(cin, cout, Cs, M, K, cb[0], idx[0, 0, 0], bias, relu, isa=isa, lut=lut)
        x = x.reshape(cin)
        y = np.empty(cout, np.float32)
        scratch = np.empty(kern.scratch_nbytes(), np.uint8)
    else:
        kern = _core.QConvKernel(cin, cout, G, k, k, (s, s), (pad,) * 4, Cs, M, K, cb, idx, bias,
                                 relu, isa=isa, lut=lut)
        y = np.empty(kern.out_shape(H, W), np.float32)
        scratch = np.empty(kern.scratch_nbytes(H, W), np.uint8)
    return (lambda: kern.run(x, y, scratch)), y


def error_table(layers, isas, rng):
    """int8 vs the float reference (no ReLU), on random weights and a post-ReLU-like input."""
    print()
    print("int8 error vs float reference (random weights, |N(0,1)| input, pre-ReLU):")
    print()
    print("| layer | isa | step s | look-ups n | max abs err | bound n*s/2 | max/bound | rel L2 err |")
    print("|---|---|---|---|---|---|---|---|")
    for name in layers:
        spec = LAYERS[name]
        kind, H, W, cin, cout, G, k, s, pad, Cs, K = spec
        w = make_weights(spec, rng)
        run, yref = make_kernel(spec, w, "generic", "ref", relu=False)
        run()
        n = k * k * w[0].shape[1]  # look-ups per output (interior pixels)
        for isa in isas:
            run, y = make_kernel(spec, w, isa, "int8", relu=False)
            step = run()
            err = np.abs(y.astype(np.float64) - yref)
            rel = np.linalg.norm(y - yref) / np.linalg.norm(yref)
            print(f"| {name} | {isa} | {step:.4g} | {n} | {err.max():.4g} | {n * step / 2:.4g} | "
                  f"{err.max() / (n * step / 2):.3f} | {rel:.2e} |", flush=True)


def make_ort(spec, rng):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    kind, H, W, cin, cout, G, k, s, pad, Cs, K = spec
    if kind == "fc":
        w = rng.standard_normal((cout, cin)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
        xin = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin])
        yout = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        x = rng.standard_normal((1, cin)).astype(np.float32)
    else:
        w = rng.standard_normal((cout, cin // G, k, k)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=G, kernel_shape=[k, k],
                                strides=[s, s], pads=[pad] * 4)
        xin = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, H, W])
        yout = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        x = rng.standard_normal((1, cin, H, W)).astype(np.float32)
    graph = helper.make_graph([node], "g", [xin], [yout],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": x})


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, StopIteration):
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--variants", default=None,
                    help="comma list of isa:lut, e.g. generic:float,avx512vbmi:int8 "
                         "(default: int8 on every ISA here + generic float)")
    ap.add_argument("--cpu", type=int, default=1, help="CPU to pin to (default 1)")
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--no-errors", action="store_true", help="skip the int8 error table")
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="statistic over runs (min is robust when other jobs share the CPU)")
    a = ap.parse_args()
    global STAT
    STAT = min if a.stat == "min" else statistics.median
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {a.cpu})
    if a.variants:
        variants = [tuple(v.split(":")) for v in a.variants.split(",")]
    else:
        variants = [("generic", "float")] + [(i, "int8") for i in _core.isa_available()]  # noqa
    names = [f"{i} {l}" for i, l in variants]
    rng = np.random.default_rng(0)
    print(f"CPU: {cpu_model()}; pinned to cpu {a.cpu}; {a.stat} of {a.runs} runs; ms")
    print()
    cols = (["onnxruntime fp32"] if not a.no_ort else []) + names
    ratio_cols = [n for n in names] if not a.no_ort else []
    print("| layer | " + " | ".join(cols) + "".join(f" | ort / {n}" for n in ratio_cols) + " |")
    print("|---" * (1 + len(cols) + len(ratio_cols)) + "|")
    totals = {c: 0.0 for c in cols}
    for name in a.layers.split(","):
        spec = LAYERS[name]
        row = {}
        if not a.no_ort:
            row["onnxruntime fp32"] = time_ms(make_ort(spec, rng), a.runs)
        w = make_weights(spec, rng)
        for (isa, lut), n in zip(variants, names):
            row[n] = time_ms(make_kernel(spec, w, isa, lut)[0], a.runs)
        for c in cols:
            totals[c] += row[c]
        ratios = "".join(f" | {row['onnxruntime fp32'] / row[n]:.1f}x" for n in ratio_cols)
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + ratios + " |", flush=True)
    ratios = "".join(f" | {totals['onnxruntime fp32'] / totals[n]:.1f}x" for n in ratio_cols)
    print("| total | " + " | ".join(f"{totals[c]:.3f}" for c in cols) + ratios + " |")
    if not a.no_errors:
        error_table(a.layers.split(","), [i for i, l in variants if l == "int8"], rng)


if __name__ == "__main__":
    main()
