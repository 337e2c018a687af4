"""Tests for qcnn.models: the model builders, the committed MNIST nets and the qcnn-models CLI."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
import pytest

ort = pytest.importorskip("onnxruntime")

from qcnn.models import build  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MNIST_NPZ = REPO.parent / "shared" / "data" / "mnist.npz"
RANDOM_NETS = ["alexnet", "zfnet", "vgg19", "caffenet", "vgg16"]
EXPECTED_INPUT = {
    "alexnet": [1, 3, 224, 224], "zfnet": [1, 3, 224, 224], "vgg19": [1, 3, 224, 224],
    "caffenet": [1, 3, 227, 227], "vgg16": [1, 3, 224, 224],
    "mnist-mlp3": [1, 1, 28, 28], "mnist-mlp5": [1, 1, 28, 28], "mnist-lenet": [1, 1, 28, 28],
}
TARGET_ERR = {"mnist-mlp3": 1.6, "mnist-mlp5": 1.4, "mnist-lenet": 1.0}


def _session(model_or_bytes):
    raw = model_or_bytes if isinstance(model_or_bytes, bytes) else model_or_bytes.SerializeToString()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(raw, so, providers=["CPUExecutionProvider"])


def _sha(model):
    return hashlib.sha256(build.serialize(model)).hexdigest()


def _check_runs(name, model, n_probe=4):
    """checker passes, one data input of the expected shape, finite outputs of shape [1, out]."""
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == [model.graph.input[0].name]
    assert build.input_shape(model) == EXPECTED_INPUT[name]
    sess = _session(model)
    outs = []
    for x in build.calibration_inputs(1234, EXPECTED_INPUT[name], count=n_probe):
        (y,) = sess.run(None, {model.graph.input[0].name: x})
        assert y.shape == (1, 10 if name.startswith("mnist") else 1000)
        assert np.isfinite(y).all()
        outs.append(y[0])
    return np.stack(outs)


# ---------------------------------------------------------------------------------------------
# cheap unit tests of the weight scheme


def test_he_weight_statistics_and_seeding():
    w = numpy_helper.to_array(build.he_weight("conv_w", [64, 32, 3, 3], seed=0))
    assert w.dtype == np.float32 and w.shape == (64, 32, 3, 3)
    assert abs(w.std() - np.sqrt(2.0 / (32 * 9))) < 0.02 * np.sqrt(2.0 / (32 * 9))
    assert abs(w.mean()) < 0.01
    same = numpy_helper.to_array(build.he_weight("conv_w", [64, 32, 3, 3], seed=0))
    other_seed = numpy_helper.to_array(build.he_weight("conv_w", [64, 32, 3, 3], seed=1))
    other_name = numpy_helper.to_array(build.he_weight("conv2_w", [64, 32, 3, 3], seed=0))
    assert np.array_equal(w, same)
    assert not np.array_equal(w, other_seed)
    assert not np.array_equal(w, other_name)


def test_calibration_inputs_are_normalised_and_seeded():
    a = build.calibration_inputs(3, [1, 3, 32, 32], count=2)
    b = build.calibration_inputs(3, [1, 3, 32, 32], count=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], a[1])
    for x in a:
        assert x.dtype == np.float32 and abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3


def test_unknown_model_name_raises():
    with pytest.raises(ValueError, match="unknown model"):
        build.build_model("resnet9000")


# ---------------------------------------------------------------------------------------------
# random-weight ImageNet nets (large: hundreds of MB each)


@pytest.mark.slow
@pytest.mark.parametrize("name", RANDOM_NETS)
def test_random_net_builds_runs_and_is_deterministic(name):
    model = build.build_model(name, seed=0)
    ops = {n.op_type for n in model.graph.node}
    assert "ConstantOfShape" not in ops
    assert {"Conv", "Gemm", "Relu", "MaxPool", "Softmax"} <= ops
    if name in build.ZOO_FILES:
        src = onnx.load(build.zoo_path(name), load_external_data=False)
        assert [o.version for o in model.opset_import] == [o.version for o in src.opset_import]
        # Same op sequence as the zoo graph once the weight generators are gone.
        assert [n.op_type for n in model.graph.node] == [
            n.op_type for n in src.graph.node if n.op_type != "ConstantOfShape"]
        assert [o.name for o in model.graph.output] == [o.name for o in src.graph.output]
    else:
        assert model.opset_import[0].version == 13
        assert model.graph.output[0].name == "prob"
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["qcnn.preprocess"])["input"] == EXPECTED_INPUT[name]

    probs = _check_runs(name, model)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    # Not a constant net: different inputs give different outputs and not always the same top-1.
    assert np.abs(probs[0] - probs[1]).max() > 1e-4
    assert len(set(probs.argmax(axis=1).tolist())) > 1
    # Softmax neither one-hot nor flat on image-like inputs.
    assert 1.5 / 1000 < float(probs.max(axis=1).mean()) < 0.999

    digest = _sha(model)
    del model, probs
    assert _sha(build.build_model(name, seed=0)) == digest
    assert _sha(build.build_model(name, seed=1)) != digest


# ---------------------------------------------------------------------------------------------
# trained MNIST nets


@pytest.mark.parametrize("name", build.MNIST_NAMES)
def test_mnist_net_structure(name):
    model = build.build_model(name)
    _check_runs(name, model)
    ops = {n.op_type for n in model.graph.node}
    assert ops <= {"Flatten", "Gemm", "Relu", "Conv", "MaxPool"}
    meta = {p.key: p.value for p in model.metadata_props}
    pre = json.loads(meta["qcnn.preprocess"])
    assert pre["scale"] == pytest.approx(1 / 255) and pre["mean"] == [0.0] and pre["std"] == [1.0]
    # The builder copies the committed file; the seed has no effect.
    assert _sha(build.build_model(name, seed=5)) == _sha(model)


def _batched(model):
    """Copy of `model` with a free batch dimension, to score the test set in a few runs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in (m.graph.input[0], m.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    return m


@pytest.mark.skipif(not MNIST_NPZ.is_file(), reason="shared MNIST data not found beside the repository")
@pytest.mark.parametrize("name", build.MNIST_NAMES)
def test_mnist_test_error_meets_target(name):
    data = build.load_mnist(str(MNIST_NPZ))
    x = data["x_test"].astype(np.float32)[:, None] / 255.0
    sess = _session(_batched(build.build_model(name)))
    pred = np.concatenate([sess.run(None, {"input": x[i:i + 1000]})[0].argmax(1)
                           for i in range(0, len(x), 1000)])
    err = 100.0 * float((pred != data["y_test"]).mean())
    assert err <= TARGET_ERR[name]
    recorded = json.loads((REPO / "models" / "mnist_results.json").read_text())[name]
    assert recorded["float_test_error_pct"] == pytest.approx(err, abs=0.011)


def test_load_mnist_from_path_and_missing(tmp_path):
    p = tmp_path / "m.npz"
    arrays = {"x_train": np.zeros((2, 28, 28), np.uint8), "y_train": np.array([1, 2], np.uint8),
              "x_test": np.ones((1, 28, 28), np.uint8), "y_test": np.array([7], np.uint8)}
    np.savez(p, **arrays)
    got = build.load_mnist(str(p))
    assert all(np.array_equal(got[k], v) for k, v in arrays.items())
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        build.load_mnist(str(tmp_path / "nope.npz"))


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_list(capsys):
    assert build.main(["--list"]) == 0
    assert capsys.readouterr().out.split() == list(build.MODEL_NAMES)


def test_cli_writes_files_atomically(tmp_path):
    out = tmp_path / "models"
    umask = os.umask(0o022)
    try:
        assert build.main(["mnist-lenet", "mnist-mlp3", "--out", str(out)]) == 0
    finally:
        os.umask(umask)
    assert sorted(os.listdir(out)) == ["mnist-lenet.onnx", "mnist-mlp3.onnx"]  # no temp files left
    for n in ("mnist-lenet", "mnist-mlp3"):
        assert (out / f"{n}.onnx").read_bytes() == (REPO / "models" / "onnx" / f"{n}.onnx").read_bytes()
        assert (out / f"{n}.onnx").stat().st_mode & 0o777 == 0o644  # the usual mode, not mkstemp's 0600


def test_cli_unknown_name_exits_2_with_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qcnn.models.build", "mnist-lenet", "nosuchnet",
                        "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "nosuchnet" in lines[0]
    assert os.listdir(tmp_path) == []  # names are checked before anything is written


@pytest.mark.slow
def test_cli_seed_gives_identical_files(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d, seed in ((a, 7), (b, 7), (c, 8)):
        assert build.main(["caffenet", "--out", str(d), "--seed", str(seed)]) == 0
    assert (a / "caffenet.onnx").read_bytes() == (b / "caffenet.onnx").read_bytes()
    assert (a / "caffenet.onnx").read_bytes() != (c / "caffenet.onnx").read_bytes()


def test_cli_all_means_every_model(tmp_path, monkeypatch):
    written = []

    def fake_write(name, path, seed=0):
        written.append((name, seed))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"x")
        return path

    monkeypatch.setattr(build, "write_model", fake_write)
    assert build.main(["all", "--out", str(tmp_path), "--seed", "3"]) == 0
    assert written == [(n, 3) for n in build.MODEL_NAMES]
