"""The paper's Table 2 (MNIST, C's = 4, K = 32): compression and test error of plain Q-CNN and Q-CNN (EC).

    taskset -c 1 python experiments/mnist_table.py            # ~5 min

Nets: models/ mnist-mlp3 (784-1000-10) and mnist-mlp5 (784-1000-1000-1000-10), trained by
models/train_mnist.py (ours reach a lower float error than the paper's: augmentation + dropout).
Calibration: `--calib-count` images of x_train (a different seeded subset per seed); evaluation: all
10 000 images of x_test, through the qcnn runtime (int8 tables by default, and float tables).
Seeds 0..4 change the k-means initialisation and the calibration subset; plain and EC with the same
seed start from the same k-means codebooks.

Compression, as the paper counts it (Table 1, "Bytes"): dense = 4 bytes per weight; Q-CNN =
4 C_s K bytes of codebooks + M C_t log2(K)/8 bytes of indices; biases are not counted and the last
(1000 -> 10) layer stays dense. That reproduces 12.1x and 13.4x exactly; quantizing the last layer
too (its 4*1000*32 bytes of codebooks exceed its 40 000 dense bytes) could not. We also print our
own accounting (biases included, = the converter report) and the .qcnn file size ratio.
Writes experiments/results/mnist_table.{json,md}.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from qcnn.converter import convert  # noqa: E402
from qcnn.converter.onnx_import import import_onnx  # noqa: E402
from qcnn.runtime import Model  # noqa: E402
from qcnn.schema import ir  # noqa: E402

PAPER = {"mnist-mlp3": {"orig": 1.35, "plain": 1.42, "ec": 1.39, "compr": 12.1},
         "mnist-mlp5": {"orig": 1.12, "plain": 1.34, "ec": 1.19, "compr": 13.4}}
C_S, K = 4, 32


def paper_bytes(op, quantized: bool) -> float:
    cs, ct = op.in_features, op.out_features
    if not quantized:
        return 4.0 * cs * ct
    M = math.ceil(cs / C_S)
    return 4.0 * cs * K + M * ct * math.log2(K) / 8


def error_pct(model_path, x, y, lut) -> float:
    m = Model(model_path, lut=lut)
    logits = np.concatenate([m.run(x[i:i + 1000]) for i in range(0, len(x), 1000)])
    return float(100 * (logits.reshape(len(x), -1).argmax(1) != y).mean())


def onnx_path(name, tmp, overrides):
    if name in overrides:
        return overrides[name]
    from qcnn.models.build import build_model

    p = tmp / f"{name}.onnx"
    p.write_bytes(build_model(name).SerializeToString())
    return str(p)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mnist-mlp3,mnist-mlp5")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--calib-count", type=int, default=5000)
    ap.add_argument("--ec-iters", type=int, default=4)
    ap.add_argument("--onnx", action="append", default=[], metavar="NAME=PATH", help="use this ONNX file for NAME")
    ap.add_argument("--out", default=str(common.HERE / "results"))
    args = ap.parse_args(argv)
    overrides = dict(o.split("=", 1) for o in args.onnx)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="qcnn-mnist-"))
    data = np.load(common.shared() / "data" / "mnist.npz")
    x_train = (data["x_train"].astype(np.float32) / 255.0)[:, None]
    x_test = (data["x_test"].astype(np.float32) / 255.0)[:, None]
    y_test = data["y_test"].astype(np.int64)
    t_start = time.time()
    results = {}
    for name in [n.strip() for n in args.models.split(",")]:
        try:
            src = onnx_path(name, tmp, overrides)
        except FileNotFoundError as exc:
            print(f"{name}: skipped ({exc})")
            continue
        model = import_onnx(src)
        gemms = [op for op in model.operators if isinstance(op, ir.Gemm)]
        last = gemms[-1].name
        hidden = {op.name: (C_S, K) for op in gemms[:-1]}
        dense_b = sum(paper_bytes(op, False) for op in gemms)
        q_b = sum(paper_bytes(op, op.name in hidden) for op in gemms)
        # float error of the original net, through the qcnn runtime with every layer dense
        convert(src, str(tmp / "dense.qcnn"), skip=[op.name for op in gemms], ec=False)
        r = {"orig": error_pct(tmp / "dense.qcnn", x_test, y_test, "float"), "compr_paper": dense_b / q_b,
             "runs": []}
        for seed in range(args.seeds):
            idx = np.sort(np.random.default_rng(1000 + seed).permutation(len(x_train))[:args.calib_count])
            xc = x_train[idx]
            run = {"seed": seed}
            for method, ec in (("plain", False), ("ec", True)):
                path = tmp / f"{name}-{method}-{seed}.qcnn"
                res = convert(src, str(path), calib=xc, layers=hidden, skip=[last], ec=ec, ec_iters=args.ec_iters,
                              seed=seed, report_plain=True, calib_count=len(xc))
                for lut in ("int8", "float"):
                    run[f"{method}_{lut}"] = error_pct(path, x_test, y_test, lut)
                run[f"{method}_resp_err"] = {row["name"]: row.get("error") for row in res.report["layers"] if row["quantized"]}
                run["file_ratio"] = Path(src).stat().st_size / path.stat().st_size
            print(f"{name} seed {seed}: plain int8 {run['plain_int8']:.2f}% float {run['plain_float']:.2f}% | "
                  f"EC int8 {run['ec_int8']:.2f}% float {run['ec_float']:.2f}%  resp.err plain {run['plain_resp_err']} "
                  f"EC {run['ec_resp_err']}", flush=True)
            r["runs"].append(run)
        for key in ("plain_int8", "plain_float", "ec_int8", "ec_float"):
            v = np.array([x[key] for x in r["runs"]])
            r[key] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
        biases = sum(4.0 * op.out_features for op in gemms if op.bias is not None)
        r["compr_ours"] = (dense_b + biases) / (q_b + biases)
        r["file_ratio"] = r["runs"][0]["file_ratio"]
        results[name] = r
    out = {"date": common.stamp(), "machine": common.machine(), "calib_count": args.calib_count,
           "ec_iters": args.ec_iters, "seeds": args.seeds, "models": results, "seconds": round(time.time() - t_start)}
    common.save_json(out, out_dir / "mnist_table.json")
    md = markdown(out)
    (out_dir / "mnist_table.md").write_text(md)
    print(md)


def markdown(o) -> str:
    L = [f"### MNIST, paper Table 2 (C's = 4, K = 32; {o['date']}; {o['machine']})", "",
         f"Test error on all 10 000 x_test images through the qcnn runtime; mean ± std over {o['seeds']} seeds "
         f"(k-means init + calibration subset of {o['calib_count']} x_train images); EC with {o['ec_iters']} sweeps, "
         "multi-layer (§3.3.3). Paper numbers in brackets.", "",
         "| net | compression (paper's count) | ours incl. biases / file | original | Q-CNN int8 | Q-CNN float | Q-CNN (EC) int8 | Q-CNN (EC) float |",
         "|---|---|---|---|---|---|---|---|"]
    for name, r in o["models"].items():
        p = PAPER[name]
        f = lambda k: f"{r[k]['mean']:.2f} ± {r[k]['std']:.2f}%"  # noqa: E731
        L.append(f"| {name} | {r['compr_paper']:.1f}x [{p['compr']}x] | {r['compr_ours']:.1f}x / {r['file_ratio']:.1f}x | "
                 f"{r['orig']:.2f}% [{p['orig']}%] | {f('plain_int8')} [{p['plain']}%] | {f('plain_float')} | "
                 f"{f('ec_int8')} [{p['ec']}%] | {f('ec_float')} |")
    L += ["", "Increase over the original (points), int8: " + "; ".join(
        f"{n}: plain {r['plain_int8']['mean'] - r['orig']:+.2f}, EC {r['ec_int8']['mean'] - r['orig']:+.2f} "
        f"(paper {PAPER[n]['plain'] - PAPER[n]['orig']:+.2f} / {PAPER[n]['ec'] - PAPER[n]['orig']:+.2f})"
        for n, r in o["models"].items())]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
