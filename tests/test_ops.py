"""Non-quantized ops of the runtime (runtime/kernels/ops*.c via runtime/ops.pxi).

Every op is compared with onnxruntime running a one-node ONNX model on the same data (NCHW
there, NHWC here; a batch is handled by looping over images). The fast paths (generic C,
AVX2, AVX-512 — whichever this CPU has) are compared with the plain reference.
"""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from qcnn.runtime import _core  # noqa: E402

ISAS = _core.ops_available_isas()
RNG = np.random.default_rng(1234)


# ---------------------------------------------------------------- helpers
def run_onnx(op, inputs, attrs=None, initializers=(), out_rank=4, opset=17):
    """Run one ONNX node on named numpy inputs (+ constant initializers); returns the output."""
    feeds = {f"in{i}": a for i, a in enumerate(inputs)}
    names = list(feeds) + [name for name, _ in initializers]
    node = helper.make_node(op, names, ["out"], **(attrs or {}))
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape)) for n, a in feeds.items()],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None] * out_rank)],
        initializer=[onnx.numpy_helper.from_array(a, name) for name, a in initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def nchw(x_hwc):
    return np.ascontiguousarray(x_hwc.transpose(2, 0, 1)[None])


def hwc(x_nchw):
    return np.ascontiguousarray(x_nchw[0].transpose(1, 2, 0))


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def assert_close(got, want, rtol=1e-4, atol=1e-4):
    """Tolerance relative to the tensor's scale (sums of hundreds of products)."""
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale)


# ---------------------------------------------------------------- dense conv
CONV_CASES = [
    # (h, w, cin, cout, k, stride, pads t,l,b,r, groups, bias, relu)
    pytest.param(227, 227, 3, 96, (11, 11), (4, 4), (0, 0, 0, 0), 1, True, True, id="alexnet-conv1"),
    pytest.param(27, 27, 96, 256, (5, 5), (1, 1), (2, 2, 2, 2), 2, True, True, id="alexnet-conv2-g2"),
    pytest.param(13, 11, 24, 24, (3, 3), (1, 1), (1, 1, 1, 1), 24, True, False, id="depthwise"),
    pytest.param(15, 14, 16, 40, (3, 3), (2, 1), (0, 1, 2, 1), 1, False, False, id="asym-pads"),
    pytest.param(56, 56, 64, 16, (1, 1), (1, 1), (0, 0, 0, 0), 1, True, True, id="squeeze-1x1"),
    pytest.param(56, 56, 16, 64, (1, 1), (1, 1), (0, 0, 0, 0), 1, True, True, id="expand-1x1"),
    pytest.param(13, 13, 16, 64, (3, 3), (1, 1), (1, 1, 1, 1), 1, True, True, id="expand-3x3"),
    pytest.param(9, 10, 20, 37, (3, 2), (3, 2), (1, 0, 0, 1), 1, True, False, id="odd-cout-stride3"),
    pytest.param(1, 1, 8, 5, (1, 1), (1, 1), (0, 0, 0, 0), 1, True, True, id="1x1-spatial"),
    pytest.param(1, 1, 12, 18, (3, 3), (1, 1), (1, 1, 1, 1), 3, True, False, id="1x1-spatial-pad-g3"),
    pytest.param(6, 6, 8, 70, (1, 1), (2, 2), (0, 0, 0, 0), 2, True, True, id="1x1-stride2-g2"),
]


@pytest.mark.parametrize("h,w,cin,cout,k,stride,pads,groups,with_bias,relu", CONV_CASES)
def test_dense_conv_matches_onnxruntime(h, w, cin, cout, k, stride, pads, groups, with_bias, relu):
    weight = rand(cout, cin // groups, *k) * 0.2
    bias = rand(cout) if with_bias else None
    inits = [("W", weight)] + ([("B", bias)] if with_bias else [])
    batch = [rand(h, w, cin) for _ in range(2)]
    want = run_onnx("Conv", [np.concatenate([nchw(x) for x in batch])],
                    dict(kernel_shape=list(k), strides=list(stride), pads=[pads[0], pads[1], pads[2], pads[3]],
                         group=groups), inits)
    if relu:
        want = np.maximum(want, 0)
    for isa in ["ref"] + ISAS:
        kern = _core.DenseConvKernel(weight, bias, strides=stride, pads=pads, groups=groups,
                                     relu=relu, isa=isa)
        scratch = np.empty(kern.scratch_nbytes(h, w), np.uint8)
        for n, x in enumerate(batch):
            y = np.full(kern.out_shape(h, w), np.nan, np.float32)
            kern.run(x, y, scratch)
            assert_close(y, hwc(want[n:n + 1])), isa


@pytest.mark.parametrize("isa", ISAS)
def test_dense_conv_fast_paths_match_reference(isa):
    # many (P, NV) tile shapes: widths 1..21 and cout from 1 to 5 blocks of 16
    for cout in (1, 15, 17, 48, 80):
        for w in (1, 7, 9, 21):
            weight = rand(cout, 6, 3, 3)
            bias = rand(cout)
            x = rand(5, w, 6)
            ref = _core.DenseConvKernel(weight, bias, pads=(1, 1, 1, 1), isa="ref")
            fast = _core.DenseConvKernel(weight, bias, pads=(1, 1, 1, 1), isa=isa)
            want = np.empty(ref.out_shape(5, w), np.float32)
            got = np.full_like(want, np.nan)
            ref.run(x, want)
            fast.run(x, got, np.empty(fast.scratch_nbytes(5, w), np.uint8))
            assert_close(got, want)


@pytest.mark.parametrize("isa", ISAS)
def test_dense_conv_fast_paths_random_shapes(isa):
    # random geometry (fixed seed): groups, strides, kernel sizes, asymmetric pads, odd sizes
    rng = np.random.default_rng(99)
    for _ in range(40):
        groups = int(rng.choice([1, 1, 2, 3]))
        cin, cout = groups * int(rng.integers(1, 12)), groups * int(rng.integers(1, 40))
        kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        pads = tuple(int(v) for v in rng.integers(0, 3, size=4))
        h = int(rng.integers(max(1, kh - pads[0] - pads[2]), 14))
        w = int(rng.integers(max(1, kw - pads[1] - pads[3]), 30))
        weight = rng.standard_normal((cout, cin // groups, kh, kw)).astype(np.float32)
        bias = rng.standard_normal(cout).astype(np.float32) if rng.random() < 0.7 else None
        relu = bool(rng.random() < 0.5)
        x = rng.standard_normal((h, w, cin)).astype(np.float32)
        args = dict(strides=(sh, sw), pads=pads, groups=groups, relu=relu)
        ref = _core.DenseConvKernel(weight, bias, isa="ref", **args)
        fast = _core.DenseConvKernel(weight, bias, isa=isa, **args)
        want = np.empty(ref.out_shape(h, w), np.float32)
        got = np.full_like(want, np.nan)
        ref.run(x, want)
        fast.run(x, got, np.empty(fast.scratch_nbytes(h, w), np.uint8))
        assert_close(got, want), (args, weight.shape, (h, w))


@pytest.mark.parametrize("isa", ISAS)
def test_dense_conv_fast_paths_large_weights(isa):
    # weights larger than the L2 budget: output-channel blocks are processed in several
    # passes over the image; 136 channels = 8.5 blocks, so the last block is partial
    weight, bias = rand(136, 256, 3, 3) * 0.05, rand(136)
    x = rand(3, 13, 256)
    ref = _core.DenseConvKernel(weight, bias, pads=(1, 1, 1, 1), relu=True, isa="ref")
    fast = _core.DenseConvKernel(weight, bias, pads=(1, 1, 1, 1), relu=True, isa=isa)
    want = np.empty(ref.out_shape(3, 13), np.float32)
    got = np.full_like(want, np.nan)
    ref.run(x, want)
    fast.run(x, got, np.empty(fast.scratch_nbytes(3, 13), np.uint8))
    assert_close(got, want)


@pytest.mark.parametrize("isa", ["ref"] + ISAS)
@pytest.mark.parametrize("k,pads", [(1, (0, 0, 0, 0)), (3, (1, 1, 1, 1))])
def test_dense_conv_into_channel_slice_equals_concat(isa, k, pads):
    # a fire module: two expand convs writing straight into the concatenated output
    x = rand(9, 11, 24)
    wa, ba, wb, bb = rand(20, 24, 1, 1), rand(20), rand(36, 24, k, k), rand(36)
    ka = _core.DenseConvKernel(wa, ba, relu=True, isa=isa)
    kb = _core.DenseConvKernel(wb, bb, pads=pads, relu=True, isa=isa)
    scratch = np.empty(max(ka.scratch_nbytes(9, 11), kb.scratch_nbytes(9, 11)), np.uint8)
    ya, yb = np.empty((9, 11, 20), np.float32), np.empty((9, 11, 36), np.float32)
    ka.run(x, ya, scratch)
    kb.run(x, yb, scratch)
    out = np.full((9, 11, 60), np.nan, np.float32)  # 4 spare channels must stay untouched
    ka.run(x, out, scratch, out_channel_offset=0)
    kb.run(x, out, scratch, out_channel_offset=20)
    np.testing.assert_array_equal(out[..., :56], np.concatenate([ya, yb], axis=2))
    assert np.isnan(out[..., 56:]).all()
    with pytest.raises(ValueError, match="out_channel_offset"):
        kb.run(x, out, scratch, out_channel_offset=25)


def test_dense_conv_writes_only_its_output():
    kern = _core.DenseConvKernel(rand(20, 4, 3, 3), pads=(1, 1, 1, 1), isa="auto")
    buf = np.full(6 * 5 * 20 + 16, 7.0, np.float32)
    y = buf[:6 * 5 * 20].reshape(6, 5, 20)
    kern.run(rand(6, 5, 4), y, np.empty(kern.scratch_nbytes(6, 5), np.uint8))
    assert np.all(buf[6 * 5 * 20:] == 7.0)


def test_dense_conv_validation():
    kern = _core.DenseConvKernel(rand(8, 4, 3, 3), pads=(1, 1, 1, 1))
    x, y = rand(5, 5, 4), np.empty((5, 5, 8), np.float32)
    with pytest.raises(ValueError, match="expected 4 channels"):
        kern.run(rand(5, 5, 3), y, np.empty(kern.scratch_nbytes(5, 5), np.uint8))
    with pytest.raises(ValueError, match=r"expected shape \(5, 5, 8\)"):
        kern.run(x, np.empty((4, 5, 8), np.float32), np.empty(kern.scratch_nbytes(5, 5), np.uint8))
    with pytest.raises(ValueError, match="float32"):
        kern.run(x.astype(np.float64), y, np.empty(kern.scratch_nbytes(5, 5), np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        kern.run(rand(5, 10, 4)[:, ::2], y, np.empty(kern.scratch_nbytes(5, 5), np.uint8))
    with pytest.raises(ValueError, match="scratch"):
        kern.run(x, y, np.empty(4, np.uint8))
    with pytest.raises(ValueError, match="scratch"):
        kern.run(x, y, None)
    with pytest.raises(ValueError, match="distinct from x"):
        big = rand(5 * 5 * 8)
        kern.run(big[:100].reshape(5, 5, 4), big.reshape(5, 5, 8), np.empty(kern.scratch_nbytes(5, 5), np.uint8))
    with pytest.raises(ValueError, match="scratch: expected a buffer separate"):
        kern.run(x, y, y)
    with pytest.raises(ValueError, match="smaller than"):
        _core.DenseConvKernel(rand(8, 4, 3, 3)).out_shape(2, 5)
    with pytest.raises(ValueError, match="groups"):
        _core.DenseConvKernel(rand(9, 4, 3, 3), groups=2)
    with pytest.raises(ValueError, match="isa"):
        _core.DenseConvKernel(rand(8, 4, 3, 3), isa="sse9")


# ---------------------------------------------------------------- dense FC
@pytest.mark.parametrize("n_in,n_out,relu", [(9216, 64, True), (37, 11, False), (1, 3, True), (4096, 1000, False)])
def test_dense_fc_matches_onnxruntime(n_in, n_out, relu):
    w, b = rand(n_out, n_in) * 0.05, rand(n_out)
    xs = rand(2, n_in)
    want = run_onnx("Gemm", [xs], dict(transB=1), [("W", w), ("B", b)], out_rank=2)
    if relu:
        want = np.maximum(want, 0)
    for isa in ["ref"] + ISAS:
        kern = _core.DenseFcKernel(w, b, relu=relu, isa=isa)
        for n in range(2):
            y = np.full(n_out, np.nan, np.float32)
            kern.run(xs[n], y)
            assert_close(y, want[n]), isa


def test_dense_fc_validation_and_no_bias():
    w = rand(5, 7)
    kern = _core.DenseFcKernel(w)
    x = rand(7)
    y = np.empty(5, np.float32)
    kern.run(x, y)
    # independent check without onnxruntime: float64 matrix-vector product
    np.testing.assert_allclose(y, w.astype(np.float64) @ x, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="expected 7 values"):
        kern.run(rand(8), y)
    with pytest.raises(ValueError, match=r"expected shape \(5,\)"):
        kern.run(x, np.empty(6, np.float32))
    with pytest.raises(ValueError, match="bias"):
        _core.DenseFcKernel(w, rand(4))


# ---------------------------------------------------------------- elementwise
def test_relu_in_place():
    x = rand(7, 9, 13)
    want = run_onnx("Relu", [nchw(x)])
    assert _core.relu_(x) is x
    np.testing.assert_array_equal(x, hwc(want))


def test_relu_out_of_place():
    x = rand(3, 5, 17)
    y = np.full_like(x, np.nan)
    assert _core.relu(x, y) is y
    np.testing.assert_array_equal(y, hwc(run_onnx("Relu", [nchw(x)])))
    with pytest.raises(ValueError, match="expected shape"):
        _core.relu(x, np.empty((3, 5, 16), np.float32))


@pytest.mark.parametrize("relu", [False, True])
def test_add(relu):
    a, b = rand(5, 6, 7), rand(5, 6, 7)
    want = hwc(run_onnx("Add", [nchw(a), nchw(b)]))
    if relu:
        want = np.maximum(want, 0)
    out = np.empty_like(a)
    _core.add(a, b, out, relu)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    _core.add(a, b, a, relu)  # aliasing the output with an input is allowed
    np.testing.assert_allclose(a, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="expected shape"):
        _core.add(a, rand(5, 6, 8), out)
    buf = rand(20)
    with pytest.raises(ValueError, match="partly overlapping"):
        _core.add(buf[1:11], b.reshape(-1)[:10], buf[:10])


def test_wrappers_accept_buffers_and_reject_bad_input():
    x = rand(4, 4, 8)
    y = np.zeros((8, 4, 4), np.float32)
    _core.nhwc_to_nchw(memoryview(x), memoryview(y))  # a writable memoryview output is shared
    np.testing.assert_array_equal(y, x.transpose(2, 0, 1))
    with pytest.raises(ValueError, match="float32 array or buffer"):
        _core.relu_([1.0, -1.0])
    with pytest.raises(ValueError, match="read-only"):
        ro = rand(3)
        ro.flags.writeable = False
        _core.relu_(ro)
    with pytest.raises(ValueError, match="dtype float32"):
        _core.softmax(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="isa"):
        _core.lrn(x, np.empty_like(x), 5, 1e-4, 0.75, isa="neon")


def test_softmax_stable_and_matches():
    x = rand(3, 1000) * 30
    x[1] += 1000.0  # would overflow a naive exp
    want = run_onnx("Softmax", [x], dict(axis=-1), out_rank=2)
    y = np.empty_like(x)
    _core.softmax(x, y)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    v = rand(10)
    _core.softmax(v, v)  # in place on 1-D
    np.testing.assert_allclose(v.sum(), 1.0, rtol=1e-5)


def test_concat_channels():
    parts = [rand(4, 5, 3), rand(4, 5, 16), rand(4, 5, 1)]
    want = hwc(run_onnx("Concat", [nchw(p) for p in parts], dict(axis=1)))
    out = np.empty((4, 5, 20), np.float32)
    _core.concat_channels(parts, out)
    np.testing.assert_array_equal(out, want)
    with pytest.raises(ValueError, match="expected 19 channels|expected 20 channels"):
        _core.concat_channels(parts[:2], out)
    with pytest.raises(ValueError, match="spatial"):
        _core.concat_channels([rand(4, 4, 3), rand(4, 5, 17)], out)


@pytest.mark.parametrize("shape", [(13, 13, 256), (1, 1, 7), (6, 40, 33)])
def test_nhwc_to_nchw_then_flatten_matches_onnx_order(shape):
    x = rand(*shape)
    flat = run_onnx("Flatten", [nchw(x)], dict(axis=1), out_rank=2)[0]
    y = np.empty((shape[2], shape[0], shape[1]), np.float32)
    _core.nhwc_to_nchw(x, y)
    np.testing.assert_array_equal(y.reshape(-1), flat)


# ---------------------------------------------------------------- LRN
def lrn_spec(x, size, alpha, beta, bias):
    """ONNX LRN definition on NHWC x: window [c - floor((size-1)/2), c + ceil((size-1)/2)]."""
    x64 = x.astype(np.float64)
    c = x.shape[-1]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = np.zeros_like(x64)
    for ch in range(c):
        sq[..., ch] = (x64[..., max(0, ch - lo):min(c, ch + hi + 1)] ** 2).sum(axis=-1)
    return (x64 / (bias + alpha / size * sq) ** beta).astype(np.float32)


def test_lrn_spec_helper_matches_onnxruntime():
    # guards the float64 helper used for even sizes (which onnxruntime refuses)
    x = rand(3, 4, 20) * 3
    want = hwc(run_onnx("LRN", [nchw(x)], dict(size=5, alpha=0.1, beta=0.75, bias=1.0)))
    np.testing.assert_allclose(lrn_spec(x, 5, 0.1, 0.75, 1.0), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size,alpha,beta,bias,c", [
    (5, 1e-4, 0.75, 1.0, 96),    # AlexNet
    (5, 1e-4, 0.75, 2.0, 70),    # channel count not a multiple of the block
    (4, 2e-4, 0.75, 1.0, 33),    # even size: window is asymmetric
    (3, 0.5, 0.6, 1.5, 8),       # general beta (powf path), strong normalisation
    (1, 1.0, 1.0, 1.0, 5),
    (7, 1e-2, 0.75, 1.0, 130),   # window crossing the 64-channel block boundary
    (33, 1e-3, 0.75, 1.0, 40),   # the widest window the AVX-512 kernel keeps in registers
    (35, 1e-3, 0.75, 1.0, 70),   # wider: the AVX-512 kernel's row of squares
])
def test_lrn_matches_onnxruntime(size, alpha, beta, bias, c):
    xs = [rand(6, 5, c) * 3 for _ in range(2)]
    if size % 2:
        want = run_onnx("LRN", [np.concatenate([nchw(x) for x in xs])],
                        dict(size=size, alpha=alpha, beta=beta, bias=bias))
    else:  # onnxruntime rejects even sizes; use the ONNX spec formula in float64
        want = np.concatenate([nchw(lrn_spec(x, size, alpha, beta, bias)) for x in xs])
    for isa in ["ref"] + ISAS:
        for n, x in enumerate(xs):
            y = np.full_like(x, np.nan)
            _core.lrn(x, y, size, alpha, beta, bias, isa=isa)
            assert_close(y, hwc(want[n:n + 1]), rtol=2e-5, atol=2e-6)


def test_lrn_rejects_aliasing():
    x = rand(2, 2, 8)
    with pytest.raises(ValueError, match="distinct"):
        _core.lrn(x, x, 5, 1e-4, 0.75, 1.0)


# ---------------------------------------------------------------- pooling
POOL_CASES = [
    # (h, w, c, k, stride, pads t,l,b,r, ceil_mode)
    pytest.param(55, 55, 96, (3, 3), (2, 2), (0, 0, 0, 0), 0, id="alexnet-pool1"),
    pytest.param(112, 112, 64, (3, 3), (2, 2), (0, 0, 0, 0), 1, id="squeezenet-ceil"),
    pytest.param(10, 11, 5, (3, 3), (2, 2), (1, 1, 1, 1), 1, id="ceil-with-pads"),
    pytest.param(8, 8, 3, (3, 3), (3, 3), (1, 1, 1, 1), 1, id="ceil-last-window-dropped"),
    pytest.param(7, 9, 4, (2, 3), (2, 1), (1, 0, 0, 2), 0, id="asym-pads"),
    pytest.param(9, 9, 6, (2, 2), (2, 2), (0, 0, 1, 1), 1, id="ceil-asym-pads"),
    pytest.param(1, 1, 7, (1, 1), (1, 1), (0, 0, 0, 0), 0, id="1x1-spatial"),
    pytest.param(1, 1, 7, (3, 3), (2, 2), (1, 1, 1, 1), 1, id="1x1-spatial-padded"),
    pytest.param(9, 8, 239, (3, 3), (2, 2), (1, 0, 1, 1), 1, id="239-channels"),  # 128+64+32+8+4+3
]


def _pool_out(h, w, k, stride, pads, ceil_mode):
    return (_core.pool_out_size(h, k[0], stride[0], pads[0], pads[2], ceil_mode),
            _core.pool_out_size(w, k[1], stride[1], pads[1], pads[3], ceil_mode))


@pytest.mark.parametrize("h,w,c,k,stride,pads,ceil_mode", POOL_CASES)
def test_maxpool_matches_onnxruntime(h, w, c, k, stride, pads, ceil_mode):
    xs = [rand(h, w, c) for _ in range(2)]
    want = run_onnx("MaxPool", [np.concatenate([nchw(x) for x in xs])],
                    dict(kernel_shape=list(k), strides=list(stride), pads=list(pads), ceil_mode=ceil_mode))
    oh, ow = _pool_out(h, w, k, stride, pads, ceil_mode)
    assert (oh, ow) == want.shape[2:]
    for isa in ["ref"] + ISAS:
        for n, x in enumerate(xs):
            y = np.full((oh, ow, c), np.nan, np.float32)
            _core.maxpool(x, y, *k, *stride, *pads, isa=isa)
            np.testing.assert_array_equal(y, hwc(want[n:n + 1]), err_msg=isa)


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("h,w,c,k,stride,pads,ceil_mode", POOL_CASES)
def test_avgpool_matches_onnxruntime(h, w, c, k, stride, pads, ceil_mode, count_include_pad):
    xs = [rand(h, w, c) for _ in range(2)]
    want = run_onnx("AveragePool", [np.concatenate([nchw(x) for x in xs])],
                    dict(kernel_shape=list(k), strides=list(stride), pads=list(pads), ceil_mode=ceil_mode,
                         count_include_pad=count_include_pad), opset=19)
    oh, ow = _pool_out(h, w, k, stride, pads, ceil_mode)
    assert (oh, ow) == want.shape[2:]
    for n, x in enumerate(xs):
        y = np.full((oh, ow, c), np.nan, np.float32)
        _core.avgpool(x, y, *k, *stride, *pads, count_include_pad=count_include_pad)
        np.testing.assert_allclose(y, hwc(want[n:n + 1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("isa", ISAS)
def test_maxpool_fast_paths_random_shapes(isa):
    rng = np.random.default_rng(5)
    for _ in range(40):
        kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        pads = tuple(int(rng.integers(0, k)) for k in (kh, kw, kh, kw))  # ONNX: pad < kernel
        h, w, c = int(rng.integers(kh, 12)), int(rng.integers(kw, 12)), int(rng.integers(1, 300))
        ceil = bool(rng.random() < 0.5)
        oh, ow = _pool_out(h, w, (kh, kw), (sh, sw), pads, ceil)
        x = rng.standard_normal((h, w, c)).astype(np.float32)
        want = np.empty((oh, ow, c), np.float32)
        got = np.full_like(want, np.nan)
        _core.maxpool(x, want, kh, kw, sh, sw, *pads, isa="ref")
        _core.maxpool(x, got, kh, kw, sh, sw, *pads, isa=isa)
        np.testing.assert_array_equal(got, want)


def test_pool_out_size_rules():
    # floor vs ceil, and the ceil-mode rule that the last window must start in input/left pad
    assert _core.pool_out_size(55, 3, 2) == 27
    assert _core.pool_out_size(112, 3, 2, ceil_mode=True) == 56
    assert _core.pool_out_size(112, 3, 2) == 55
    assert _core.pool_out_size(8, 3, 3, 1, 1, ceil_mode=True) == 3  # 4th window would start in the right pad
    with pytest.raises(ValueError):
        _core.pool_out_size(2, 3, 1)


def test_pool_validation():
    x = rand(8, 8, 3)
    with pytest.raises(ValueError, match=r"expected shape \(3, 3, 3\)"):
        _core.maxpool(x, np.empty((5, 5, 3), np.float32), 3, 3, 2, 2)


@pytest.mark.parametrize("shape", [(13, 13, 1000), (1, 1, 5), (7, 3, 17)])
def test_global_avgpool(shape):
    x = rand(*shape)
    want = run_onnx("GlobalAveragePool", [nchw(x)])[0, :, 0, 0]
    y = np.empty(shape[2], np.float32)
    _core.global_avgpool(x, y)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- end to end
def shared_dir():
    from pathlib import Path
    return Path(__file__).resolve().parents[1].parent / "shared"


def run_graph_with_ops(model, x_hwc, isa):
    """Execute a Conv/Relu/MaxPool/Concat/GlobalAveragePool/Flatten graph with the ops here,
    in NHWC, one image: a check that the ops compose with ONNX's semantics (incl. Flatten
    order and pooling sizes) on a real network."""
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    vals = {model.graph.input[0].name: x_hwc}
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ins = [vals.get(n) for n in node.input]
        if node.op_type == "Conv":
            pads = attrs.get("pads", [0, 0, 0, 0])
            kern = _core.DenseConvKernel(inits[node.input[1]], inits.get(node.input[2]) if len(node.input) > 2 else None,
                                         strides=attrs.get("strides", [1, 1]), pads=pads,
                                         groups=attrs.get("group", 1), isa=isa)
            h, w, _ = ins[0].shape
            out = np.empty(kern.out_shape(h, w), np.float32)
            kern.run(ins[0], out, np.empty(kern.scratch_nbytes(h, w), np.uint8))
        elif node.op_type == "Relu":
            out = _core.relu_(ins[0].copy())
        elif node.op_type == "MaxPool":
            k, s = attrs["kernel_shape"], attrs.get("strides", [1, 1])
            p = attrs.get("pads", [0, 0, 0, 0])
            ceil = attrs.get("ceil_mode", 0)
            h, w, c = ins[0].shape
            out = np.empty((_core.pool_out_size(h, k[0], s[0], p[0], p[2], ceil),
                            _core.pool_out_size(w, k[1], s[1], p[1], p[3], ceil), c), np.float32)
            _core.maxpool(ins[0], out, *k, *s, *p, isa=isa)
        elif node.op_type == "Concat":
            assert attrs["axis"] == 1  # NCHW channels
            out = np.empty(ins[0].shape[:2] + (sum(a.shape[2] for a in ins),), np.float32)
            _core.concat_channels(ins, out)
        elif node.op_type == "GlobalAveragePool":
            out = np.empty(ins[0].shape[2], np.float32)
            _core.global_avgpool(ins[0], out)
        elif node.op_type == "Flatten":
            out = ins[0].reshape(-1)
        else:
            raise NotImplementedError(node.op_type)
        vals[node.output[0]] = out
    return vals[model.graph.output[0].name]


@pytest.mark.parametrize("isa", ["ref"] + ISAS)
def test_squeezenet_end_to_end_matches_onnxruntime(isa):
    path = shared_dir() / "models" / "squeezenet1.1.onnx"
    if not path.exists():
        pytest.skip(f"{path} not found")
    model = onnx.load(str(path))
    x = np.random.default_rng(7).standard_normal((224, 224, 3)).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    want = sess.run(None, {model.graph.input[0].name: nchw(x)})[0].reshape(-1)
    got = run_graph_with_ops(model, x, isa)
    assert got.shape == want.shape
    assert_close(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(3, 5, 7), (1, 4, 4), (40, 3, 9), (3, 1, 1), (3, 16, 1), (3, 224, 224), (3, 7, 5)])
def test_nchw_to_nhwc_is_the_inverse_transpose(shape, isa):
    from qcnn.runtime import _core

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y = np.empty((shape[1], shape[2], shape[0]), np.float32)
    assert _core.nchw_to_nhwc(x, y, isa=isa) == 0  # no NaN or infinite value
    np.testing.assert_array_equal(y, x.transpose(1, 2, 0))
    x.flat[::5] = np.nan
    x.flat[1::7] = np.inf
    x.flat[2::11] = -np.inf
    x.flat[3::13] = np.finfo(np.float32).max  # large but finite
    assert _core.nchw_to_nhwc(x, y, isa=isa) == np.count_nonzero(~np.isfinite(x)) > 0
    np.testing.assert_array_equal(y, x.transpose(1, 2, 0))
    back = np.empty(shape, np.float32)
    _core.nhwc_to_nchw(y, back)
    np.testing.assert_array_equal(back, x)


def test_kernels_refuse_misaligned_arrays():
    # float32 data at an odd byte address: the C loops would make misaligned loads (UBSan found
    # this in the input transpose); the wrappers refuse such arrays, Model copies them first.
    raw = np.zeros(4 * 5 * 5 * 2 + 1, np.uint8)
    x = raw[1:].view(np.float32).reshape(5, 5, 2)
    assert not x.flags.aligned
    kern = _core.DenseConvKernel(rand(4, 2, 3, 3))
    with pytest.raises(ValueError, match="aligned"):
        kern.run(x, np.empty((3, 3, 4), np.float32))
    with pytest.raises(ValueError, match="aligned"):
        _core.nchw_to_nhwc(x.reshape(2, 5, 5), np.empty((5, 5, 2), np.float32))
