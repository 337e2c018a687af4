"""Small valid models to mutate and to seed the fuzzer.

Together they use every operator kind, both weight kinds, K = 2, 3, 5, 16 and 256 (index widths
1, 2, 3, 4 and 8 bits; non-powers of two leave codes >= K representable), grouped convolutions,
a padded last subspace, optional fields present (preprocessing, labels) and absent, and two
graph outputs. `seed_files()` returns {name: bytes}.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from qcnn.schema import ir


def _q(rng, groups, kh, kw, cin_g, cout_g, subvec, ncode):
    nsub = -(-cin_g // subvec)
    codebooks = rng.standard_normal((groups, nsub, ncode, subvec)).astype(np.float32)
    indices = rng.integers(0, ncode, (groups, kh, kw, nsub, cout_g)).astype(np.uint8)
    return ir.QuantizedWeights(subvec, nsub, ncode, codebooks, indices)


def tiny(seed: int = 0) -> ir.Model:
    """conv(dense) -> conv(quantized, K=16, groups 2) -> LRN -> maxpool(ceil) -> flatten -> fc(K=5) -> softmax."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    ops = [
        ir.Conv("conv1", ["x"], ["c1"], cin=3, cout=8, kernel=(3, 3), pads=(1, 1, 1, 1),
                weights=(rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(f32),
                bias=(rng.standard_normal(8) * 0.1).astype(f32), relu=True),
        ir.Conv("conv2", ["c1"], ["c2"], cin=8, cout=6, kernel=(3, 3), strides=(2, 2), groups=2,
                weights=_q(rng, 2, 3, 3, 4, 3, 2, 16)),
        ir.LRN("lrn", ["c2"], ["l"], size=5),
        ir.MaxPool("pool", ["l"], ["p"], kernel=(2, 2), strides=(2, 2), ceil_mode=True),
        ir.Flatten("flat", ["p"], ["f"]),
        ir.Gemm("fc", ["f"], ["y"], in_features=24, out_features=10, weights=_q(rng, 1, 1, 1, 24, 10, 4, 5),
                bias=rng.standard_normal(10).astype(f32)),
        ir.Softmax("softmax", ["y"], ["prob"]),
    ]
    tensors = [ir.TensorInfo("x", (3, 8, 8)), ir.TensorInfo("c1", (8, 8, 8)), ir.TensorInfo("c2", (6, 3, 3)),
               ir.TensorInfo("l", (6, 3, 3)), ir.TensorInfo("p", (6, 2, 2)), ir.TensorInfo("f", (24,)),
               ir.TensorInfo("y", (10,)), ir.TensorInfo("prob", (10,))]
    return ir.Model("x", (3, 8, 8), tensors, ops, ["prob"], producer="qcnn-hardening", source_sha256="ab" * 32,
                    preprocessing=ir.Preprocessing(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
                                                   scale=1 / 255, resize_shorter=256, crop=(224, 224)),
                    labels=[f"class {i}" for i in range(10)], metadata={"qcnn.report": "{}"})


def branchy(seed: int = 1) -> ir.Model:
    """Relu, Add, Concat, AveragePool (padded), GlobalAveragePool, dense FC, K = 3/256/2, two outputs."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    ops = [
        ir.Conv("qa", ["x"], ["a"], cin=4, cout=6, kernel=(3, 3), pads=(1, 1, 1, 1),
                weights=_q(rng, 1, 3, 3, 4, 6, 3, 3), bias=rng.standard_normal(6).astype(f32), relu=True),
        ir.Relu("relu", ["a"], ["b"]),
        ir.Conv("dc", ["b"], ["c"], cin=6, cout=6, kernel=(1, 1), weights=rng.standard_normal((6, 6, 1, 1)).astype(f32)),
        ir.Add("add", ["b", "c"], ["d"], relu=True),
        ir.Conv("qe", ["d"], ["e"], cin=6, cout=4, kernel=(1, 1), groups=2, weights=_q(rng, 2, 1, 1, 3, 2, 1, 256)),
        ir.Concat("cat", ["d", "e"], ["f"]),
        ir.AveragePool("avg", ["f"], ["g"], kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), count_include_pad=True),
        ir.MaxPool("max", ["g"], ["h"], kernel=(2, 2)),
        ir.GlobalAveragePool("gap", ["h"], ["i"]),
        ir.Flatten("flat", ["i"], ["j"]),
        ir.Gemm("qfc", ["j"], ["k"], in_features=10, out_features=7, weights=_q(rng, 1, 1, 1, 10, 7, 3, 2)),
        ir.Gemm("dfc", ["k"], ["l"], in_features=7, out_features=3, weights=rng.standard_normal((3, 7)).astype(f32),
                bias=rng.standard_normal(3).astype(f32), relu=True),
        ir.Softmax("softmax", ["l"], ["prob"]),
    ]
    shapes = {"x": (4, 6, 6), "a": (6, 6, 6), "b": (6, 6, 6), "c": (6, 6, 6), "d": (6, 6, 6), "e": (4, 6, 6),
              "f": (10, 6, 6), "g": (10, 3, 3), "h": (10, 2, 2), "i": (10, 1, 1), "j": (10,), "k": (7,),
              "l": (3,), "prob": (3,)}
    tensors = [ir.TensorInfo(n, s) for n, s in shapes.items()]
    return ir.Model("x", (4, 6, 6), tensors, ops, ["prob", "k"], producer="qcnn-hardening")


MODELS = {"tiny": tiny, "branchy": branchy}


def seed_files() -> Dict[str, bytes]:
    from qcnn.schema import writer

    return {name: writer.serialize(build()) for name, build in MODELS.items()}


def main(argv=None):
    import argparse
    import os

    ap = argparse.ArgumentParser(description="Write the hardening seed models as .qcnn files")
    ap.add_argument("outdir")
    args = ap.parse_args(argv)
    os.makedirs(args.outdir, exist_ok=True)
    for name, data in seed_files().items():
        with open(os.path.join(args.outdir, name + ".qcnn"), "wb") as f:
            f.write(data)
        print(name, len(data), "bytes")


if __name__ == "__main__":
    main()
