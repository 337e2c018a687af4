"""Real graphs end to end: convert, run with qcnn, compare with onnxruntime on the decode_to_onnx oracle.

These are the runtime's acceptance tests on AlexNet, ZFNet, VGG-16 (seeded weights) and SqueezeNet 1.1
(real weights) on real photos. Codebooks come from plain k-means (--no-ec): what is tested here is that
the runtime computes exactly what the file says, which does not depend on how codebooks were learned.
"""
import os

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow

MODELS = ["alexnet", "zfnet", "vgg16", "squeezenet"]


def _photos(shared_dir, n):
    folder = shared_dir / "data" / "imagenet-samples"
    return [str(folder / f) for f in sorted(os.listdir(folder))[::97][:n]]


@pytest.fixture(scope="module")
def converted(tmp_path_factory, shared_dir):
    from qcnn.converter import convert
    from qcnn.models.build import write_model

    out = tmp_path_factory.mktemp("zoo")
    cache = {}

    def get(name):
        if name not in cache:
            if name == "squeezenet":
                onnx_path = str(shared_dir / "models" / "squeezenet1.1.onnx")
            else:
                onnx_path = str(out / f"{name}.onnx")
                write_model(name, onnx_path)
            qcnn_path = str(out / f"{name}.qcnn")
            convert(onnx_path, qcnn_path, ec=False, kmeans_iters=6, preprocess="imagenet")
            cache[name] = (onnx_path, qcnn_path)
        return cache[name]

    return get


@pytest.mark.parametrize("name", MODELS)
def test_runtime_matches_decoded_oracle_on_photos(name, converted, shared_dir):
    from qcnn.converter import decode_to_onnx
    from qcnn.runtime import Model

    _, qcnn_path = converted(name)
    sess = ort.InferenceSession(decode_to_onnx(qcnn_path).SerializeToString(), providers=["CPUExecutionProvider"])
    with Model(qcnn_path, lut="float") as m:
        x = m.preprocess(_photos(shared_dir, 3))
        ref = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i : i + 1]})[0] for i in range(len(x))])
        y = m.run(x)
    assert y.shape == ref.shape
    rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
    assert rel <= 1e-4, f"{name}: relative L2 {rel:.2e}"
    with Model(qcnn_path, lut="int8", dense="fp32") as m8:
        y8 = m8.run(x)
    rel8 = np.linalg.norm(y8 - ref) / np.linalg.norm(ref)
    assert rel8 <= 0.1, f"{name}: int8 tables, relative L2 {rel8:.2e}"
    # The default on a VNNI CPU also runs the dense convs in int8 (AlexNet's conv1): one more
    # rounding, which these seeded-weight nets amplify (measured on AlexNet: 0.043 -> 0.113; its top-1
    # agreement with its decoded model, EC-converted, on 100 held-out photos did not drop: 70% -> 77%).
    with Model(qcnn_path, lut="int8", dense="int8") as m8:
        y8 = m8.run(x)
    rel8 = np.linalg.norm(y8 - ref) / np.linalg.norm(ref)
    assert rel8 <= 0.15, f"{name}: int8 tables and int8 dense convs, relative L2 {rel8:.2e}"
