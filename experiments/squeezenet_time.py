"""Where SqueezeNet's time goes: onnxruntime per-op profile vs qcnn per-step times, and end-to-end
medians of ORT fp32 vs qcnn .qcnn files (round robin, batch 1, 1 thread, one process).

    taskset -c 1 python experiments/squeezenet_time.py [--keep DIR]    # DIR from squeezenet.py --keep

Without --keep only the all-dense qcnn model is timed (converted here, a few seconds).
Writes experiments/results/squeezenet_time.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from qcnn.converter import convert  # noqa: E402
from qcnn.runtime import Model  # noqa: E402
from qcnn.tools.bench import ort_layer_times  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="folder with plan-*.qcnn files written by squeezenet.py --keep")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--out", default=str(common.HERE / "results"))
    args = ap.parse_args(argv)
    onnx_path = common.shared() / "models" / "squeezenet1.1.onnx"
    _, _, xe, _ = common.imagenet_split()
    x = xe[:1]
    tmp = Path(tempfile.mkdtemp(prefix="qcnn-sqt-"))
    dense = tmp / "dense.qcnn"
    from qcnn.converter.onnx_import import import_onnx
    from qcnn.schema import ir

    names = [op.name for op in import_onnx(str(onnx_path)).operators if isinstance(op, ir.Conv)]
    convert(str(onnx_path), str(dense), skip=names, ec=False)
    files = {"qcnn-dense": dense}
    if args.keep:
        for p in sorted(Path(args.keep).glob("plan-*.qcnn")):
            files[p.stem] = p
    sess = common.ort_session(onnx_path)
    engines = {"ort": lambda: sess.run(None, {"data": x})}
    models = {}
    for k, p in files.items():
        models[k] = Model(p)
        engines[k] = (lambda m=models[k]: m.run(x))
    ms = common.interleaved_ms(engines, runs=args.runs)
    ort_layers = ort_layer_times(onnx_path, x, 100, 1)
    q_layers = common.qcnn_step_ms(models["qcnn-dense"], x[0], 100)
    groups = {}
    for src, rows in (("ort", ort_layers), ("qcnn", q_layers)):
        for r in rows:
            kind = "Conv" if r["op"] in ("Conv", "FusedConv") else r["op"]
            groups.setdefault(kind, {"ort": 0.0, "qcnn": 0.0})[src] += r["ms"]
    res = {"date": common.stamp(), "machine": common.machine(), "ms": ms, "by_op": groups,
           "ort_layers": ort_layers, "qcnn_layers": q_layers}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common.save_json(res, out / "squeezenet_time.json")
    L = [f"### SqueezeNet 1.1: where the time goes ({res['date']}; {res['machine']})", "",
         f"End-to-end medians of {args.runs} round-robin runs, thread CPU time (batch 1, 1 thread): " +
         ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()), "",
         "Summed per-op time (ORT profiler kernel times, wall; qcnn per-step thread CPU time of the all-dense model):", "",
         "| op type | onnxruntime ms | qcnn ms |", "|---|---|---|"]
    for k, v in sorted(groups.items(), key=lambda kv: -kv[1]["ort"] - kv[1]["qcnn"]):
        L.append(f"| {k} | {v['ort']:.3f} | {v['qcnn']:.3f} |")
    L.append(f"| sum | {sum(v['ort'] for v in groups.values()):.3f} | {sum(v['qcnn'] for v in groups.values()):.3f} |")
    md = "\n".join(L) + "\n"
    (out / "squeezenet_time.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
