"""qcnn.runtime.Model against the decode_to_onnx oracle run by onnxruntime, plus API behaviour."""
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from qcnn import QcnnFormatError
from qcnn.runtime import Model, _core
from qcnn.schema import ir, writer

ort = pytest.importorskip("onnxruntime")


def _oracle(path, x):
    from qcnn.converter import decode_to_onnx

    sess = ort.InferenceSession(decode_to_onnx(str(path)).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _qw(rng, groups, kh, kw, cin_g, cout_g, subvec, ncode):
    nsub = -(-cin_g // subvec)
    return ir.QuantizedWeights(subvec, nsub, ncode,
                               (rng.standard_normal((groups, nsub, ncode, subvec)) * 0.3).astype(np.float32),
                               rng.integers(0, ncode, (groups, kh, kw, nsub, cout_g)).astype(np.uint8))


def make_fire_model(seed=0):
    """SqueezeNet-like: dense conv, quantized 1x1 squeeze, two expands concatenated, residual Add,
    average pooling with padding, global average pooling, softmax."""
    rng = np.random.default_rng(seed)
    f32 = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    ops = [
        ir.Conv("conv1", ["x"], ["a"], cin=3, cout=12, kernel=(3, 3), strides=(2, 2), pads=(0, 1, 1, 0),
                weights=f32(12, 3, 3, 3), bias=f32(12), relu=True),
        ir.MaxPool("pool1", ["a"], ["b"], kernel=(3, 3), strides=(2, 2), ceil_mode=True),
        ir.Conv("squeeze", ["b"], ["s"], cin=12, cout=5, kernel=(1, 1), weights=_qw(rng, 1, 1, 1, 12, 5, 3, 16),
                bias=f32(5), relu=True),
        ir.Conv("expand1", ["s"], ["e1"], cin=5, cout=6, kernel=(1, 1), weights=_qw(rng, 1, 1, 1, 5, 6, 2, 8),
                bias=f32(6), relu=True),
        ir.Conv("expand3", ["s"], ["e3"], cin=5, cout=6, kernel=(3, 3), pads=(1, 1, 1, 1),
                weights=_qw(rng, 1, 3, 3, 5, 6, 5, 32), bias=f32(6), relu=True),
        ir.Concat("concat", ["e1", "e3"], ["c"]),
        ir.Add("add", ["c", "b"], ["r"], relu=False),
        ir.Relu("relu", ["r"], ["rr"]),
        ir.AveragePool("avg", ["rr"], ["p"], kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), count_include_pad=False),
        ir.Conv("classifier", ["p"], ["k"], cin=12, cout=7, kernel=(1, 1), weights=_qw(rng, 1, 1, 1, 12, 7, 4, 64),
                bias=f32(7), relu=True),
        ir.GlobalAveragePool("gap", ["k"], ["g"]),
        ir.Flatten("flatten", ["g"], ["f"]),
        ir.Softmax("softmax", ["f"], ["prob"]),
    ]
    shapes = {"x": (3, 17, 15), "a": (12, 8, 7), "b": (12, 4, 3), "s": (5, 4, 3), "e1": (6, 4, 3), "e3": (6, 4, 3),
              "c": (12, 4, 3), "r": (12, 4, 3), "rr": (12, 4, 3), "p": (12, 2, 2), "k": (7, 2, 2), "g": (7, 1, 1),
              "f": (7,), "prob": (7,)}
    tensors = [ir.TensorInfo(n, s) for n, s in shapes.items()]
    return ir.Model("x", shapes["x"], tensors, ops, ["prob"])


@pytest.fixture
def fire_qcnn(tmp_path):
    path = tmp_path / "fire.qcnn"
    writer.write_model(make_fire_model(), path)
    return path


@pytest.mark.parametrize("which", ["tiny", "fire"])
def test_float_lut_matches_oracle(which, tiny_qcnn, fire_qcnn):
    path = tiny_qcnn if which == "tiny" else fire_qcnn
    m = Model(path, lut="float")
    c, h, w = m.input_shape[1:]
    x = np.random.default_rng(1).standard_normal((3, c, h, w)).astype(np.float32)
    assert _rel_l2(m.run(x), _oracle(path, x)) <= 1e-5


@pytest.mark.parametrize("which", ["tiny", "fire"])
def test_int8_lut_is_close_to_oracle(which, tmp_path, tiny_model_factory):
    # Compare logits (the softmax is dropped): softmax of random-weight nets is so peaked that it
    # amplifies any rounding, which says nothing about the tables.
    model = tiny_model_factory() if which == "tiny" else make_fire_model()
    model.operators.pop()
    model.outputs = [model.operators[-1].outputs[0]]
    path = tmp_path / "logits.qcnn"
    writer.write_model(model, path)
    m = Model(path, lut="int8")
    c, h, w = m.input_shape[1:]
    x = np.random.default_rng(2).standard_normal((4, c, h, w)).astype(np.float32)
    y, ref = m.run(x), _oracle(path, x)
    assert _rel_l2(y, ref) <= 0.03
    assert (y.argmax(1) == ref.argmax(1)).mean() >= 0.75


def test_dense_conv_precision_choice(fire_qcnn):
    from qcnn.runtime.model import dense_precision

    vnni = _core.int8_conv_fast_available() and "avx512vbmi" in _core.isa_available()
    if vnni and _core.isa_selected() == "avx512vbmi":
        assert Model(fire_qcnn).dense == "int8"  # VNNI: every dense conv in int8
    assert Model(fire_qcnn, lut="float").dense == "fp32"  # float tables: everything in floats
    assert dense_precision("int8", "generic") == "fp32"
    # AVX2 (no VNNI): int8 only on convs with many MACs per input value and full 4-channel quads
    conv = lambda cin, cout, k, s, g=1: SimpleNamespace(cin=cin, cout=cout, kernel=(k, k), strides=(s, s), groups=g)
    alexnet_conv1, sq_conv0, sq_squeeze, sq_expand3 = conv(3, 96, 11, 4), conv(3, 64, 3, 2), conv(128, 16, 1, 1), conv(16, 64, 3, 1)
    assert [dense_precision("int8", "avx2", conv=c) for c in (alexnet_conv1, sq_conv0, sq_squeeze, sq_expand3)] == \
        ["int8", "fp32", "fp32", "int8"]
    assert dense_precision("float", "avx2", conv=alexnet_conv1) == "fp32"
    assert dense_precision("int8", "generic", conv=alexnet_conv1) == "fp32"
    m2 = Model(fire_qcnn, isa="avx2")
    dense_convs = [(d, op) for d, op in zip(m2.layers, m2._ir.operators) if "precision" in d]
    assert dense_convs and all(d["precision"] == dense_precision("int8", "avx2", conv=op) for d, op in dense_convs)
    assert m2.dense == "+".join(sorted({d["precision"] for d, _ in dense_convs}, reverse=True))
    with pytest.raises(ValueError, match="dense"):
        Model(fire_qcnn, dense="int4")
    # int8 dense convs (the fire model's dense layers) stay close to the float oracle, on any CPU
    x = np.random.default_rng(3).standard_normal((2, 3, 17, 15)).astype(np.float32)
    ref = Model(fire_qcnn, lut="float", dense="fp32").run(x)
    got = Model(fire_qcnn, lut="float", dense="int8").run(x)
    assert 0 < _rel_l2(got, ref) <= 0.03


def test_int8_conv_and_its_maxpool_run_fused_with_unchanged_values(fire_qcnn, monkeypatch):
    x = np.random.default_rng(5).standard_normal((2, 3, 17, 15)).astype(np.float32)
    fused = Model(fire_qcnn, dense="int8")
    layers = {d["name"]: d for d in fused.layers}
    assert layers["conv1"]["fused_with"] == "pool1" and layers["pool1"]["fused_into"] == "conv1"
    assert [p["ms"] for p in fused.profile(x[:1], runs=2) if p["name"] == "pool1"] == [0.0]
    monkeypatch.setattr(Model, "_fuse_pools", staticmethod(lambda model, steps: None))
    unfused = Model(fire_qcnn, dense="int8")
    assert "fused_with" not in unfused.layers[0]
    np.testing.assert_array_equal(fused.run(x), unfused.run(x))
    monkeypatch.undo()
    assert "fused_with" not in Model(fire_qcnn, dense="fp32").layers[0]  # fp32 convs: nothing to gain


@pytest.mark.parametrize("isa", _core.isa_available())
def test_every_isa_agrees(isa, fire_qcnn):
    x = np.random.default_rng(3).standard_normal((2, 3, 17, 15)).astype(np.float32)
    ref = Model(fire_qcnn, lut="float", isa="generic").run(x)
    np.testing.assert_allclose(Model(fire_qcnn, lut="float", isa=isa).run(x), ref, rtol=1e-4, atol=1e-6)


def test_batch_equals_single_images(fire_qcnn):
    m = Model(fire_qcnn)
    x = np.random.default_rng(4).standard_normal((5, 3, 17, 15)).astype(np.float32)
    batch = m.run(x)
    for i in range(5):
        np.testing.assert_array_equal(m.run(x[i : i + 1])[0], batch[i])


def test_threads_give_bit_identical_results(fire_qcnn):
    m = Model(fire_qcnn)
    xs = [np.random.default_rng(10 + i).standard_normal((1, 3, 17, 15)).astype(np.float32) for i in range(8)]
    expected = [m.run(x) for x in xs]
    failures = []

    def worker(i):
        for _ in range(25):
            if not np.array_equal(m.run(xs[i]), expected[i]):
                failures.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_metadata_properties(tiny_qcnn):
    with Model(tiny_qcnn) as m:
        assert m.input_shape == (-1, 3, 8, 8)
        assert m.labels == [f"class {i}" for i in range(10)]
        assert m.preprocessing.crop == (224, 224)
        assert [layer["name"] for layer in m.layers][:2] == ["conv1", "conv2"]
        assert m.layers[1]["quantized"] and m.layers[1]["ncode"] == 16 and not m.layers[0]["quantized"]
    assert m.closed


@pytest.mark.parametrize("bad, message", [
    (np.zeros((1, 3, 8, 8), np.float64), "dtype"),
    (np.zeros((3, 8, 8), np.float32), "shape"),
    (np.zeros((1, 3, 8, 9), np.float32), "shape"),
    (np.zeros((0, 3, 8, 8), np.float32), "empty"),
    ([[0.0]], "numpy array"),
])
def test_bad_inputs_raise_value_error(tiny_qcnn, bad, message):
    with pytest.raises(ValueError, match=message):
        Model(tiny_qcnn).run(bad)


def test_non_contiguous_inputs(tiny_qcnn):
    m = Model(tiny_qcnn, lut="float")
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 16)).astype(np.float32)[:, :, :, ::2]
    assert not x.flags.c_contiguous
    np.testing.assert_array_equal(m.run(x), m.run(np.ascontiguousarray(x)))


@pytest.mark.parametrize("lut", ["int8", "float"])
@pytest.mark.parametrize("contiguous", [True, False])
def test_nan_and_inf_inputs_are_refused(tiny_qcnn, lut, contiguous):
    # The int8 kernels would turn NaN/inf into finite numbers (the input's quantization clamps),
    # so the output would look valid: the image is refused, naming it and the count.
    m = Model(tiny_qcnn, lut=lut)
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 16)).astype(np.float32)[:, :, :, ::2]
    x = np.ascontiguousarray(x) if contiguous else x
    clean = m.run(x)
    for bad, count in ((np.nan, 1), (np.inf, 2), (-np.inf, 1)):
        y = x.copy()
        y[1, 2, 3, :count] = bad
        with pytest.raises(ValueError, match=f"input image 1 has {count} NaN or infinite"):
            m.run(y if contiguous else np.asfortranarray(y))
    np.testing.assert_array_equal(m.run(x), clean)  # nothing left behind


def test_closed_model_raises(tiny_qcnn):
    m = Model(tiny_qcnn)
    m.close()
    with pytest.raises(ValueError, match="closed"):
        m.run(np.zeros((1, 3, 8, 8), np.float32))


def test_corrupt_file_raises_format_error(tiny_qcnn):
    data = bytearray(tiny_qcnn.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tiny_qcnn.write_bytes(bytes(data))
    with pytest.raises(QcnnFormatError):
        Model(tiny_qcnn)


def test_extension_links_no_blas():
    so = Path(_core.__file__)
    out = subprocess.run(["ldd", str(so)], capture_output=True, text=True).stdout.lower()
    assert out, "ldd printed nothing"
    for lib in ("blas", "lapack", "mkl", "atlas", "openblas"):
        assert lib not in out, out


def test_runtime_imports_nothing_but_numpy(tiny_qcnn):
    code = ("import sys; from qcnn.runtime import Model; import numpy as np; "
            f"m = Model({str(tiny_qcnn)!r}); m.run(np.zeros((1, 3, 8, 8), np.float32)); "
            "bad = [m for m in ('onnx', 'onnxruntime', 'flatbuffers', 'PIL', 'tqdm') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr


def test_run_path_calls_no_numpy_matmul(tiny_qcnn, monkeypatch):
    m = Model(tiny_qcnn)

    def forbidden(*a, **k):
        raise AssertionError("the runtime called a BLAS-backed numpy function")

    for name in ("dot", "matmul", "tensordot", "einsum", "inner"):
        monkeypatch.setattr(np, name, forbidden)
    m.run(np.zeros((1, 3, 8, 8), np.float32))


def test_qcnn_run_cli(tmp_path, tiny_model):
    PIL = pytest.importorskip("PIL.Image")
    tiny_model.preprocessing.resize_shorter = 8
    tiny_model.preprocessing.crop = (8, 8)
    path = tmp_path / "m.qcnn"
    writer.write_model(tiny_model, path)
    img = tmp_path / "img.png"
    PIL.fromarray((np.random.default_rng(0).random((12, 10, 3)) * 255).astype(np.uint8)).save(img)
    from qcnn.runtime.cli import main

    assert main([str(path), str(img), "--top", "3"]) == 0
    assert main([str(tmp_path / "missing.qcnn"), str(img)]) == 2


def test_dense_expands_write_into_the_concat(tmp_path):
    """Fire module with dense expand convs: they write straight into the Concat's output buffer."""
    model = make_fire_model(seed=5)
    rng = np.random.default_rng(6)
    for op in model.operators:
        if op.name in ("expand1", "expand3"):
            op.weights = (rng.standard_normal((op.cout, op.cin, *op.kernel)) * 0.3).astype(np.float32)
    path = tmp_path / "dense_fire.qcnn"
    writer.write_model(model, path)
    m = Model(path, lut="float")
    assert [st.op.name for st in m._steps if st.fused] == ["concat"]
    x = rng.standard_normal((3, 3, 17, 15)).astype(np.float32)
    assert _rel_l2(m.run(x), _oracle(path, x)) <= 1e-5


@pytest.mark.parametrize("lut", ["int8", "float"])
def test_table_conv_and_its_maxpool_run_fused_with_unchanged_values(tmp_path, monkeypatch, lut):
    """A quantized conv, an LRN and the MaxPool that alone reads them run as one step
    (QConvMaxPoolKernel, AlexNet's conv2), with the values of the three steps; so does a conv
    and its pool alone; a pool whose input another op also reads is left apart."""
    rng = np.random.default_rng(9)
    ops = [
        ir.Conv("conv", ["x"], ["a"], cin=8, cout=24, kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
                weights=_qw(rng, 1, 3, 3, 8, 24, 4, 32), bias=rng.standard_normal(24).astype(np.float32),
                relu=True),
        ir.LRN("norm", ["a"], ["n"], size=5, alpha=1e-2, beta=0.75, bias=1.0),
        ir.MaxPool("pool", ["n"], ["p"], kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
        ir.Conv("conv1", ["p"], ["c"], cin=24, cout=24, kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
                weights=_qw(rng, 1, 3, 3, 24, 24, 8, 64), bias=None, relu=True),
        ir.MaxPool("pool1", ["c"], ["p1"], kernel=(2, 2), strides=(1, 1)),
        ir.Conv("conv2", ["p1"], ["b"], cin=24, cout=16, kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1),
                weights=_qw(rng, 1, 3, 3, 24, 16, 8, 64), bias=None, relu=False),
        ir.MaxPool("pool2", ["b"], ["q"], kernel=(2, 2), strides=(2, 2)),
        ir.GlobalAveragePool("gap", ["b"], ["g"]),
    ]
    shapes = {"x": (8, 23, 19), "a": (24, 23, 19), "n": (24, 23, 19), "p": (24, 12, 10), "c": (24, 12, 10),
              "p1": (24, 11, 9), "b": (16, 11, 9), "q": (16, 5, 4), "g": (16, 1, 1)}
    model = ir.Model("x", shapes["x"], [ir.TensorInfo(n, s) for n, s in shapes.items()], ops, ["g", "q"])
    path = tmp_path / "qpool.qcnn"
    writer.write_model(model, path)
    x = rng.standard_normal((2, 8, 23, 19)).astype(np.float32)
    fused = Model(path, lut=lut)
    layers = {d["name"]: d for d in fused.layers}
    assert layers["conv"]["fused_with"] == "norm, pool" and layers["pool"]["fused_into"] == "conv"
    assert layers["norm"]["fused_into"] == "conv"
    assert layers["conv1"]["fused_with"] == "pool1"
    assert "fused_with" not in layers["conv2"]  # its output also feeds the global average pool
    assert [p["ms"] for p in fused.profile(x[:1], runs=2) if p["name"] in ("norm", "pool", "pool1")] == [0.0] * 3
    monkeypatch.setattr(Model, "_fuse_pools", staticmethod(lambda model, steps: None))
    unfused = Model(path, lut=lut)
    assert "fused_with" not in unfused.layers[0]
    for got, want in zip(fused.run(x), unfused.run(x)):
        np.testing.assert_array_equal(got, want)


def test_int8_conv_lrn_and_maxpool_run_fused(tmp_path, monkeypatch):
    """AlexNet's conv1 -> LRN -> MaxPool runs as one step with the values of the three steps."""
    rng = np.random.default_rng(8)
    ops = [
        ir.Conv("conv", ["x"], ["a"], cin=3, cout=20, kernel=(5, 5), strides=(2, 2), pads=(1, 1, 1, 1),
                weights=(rng.standard_normal((20, 3, 5, 5)) * 0.3).astype(np.float32),
                bias=rng.standard_normal(20).astype(np.float32), relu=True),
        ir.LRN("norm", ["a"], ["n"], size=5, alpha=1e-2, beta=0.75, bias=1.0),
        ir.MaxPool("pool", ["n"], ["p"], kernel=(3, 3), strides=(2, 2)),
        ir.GlobalAveragePool("gap", ["p"], ["g"]),
    ]
    shapes = {"x": (3, 41, 37), "a": (20, 20, 18), "n": (20, 20, 18), "p": (20, 9, 8), "g": (20, 1, 1)}
    model = ir.Model("x", shapes["x"], [ir.TensorInfo(n, s) for n, s in shapes.items()], ops, ["g", "p"])
    path = tmp_path / "lrn.qcnn"
    writer.write_model(model, path)
    x = rng.standard_normal((2, 3, 41, 37)).astype(np.float32)
    fused = Model(path, dense="int8")
    layers = {d["name"]: d for d in fused.layers}
    assert layers["conv"]["fused_with"] == "norm, pool"
    assert layers["norm"]["fused_into"] == "conv" and layers["pool"]["fused_into"] == "conv"
    monkeypatch.setattr(Model, "_fuse_pools", staticmethod(lambda model, steps: None))
    unfused = Model(path, dense="int8")
    assert "fused_with" not in unfused.layers[0]
    for got, want in zip(fused.run(x), unfused.run(x)):
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-30)
