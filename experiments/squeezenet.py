"""SqueezeNet 1.1 on real photos: automatic plans, accuracy vs speed, per-layer time, EC vs plain.

    taskset -c 1 python experiments/squeezenet.py     # ~5 min CPU (18 min wall on the busy shared machine)

Data: the 500 photos of shared/data/imagenet-samples, sorted by file name; even positions (250)
calibrate, odd positions (250) are held out for every accuracy and response-error number.
Baseline: onnxruntime fp32, 1 thread. qcnn: int8 look-up tables (runtime default) and float tables.
Timing: batch 1, 1 thread, medians of round-robin runs of all engines in this one process, measured
as thread CPU time (the machine is shared: wall time mostly measures waiting for a core).
Writes experiments/results/squeezenet.{json,md,png}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from qcnn.converter import convert  # noqa: E402
from qcnn.converter import plan as qplan  # noqa: E402
from qcnn.converter.onnx_import import import_onnx  # noqa: E402
from qcnn.runtime import Model  # noqa: E402
from qcnn.runtime.model import dense_precision  # noqa: E402
from qcnn.schema import ir  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="auto;error=0.03;1.1;1.2;size=1.5;size=2;size=3;speed=1,size=1.3;speed=1,size=1.5",
                    help="';'-separated plans: measured conv speed-ups over the dense runtime kernels (a bare "
                         "number), or any qcnn-convert --plan target (size=X, speed=S,size=X, ...)")
    ap.add_argument("--main", default="size=1.5", help="the plan whose per-layer times and EC/plain errors are reported")
    ap.add_argument("--calib-count", type=int, default=100, help="calibration images for EC (of the 250)")
    ap.add_argument("--error", default="output", choices=["output", "response"],
                    help="what the plans score candidates by (qcnn-convert --plan-error)")
    ap.add_argument("--error-images", type=int, default=48, help="held-out images for response errors")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--keep", help="write the .qcnn files here (for squeezenet_time.py --keep)")
    ap.add_argument("--out", default=str(common.HERE / "results"))
    args = ap.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = common.shared() / "models" / "squeezenet1.1.onnx"
    t_start = time.time()

    xc, yc, xe, ye = common.imagenet_split()
    print(f"calibration: {len(xc)} even-position photos (EC uses the first {args.calib_count}); "
          f"evaluation: {len(xe)} odd-position photos", flush=True)
    sess = common.ort_session(onnx_path)
    ref = common.ort_logits(sess, xe)
    ref_acc = common.topk(ref, ye)
    all_acc = common.topk(np.concatenate([common.ort_logits(sess, xc), ref]), np.concatenate([yc, ye]))
    print(f"onnxruntime fp32: held-out top-1 {ref_acc['top1']:.1f}% top-5 {ref_acc['top5']:.1f}% "
          f"(all 500: {all_acc['top1']:.1f}% / {all_acc['top5']:.1f}%)", flush=True)

    model = import_onnx(str(onnx_path))
    t0 = time.time()
    scored = qplan.score(model, xc, lut="int8", seed=0, error=args.error)
    print(f"scored {len(scored)} layers x candidates in {time.time() - t0:.0f} s", flush=True)
    dense_ms = sum(lo.candidates[0].ms for lo in scored)
    fastest = sum(min(c.ms for c in lo.candidates) for lo in scored)
    max_speed = dense_ms / fastest
    print(f"conv time: dense {dense_ms:.3f} ms, fastest possible {fastest:.3f} ms ({max_speed:.2f}x)")

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="qcnn-sq-"))
    tmp.mkdir(parents=True, exist_ok=True)
    # dense .qcnn (all layers kept dense): the runtime's own dense speed and its overheads
    names = [lo.name for lo in scored]
    convert(str(onnx_path), str(tmp / "dense.qcnn"), skip=names, ec=False)
    engines = {"ort": lambda: sess.run(None, {"data": xe[:1]})}
    dense_model = Model(tmp / "dense.qcnn")
    engines["qcnn-dense"] = lambda: dense_model.run(xe[:1])
    # every layer dense, in each precision the runtime has for dense convs (no product quantization)
    dense_rows = {}
    for prec in ("int8", "fp32"):
        dm = Model(tmp / "dense.qcnn", dense=prec)
        dense_rows[prec] = common.topk(common.qcnn_logits(dm, xe), ye)
        engines[f"dense-{prec}"] = (lambda dm=dm: dm.run(xe[:1]))
        print(f"all dense, {prec} convs: top-1 {dense_rows[prec]['top1']:.1f}% top-5 {dense_rows[prec]['top5']:.1f}%",
              flush=True)

    rows = []
    targets = [t.strip() for t in args.targets.split(";") if t.strip()]
    models = {}
    for t in targets:
        if "=" in t or t == "auto":  # a --plan target (auto: qcnn-convert's default)
            target = qplan.parse_target(t)
        else:  # a bare number: measured conv speed-up over the dense kernels
            speed = max_speed * 0.995 if t == "max" else float(t)
            if speed > max_speed:
                print(f"skip speed={speed}: above the reachable {max_speed:.2f}x")
                continue
            target = qplan.Target("speed", speed, "time")
        try:
            p = qplan.make_plan(model, None, target, scored=scored)
        except qplan.ConversionError as e:
            print(f"skip {t}: {e}")
            continue
        layers, skip = p.overrides()
        path = tmp / f"plan-{t.replace(',', '+')}.qcnn"
        t0 = time.time()
        res = convert(str(onnx_path), str(path), calib=xc[:args.calib_count], layers=layers, skip=skip, ec=True,
                      seed=0, preprocess="imagenet")
        conv_s = time.time() - t0
        # FLOPs and bytes from the plan (it counts the dense layers too; the converter report's totals
        # leave --skip layers out)
        row = {"target": t, "plan_target": asdict_target(target), "plan": {lo.name: lo.candidates[lo.chosen].label for lo in p.layers},
               "plan_totals": p.totals(), "flops_speedup": p.totals()["speedup_flops"],
               "compression": p.totals()["compression"], "convert_s": conv_s,
               "calib_error_sum": sum(r.get("error", 0) for r in res.report["layers"])}
        for lut in ("int8", "float"):
            m = Model(path, lut=lut)
            row[lut] = common.topk(common.qcnn_logits(m, xe), ye)
            models[(t, lut)] = m
            engines[f"{t}/{lut}"] = (lambda m=m: m.run(xe[:1]))
        print(f"plan {t}: planned {p.totals()['speedup_time']:.2f}x conv time, FLOPs {row['flops_speedup']:.2f}x; "
              f"int8 {row['int8']['top1']:.1f}/{row['int8']['top5']:.1f}, float {row['float']['top1']:.1f}/"
              f"{row['float']['top5']:.1f} (converted in {conv_s:.0f} s)", flush=True)
        rows.append(row)

    print("timing (round robin) ...", flush=True)
    ms = common.interleaved_ms(engines, runs=args.runs)
    for row in rows:
        for lut in ("int8", "float"):
            row[lut]["ms"] = ms[f"{row['target']}/{lut}"]
            row[lut]["speedup_vs_ort"] = ms["ort"] / ms[f"{row['target']}/{lut}"]
    print("  " + ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()), flush=True)
    for prec, row in dense_rows.items():
        row["ms"] = ms[f"dense-{prec}"]
        row["speedup_vs_ort"] = ms["ort"] / row["ms"]

    # per-layer time of the main plan vs the dense qcnn model
    main_t = args.main if args.main in [r["target"] for r in rows] else rows[-1]["target"]
    lt_main = common.qcnn_step_ms(models[(main_t, "int8")], xe[0], 30)
    lt_dense = common.qcnn_step_ms(dense_model, xe[0], 30)
    dense_by_name = {b["name"]: b for b in lt_dense}  # by name: the two models' step lists may differ
    per_layer = [{"name": a["name"], "op": a["op"], "dense_ms": dense_by_name.get(a["name"], {}).get("ms", float("nan")),
                  "plan_ms": a["ms"], "choice": next((r["plan"].get(a["name"]) for r in rows if r["target"] == main_t), None)}
                 for a in lt_main]

    # EC vs plain on held-out photos, main plan
    main_row = next(r for r in rows if r["target"] == main_t)
    layers = {k: tuple(int(v) for v in c.split("/")) for k, c in main_row["plan"].items() if c != "dense"}
    skip = [k for k, c in main_row["plan"].items() if c == "dense"]
    ec_res = convert(str(onnx_path), None, calib=xc[:args.calib_count], layers=layers, skip=skip, ec=True, seed=0)
    plain_res = convert(str(onnx_path), str(tmp / "plain.qcnn"), layers=layers, skip=skip, ec=False, seed=0)
    xh = xe[:args.error_images]
    err_ec = common.layer_errors(import_onnx(str(onnx_path)), ec_res.model, xh)
    err_plain = common.layer_errors(import_onnx(str(onnx_path)), plain_res.model, xh)
    pm = {lut: common.topk(common.qcnn_logits(Model(tmp / "plain.qcnn", lut=lut), xe), ye) for lut in ("int8", "float")}
    main_row["plain"] = pm

    result = {"date": common.stamp(), "machine": common.machine(), "ort": {**ref_acc, "all500": all_acc, "ms": ms["ort"]},
              "qcnn_dense_ms": ms["qcnn-dense"], "dense": dense_rows, "dense_precision": dense_precision(), "conv_dense_ms": dense_ms, "conv_fastest_ms": fastest,
              "max_conv_speedup": max_speed, "plans": rows, "main": main_t, "per_layer": per_layer,
              "errors": {"ec": err_ec, "plain": err_plain}, "calib_count": args.calib_count, "plan_error": args.error,
              "error_images": len(xh), "scored": [{"name": lo.name, "candidates": {c.label: {"ms": c.ms, "error": c.error}
                                                                                     for c in lo.candidates}} for lo in scored],
              "seconds": round(time.time() - t_start)}
    common.save_json(result, out_dir / "squeezenet.json")
    (out_dir / "squeezenet.md").write_text(markdown(result))
    plot(result, out_dir / "squeezenet.png")
    print(markdown(result))
    print(f"done in {time.time() - t_start:.0f} s")


def asdict_target(t) -> dict:
    return {"what": t.what, "value": t.value, "cost": t.cost, **({"size": t.size} if t.size is not None else {})}


def _label(target: str) -> str:
    return target if "=" in target else "auto (qcnn-convert's default)" if target == "auto" else f"speed={target}"


def markdown(r) -> str:
    o = r["ort"]
    L = [f"### SqueezeNet 1.1 on real photos ({r['date']}; {r['machine']})", "",
         f"Held-out: 250 odd-position photos (sorted by name); calibration: {r['calib_count']} of the 250 even-position ones. "
         f"Plans score candidates by {r.get('plan_error', 'response')} error (qcnn-convert --plan-error). "
         f"onnxruntime fp32 {o['ms']:.2f} ms, top-1 {o['top1']:.1f}%, top-5 {o['top5']:.1f}% "
         f"(all 500: {o['all500']['top1']:.1f}% / {o['all500']['top5']:.1f}%). qcnn with every layer dense: {r['qcnn_dense_ms']:.2f} ms. "
         f"Conv layers alone (kernel timings): dense {r['conv_dense_ms']:.2f} ms, fastest candidate everywhere "
         f"{r['conv_fastest_ms']:.2f} ms = {r['max_conv_speedup']:.2f}x at best.", "",
         f"Columns: *int8* = int8 tables, dense convs in {r.get('dense_precision', 'fp32')} (the runtime's default on this CPU); "
         "*float* = float tables, fp32 dense convs.", "",
         "| plan (conv speed-up target) | FLOPs speed-up | compression | int8 ms | vs ORT | int8 top-1 / top-5 (drop) | float top-1 / top-5 (drop) |",
         "|---|---|---|---|---|---|---|"]
    if "dense" in r:
        i, f = r["dense"]["int8"], r["dense"]["fp32"]
        L.append(f"| all dense, no Q-CNN (int8 column: int8 dense convs; float: fp32) | 1.00x | 1.0x | {i['ms']:.2f} | "
                 f"{i['speedup_vs_ort']:.2f}x | {i['top1']:.1f} / {i['top5']:.1f} ({o['top1'] - i['top1']:+.1f} / "
                 f"{o['top5'] - i['top5']:+.1f}) | {f['top1']:.1f} / {f['top5']:.1f} ({o['top1'] - f['top1']:+.1f} / "
                 f"{o['top5'] - f['top5']:+.1f}) ({f['ms']:.2f} ms) |")
    for p in r["plans"]:
        i, f = p["int8"], p["float"]
        L.append(f"| {_label(p['target'])} ({p['plan_totals']['speedup_time']:.2f}x planned) | {p['plan_totals']['speedup_flops']:.2f}x | "
                 f"{p['plan_totals']['compression']:.1f}x | {i['ms']:.2f} | {i['speedup_vs_ort']:.2f}x | {i['top1']:.1f} / {i['top5']:.1f} "
                 f"({o['top1'] - i['top1']:+.1f} / {o['top5'] - i['top5']:+.1f}) | {f['top1']:.1f} / {f['top5']:.1f} "
                 f"({o['top1'] - f['top1']:+.1f} / {o['top5'] - f['top5']:+.1f}) |")
    L += ["", "(drop = ORT minus qcnn, in points; positive = worse.)", ""]
    main = next(p for p in r["plans"] if p["target"] == r["main"])
    if "plain" in main:
        pl = main["plain"]
        L.append(f"Plain Q-CNN (no EC) with the {_label(r['main'])} plan: int8 top-1/top-5 {pl['int8']['top1']:.1f} / "
                 f"{pl['int8']['top5']:.1f}, float {pl['float']['top1']:.1f} / {pl['float']['top5']:.1f}.")
        L.append("")
    L += [f"Per-layer time, {_label(r['main'])} plan vs all-dense (ms per step, int8, batch 1):", "",
          "| op | choice | dense ms | plan ms |", "|---|---|---|---|"]
    for x in r["per_layer"]:
        L.append(f"| {x['name']} | {x['choice'] or x['op']} | {x['dense_ms']:.3f} | {x['plan_ms']:.3f} |")
    L.append(f"| total | | {sum(x['dense_ms'] for x in r['per_layer']):.3f} | {sum(x['plan_ms'] for x in r['per_layer']):.3f} |")
    L += ["", f"Relative response error on {r['error_images']} held-out photos, {_label(r['main'])} plan "
              "(input from the quantized network, i.e. accumulated; 'single' = this layer alone on the original input):", "",
          "| layer | C/K | plain | EC | plain single | EC single |", "|---|---|---|---|---|---|"]
    ec, pl = r["errors"]["ec"], r["errors"]["plain"]
    for k in ec:
        if k == "_output":
            continue
        L.append(f"| {k} | {main['plan'][k]} | {pl[k]['error']:.4f} | {ec[k]['error']:.4f} | {pl[k]['single']:.4f} | {ec[k]['single']:.4f} |")
    L.append(f"| network output (logits) | | {pl['_output']['error']:.4f} | {ec['_output']['error']:.4f} | | |")
    return "\n".join(L) + "\n"


def plot(r, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    o = r["ort"]
    for lut, mk in (("int8", "o-"), ("float", "s--")):
        plans = sorted(r["plans"], key=lambda p: p[lut]["speedup_vs_ort"])  # a curve along the x axis
        xs = [p[lut]["speedup_vs_ort"] for p in plans]
        ax.plot(xs, [p[lut]["top1"] for p in plans], mk, label=f"top-1 ({lut} LUT)")
        ax.plot(xs, [p[lut]["top5"] for p in plans], mk, label=f"top-5 ({lut} LUT)")
    if "dense" in r:  # all dense with int8 convs: no product quantization, for reference
        d = r["dense"]["int8"]
        ax.plot([d["speedup_vs_ort"]] * 2, [d["top1"], d["top5"]], "k*", ms=9, label="all dense, int8 convs")
    ax.axhline(o["top1"], color="gray", lw=0.8)
    ax.axhline(o["top5"], color="gray", lw=0.8)
    ax.axvline(2.0, color="red", lw=0.8, ls=":")
    ax.set_xlabel("measured speed-up vs onnxruntime fp32 (batch 1, 1 thread)")
    ax.set_ylabel("accuracy on 250 held-out photos (%)")
    ax.set_title("SqueezeNet 1.1: Q-CNN (EC) plans; grey = fp32")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
