"""Benchmark the runtime's non-quantized ops against onnxruntime (1 thread), same run.

Each case runs our kernel (NHWC, one image) and a one-node onnxruntime model (NCHW, same
shapes) alternately, call by call, and reports both medians in ms plus the ratio
ours/onnxruntime (< 1 means faster). Pin to one core for stable numbers:

    taskset -c 1 python benchmarks/bench_ops.py [--isa auto|generic|avx2|avx512] [--repeat N]
"""
import argparse
import platform
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from qcnn.runtime import _core


def ort_session(op, x_nchw, attrs, inits=()):
    names = ["x"] + [n for n, _ in inits]
    graph = helper.make_graph(
        [helper.make_node(op, names, ["y"], **attrs)], "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_nchw.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[onnx.numpy_helper.from_array(a, n) for n, a in inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": x_nchw})


def paired_medians_ms(ours, theirs, repeat, clock, min_time=0.5):
    """Median times of two functions run alternately, so that load from other processes
    (the machine is shared) hits both sides alike. clock: time.thread_time counts only this
    thread's CPU time (not time spent preempted); both sides compute on the calling thread
    (onnxruntime with one intra-op thread runs its kernels inline)."""
    ours(), theirs()  # warm-up (page faults, caches, lazy init)
    t_ours, t_theirs = [], []
    t_end = time.perf_counter() + min_time
    while len(t_ours) < repeat or (time.perf_counter() < t_end and len(t_ours) < 20 * repeat):
        t0 = clock()
        ours()
        t1 = clock()
        theirs()
        t2 = clock()
        t_ours.append(t1 - t0)
        t_theirs.append(t2 - t1)
    return 1e3 * statistics.median(t_ours), 1e3 * statistics.median(t_theirs)


def conv_case(rng, h, w, cin, cout, k, stride, pad, groups, isa):
    x = rng.standard_normal((h, w, cin)).astype(np.float32)
    wt = (rng.standard_normal((cout, cin // groups, k, k)) * 0.1).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    kern = _core.DenseConvKernel(wt, b, strides=(stride, stride), pads=(pad,) * 4, groups=groups, isa=isa)
    y = np.empty(kern.out_shape(h, w), np.float32)
    s = np.empty(kern.scratch_nbytes(h, w), np.uint8)
    ours = lambda: kern.run(x, y, s)  # noqa: E731
    theirs = ort_session("Conv", np.ascontiguousarray(x.transpose(2, 0, 1)[None]),
                         dict(kernel_shape=[k, k], strides=[stride] * 2, pads=[pad] * 4, group=groups),
                         [("W", wt), ("B", b)])
    return ours, theirs


def lrn_case(rng, h, w, c, isa):
    x = rng.standard_normal((h, w, c)).astype(np.float32)
    y = np.empty_like(x)
    ours = lambda: _core.lrn(x, y, 5, 1e-4, 0.75, 1.0, isa=isa)  # noqa: E731
    theirs = ort_session("LRN", np.ascontiguousarray(x.transpose(2, 0, 1)[None]),
                         dict(size=5, alpha=1e-4, beta=0.75, bias=1.0))
    return ours, theirs


def maxpool_case(rng, h, w, c, k, s, ceil_mode):
    x = rng.standard_normal((h, w, c)).astype(np.float32)
    oh = _core.pool_out_size(h, k, s, 0, 0, ceil_mode)
    ow = _core.pool_out_size(w, k, s, 0, 0, ceil_mode)
    y = np.empty((oh, ow, c), np.float32)
    ours = lambda: _core.maxpool(x, y, k, k, s, s)  # noqa: E731
    theirs = ort_session("MaxPool", np.ascontiguousarray(x.transpose(2, 0, 1)[None]),
                         dict(kernel_shape=[k, k], strides=[s, s], ceil_mode=int(ceil_mode)))
    return ours, theirs


def fc_case(rng, n_in, n_out, isa):
    x = rng.standard_normal((1, n_in)).astype(np.float32)
    wt = (rng.standard_normal((n_out, n_in)) * 0.01).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    kern = _core.DenseFcKernel(wt, b, isa=isa)
    y = np.empty(n_out, np.float32)
    ours = lambda: kern.run(x[0], y)  # noqa: E731
    theirs = ort_session("Gemm", x, dict(transB=1), [("W", wt), ("B", b)])
    return ours, theirs


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isa", default="auto", help="auto|generic|avx2|avx512 for our kernels")
    ap.add_argument("--repeat", type=int, default=30, help="minimum timed runs per kernel")
    ap.add_argument("--only", default="", help="substring filter on case names")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu: this thread's CPU time (robust on a loaded machine); wall: perf_counter")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    isa = args.isa
    cases = [
        ("AlexNet conv1 227x227x3->96 11x11/4", lambda: conv_case(rng, 227, 227, 3, 96, 11, 4, 0, 1, isa)),
        ("AlexNet conv2 27x27x96->256 5x5 p2 g2", lambda: conv_case(rng, 27, 27, 96, 256, 5, 1, 2, 2, isa)),
        ("AlexNet conv3 13x13x256->384 3x3 p1", lambda: conv_case(rng, 13, 13, 256, 384, 3, 1, 1, 1, isa)),
        ("SqueezeNet squeeze 56x56x64->16 1x1", lambda: conv_case(rng, 56, 56, 64, 16, 1, 1, 0, 1, isa)),
        ("SqueezeNet expand 56x56x16->64 1x1", lambda: conv_case(rng, 56, 56, 16, 64, 1, 1, 0, 1, isa)),
        ("SqueezeNet expand 56x56x16->64 3x3 p1", lambda: conv_case(rng, 56, 56, 16, 64, 3, 1, 1, 1, isa)),
        ("SqueezeNet conv1 224x224x3->64 3x3/2", lambda: conv_case(rng, 224, 224, 3, 64, 3, 2, 0, 1, isa)),
        ("VGG conv 56x56x128->256 3x3 p1", lambda: conv_case(rng, 56, 56, 128, 256, 3, 1, 1, 1, isa)),
        ("LRN 55x55x96 size 5", lambda: lrn_case(rng, 55, 55, 96, isa)),
        ("LRN 27x27x256 size 5", lambda: lrn_case(rng, 27, 27, 256, isa)),
        ("MaxPool 55x55x96 3x3/2", lambda: maxpool_case(rng, 55, 55, 96, 3, 2, False)),
        ("MaxPool 27x27x256 3x3/2", lambda: maxpool_case(rng, 27, 27, 256, 3, 2, False)),
        ("MaxPool 111x111x64 3x3/2 ceil", lambda: maxpool_case(rng, 111, 111, 64, 3, 2, True)),
        ("FC 9216->4096", lambda: fc_case(rng, 9216, 4096, isa)),
    ]
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    isa_used = _core.DenseConvKernel(np.zeros((1, 1, 1, 1), np.float32), isa=isa).isa
    print(f"Machine: {platform.node()} — {cpu_name()}; onnxruntime {ort.__version__} (1 thread); "
          f"ours: isa={isa_used}; medians of >= {args.repeat} runs, {args.clock} time\n")
    print("| op | ours (ms) | onnxruntime (ms) | ours / ort |")
    print("|---|---:|---:|---:|")
    for name, make in cases:
        if args.only and args.only.lower() not in name.lower():
            continue
        ours, theirs = make()
        a, b = paired_medians_ms(ours, theirs, args.repeat, clock)
        print(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f} |", flush=True)


if __name__ == "__main__":
    main()
