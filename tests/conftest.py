"""Shared fixtures: a tiny but complete quantized model, and the location of ../shared."""
import os
from pathlib import Path

import numpy as np
import pytest

from qcnn.schema import ir

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("QCNN_SHARED", REPO_ROOT.parent / "shared"))


def _quantized(rng, groups, kh, kw, cin_g, cout_g, subvec, ncode):
    nsub = -(-cin_g // subvec)
    codebooks = rng.standard_normal((groups, nsub, ncode, subvec)).astype(np.float32)
    indices = rng.integers(0, ncode, (groups, kh, kw, nsub, cout_g)).astype(np.uint8)
    return ir.QuantizedWeights(subvec, nsub, ncode, codebooks, indices)


def make_tiny_model(seed: int = 0) -> ir.Model:
    """conv(dense) -> conv(quantized, groups 2, stride 2) -> LRN -> maxpool(ceil) -> flatten -> fc(quantized) -> softmax."""
    rng = np.random.default_rng(seed)
    ops = [
        ir.Conv("conv1", ["x"], ["c1"], cin=3, cout=8, kernel=(3, 3), pads=(1, 1, 1, 1),
                weights=rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
                bias=rng.standard_normal(8).astype(np.float32) * 0.1, relu=True),
        ir.Conv("conv2", ["c1"], ["c2"], cin=8, cout=6, kernel=(3, 3), strides=(2, 2), groups=2,
                weights=_quantized(rng, 2, 3, 3, 4, 3, 2, 16), bias=None),
        ir.LRN("lrn", ["c2"], ["l"], size=5),
        ir.MaxPool("pool", ["l"], ["p"], kernel=(2, 2), strides=(2, 2), ceil_mode=True),
        ir.Flatten("flat", ["p"], ["f"]),
        ir.Gemm("fc", ["f"], ["y"], in_features=24, out_features=10, weights=_quantized(rng, 1, 1, 1, 24, 10, 4, 5),
                bias=rng.standard_normal(10).astype(np.float32)),
        ir.Softmax("softmax", ["y"], ["prob"]),
    ]
    tensors = [ir.TensorInfo("x", (3, 8, 8)), ir.TensorInfo("c1", (8, 8, 8)), ir.TensorInfo("c2", (6, 3, 3)),
               ir.TensorInfo("l", (6, 3, 3)), ir.TensorInfo("p", (6, 2, 2)), ir.TensorInfo("f", (24,)),
               ir.TensorInfo("y", (10,)), ir.TensorInfo("prob", (10,))]
    return ir.Model("x", (3, 8, 8), tensors, ops, ["prob"], producer="qcnn-tests", source_sha256="ab" * 32,
                    preprocessing=ir.Preprocessing(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
                                                   scale=1 / 255, resize_shorter=256, crop=(224, 224)),
                    labels=[f"class {i}" for i in range(10)], metadata={"qcnn.report": "{}"})


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture
def tiny_qcnn(tmp_path):
    from qcnn.schema import writer

    path = tmp_path / "tiny.qcnn"
    writer.write_model(make_tiny_model(), path)
    return path


@pytest.fixture(scope="session")
def shared_dir():
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture
def tiny_model_factory():
    return make_tiny_model


def _check_fused_pool_run_refuses(fused, x, y_shape, wrong_y_shape):
    """A fused conv + pool kernel (ConvMaxPoolKernel, QConvMaxPoolKernel) refuses, naming what is
    wrong, a y of the wrong shape, an x of the wrong channel count and a scratch too small."""
    h, w, c = x.shape
    scratch = np.empty(fused.scratch_nbytes(h, w), np.uint8)
    with pytest.raises(ValueError, match="y: expected shape"):
        fused.run(x, np.empty(wrong_y_shape, np.float32), scratch)
    with pytest.raises(ValueError, match="channels"):
        fused.run(np.ones((h, w, c + 1), np.float32), np.empty(y_shape, np.float32), scratch)
    with pytest.raises(ValueError, match="scratch"):
        fused.run(x, np.empty(y_shape, np.float32), scratch[:10])


@pytest.fixture
def check_fused_pool_run_refuses():
    return _check_fused_pool_run_refuses
