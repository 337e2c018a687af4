"""AlexNet / VGG-16 with seeded (random, He-init) weights on real photos: plain vs EC vs multi-layer EC.

    taskset -c 1 python experiments/ec_study.py            # ~15 min on a busy 2-core machine

There are no real weights for these nets here, so accuracy is meaningless; what we can measure is how
faithfully the quantized net reproduces the float one on real photos:
  - top-1 agreement of qcnn (int8 and float tables) with onnxruntime fp32 on held-out photos;
  - per-layer relative response error on held-out photos, plain k-means vs error correction, both
    "accumulated" (input from the quantized net) and "single" (this layer alone on the original input);
  - the accumulated error of the last layer / the logits with multi-layer EC (paper §3.3.3: S taken from
    the quantized network, the converter default) and without (`--no-multilayer`: S from the original net).
Settings: all conv layers at the converter default 8/128, fully connected layers dense (as the paper's
Table 5; `--with-fc` also quantizes them at 4/32 and 1/16). Photos: sorted by name, even
positions calibrate, odd positions evaluate (same split as squeezenet.py).
Writes experiments/results/ec_study.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import re
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

NETS = {"alexnet": {"calib": 32, "eval": 100, "err": 16}, "vgg16": {"calib": 8, "eval": 40, "err": 4}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="alexnet,vgg16")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the image counts (quick runs: 0.25)")
    ap.add_argument("--with-fc", action="store_true", help="also quantize the fully connected layers")
    ap.add_argument("--out", default=str(common.HERE / "results"))
    args = ap.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="qcnn-ec-"))
    from qcnn.models.build import build_model

    t_start = time.time()
    # Nets not named in --models keep their earlier results (each net records its own date/machine),
    # so `--models vgg16` adds VGG-16 without discarding the AlexNet tables.
    old = out_dir / "ec_study.json"
    results = {}
    if old.exists():
        prev = json.loads(old.read_text())
        for k, v in prev.get("models", {}).items():
            v.setdefault("date", prev.get("date"))
            v.setdefault("machine", prev.get("machine"))
            results[k] = v
    for name in [n.strip() for n in args.models.split(",")]:
        cfg = {k: max(2, int(v * args.scale)) for k, v in NETS[name].items()}
        src = tmp / f"{name}.onnx"
        src.write_bytes(build_model(name, seed=0).SerializeToString())
        model = import_onnx(str(src))
        xc, _, xe, _ = common.imagenet_split(tuple(model.input_shape))
        xc, xe = xc[:cfg["calib"]], xe[:cfg["eval"]]
        sess = common.ort_session(src)
        ref = common.ort_logits(sess, xe).reshape(len(xe), -1)
        # all conv layers, fc layers dense (as the paper's Table 5); --with-fc adds fc 4/32, last fc 1/16
        skip = [] if args.with_fc else [op.name for op in model.operators if isinstance(op, ir.Gemm)]
        r = {"calib": len(xc), "eval": len(xe), "err_images": cfg["err"], "variants": {},
             "date": common.stamp(), "machine": common.machine()}
        for variant, kw in (("plain", {"ec": False}), ("ec", {"ec": True, "multilayer": True}),
                            ("ec-single", {"ec": True, "multilayer": False})):
            t0 = time.time()
            path = tmp / f"{name}-{variant}.qcnn"
            res = convert(str(src), str(path), calib=xc if kw["ec"] else None, seed=0, skip=skip,
                          calib_count=len(xc), **kw)
            v = {"convert_s": round(time.time() - t0, 1), "flops_speedup": res.report["total"]["speedup"],
                 "compression": res.report["total"]["compression"]}
            for lut in ("int8", "float"):
                y = common.qcnn_logits(Model(path, lut=lut), xe, batch=10).reshape(len(xe), -1)
                v[f"agree_{lut}"] = float(100 * (y.argmax(1) == ref.argmax(1)).mean())
                v[f"top1_in_top5_{lut}"] = float(100 * (np.argsort(-y, 1)[:, :5] == ref.argmax(1)[:, None]).any(1).mean())
            v["errors"] = common.layer_errors(import_onnx(str(src)), res.model, xe[:cfg["err"]])
            r["variants"][variant] = v
            print(f"{name} {variant}: converted in {v['convert_s']} s; top-1 agreement int8 {v['agree_int8']:.0f}% "
                  f"float {v['agree_float']:.0f}%; logits error {v['errors']['_output']['error']:.4f}", flush=True)
        results[name] = r
        # written after every net, so a long VGG-16 run does not hold back the AlexNet tables
        out = {"date": common.stamp(), "machine": common.machine(), "models": results,
               "seconds": round(time.time() - t_start)}
        common.save_json(out, out_dir / "ec_study.json")
        md = markdown(out)
        (out_dir / "ec_study.md").write_text(md)
        print(md, flush=True)


def natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def markdown(o) -> str:
    L = [f"### AlexNet / VGG-16 with seeded weights on real photos ({o['date']}; {o['machine']})", "",
         "Conv layers 8/128 (converter default), fc layers dense. Agreement = qcnn top-1 equals onnxruntime fp32 "
         "top-1 on held-out photos; errors = relative response error on held-out photos.", ""]
    for name, r in o["models"].items():
        V = r["variants"]
        when = f"; run {r['date']} on {r['machine']}" if r.get("date") else ""
        L += [f"**{name}** (calibration {r['calib']} photos, agreement on {r['eval']}, errors on {r['err_images']}; "
              f"conv layers: FLOPs speed-up {V['ec']['flops_speedup']:.2f}x, compression {V['ec']['compression']:.1f}x{when})", "",
              "| variant | top-1 agreement int8 | float | fp32 top-1 in qcnn top-5 (int8) | logits rel. error |",
              "|---|---|---|---|---|"]
        for k, lab in (("plain", "plain k-means"), ("ec", "EC, multi-layer (§3.3.3, default)"),
                       ("ec-single", "EC, single-layer (S from the original net)")):
            v = V[k]
            L.append(f"| {lab} | {v['agree_int8']:.0f}% | {v['agree_float']:.0f}% | {v['top1_in_top5_int8']:.0f}% | "
                     f"{v['errors']['_output']['error']:.4f} |")
        L.append("")
        L.append("(accum. = input from the quantized network, i.e. what the layer really sees; alone = this layer's "
                 "own error on the original input. Layers not listed stay dense, e.g. a first conv with fewer "
                 "than 8 input channels.)")
        L.append("")
        L += ["| layer | plain (accum.) | EC multi (accum.) | EC single-layer (accum.) | plain alone | EC multi alone | EC single alone |",
              "|---|---|---|---|---|---|---|"]
        for lay in sorted(V["ec"]["errors"], key=natural):  # the JSON is key-sorted: back to graph order
            if lay == "_output":
                continue
            e = [V[k]["errors"][lay] for k in ("plain", "ec", "ec-single")]
            L.append(f"| {lay} | {e[0]['error']:.4f} | {e[1]['error']:.4f} | {e[2]['error']:.4f} | {e[0]['single']:.4f} | "
                     f"{e[1]['single']:.4f} | {e[2]['single']:.4f} |")
        L.append("")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
