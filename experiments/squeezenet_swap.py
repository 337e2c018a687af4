"""SqueezeNet 1.1 `--plan size=1.5` with the calibration and evaluation halves both ways round.

    taskset -c 1 python experiments/squeezenet_swap.py      # ~6 min on the 2-core machine

squeezenet.py calibrates on the even-position photos (sorted by name) and evaluates on the odd ones.
This script does that and the swap (plan, EC and evaluation with the halves exchanged), so every one of
the 500 photos is scored once by a file that never saw it, and the drop against onnxruntime fp32 can be
read on each half and on all 500. Per half it also reports float tables and int8 tables with fp32 dense
convs, to show where the loss comes from. Writes experiments/results/squeezenet_swap.{md,json}.
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
from qcnn.converter import plan as qplan  # noqa: E402
from qcnn.converter.onnx_import import import_onnx  # noqa: E402
from qcnn.runtime import Model  # noqa: E402

# What qcnn runs: the runtime's default (int8 tables, int8 dense convs on AVX-512 VNNI), and each
# of the two int8 parts replaced by floats (lut="float" runs the dense convs in fp32 too).
VARIANTS = {"default": dict(lut="int8"), "float tables, fp32 dense convs": dict(lut="float"),
            "int8 tables, fp32 dense convs": dict(lut="int8", dense="fp32")}


def one_way(name, xc, xe, ye, sess, onnx_path, target, calib_count, tmp):
    ref = common.ort_logits(sess, xe)
    model = import_onnx(str(onnx_path))
    scored = qplan.score(model, xc, lut="int8", seed=0, error="output")
    p = qplan.make_plan(model, None, qplan.parse_target(target), scored=scored)
    layers, skip = p.overrides()
    path = tmp / f"{name}.qcnn"
    convert(str(onnx_path), str(path), calib=xc[:calib_count], layers=layers, skip=skip, ec=True, seed=0,
            preprocess="imagenet")
    row = {"calibrated_on": name.split("-")[0], "plan": {lo.name: lo.candidates[lo.chosen].label for lo in p.layers
                                                         if not lo.candidates[lo.chosen].dense},
           "onnxruntime": common.topk(ref, ye), "logits": {}}
    for label, kw in VARIANTS.items():
        lg = common.qcnn_logits(Model(path, **kw), xe)
        row[label] = dict(common.topk(lg, ye), agreement=float(100 * np.mean(lg.argmax(1) == ref.argmax(1))))
        row["logits"][label] = lg
    row["logits"]["onnxruntime"] = ref
    print(f"{name}: {row['plan']} onnxruntime {row['onnxruntime']} qcnn {row['default']}", flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="size=1.5")
    ap.add_argument("--calib-count", type=int, default=100)
    ap.add_argument("--out", default=str(common.HERE / "results"))
    args = ap.parse_args(argv)
    onnx_path = common.shared() / "models" / "squeezenet1.1.onnx"
    x_even, y_even, x_odd, y_odd = common.imagenet_split()
    sess = common.ort_session(onnx_path)
    with tempfile.TemporaryDirectory(prefix="qcnn-swap-") as tmp:
        rows = [one_way(f"{cal}-calibrated", xc, xe, ye, sess, onnx_path, args.target, args.calib_count, Path(tmp))
                for cal, xc, xe, ye in (("even", x_even, x_odd, y_odd), ("odd", x_odd, x_even, y_even))]
    y_all = np.concatenate([y_odd, y_even])
    pooled = {label: common.topk(np.concatenate([r["logits"][label] for r in rows]), y_all)
              for label in ["onnxruntime"] + list(VARIANTS)}
    for r in rows:
        del r["logits"]
    result = {"machine": common.machine(), "date": common.stamp(), "target": args.target,
              "calib_count": args.calib_count, "halves": rows, "all_500": pooled}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common.save_json(result, out / "squeezenet_swap.json")
    (out / "squeezenet_swap.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r) -> str:
    lines = [f"# SqueezeNet 1.1 `--plan {r['target']}`, both halves ({r['date']}, {r['machine']})", "",
             f"EC on the first {r['calib_count']} photos of the calibration half; scored on the other half. "
             "Drops are against onnxruntime fp32 on the same photos (top-1 / top-5 points).", "",
             "| calibrated on | plan | onnxruntime fp32 | " + " | ".join(f"qcnn, {v}" for v in VARIANTS) + " |",
             "|---|---|---:|" + "---:|" * len(VARIANTS)]
    for h in r["halves"]:
        ref = h["onnxruntime"]
        cells = [f"{h[v]['top1']:.1f} / {h[v]['top5']:.1f} (drop {ref['top1'] - h[v]['top1']:.1f} / "
                 f"{ref['top5'] - h[v]['top5']:.1f}; agreement {h[v]['agreement']:.1f}%)" for v in VARIANTS]
        plan = ", ".join(f"{k} {v}" for k, v in h["plan"].items()) or "all dense"
        lines.append(f"| {h['calibrated_on']} positions | {plan} | {ref['top1']:.1f} / {ref['top5']:.1f} | "
                     + " | ".join(cells) + " |")
    ref = r["all_500"]["onnxruntime"]
    cells = [f"{r['all_500'][v]['top1']:.1f} / {r['all_500'][v]['top5']:.1f} (drop "
             f"{ref['top1'] - r['all_500'][v]['top1']:.1f} / {ref['top5'] - r['all_500'][v]['top5']:.1f})"
             for v in VARIANTS]
    lines.append(f"| all 500, each by the file not calibrated on it | | {ref['top1']:.1f} / {ref['top5']:.1f} | "
                 + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
