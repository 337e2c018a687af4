"""qcnn-inspect, qcnn-compare and the qcnn-bench helpers, on small models."""
import json
import math

import numpy as np
import pytest

from qcnn.schema import writer
from qcnn.tools import bench, common, compare
from qcnn.tools import inspect as qinspect


# ------------------------------------------------------------------------------------------ inspect
def _rows_by_name(info):
    return {r["name"]: r for r in info["layers"]}


def test_inspect_tiny_model_numbers(tiny_qcnn):
    info = qinspect.describe(tiny_qcnn)
    rows = _rows_by_name(info)
    c2 = rows["conv2"]  # quantized conv: cin 8, cout 6, 3x3, stride 2, groups 2, C's 2, K 16; 8x8 -> 3x3
    assert (c2["subvec"], c2["ncode"], c2["nsub"], c2["index_bits"]) == (2, 16, 2, 4)
    assert c2["output_shape"] == [6, 3, 3]
    assert c2["bytes_codebooks"] == 2 * 2 * 16 * 2 * 4  # G * M * K * C's float32
    assert c2["bytes_indices"] == math.ceil(2 * 3 * 3 * 2 * 3 * 4 / 8)  # G*KH*KW*M*Cout/G codes of 4 bits
    assert c2["bytes_bias"] == 0 and c2["bytes_dense"] == 0
    # paper Table 1 per group, summed over the 2 groups:
    # original d_t^2 C_t d_k^2 C_s/G = 9 * 6 * 9 * 4; Q-CNN d_s^2 C_s K + d_t^2 C_t d_k^2 M = 64*8*16 + 9*6*9*2
    assert c2["flops_original"] == 1944
    assert c2["flops_quantized"] == 64 * 8 * 16 + 9 * 6 * 9 * 2
    fc = rows["fc"]  # 24 -> 10, C's 4, K 5 (3 bits), M 6: C_s C_t vs C_s K + C_t M
    assert (fc["flops_original"], fc["flops_quantized"]) == (240, 24 * 5 + 10 * 6)
    assert fc["bytes_indices"] == math.ceil(6 * 10 * 3 / 8) and fc["bytes_bias"] == 40
    c1 = rows["conv1"]  # dense: original = quantized FLOPs, weights stored as float32
    assert c1["quantized"] is False and c1["bytes_dense"] == 8 * 3 * 3 * 3 * 4
    assert c1["flops_original"] == c1["flops_quantized"] == 8 * 8 * 8 * 9 * 3
    t = info["totals"]
    assert t["flops_original"] == 1944 + 240 + c1["flops_original"]
    assert t["quantized_layers"] == 2 and t["weight_layers"] == 3
    assert t["file_bytes"] == tiny_qcnn.stat().st_size
    assert "flops_original" not in rows["lrn"]
    assert info["labels"] == 10 and info["preprocessing"]["crop"] == [224, 224]
    assert info["source_sha256"] == "ab" * 32 and info["report"] == {}


def test_inspect_cli_text_and_json(tiny_qcnn, capsys):
    assert qinspect.main([str(tiny_qcnn)]) == 0
    text = capsys.readouterr().out
    assert "conv2" in text and "Table 1" in text and "1.94K" in text
    assert qinspect.main([str(tiny_qcnn), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in info["layers"]] == ["conv1", "conv2", "lrn", "pool", "flat", "fc", "softmax"]


def test_inspect_rejects_corrupt_file(tiny_qcnn, tmp_path, capsys):
    data = bytearray(tiny_qcnn.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.qcnn"
    bad.write_bytes(bytes(data))
    assert qinspect.main([str(bad)]) == 2
    assert "error" in capsys.readouterr().err
    assert qinspect.main([str(tmp_path / "missing.qcnn")]) == 2


# ------------------------------------------------------------------------------------------ metrics
def test_topk_and_agreement_metrics():
    y_o = np.array([[0.1, 0.5, 0.2, 0.9, 0.0, 0.3], [1.0, 0.05, 0.04, 0.03, 0.0, 0.2]], np.float32)
    assert compare.topk(y_o, 3).tolist() == [[3, 1, 5], [0, 5, 1]]
    y_q = y_o.copy()
    y_q[1] = [0.1, 1.0, 0.02, -0.1, 0.5, 0.2]  # second input: different top-1, top-5 shares 4 of 5
    m = compare.agreement_metrics(y_o, y_q, labels=np.array([3, 4]))
    assert m["top1_agreement"] == 0.5
    # top-5 of row 2: onnx {0,5,1,2,3}, qcnn {1,4,5,0,2}: 4 common
    assert m["top5_overlap"] == pytest.approx((1.0 + 4 / 5) / 2)
    rel = np.linalg.norm(y_q[1] - y_o[1]) / np.linalg.norm(y_o[1])
    assert m["rel_l2"] == pytest.approx(rel / 2, rel=1e-6)
    assert m["top1_onnx"] == 0.5 and m["top1_qcnn"] == 0.5  # row 1 right for both, row 2 wrong for both
    assert m["top5_onnx"] == 0.5 and m["top5_qcnn"] == 1.0  # label 4 is in qcnn's top-5 only
    m = compare.agreement_metrics(y_o, y_o)
    assert m["top1_agreement"] == 1.0 and m["rel_l2"] == 0.0 and m["top1_onnx"] is None


def test_labels_from_names_and_classes_file(tmp_path):
    classes = tmp_path / "imagenet-classes.txt"
    classes.write_text("0 n01440764 tench\n1 n01443537 goldfish\n")
    wnids = common.read_imagenet_classes(classes)
    assert wnids == {"n01440764": 0, "n01443537": 1}
    got = common.labels_from_names(["a/n01443537_goldfish.JPEG", "n01440764_x.jpg"], wnids)
    assert got.tolist() == [1, 0]
    assert common.labels_from_names(["cat.jpg"], wnids) is None


def test_load_npz_inputs_scales_uint8(tmp_path):
    path = tmp_path / "m.npz"
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    np.savez(path, x_test=x, y_test=np.array([3, 7], np.uint8))
    xs, ys = common.load_npz_inputs(path, (1, 4, 4))
    assert xs.shape == (2, 1, 4, 4) and xs.dtype == np.float32
    assert xs[1, 0, 3, 3] == pytest.approx(31 / 255) and ys.tolist() == [3, 7]
    xs, _ = common.load_npz_inputs(path, (16,), count=1)
    assert xs.shape == (1, 16)
    with pytest.raises(ValueError, match="wants"):
        common.load_npz_inputs(path, (3, 4, 4))


def test_synthetic_images_are_smooth_and_reproducible(tmp_path):
    from PIL import Image

    paths = common.write_synthetic_images(tmp_path / "a", 3, size=64, seed=5)
    again = common.write_synthetic_images(tmp_path / "b", 3, size=64, seed=5)
    assert len(paths) == 3 and common.list_images(tmp_path / "a") == paths
    a = np.asarray(Image.open(paths[0]), np.float32)
    assert a.shape == (64, 64, 3)
    np.testing.assert_array_equal(a, np.asarray(Image.open(again[0]), np.float32))
    assert a.std() > 5  # not flat
    # smooth: neighbouring pixels differ far less than random pixel pairs
    assert np.abs(np.diff(a, axis=1)).mean() < 0.5 * np.abs(a - a[::-1, ::-1]).mean()


def test_shared_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("QCNN_SHARED", str(tmp_path / "missing"))
    assert common.shared_dir() is None
    (tmp_path / "sh" / "data").mkdir(parents=True)
    monkeypatch.setenv("QCNN_SHARED", str(tmp_path / "sh"))
    assert common.shared_dir() == tmp_path / "sh"


# ------------------------------------------------------------------------------------------ bench helpers
def test_interleaved_times_round_robin_after_warmup():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in ("a", "b", "c")}
    times = common.interleaved_times(fns, runs=3, warmup=2)
    assert calls == ["a", "b", "c"] * 5  # 2 warm-up rounds, then 3 timed rounds, always in turn
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_median_and_summary():
    assert common.median([5.0, 1.0, 3.0]) == 3.0
    assert common.median([4.0, 1.0, 3.0, 2.0]) == 2.5
    with pytest.raises(ValueError):
        common.median([])
    s = bench.summarize([0.003, 0.001, 0.002, 0.010])
    assert s == {"median_ms": pytest.approx(2.5), "min_ms": pytest.approx(1.0), "runs": 4}


def test_time_engines_feeds_every_engine_the_same_input():
    seen = {"a": [], "b": []}
    x = np.arange(3, dtype=np.float32).reshape(3, 1)
    runners = {k: (lambda xi, k=k: seen[k].append(float(xi[0, 0]))) for k in seen}
    res = bench.time_engines(runners, x, runs=4, warmup=1)
    assert seen["a"] == seen["b"] == [0.0, 1.0, 2.0, 0.0, 1.0]  # one warm-up round, then 4 runs, cycling
    assert res["a"]["runs"] == 4


def test_parse_models():
    assert bench.parse_models("alexnet, squeezenet=/m/sq.onnx,x/y.onnx") == [
        ("alexnet", None), ("squeezenet", "/m/sq.onnx"), ("y", "x/y.onnx")]
    with pytest.raises(ValueError):
        bench.parse_models(" , ")


def test_bench_skip_reaches_the_conversion_settings():
    """--skip keeps layers dense; it enters the cache key only when given, so earlier caches stay valid."""
    import argparse

    base = dict(conv="8/128", fc="4/32", last_fc="1/16", no_ec=True, calib_count=16, plan=None)
    plain = bench.conversion_settings(argparse.Namespace(**base, skip=None))
    assert "skip" not in plain
    got = bench.conversion_settings(argparse.Namespace(**base, skip="conv3_1, conv1_2,"))
    assert got == {**plain, "skip": ["conv1_2", "conv3_1"]}


def test_aggregate_ort_profile():
    events = [
        {"cat": "Session", "name": "model_run", "dur": 999},
        {"cat": "Node", "name": "conv1_kernel_time", "dur": 100, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "conv1_fence_before", "dur": 5, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "fc_kernel_time", "dur": 40, "args": {"op_name": "Gemm"}},
        {"cat": "Node", "name": "conv1_kernel_time", "dur": 300, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "conv1_kernel_time", "dur": 200, "args": {"op_name": "Conv"}},
    ]
    got = bench.aggregate_ort_profile(events)
    assert got == [{"name": "conv1", "op": "Conv", "ms": 0.2}, {"name": "fc", "op": "Gemm", "ms": 0.04}]


# ------------------------------------------------------------------------------------------ with the runtime
def _runtime():
    try:
        from qcnn.runtime import Model

        return Model
    except ImportError as exc:  # compiled core not built
        pytest.skip(f"qcnn runtime unavailable: {exc}")


def test_qcnn_layer_times_cover_every_step(tiny_qcnn):
    Model = _runtime()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with Model(tiny_qcnn) as m:
        before = m.run(x[:1])
        got = bench.qcnn_layer_times(m, x, runs=3)
        assert [r["name"] for r in got] == ["conv1", "conv2", "lrn", "pool", "flat", "fc", "softmax"]
        assert all(r["ms"] >= 0 for r in got)
        np.testing.assert_array_equal(m.run(x[:1]), before)  # the plan is intact afterwards


def _small_onnx(path, seed=0):
    """conv 3->16 (3x3) + relu + maxpool + conv 16->32 + relu + flatten + fc 2048->10 + softmax, input 3x16x16."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def init(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], axis=1, name="flat"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1, name="fc"),
        helper.make_node("Softmax", ["y"], ["prob"], axis=1, name="softmax"),
    ]
    inits = [init("w1", (16, 3, 3, 3), 0.3), init("b1", (16,), 0.1), init("w2", (32, 16, 3, 3), 0.1),
             init("b2", (32,), 0.1), init("w3", (10, 32 * 8 * 8), 0.05), init("b3", (10,), 0.1)]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    """(onnx path, dense .qcnn path, quantized .qcnn path, npz path with x and y) for a small conv net."""
    _runtime()
    try:
        from qcnn.converter import convert
        from qcnn.converter.onnx_import import import_onnx
    except ImportError as exc:
        pytest.skip(f"converter unavailable: {exc}")
    d = tmp_path_factory.mktemp("small")
    onnx_path = _small_onnx(d / "small.onnx")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 3, 16, 16)).astype(np.float32)
    np.savez(d / "data.npz", x=x[20:], y=rng.integers(0, 10, 20))
    dense = import_onnx(str(onnx_path))  # float weights: qcnn must reproduce onnxruntime
    writer.write_model(dense, d / "dense.qcnn")
    convert(str(onnx_path), str(d / "small.qcnn"), calib=x[:20], conv=(4, 16), fc=(4, 16), last_fc=(4, 16))
    return onnx_path, d / "dense.qcnn", d / "small.qcnn", d / "data.npz"


def test_compare_dense_conversion_agrees_exactly(small_pair):
    onnx_path, dense, _, npz = small_pair
    r = compare.compare(onnx_path, dense, npz=npz, rss=False, lut="float")
    assert r["images"] == 20
    assert r["top1_agreement"] == 1.0 and r["top5_overlap"] == 1.0 and r["rel_l2"] < 1e-4
    assert r["top1_onnx"] == r["top1_qcnn"] and r["top5_onnx"] == r["top5_qcnn"]


def test_compare_cli_json_has_every_key(small_pair, tmp_path, capsys):
    onnx_path, _, quant, npz = small_pair
    out = tmp_path / "cmp.json"
    assert compare.main([str(onnx_path), str(quant), "--npz", str(npz), "--count", "12", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "speed-up" in text and "machine:" in text
    r = json.loads(out.read_text())
    assert list(r) == list(compare.JSON_KEYS)
    assert r["images"] == 12
    assert r["bytes_onnx"] == onnx_path.stat().st_size and r["bytes_qcnn"] == quant.stat().st_size
    assert 0 <= r["top1_agreement"] <= 1 and 0 <= r["top5_overlap"] <= 1 and r["rel_l2"] >= 0
    assert all(r[k] is not None for k in ("top1_onnx", "top5_onnx", "top1_qcnn", "top5_qcnn"))
    assert r["ms_onnx"] > 0 and r["ms_qcnn"] > 0
    assert r["rss_mb_onnx"] > 10 and r["rss_mb_qcnn"] > 10


def test_compare_without_labels_reports_null_accuracy(small_pair, tmp_path):
    onnx_path, _, quant, _ = small_pair
    npz = tmp_path / "nolabels.npz"
    np.savez(npz, x=np.zeros((3, 3, 16, 16), np.float32))
    r = compare.compare(onnx_path, quant, npz=npz, rss=False)
    assert r["images"] == 3 and r["top1_onnx"] is None and r["top5_qcnn"] is None


def test_compare_cli_errors(small_pair, tmp_path, capsys):
    onnx_path, _, quant, _ = small_pair
    assert compare.main([str(onnx_path), str(tmp_path / "nope.qcnn"), "--npz", "x.npz"]) == 2
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((2, 5), np.float32))
    assert compare.main([str(onnx_path), str(quant), "--npz", str(bad)]) == 2
    assert "wants" in capsys.readouterr().err
