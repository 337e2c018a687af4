"""qcnn-bench: latency, size and memory of qcnn against onnxruntime (fp32 and int8), per model and per layer.

    qcnn-bench [--models alexnet,vgg16,squeezenet=PATH,...] [--threads 1] [--runs 20] [--out DIR] [--calib DIR]

For every model: build it (qcnn.models) or take the given ONNX file; convert it once with error
correction (cached in OUT/cache/ under the source's SHA-256 and the conversion settings); make an
onnxruntime int8 dynamic-quantization copy (quantize_dynamic, cached the same way); then time
onnxruntime fp32, onnxruntime int8 and qcnn in one process, round-robin run by run (fp32, int8,
qcnn, fp32, ...) after a warm-up, batch 1. qcnn always runs on one thread; --threads sets
onnxruntime's intra-op threads. Peak RSS of each engine comes from a separate process per engine.

Per-layer times: onnxruntime's own profiler (SessionOptions.enable_profiling; per-node kernel times,
median over runs) and, for qcnn, each step of the model's execution plan timed on its own
(`qcnn_layer_times`). Writes OUT/bench.md, OUT/bench.json and OUT/bench.png (matplotlib optional).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from qcnn.tools import common

ENGINES = ("onnx_fp32", "onnx_int8", "qcnn")


# ---------------------------------------------------------------------------------------------- models
def parse_models(text: str) -> List[Tuple[str, Optional[str]]]:
    """'alexnet,squeezenet=path.onnx,x.onnx' -> [('alexnet', None), ('squeezenet', 'path.onnx'), ('x', 'x.onnx')]."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if "=" in item:
            name, path = item.split("=", 1)
            out.append((name.strip(), path.strip()))
        elif item.endswith(".onnx"):
            out.append((Path(item).stem, item))
        else:
            out.append((item, None))
    if not out:
        raise ValueError("--models is empty")
    return out


def source_onnx(name: str, path: Optional[str], out_dir: Path, log) -> Path:
    """The ONNX file to benchmark: the given path, or qcnn.models' `name` built into OUT/models/."""
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model {name}: no such file {path}")
        return Path(path)
    from qcnn.models.build import MODEL_NAMES, write_model

    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(MODEL_NAMES)} or NAME=PATH.onnx")
    dst = out_dir / "models" / f"{name}.onnx"
    if not dst.is_file():  # the builders are deterministic (seed 0), so a built file can be reused
        dst.parent.mkdir(parents=True, exist_ok=True)
        log(f"{name}: building with qcnn.models")
        write_model(name, str(dst))
    return dst


def onnx_input_shape(path) -> Tuple[int, ...]:
    """Input shape without batch, from onnxruntime's view of the graph."""
    sess = common.ort_session(str(path))
    dims = sess.get_inputs()[0].shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise ValueError(f"{path}: input has non-static dimensions {dims}")
    return tuple(dims)


# ---------------------------------------------------------------------------------------------- calibration
def calibration_inputs(shape: Sequence[int], calib: Optional[str], count: int, out_dir: Path, log):
    """(preprocessed calibration array, evaluation array, preset kwargs for the converter, description).

    Images: the first `count` files of the folder calibrate, the next few are timing inputs.
    Without a folder, synthetic smooth-noise images stand in (with a warning). Models with one
    channel or a vector input use MNIST from ../shared (x / 255) when available.
    """
    from qcnn.converter.calibration import make_preprocessing

    n_eval = 8
    if len(shape) != 3 or shape[0] != 3:
        npz = calib if calib and calib.endswith(".npz") else None
        sd = common.shared_dir()
        if npz is None and sd is not None and (sd / "data" / "mnist.npz").is_file():
            npz = str(sd / "data" / "mnist.npz")
        kwargs = {"preprocess": None, "scale": 1.0 / 255.0}
        if npz is None:
            log("WARNING: no .npz calibration data found: using uniform random inputs")
            rng = np.random.default_rng(0)
            x = rng.uniform(0, 1, (count + n_eval,) + tuple(shape)).astype(np.float32)
            return x[:count], x[count:], kwargs, f"{count} uniform random inputs (no data found)"
        x, _ = common.load_npz_inputs(npz, shape, count + n_eval)
        return x[:count], x[count:], kwargs, f"first {count} samples of {npz} (/255)"
    if calib is None:
        sd = common.shared_dir()
        if sd is not None and (sd / "data" / "imagenet-samples").is_dir():
            calib = str(sd / "data" / "imagenet-samples")
    if calib is not None:
        paths = common.list_images(calib)
        desc = f"first {min(count, len(paths))} images of {calib}"
    else:
        log("WARNING: no calibration images (../shared/data/imagenet-samples not found, no --calib): using "
            "synthetic smooth-noise images; accuracy-related numbers are not meaningful")
        paths = common.write_synthetic_images(out_dir / "synthetic-images", count + n_eval)
        desc = f"{count} synthetic smooth-noise images"
    if len(paths) <= count:
        log(f"note: only {len(paths)} images; timing inputs overlap the calibration set")
    prep = make_preprocessing("imagenet", shape)
    cal = common.preprocess_images(paths[:count], prep, shape)
    ev_paths = paths[count : count + n_eval] or paths[:n_eval]
    ev = common.preprocess_images(ev_paths, prep, shape)
    return cal, ev, {"preprocess": "imagenet"}, desc


def conversion_settings(args) -> dict:
    settings = {"conv": args.conv, "fc": args.fc, "last_fc": args.last_fc, "ec": not args.no_ec,
                "calib_count": args.calib_count}
    if getattr(args, "plan", None):  # only when given, so earlier cache keys stay valid
        settings["plan"] = args.plan
    if getattr(args, "skip", None):
        settings["skip"] = sorted(n.strip() for n in args.skip.split(",") if n.strip())
    if getattr(args, "dense_where_faster", False):
        settings["dense_where_faster"] = True
    return settings


def _ck(text: str) -> Tuple[int, int]:
    c, k = text.split("/")
    return int(c), int(k)


def convert_cached(name: str, src: Path, cal: np.ndarray, kwargs: dict, settings: dict, cache: Path, log,
                   cpu: Optional[dict] = None) -> Tuple[Path, float]:
    """Convert `src` once per (source sha256, settings, calibration data); returns (path, seconds or 0 if cached).

    `cpu`, if given, receives {"seconds": CPU seconds of this process during the conversion}: on a
    shared machine wall time says little about what the conversion costs.
    """
    from qcnn.converter import convert

    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode() + json.dumps(kwargs, sort_keys=True).encode()
                         + cal.tobytes()).hexdigest()[:12]
    dst = cache / f"{name}-{common.sha256_file(src)[:12]}-{key}.qcnn"
    if dst.is_file():
        log(f"{name}: using cached conversion {dst}")
        return dst, 0.0
    cache.mkdir(parents=True, exist_ok=True)
    log(f"{name}: converting ({'EC' if settings['ec'] else 'k-means'}, conv {settings['conv']}, fc {settings['fc']}, "
        f"{cal.shape[0]} calibration inputs)")
    t0, c0 = time.perf_counter(), time.process_time()
    convert(str(src), str(dst), calib=cal, calib_count=cal.shape[0], ec=settings["ec"], conv=_ck(settings["conv"]),
            fc=_ck(settings["fc"]), last_fc=_ck(settings["last_fc"]), plan=settings.get("plan"),
            skip=settings.get("skip", ()), dense_where_faster=settings.get("dense_where_faster", False),
            log=lambda m: log(f"  {m}"), **kwargs)
    if cpu is not None:
        cpu["seconds"] = time.process_time() - c0
    log(f"{name}: converted in {time.perf_counter() - t0:.0f} s ({time.process_time() - c0:.0f} s CPU)")
    return dst, time.perf_counter() - t0


def int8_cached(name: str, src: Path, cache: Path, log) -> Path:
    """onnxruntime dynamic int8 quantization (weights int8, activations quantized at run time), cached."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst = cache / f"{name}-{common.sha256_file(src)[:12]}-int8dyn.onnx"
    if dst.is_file():
        return dst
    cache.mkdir(parents=True, exist_ok=True)
    log(f"{name}: onnxruntime quantize_dynamic (int8 weights)")
    tmp = dst.with_suffix(".tmp.onnx")
    quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8)
    os.replace(tmp, dst)
    return dst


# ---------------------------------------------------------------------------------------------- per layer
def ort_layer_times(path, x: np.ndarray, runs: int, threads: int) -> List[dict]:
    """Per-node kernel time (ms, median over runs) from onnxruntime's profiler, in execution order."""
    with tempfile.TemporaryDirectory(prefix="qcnn-ortprof-") as tmp:
        sess = common.ort_session(str(path), threads=threads, profile_prefix=os.path.join(tmp, "prof"))
        run = common.ort_runner(sess)
        for i in range(runs):
            run(x[i % x.shape[0] : i % x.shape[0] + 1])
        prof = sess.end_profiling()
        with open(prof) as f:
            events = json.load(f)
    return aggregate_ort_profile(events)


def aggregate_ort_profile(events: List[dict]) -> List[dict]:
    """onnxruntime profile events -> [{name, op, ms}] per node, median duration, first-seen order."""
    per: Dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        node = e["name"][: -len("_kernel_time")]
        d = per.setdefault(node, {"name": node, "op": e.get("args", {}).get("op_name", "?"), "durs": []})
        d["durs"].append(float(e.get("dur", 0)) / 1000.0)  # microseconds -> ms
    return [{"name": d["name"], "op": d["op"], "ms": common.median(d["durs"])} for d in per.values()]


def qcnn_layer_times(model, x: np.ndarray, runs: int) -> List[dict]:
    """Per-operator time (ms, median over runs) of a qcnn.runtime.Model, in plan order."""
    return model.profile(np.ascontiguousarray(x[:1], dtype=np.float32), runs)


_OP_GROUPS = {
    "Conv": "conv", "FusedConv": "conv", "ConvInteger": "conv", "QLinearConv": "conv",
    "Gemm": "fully connected", "FusedGemm": "fully connected", "MatMul": "fully connected",
    "MatMulInteger": "fully connected", "DynamicQuantizeMatMul": "fully connected",
    "LRN": "LRN", "MaxPool": "pooling", "AveragePool": "pooling", "GlobalAveragePool": "pooling",
    "Relu": "ReLU", "Softmax": "softmax", "Concat": "concat", "Add": "add",
    "Flatten": "layout/reshape", "Reshape": "layout/reshape", "Transpose": "layout/reshape",
    "ReorderInput": "layout/reshape", "ReorderOutput": "layout/reshape",
}


def op_group_times(layers: List[dict]) -> Dict[str, float]:
    """Sum of per-layer ms by kind of operation (conv, fully connected, LRN, ...), so engines can be compared."""
    out: Dict[str, float] = {}
    for l in layers:
        g = _OP_GROUPS.get(l["op"], "other")
        out[g] = out.get(g, 0.0) + l["ms"]
    return out


# ---------------------------------------------------------------------------------------------- timing
def time_engines(runners: Dict[str, callable], x: np.ndarray, runs: int, warmup: int = 3) -> Dict[str, dict]:
    """Round-robin timing of every engine on the same inputs (cycled), batch 1."""
    counter = {"i": 0}

    def feed(fn):
        def call():
            i = counter["i"] % x.shape[0]
            fn(x[i : i + 1])
        return call

    fns = {k: feed(fn) for k, fn in runners.items()}
    # advance the input after each full round so all engines see the same image in a round
    last = list(fns)[-1]
    inner = fns[last]

    def last_then_advance():
        inner()
        counter["i"] += 1

    fns[last] = last_then_advance
    t = common.interleaved_times(fns, runs, warmup)
    return {k: summarize(v) for k, v in t.items()}


def summarize(seconds: Sequence[float]) -> dict:
    ms = [1e3 * s for s in seconds]
    return {"median_ms": common.median(ms), "min_ms": float(min(ms)), "runs": len(ms)}


# ---------------------------------------------------------------------------------------------- one model
def bench_model(name: str, path: Optional[str], args, out_dir: Path, log) -> dict:
    from qcnn.runtime import Model
    from qcnn.tools import inspect as qinspect

    src = source_onnx(name, path, out_dir, log)
    shape = onnx_input_shape(src)
    cal, ev, kwargs, cal_desc = calibration_inputs(shape, args.calib, args.calib_count, out_dir, log)
    settings = conversion_settings(args)
    cache = out_dir / "cache"
    cpu: dict = {}
    qpath, convert_s = convert_cached(name, src, cal, kwargs, settings, cache, log, cpu)
    i8path = int8_cached(name, src, cache, log)
    files = {"onnx_fp32": src, "onnx_int8": i8path, "qcnn": qpath}
    res: dict = {"model": name, "source": str(src), "files": {k: str(v) for k, v in files.items()},
                 "calibration": cal_desc, "convert_seconds": round(convert_s, 1),
                 "convert_cpu_seconds": round(cpu.get("seconds", 0.0), 1),
                 "bytes": {k: common.file_size(v) for k, v in files.items()}}
    info = qinspect.describe(qpath)
    res["theoretical_speedup"] = info["totals"]["speedup"]
    res["weights_compression"] = info["totals"]["compression"]

    log(f"{name}: timing {args.runs} runs per engine, round-robin")
    model = Model(qpath, lut=args.lut, isa=args.isa, dense=args.dense)
    res["qcnn_dense_precision"] = model.dense  # what its dense layers ran in (int8, fp32, or int8+fp32 when chosen per layer)
    res["qcnn_int8_kernels"] = sorted({d["int8_kernel"] for d in model.layers if "int8_kernel" in d})
    res["qcnn_winograd_layers"] = [d["name"] for d in model.layers if d.get("winograd")]
    try:
        runners = {
            "onnx_fp32": common.ort_runner(common.ort_session(str(src), threads=args.threads)),
            "onnx_int8": common.ort_runner(common.ort_session(str(i8path), threads=args.threads)),
            "qcnn": common.qcnn_runner(model),
        }
        res["latency"] = time_engines(runners, ev, args.runs)
        del runners
        if not args.no_profile:
            log(f"{name}: per-layer profiles")
            prof_runs = max(5, min(args.runs, 20))
            try:
                res["layers"] = {"qcnn": qcnn_layer_times(model, ev, prof_runs),
                                 "onnx_fp32": ort_layer_times(src, ev, prof_runs, args.threads)}
            except Exception as exc:  # per-layer numbers are a bonus: keep the model's other results
                log(f"{name}: per-layer profile failed: {exc.__class__.__name__}: {exc}")
                res["layers_error"] = f"{exc.__class__.__name__}: {exc}"
        res["qcnn_isa"] = model.isa
    finally:
        model.close()
    lat = res["latency"]
    res["speedup_vs_fp32"] = lat["onnx_fp32"]["median_ms"] / lat["qcnn"]["median_ms"]
    res["speedup_vs_int8"] = lat["onnx_int8"]["median_ms"] / lat["qcnn"]["median_ms"]
    res["speedup_vs_fp32_min"] = lat["onnx_fp32"]["min_ms"] / lat["qcnn"]["min_ms"]
    res["speedup_vs_int8_min"] = lat["onnx_int8"]["min_ms"] / lat["qcnn"]["min_ms"]
    res["load_average"] = round(os.getloadavg()[0], 2)
    res["compression_vs_fp32"] = res["bytes"]["onnx_fp32"] / res["bytes"]["qcnn"]
    res["compression_vs_int8"] = res["bytes"]["onnx_int8"] / res["bytes"]["qcnn"]
    if not args.no_rss:
        log(f"{name}: peak RSS, one process per engine")
        few = ev[:3]
        res["rss_mb"] = {k: common.measure_rss("qcnn" if k == "qcnn" else "onnx", v, few, lut=args.lut,
                                               isa=args.isa, threads=args.threads, dense=args.dense)["rss_mb"]
                         for k, v in files.items()}
    return res


# ---------------------------------------------------------------------------------------------- output
def _table(head: List[str], rows: List[List[str]]) -> List[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _precision_text(dense: str) -> str:
    """Model.dense in words: "int8+fp32" means the runtime chose per layer (AVX2 CPUs)."""
    return "int8 or fp32, chosen per layer" if "+" in dense else dense


def _kernels_text(report: dict) -> str:
    kernels = sorted({k for m in report["models"] for k in m.get("qcnn_int8_kernels", [])})
    wino = [f"{m['model']}: {', '.join(m['qcnn_winograd_layers'])}" for m in report["models"]
            if m.get("qcnn_winograd_layers")]
    text = f" (int8 kernel: {', '.join(kernels)})" if kernels else ""
    if wino:
        text += f"; as Winograd F(4x4, 3x3) in 16-bit integers: {'; '.join(wino)}"
    return text


def format_markdown(report: dict) -> str:
    hb = common.human_bytes
    s = report["settings"]
    out = ["# qcnn benchmark", "", common.machine_line(report["machine"]), "",
           f"Batch 1; onnxruntime with {s['threads']} intra-op thread(s), qcnn on 1 thread; {s['runs']} runs per "
           f"engine, round-robin after warm-up; qcnn LUT {s['lut']}"
           f". Conversion: "
           f"{'error-corrected (EC)' if s['ec'] else 'k-means'} product quantization, conv C's/K {s['conv']}, "
           f"fc {s['fc']}, last fc {s['last_fc']}"
           f"{', plan ' + s['plan'] if s.get('plan') else ''}"
           f"{', kept dense: ' + ', '.join(s['skip']) if s.get('skip') else ''}"
           f"{', layers faster dense on this CPU kept dense' if s.get('dense_where_faster') else ''}. Layers kept dense ran in "
           f"{', '.join(sorted({_precision_text(m.get('qcnn_dense_precision', 'fp32')) for m in report['models'] if 'error' not in m})) or 'fp32'}"
           f"{_kernels_text(report)}.", ""]
    rows = []
    for m in report["models"]:
        if "error" in m:
            rows.append([m["model"], f"error: {m['error']}"] + [""] * 8)
            continue
        lat = m["latency"]
        rss = m.get("rss_mb", {})
        rows.append([
            m["model"],
            *(f"{lat[e]['median_ms']:.2f} / {lat[e]['min_ms']:.2f}" for e in ENGINES),
            f"{m['speedup_vs_fp32']:.2f}x / {m['speedup_vs_int8']:.2f}x "
            f"({m['speedup_vs_fp32_min']:.2f}x / {m['speedup_vs_int8_min']:.2f}x)",
            f"{m['theoretical_speedup']:.2f}x",
            " / ".join(hb(m["bytes"][e]) for e in ENGINES),
            f"{m['compression_vs_fp32']:.1f}x / {m['compression_vs_int8']:.1f}x",
            " / ".join(f"{rss[e]:.0f}" for e in ENGINES) if rss else "n/a",
        ])
    out += _table(["model", "ort fp32 ms (median / min)", "ort int8 ms", "qcnn ms", "qcnn speed-up vs fp32 / int8, median (min)",
                   "theoretical (paper FLOPs)", "size fp32 / int8 / qcnn", "compression vs fp32 / int8",
                   "peak RSS MB fp32 / int8 / qcnn"], rows)
    for m in report["models"]:
        if "layers" not in m:
            continue
        out += ["", f"## {m['model']}: per-layer times (ms, median)", "",
                f"Calibration: {m['calibration']}; conversion took {m['convert_seconds']} s wall, "
                f"{m.get('convert_cpu_seconds', 0)} s CPU (0 = cached). "
                f"Load average after timing: {m.get('load_average', '?')} (on a busy machine medians suffer "
                f"more than minimums).", ""]
        g_q, g_o = op_group_times(m["layers"]["qcnn"]), op_group_times(m["layers"]["onnx_fp32"])
        kinds = sorted(set(g_q) | set(g_o), key=lambda k: -(g_o.get(k, 0) + g_q.get(k, 0)))
        out += ["By kind of operation (sum of the per-layer medians below):", ""]
        out += _table(["operation", "onnxruntime fp32 ms", "qcnn ms", "ratio"],
                      [[k, f"{g_o.get(k, 0):.3f}", f"{g_q.get(k, 0):.3f}",
                        f"{g_o[k] / g_q[k]:.2f}x" if g_o.get(k) and g_q.get(k) else "-"] for k in kinds])
        out.append("")
        for eng, title in (("qcnn", "qcnn (each plan step timed alone)"),
                           ("onnx_fp32", "onnxruntime fp32 (its profiler, kernel time per node)")):
            layers = m["layers"][eng]
            total = sum(l["ms"] for l in layers) or 1.0
            out += [f"{title}: sum {total:.2f} ms", ""]
            out += _table(["layer", "op", "ms", "%"],
                          [[l["name"], l["op"], f"{l['ms']:.3f}", f"{100 * l['ms'] / total:.1f}"] for l in layers])
            out.append("")
    if report.get("seconds"):
        out += ["", f"Whole run: {report['seconds']['wall']} s wall, {report['seconds']['cpu_main_process']} s CPU "
                    f"in the main process (RSS subprocesses not included)."]
    if report.get("plot_note"):
        out += ["", report["plot_note"]]
    return "\n".join(out) + "\n"


def write_plot(report: dict, path: Path) -> Optional[str]:
    """bench.png: speed-up and compression per model. Returns a note when it could not be drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "bench.png not written: matplotlib is not installed (pip install 'qcnn[bench]')."
    models = [m for m in report["models"] if "latency" in m]
    if not models:
        return "bench.png not written: no model was benchmarked."
    names = [m["model"] for m in models]
    xs = np.arange(len(names))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(4 + 2.2 * len(names), 4.2))
    a1.bar(xs - 0.2, [m["speedup_vs_fp32"] for m in models], 0.4, label="vs onnxruntime fp32")
    a1.bar(xs + 0.2, [m["speedup_vs_int8"] for m in models], 0.4, label="vs onnxruntime int8")
    a1.axhline(1.0, color="gray", lw=0.8)
    a1.set_xticks(xs, names)
    a1.set_ylabel("qcnn speed-up (median latency ratio)")
    a1.legend(fontsize=8)
    a2.bar(xs - 0.2, [m["compression_vs_fp32"] for m in models], 0.4, label="vs ONNX fp32")
    a2.bar(xs + 0.2, [m["compression_vs_int8"] for m in models], 0.4, label="vs ONNX int8")
    a2.set_xticks(xs, names)
    a2.set_ylabel("compression (file size ratio)")
    a2.legend(fontsize=8)
    mi = report["machine"]
    fig.suptitle(f"qcnn, batch 1, {report['settings']['threads']} thread(s) - {mi['cpu']}, {mi['cores']} cores, "
                 f"qcnn ISA {mi['qcnn_isa']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="qcnn-bench", description="Benchmark qcnn against onnxruntime fp32 and int8.")
    p.add_argument("--models", default="alexnet",
                   help="comma-separated: qcnn.models names (alexnet, vgg16, ...), NAME=PATH.onnx or PATH.onnx")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (qcnn uses 1)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per engine")
    p.add_argument("--out", default="qcnn-bench-out", help="output folder (also holds the conversion cache)")
    p.add_argument("--calib", help="calibration image folder (default ../shared/data/imagenet-samples) or .npz")
    p.add_argument("--calib-count", type=int, default=100, help="calibration images (default 100)")
    p.add_argument("--conv", default="8/128", help="conv C's/K (default 8/128, the paper's AlexNet setting)")
    p.add_argument("--fc", default="4/32", help="fully-connected C's/K (default 4/32)")
    p.add_argument("--last-fc", default="1/16", help="last fully-connected layer C's/K (default 1/16)")
    p.add_argument("--no-ec", action="store_true", help="plain k-means instead of error correction")
    p.add_argument("--plan", metavar="auto|error=E|speed=S|size=X|ms=T",
                   help="per-layer plan as qcnn-convert --plan (dense or C's/K per layer, timed on this CPU)")
    p.add_argument("--skip", metavar="NAME,...",
                   help="comma-separated Conv/Gemm layers to keep dense (as qcnn-convert --skip)")
    p.add_argument("--dense-where-faster", action="store_true",
                   help="keep dense the layers this CPU runs faster dense than as tables (as qcnn-convert)")
    p.add_argument("--lut", choices=["int8", "float"], default="int8")
    p.add_argument("--isa", default="auto")
    p.add_argument("--dense", choices=["auto", "int8", "fp32"], default="auto",
                   help="precision of the convs the file keeps dense (auto: int8 with int8 tables where it is faster: every conv on AVX-512 VNNI, convs with many MACs per input on AVX2)")
    p.add_argument("--no-rss", action="store_true", help="skip peak-memory subprocesses")
    p.add_argument("--no-profile", action="store_true", help="skip per-layer profiles")
    args = p.parse_args(argv)
    if args.runs < 1 or args.threads < 1 or args.calib_count < 1:
        p.error("--runs, --threads and --calib-count must be >= 1")
    for flag in ("conv", "fc", "last_fc"):
        try:
            _ck(getattr(args, flag))
        except ValueError:
            p.error(f"--{flag.replace('_', '-')} must look like C/K, e.g. 8/128")
    try:
        models = parse_models(args.models)
    except ValueError as exc:
        p.error(str(exc))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    machine = common.machine_info(args.isa)
    log(common.machine_line(machine))
    report = {"machine": machine, "settings": {**conversion_settings(args), "threads": args.threads,
                                               "runs": args.runs, "lut": args.lut, "isa": args.isa,
                                               "dense": args.dense},
              "models": []}
    status = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for name, path in models:
        try:
            report["models"].append(bench_model(name, path, args, out_dir, log))
        except Exception as exc:  # one failing model should not lose the others' numbers
            log(f"{name}: FAILED: {exc.__class__.__name__}: {exc}")
            report["models"].append({"model": name, "error": f"{exc.__class__.__name__}: {exc}"})
            status = 1
    report["seconds"] = {"wall": round(time.perf_counter() - t0, 1), "cpu_main_process": round(time.process_time() - c0, 1)}
    report["plot_note"] = write_plot(report, out_dir / "bench.png")
    with open(out_dir / "bench.json", "w") as f:
        json.dump(report, f, indent=2, default=str)
        f.write("\n")
    md = format_markdown(report)
    (out_dir / "bench.md").write_text(md)
    print(md)
    log(f"wrote {out_dir / 'bench.md'}, {out_dir / 'bench.json'}" +
        ("" if report["plot_note"] else f", {out_dir / 'bench.png'}"))
    return status


if __name__ == "__main__":
    sys.exit(main())
