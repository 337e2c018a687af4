"""qcnn.converter: ONNX import, k-means / error-corrected quantization, decode oracle, CLI errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from qcnn.converter import ConversionError, convert, decode_to_onnx  # noqa: E402
from qcnn.converter import quantize as Q  # noqa: E402
from qcnn.converter.benchmark import heldout_errors  # noqa: E402
from qcnn.converter.cli import main as cli_main  # noqa: E402
from qcnn.converter.forward import run_model  # noqa: E402
from qcnn.converter.onnx_import import import_onnx  # noqa: E402
from qcnn.schema import ir  # noqa: E402


# --------------------------------------------------------------------------- helpers
def ort_run(proto, x):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def smooth_images(rng, n, c=3, h=16, w=16):
    """Images with spatial and cross-channel correlation (so input statistics are far from white)."""
    base = rng.standard_normal((n, 1, h // 4, w // 4))
    img = np.kron(base, np.ones((1, 1, 4, 4)))
    mix = np.random.default_rng(123).standard_normal((c, 1)) * 0.5 + 1.0  # same distribution in every call
    x = img * mix[None, :, :, None] + 0.3 * rng.standard_normal((n, c, h, w))
    return x.astype(np.float32)


def small_net(seed=0, batch_dim="N"):
    """conv(3->16) relu -> conv(16->32) relu -> maxpool -> flatten (Shape/Gather/Concat/Reshape) -> fc 2048->64 relu -> fc 64->10."""
    rng = np.random.default_rng(seed)

    def he(*shape):
        return rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Shape", ["p2"], ["shp"], name="shape"),
        helper.make_node("Gather", ["shp", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", "minus1"], ["tshape"], name="cat", axis=0),
        helper.make_node("Reshape", ["p2", "tshape"], ["flat"], name="reshape"),
        helper.make_node("Gemm", ["flat", "w3", "b3"], ["f3"], name="fc1", transB=1),
        helper.make_node("Relu", ["f3"], ["r3"], name="relu3"),
        helper.make_node("Dropout", ["r3"], ["d3"], name="drop"),
        helper.make_node("Gemm", ["d3", "w4", "b4"], ["logits"], name="fc2", transB=1),
    ]
    inits = [init("w1", he(16, 3, 3, 3)), init("b1", rng.standard_normal(16) * 0.1),
             init("w2", he(32, 16, 3, 3)), init("b2", rng.standard_normal(32) * 0.1),
             init("w3", he(64, 2048)), init("b3", rng.standard_normal(64) * 0.1),
             init("w4", he(10, 64)), init("b4", np.zeros(10)),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "axes0"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    g = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 3, 16, 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch_dim, 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


SMALL_SETTINGS = dict(conv=(4, 16), fc=(4, 16), kmeans_iters=20, calib_count=1000)


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "small.onnx"
    onnx.save(small_net(), str(path))
    return str(path)


@pytest.fixture(scope="module")
def small_data():
    rng = np.random.default_rng(42)
    return smooth_images(rng, 160), smooth_images(rng, 64)


# --------------------------------------------------------------------------- import
def test_import_small_net_matches_onnxruntime_and_fuses():
    proto = small_net()
    m = import_onnx(proto)
    kinds = [type(op).__name__ for op in m.operators]
    assert kinds == ["Conv", "Conv", "MaxPool", "Flatten", "Gemm", "Gemm"]  # relus fused, dropout dropped
    assert [op.relu for op in m.operators if isinstance(op, (ir.Conv, ir.Gemm))] == [True, True, True, False]
    assert m.input_shape == (3, 16, 16) and m.outputs == ["logits"]
    x = smooth_images(np.random.default_rng(1), 3)
    np.testing.assert_allclose(run_model(m, x)["logits"], ort_run(proto, x), rtol=1e-4, atol=1e-4)


def test_import_many_ops_matches_onnxruntime():
    """BN folding, MatMul+Add, asymmetric pads, auto_pad, ceil_mode, AveragePool, LRN, Concat, Add, Softmax."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[0, 1, 2, 1], strides=[2, 1]),
        helper.make_node("BatchNormalization", ["c1", "s", "b", "mu", "var"], ["bn"], name="bn", epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r1"], name="relu1"),
        helper.make_node("LRN", ["r1"], ["l1"], name="lrn", size=3, alpha=1e-2, beta=0.75, bias=2.0),
        helper.make_node("Conv", ["l1", "w2", "b2"], ["c2"], name="conv2", auto_pad="SAME_UPPER", group=2),
        helper.make_node("Conv", ["l1", "w3"], ["c3"], name="conv3", kernel_shape=[1, 1]),
        helper.make_node("Add", ["c2", "c3"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["ar"], name="relu_add"),
        helper.make_node("Concat", ["ar", "l1"], ["cat"], name="concat", axis=1),
        helper.make_node("MaxPool", ["cat"], ["mp"], name="mp", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        helper.make_node("AveragePool", ["mp"], ["ap"], name="ap", kernel_shape=[2, 2], pads=[1, 1, 0, 0],
                         count_include_pad=1),
        helper.make_node("AveragePool", ["mp"], ["ap2"], name="ap2", kernel_shape=[2, 2], pads=[1, 0, 0, 1]),
        helper.make_node("Concat", ["ap", "ap2"], ["aps"], name="cat2", axis=-3),
        helper.make_node("GlobalAveragePool", ["aps"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["f"], name="flat"),
        helper.make_node("Identity", ["f"], ["fi"], name="ident"),
        helper.make_node("MatMul", ["fi", "wm"], ["mm"], name="mm"),
        helper.make_node("Add", ["mm", "bm"], ["mmb"], name="mm_bias"),
        helper.make_node("Softmax", ["mmb"], ["prob"], name="sm", axis=1),
    ]
    inits = [init("w1", rng.standard_normal((8, 3, 3, 3))), init("s", rng.random(8) + 0.5),
             init("b", rng.standard_normal(8)), init("mu", rng.standard_normal(8)), init("var", rng.random(8) + 0.1),
             init("w2", rng.standard_normal((8, 4, 3, 3)) * 0.2), init("b2", rng.standard_normal(8)),
             init("w3", rng.standard_normal((8, 8, 1, 1))), init("wm", rng.standard_normal((32, 5))),
             init("bm", rng.standard_normal(5))]
    g = helper.make_graph(nodes, "many", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 13, 11])],
                          [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 5])], inits)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])
    m = import_onnx(proto)
    kinds = [type(op).__name__ for op in m.operators]
    assert "BatchNormalization" not in kinds and kinds.count("Gemm") == 1
    assert [op for op in m.operators if isinstance(op, ir.Add)][0].relu
    x = rng.standard_normal((2, 3, 13, 11)).astype(np.float32)
    np.testing.assert_allclose(run_model(m, x)["prob"], ort_run(proto, x), rtol=1e-4, atol=1e-5)


def test_import_light_alexnet_with_placeholder_weights():
    from qcnn.converter.zoo import load_light

    proto = load_light("bvlc_alexnet", seed=1)
    m = import_onnx(proto)
    assert [op.name for op in m.operators if isinstance(op, (ir.Conv, ir.Gemm))] and \
        sum(isinstance(op, ir.Conv) for op in m.operators) == 5 and sum(isinstance(op, ir.Gemm) for op in m.operators) == 3
    assert m.operators[1].__class__ is ir.LRN and m.operators[0].groups == 1 and m.operators[3].groups == 2
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(run_model(m, x)[m.outputs[0]], ort_run(proto, x), rtol=1e-4, atol=1e-6)


def test_import_squeezenet_matches_onnxruntime(shared_dir):
    path = shared_dir / "models" / "squeezenet1.1.onnx"
    if not path.exists():
        pytest.skip("squeezenet1.1.onnx missing")
    m = import_onnx(str(path))
    assert m.input_name == "data" and m.outputs == ["logits"] and len(m.source_sha256) == 64
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(run_model(m, x)["logits"], ort_run(onnx.load(str(path)), x), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- learning
def _toy_problem(kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "conv":
        geom = Q.LayerGeom("conv", 1, 3, 3, 6, 5, 2, 3, 4)  # P=9, Cin 6 = 3 subspaces of 2, K=4
    else:
        geom = Q.LayerGeom("fc", 1, 1, 1, 10, 7, 3, 4, 5)  # 10 inputs padded to 12, K=5
    n = 80
    S = rng.standard_normal((n, geom.D)) @ rng.standard_normal((geom.D, geom.D)) * 0.3
    if geom.cin_pad:  # padded input channels are always zero
        pad_cols = [c for m in range(geom.nsub) for c in geom.subspace_columns(m)
                    if (c % (geom.nsub * geom.subvec)) >= geom.cin_g]
        S[:, pad_cols] = 0
    W = rng.standard_normal((geom.D, geom.cout_g))
    T = S @ W + 0.1 * rng.standard_normal((n, geom.cout_g))
    return geom, S, T, W


@pytest.mark.parametrize("kind", ["conv", "fc"])
def test_ec_factored_agrees_with_direct(kind):
    geom, S, T, W = _toy_problem(kind)
    cb, A = Q.kmeans_layer(W[None], geom, np.random.default_rng(1), iters=10)
    mu = 0.05
    F, Y, yy = Q.factor_stats(S.T @ S, S.T @ T, mu, W)  # the G/B path used for conv layers
    fact = Q.ec_solve(F, Y, cb[0], A[0], geom, iters=3)
    aug_S = np.vstack([S, np.sqrt(mu) * np.eye(geom.D)])  # same ridge as extra data rows
    aug_T = np.vstack([T, np.sqrt(mu) * W])
    direct = Q.ec_direct_reference(aug_S, aug_T, cb[0], A[0], geom, iters=3)
    assert np.array_equal(fact.assign, direct.assign)
    np.testing.assert_allclose(fact.codebooks, direct.codebooks, rtol=1e-7, atol=1e-8)
    const = (T * T).sum() + mu * (W * W).sum() - yy
    np.testing.assert_allclose(np.array(fact.history) + const, direct.history, rtol=1e-8)
    # the objective never increases and EC improves on the k-means start
    assert all(b <= a * (1 + 1e-9) for a, b in zip(direct.history, direct.history[1:]))
    assert direct.history[-1] < 0.9 * direct.history[0]
    # the rows path with a separable ridge is the same problem again
    rows = Q.ec_solve(S, T, cb[0], A[0], geom, iters=3, mu=mu, W0=W)
    assert np.array_equal(rows.assign, direct.assign)


def test_codebook_update_is_least_squares_optimum():
    geom, S, T, W = _toy_problem("conv", seed=5)
    cb, A = Q.kmeans_layer(W[None], geom, np.random.default_rng(0), iters=5)
    H = S.T @ S
    m = 1
    cols = geom.subspace_columns(m)
    L = S[:, cols].T @ T  # (other subspaces set to zero)
    Am = A[0][:, m, :]
    new = Q.update_codebook(H[np.ix_(cols, cols)], L, Am, cb[0][m])

    def f(D):
        U = D[Am].transpose(0, 2, 1).reshape(len(cols), -1)
        return float(((T - S[:, cols] @ U) ** 2).sum())

    rng = np.random.default_rng(0)
    base = f(new)
    for _ in range(20):  # any perturbation of the solution is worse
        assert f(new + 1e-3 * rng.standard_normal(new.shape)) >= base


def test_kmeans_reproducible_and_reconstruction_layout():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((12, 6, 3, 3)).astype(np.float32)  # Cout 12, groups 2 -> Cin/G 6
    op = ir.Conv("c", ["x"], ["y"], cin=12, cout=12, kernel=(3, 3), groups=2, weights=W)
    geom = Q.geometry(op, 4, 8)  # 6 channels -> 2 subspaces, padded to 8
    Wb = Q.weight_blocks(W, geom)
    np.testing.assert_array_equal(Q.blocks_to_dense(Wb, geom), W)
    cb1, A1 = Q.kmeans_layer(Wb, geom, np.random.default_rng(7))
    cb2, A2 = Q.kmeans_layer(Wb, geom, np.random.default_rng(7))
    assert np.array_equal(A1, A2) and np.array_equal(cb1, cb2)
    qw = Q.to_quantized_weights(cb1, A1, geom)
    assert qw.codebooks.shape == (2, 2, 8, 4) and qw.indices.shape == (2, 3, 3, 2, 6)
    op.weights = qw
    What = Q.reconstruct(op)
    # independent check of one weight: output channel 7 (group 1, o=1), input channel 5 (m=1, j=1), kh=2, kw=0
    k = qw.indices[1, 2, 0, 1, 1]
    assert What[7, 5, 2, 0] == qw.codebooks[1, 1, k, 1]
    # k-means beats a random assignment by a wide margin
    assert ((What - W) ** 2).sum() < 0.6 * (W ** 2).sum()


@pytest.mark.parametrize("d", range(1, 10))
def test_compiled_kmeans_loops_give_the_numpy_values(d):
    """converter/_kmeans.pyx against the numpy expressions it replaces, bit for bit: labels (ties
    to the first centre, a NaN distance first), the k-means++ distance update (numpy's summation
    order for d <= 8; longer sub-vectors stay in numpy) and the pick."""
    from qcnn.converter import _kmeans
    rng = np.random.default_rng(d)
    S, N, K = 5, 203, 19
    X = rng.standard_normal((S, N, d))
    C = rng.standard_normal((S, K, d))
    C[:, 7] = C[:, 3]  # a tie: the first of two equal centres wins
    X[1, 4, 0] = np.nan  # every distance of this point is NaN: centre 0, as np.argmin
    X32 = X.astype(np.float32)
    np.testing.assert_array_equal(Q._labels(X32, C), Q._labels_numpy(X32, C))
    assert Q._labels(X32, C)[1, 4] == 0
    if d <= 8:
        mind = rng.random((S, N)) * 3
        mind[0, :5] = 0.0
        want = np.minimum(mind, ((X - C[:, 2:3]) ** 2).sum(-1))
        got = _kmeans.update_min_sqdist(X, np.ascontiguousarray(C[:, 2]), mind.copy())
        assert np.array_equal(want.view(np.int64)[~np.isnan(want)], got.view(np.int64)[~np.isnan(got)])
        assert np.array_equal(np.isnan(want), np.isnan(got))
        u = rng.random(S) * mind.sum(1)
        u[2] = 0.0  # no running sum is below 0: pick 0
        np.testing.assert_array_equal(_kmeans.cumsum_reaching(mind, u),
                                      (np.cumsum(mind, axis=1) < u[:, None]).sum(axis=1))
    else:
        with pytest.raises(ValueError, match="not in 1..8"):
            _kmeans.update_min_sqdist(X, np.ascontiguousarray(C[:, 2]), np.zeros((S, N)))
    X = np.nan_to_num(X)
    seeds = [Q._kmeanspp(X, 16, np.random.default_rng(5), compiled=c) for c in (True, False)]
    np.testing.assert_array_equal(seeds[0], seeds[1])


def test_compiled_kmeans_rejects_mismatched_shapes():
    from qcnn.converter import _kmeans
    X = np.zeros((2, 5, 3), np.float32)
    with pytest.raises(ValueError, match="do not match"):
        _kmeans.labels(X, np.zeros((2, 4, 7), np.float32), np.zeros((2, 7), np.float32))
    with pytest.raises(ValueError, match="no centres"):
        _kmeans.labels(X, np.zeros((2, 3, 0), np.float32), np.zeros((2, 0), np.float32))


# --------------------------------------------------------------------------- conversion
@pytest.fixture(scope="module")
def small_converted(small_onnx, small_data):
    calib, _ = small_data
    ec = convert(small_onnx, calib=calib, ec_iters=3, report_plain=True, **SMALL_SETTINGS)
    plain = convert(small_onnx, calib=calib, ec=False, **SMALL_SETTINGS)
    return ec, plain


def test_plan_and_report(small_converted):
    ec, _ = small_converted
    rows = {r["name"]: r for r in ec.report["layers"]}
    assert not rows["conv1"]["quantized"] and "3 input channels" in rows["conv1"]["reason"]
    assert rows["conv2"]["quantized"] and rows["conv2"]["nsub"] == 4 and rows["fc1"]["nsub"] == 512
    assert not rows["fc2"]["quantized"] and rows["fc2"]["reason"]  # 64->10 at 1/16: neither faster nor smaller
    for name in ("conv2", "fc1"):
        r = rows[name]
        assert r["flops_quant"] < r["flops_dense"] and r["bytes_quant"] < r["bytes_dense"]
        assert 0 <= r["error"] < r["plain_error"]  # EC wins on its own calibration data
        assert len(r["error_curve"]) == 4 and r["error_curve"][-1] <= r["error_curve"][0] + 1e-9
    # conv2: 32x16x9 weights; 4 subspaces x 16 codewords x 4 floats + 9*4*32 indices at 4 bits + bias
    assert rows["conv2"]["bytes_quant"] == 4 * 4 * 16 * 4 + 9 * 4 * 32 * 4 // 8 + 4 * 32
    stored = json.loads(ec.model.metadata["qcnn.report"])
    assert stored["layers"][1]["name"] == "conv2" and stored["method"] == "Q-CNN (EC)"


def test_ec_beats_plain_on_heldout(small_onnx, small_converted, small_data):
    ec, plain = small_converted
    _, held = small_data
    fm = import_onnx(small_onnx)
    e_ec = heldout_errors(fm, ec.model, held)
    e_pl = heldout_errors(fm, plain.model, held)
    assert set(e_ec["layers"]) == {"conv2", "fc1"}
    for name in e_ec["layers"]:
        assert e_ec["layers"][name] < 0.8 * e_pl["layers"][name], (name, e_ec, e_pl)
    assert e_ec["network"]["output_rel_error"] < e_pl["network"]["output_rel_error"]


def test_multilayer_ec_feeds_quantized_inputs(small_onnx, small_data):
    calib, _ = small_data
    on = convert(small_onnx, calib=calib, ec_iters=1, **SMALL_SETTINGS)
    off = convert(small_onnx, calib=calib, ec_iters=1, multilayer=False, **SMALL_SETTINGS)
    e_on = {r["name"]: r.get("input_energy") for r in on.report["layers"]}
    e_off = {r["name"]: r.get("input_energy") for r in off.report["layers"]}
    assert e_on["conv2"] == pytest.approx(e_off["conv2"])  # first quantized layer: same input either way
    # fc1's input S: from the quantized network when on, from the original when off
    fm = import_onnx(small_onnx)
    s_orig = run_model(fm, calib, keep=["flat"])["flat"]
    s_quant = run_model(on.model, calib, keep=["flat"])["flat"]
    assert e_off["fc1"] == pytest.approx(float((s_orig.astype(np.float64) ** 2).sum()), rel=1e-5)
    assert e_on["fc1"] == pytest.approx(float((s_quant.astype(np.float64) ** 2).sum()), rel=1e-5)
    assert abs(e_on["fc1"] - e_off["fc1"]) > 1e-3 * e_off["fc1"]


def test_seed_reproducible(small_onnx, small_data):
    calib, _ = small_data
    a = convert(small_onnx, calib=calib, ec_iters=1, seed=3, **SMALL_SETTINGS).model
    b = convert(small_onnx, calib=calib, ec_iters=1, seed=3, **SMALL_SETTINGS).model
    c = convert(small_onnx, calib=calib, ec_iters=1, seed=4, **SMALL_SETTINGS).model
    for x, y, z in zip(a.operators, b.operators, c.operators):
        if isinstance(x, (ir.Conv, ir.Gemm)) and x.quantized:
            assert np.array_equal(x.weights.indices, y.weights.indices)
            assert np.array_equal(x.weights.codebooks, y.weights.codebooks)
            assert not np.array_equal(x.weights.codebooks, z.weights.codebooks)


def test_written_file_decodes_to_w_hat(tmp_path, small_onnx, small_data):
    from qcnn.schema.reader import read_model

    calib, held = small_data
    out = tmp_path / "small.qcnn"
    res = convert(small_onnx, str(out), calib=calib, ec_iters=1, **SMALL_SETTINGS)
    assert out.exists() and res.output_bytes == out.stat().st_size
    back = read_model(str(out))
    proto = decode_to_onnx(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for op in back.operators:
        if isinstance(op, (ir.Conv, ir.Gemm)) and op.quantized:
            q = op.weights
            W = inits[op.name + "__W"]
            # rebuild W_hat independently from codebooks + indices, straight from the format description
            if isinstance(op, ir.Conv):
                G, KH, KW, M, cg = q.indices.shape
                ref = np.zeros_like(W)
                for o in range(op.cout):
                    g, oo = divmod(o, cg)
                    for kh in range(KH):
                        for kw in range(KW):
                            for m in range(M):
                                vec = q.codebooks[g, m, q.indices[g, kh, kw, m, oo]]
                                n = min(q.subvec, op.cin // op.groups - m * q.subvec)
                                ref[o, m * q.subvec:m * q.subvec + n, kh, kw] = vec[:n]
            else:
                M = q.nsub
                ref = np.zeros_like(W)
                for o in range(op.out_features):
                    for m in range(M):
                        vec = q.codebooks[0, m, q.indices[0, 0, 0, m, o]]
                        n = min(q.subvec, op.in_features - m * q.subvec)
                        ref[o, m * q.subvec:m * q.subvec + n] = vec[:n]
            assert np.array_equal(W, ref), op.name
    np.testing.assert_allclose(ort_run(proto, held[:4]), run_model(back, held[:4])["logits"], rtol=1e-4, atol=1e-4)
    assert [i.name for i in proto.graph.input] == ["x"]


def test_pad_subspaces_and_overrides(small_onnx, small_data):
    calib, _ = small_data
    r = convert(small_onnx, calib=calib[:20], ec_iters=1, pad_subspaces=True, layers={"fc2": (4, 8)},
                skip=["fc1"], **SMALL_SETTINGS)
    rows = {x["name"]: x for x in r.report["layers"]}
    assert rows["conv1"]["quantized"] and rows["conv1"]["nsub"] == 1  # 3 channels padded to 4
    assert rows["fc2"]["quantized"] and rows["fc2"]["subvec"] == 4  # forced even if not faster
    assert not rows["fc1"]["quantized"] and rows["fc1"]["reason"] == "--skip"
    op = [o for o in r.model.operators if o.name == "conv1"][0]
    assert op.weights.codebooks.shape == (1, 1, 16, 4)


def test_no_ec_without_calibration(small_onnx):
    r = convert(small_onnx, ec=False, **SMALL_SETTINGS)
    assert any(isinstance(o, ir.Conv) and o.quantized for o in r.model.operators)
    assert "error" not in {k for x in r.report["layers"] for k in x}


# --------------------------------------------------------------------------- calibration inputs
def _write_images(folder, n, rng, size=(40, 30)):
    from PIL import Image

    folder.mkdir(exist_ok=True)
    for i in range(n):
        arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")


def test_image_folder_preprocessing_and_cli(tmp_path, small_onnx, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = tmp_path / "imgs"
    _write_images(imgs, 6, rng)
    (imgs / "broken.jpg").write_bytes(b"not a jpeg at all")
    Image.new("RGB", (32, 20), (10, 200, 30)).save(imgs / "const.bmp")
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{i} n{i:08d} name_{i}\n" for i in range(10)))
    out, js = tmp_path / "o.qcnn", tmp_path / "o.json"
    rc = cli_main([small_onnx, "-o", str(out), "--calib", str(imgs), "--calib-count", "50", "--preprocess", "caffe",
                   "--conv", "4/16", "--fc", "4/16", "--ec-iters", "1", "--labels", str(labels), "--json", str(js), "-q"])
    err = capsys.readouterr().err
    assert rc == 0 and "skipping unreadable image" in err and "broken.jpg" in err
    rep = json.loads(js.read_text())
    assert rep["calibration"].startswith("7 images")
    from qcnn.schema.reader import read_model

    m = read_model(str(out))
    assert m.preprocessing.channel_order == "BGR" and m.preprocessing.mean == [104.0, 117.0, 123.0]
    assert m.preprocessing.crop == (16, 16) and m.preprocessing.resize_shorter == 256
    assert m.labels[3] == "n00000003 name_3"
    # the constant image preprocesses to (B - 104, G - 117, R - 123)
    from qcnn.converter.calibration import preprocess_image

    with Image.open(imgs / "const.bmp") as im:
        x = preprocess_image(im, m.preprocessing, (16, 16))
    np.testing.assert_allclose(x[:, 5, 5], [30 - 104, 200 - 117, 10 - 123], atol=1e-4)


def test_npz_calibration_keys(tmp_path, small_onnx):
    rng = np.random.default_rng(0)
    x = smooth_images(rng, 12)
    np.savez(tmp_path / "c.npz", x_test=x[:4], x_train=x)
    r = convert(small_onnx, calib=str(tmp_path / "c.npz"), ec_iters=1, **dict(SMALL_SETTINGS, calib_count=8))
    assert r.report["calibration"].startswith("8 samples")  # x_train preferred over x_test
    np.savez(tmp_path / "bad.npz", a=x, b=x)
    with pytest.raises(ConversionError, match="which array"):
        convert(small_onnx, calib=str(tmp_path / "bad.npz"), **SMALL_SETTINGS)


# --------------------------------------------------------------------------- CLI errors
def _unsupported_model(path):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Sin", ["c"], ["y"], name="weird_node")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
                          [init("w", np.ones((4, 4, 3, 3)))])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def _dynamic_model(path):
    proto = small_net()
    d = proto.graph.input[0].type.tensor_type.shape.dim[2]
    d.Clear()
    d.dim_param = "H"
    onnx.save(proto, str(path))


@pytest.mark.parametrize("case", [
    "missing", "not_onnx", "unsupported", "dynamic", "bad_ck", "k_big", "k_small", "cs_too_big", "no_calib",
    "no_images", "unwritable", "bad_layer_name", "npz_shape", "huge_resize", "nan_weights",
])
def test_cli_errors_exit_2_with_one_line(case, tmp_path, small_onnx, capsys):
    out = tmp_path / "out.qcnn"
    args = [small_onnx, "-o", str(out), "--no-ec"]
    match = None
    if case == "missing":
        args[0], match = str(tmp_path / "nope.onnx"), "not found"
    elif case == "not_onnx":
        (tmp_path / "x.onnx").write_bytes(b"\x00garbage" * 10)
        args[0], match = str(tmp_path / "x.onnx"), "not an ONNX model"
    elif case == "unsupported":
        _unsupported_model(tmp_path / "u.onnx")
        args[0], match = str(tmp_path / "u.onnx"), "Sin.*weird_node"
    elif case == "dynamic":
        _dynamic_model(tmp_path / "d.onnx")
        args[0], match = str(tmp_path / "d.onnx"), "dynamic non-batch"
    elif case == "bad_ck":
        args += ["--conv", "8x128"]
        match = "C/K"
    elif case == "k_big":
        args += ["--fc", "4/300"]
        match = "K must be in 2..256"
    elif case == "k_small":
        args += ["--layer", "fc1=4/1"]
        match = "K must be in 2..256"
    elif case == "cs_too_big":
        args += ["--layer", "conv1=8/16"]
        match = "larger than the 3 input channels"
    elif case == "no_calib":
        args.remove("--no-ec")
        match = "needs calibration data"
    elif case == "no_images":
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "a.jpg").write_bytes(b"xx")
        (bad / "b.png").write_bytes(b"yy")
        args = [small_onnx, "-o", str(out), "--calib", str(bad), "--preprocess", "imagenet"]
        match = "no usable calibration images"
    elif case == "unwritable":
        out = tmp_path / "missing_dir" / "o.qcnn"
        args[2], match = str(out), "does not exist"
    elif case == "bad_layer_name":
        args += ["--skip", "nope"]
        match = "no Conv/Gemm layer named 'nope'"
    elif case == "nan_weights":
        proto = small_net()
        w = [i for i in proto.graph.initializer if i.name == "w3"][0]
        arr = numpy_helper.to_array(w).copy()
        arr[3, 5] = np.nan
        w.CopyFrom(numpy_helper.from_array(arr, "w3"))
        onnx.save(proto, str(tmp_path / "nan.onnx"))
        args[0], match = str(tmp_path / "nan.onnx"), "fc1.*'w3' has 1 non-finite"
    elif case == "huge_resize":
        args += ["--size", "100000"]
        match = "--size must be in 0..8192"
    elif case == "npz_shape":
        np.save(tmp_path / "c.npy", np.zeros((4, 3, 8, 8), np.float32))
        args = [small_onnx, "-o", str(out), "--calib", str(tmp_path / "c.npy")]
        match = "model input is"
    rc = cli_main(args + ["-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 or (case == "no_images" and err[-1].startswith("qcnn-convert: error:")), err
    import re

    assert err[-1].startswith("qcnn-convert: error: ") and re.search(match, err[-1]), err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import sys; from qcnn.converter.cli import main; sys.exit(main())",
                           str(tmp_path / "none.onnx"), "-o", str(tmp_path / "o.qcnn")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"qcnn-convert: error: model file not found: {tmp_path / 'none.onnx'}"]


def test_decode_cli_roundtrip(tmp_path, small_onnx, small_data):
    calib, held = small_data
    q = tmp_path / "m.qcnn"
    assert cli_main([small_onnx, "-o", str(q), "--no-ec", "--conv", "4/16", "-q"]) == 0
    o = tmp_path / "m.onnx"
    assert cli_main(["--decode", str(q), "-o", str(o), "-q"]) == 0
    proto = onnx.load(str(o))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == 13
    from qcnn.schema.reader import read_model

    np.testing.assert_allclose(ort_run(proto, held[:2]), run_model(read_model(str(q)), held[:2])["logits"],
                               rtol=1e-4, atol=1e-4)


def test_ec_early_stop_and_ridge_modes(small_onnx, small_data):
    calib, _ = small_data
    r = convert(small_onnx, calib=calib[:40], ec_iters=5, ec_tol=10.0, **SMALL_SETTINGS)  # any gain < 10: stop
    rows = {x["name"]: x for x in r.report["layers"]}
    assert rows["conv2"]["ec_sweeps"] == 1 and rows["fc1"]["ec_sweeps"] == 1
    assert len(rows["conv2"]["error_curve"]) == 6  # padded with the final value
    # conv2 sees 40 images x 256 positions > 144 inputs: Gram statistics; fc1 sees 40 rows < 2048 inputs
    assert rows["conv2"]["stats_mode"] == "gram" and rows["conv2"]["ridge"] == pytest.approx(1e-3)
    assert rows["fc1"]["stats_mode"] == "rows" and rows["fc1"]["ridge"] == pytest.approx(0.3)
    full = convert(small_onnx, calib=calib[:40], ec_iters=5, ec_tol=0.0, **SMALL_SETTINGS)
    assert {x["name"]: x for x in full.report["layers"]}["conv2"]["ec_sweeps"] >= 2


def test_same_seed_gives_identical_files(tmp_path, small_onnx, small_data):
    calib, _ = small_data
    np.save(tmp_path / "c.npy", calib[:30])
    outs = []
    for i, seed in enumerate((5, 5, 6)):
        out = tmp_path / f"o{i}.qcnn"
        assert cli_main([small_onnx, "-o", str(out), "--calib", str(tmp_path / "c.npy"), "--seed", str(seed),
                         "--conv", "4/16", "--fc", "4/16", "--ec-iters", "1", "-q"]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_mnist_mlp_with_npz_and_model_preprocessing(shared_dir, tmp_path):
    """qcnn.models' MNIST MLP carries its preprocessing; uint8 x_train from mnist.npz is scaled by it."""
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "models" / "onnx" / "mnist-mlp3.onnx"
    npz = shared_dir / "data" / "mnist.npz"
    if not src.exists() or not npz.exists():
        pytest.skip("MNIST model or data missing")
    r = convert(str(src), calib=str(npz), calib_count=300, ec_iters=2, report_plain=True)
    assert r.model.preprocessing is not None and r.model.preprocessing.scale == pytest.approx(1 / 255)
    assert r.model.preprocessing.channel_order == "GRAY"
    assert "_source.qcnn.preprocess" not in r.model.metadata
    quantized = [x for x in r.report["layers"] if x["quantized"]]
    assert quantized and all(x["error"] < x["plain_error"] for x in quantized)
    assert r.report["network"]["top1_agreement"] > 0.9
