"""Helpers shared by the experiment scripts: data, split, evaluation, timing, response errors.

Shared data is found at <repo root>/../shared (or $QCNN_SHARED). Nothing here is part of the
library; the scripts only use the public converter/runtime APIs plus the converter's numpy executor
(qcnn.converter.forward) for per-layer response errors.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict

import numpy as np

from qcnn.converter import calibration, quantize
from qcnn.converter.forward import conv2d, gemm, last_uses, run_op
from qcnn.schema import ir

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def shared() -> Path:
    p = Path(os.environ.get("QCNN_SHARED", REPO.parent / "shared"))
    if not (p / "data").is_dir():
        raise SystemExit(f"shared data not found at {p} (set QCNN_SHARED)")
    return p


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:  # the CPU name alone ("AMD EPYC") does not say which kernels ran
        from qcnn.runtime import _core
        best, used = _core.isa_available()[-1], _core.isa_selected()
        isa = best if used == best else f"{used} (QCNN_ISA; the CPU has {best})"
    except ImportError:
        isa = "unknown ISA"
    return (f"{model}, ISA {isa}, {os.cpu_count()} cores (shared with other jobs), "
            f"taskset {sorted(os.sched_getaffinity(0))}")


def stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


# ---------------------------------------------------------------------------------------------- ImageNet photos
def imagenet_split(input_shape=(3, 224, 224), preset="imagenet"):
    """The 500 photos sorted by file name; even positions calibrate, odd positions evaluate.

    Returns (x_calib, y_calib, x_eval, y_eval) with labels from `<wnid>_<name>.JPEG`.
    """
    root = shared()
    files = calibration.list_images(str(root / "data" / "imagenet-samples"))
    wnid_to_idx = {}
    with open(root / "data" / "imagenet-classes.txt") as f:
        for line in f:
            parts = line.split(None, 2)
            if len(parts) >= 2:
                wnid_to_idx[parts[1]] = int(parts[0])
    prep = calibration.make_preprocessing(preset, input_shape)
    x, used = calibration.load_images(files, prep, input_shape, len(files))
    assert len(used) == len(files), "an image failed to load"
    y = np.array([wnid_to_idx[os.path.basename(f).split("_")[0]] for f in files])
    return x[0::2], y[0::2], x[1::2], y[1::2]


def topk(logits: np.ndarray, y: np.ndarray) -> Dict[str, float]:
    order = np.argsort(-logits.reshape(len(logits), -1), axis=1)
    return {"top1": float(100 * (order[:, 0] == y).mean()), "top5": float(100 * (order[:, :5] == y[:, None]).any(1).mean())}


def ort_session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_logits(sess, x: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


def qcnn_logits(model, x: np.ndarray, batch: int = 25) -> np.ndarray:
    return np.concatenate([model.run(x[i:i + batch]) for i in range(0, len(x), batch)])


def interleaved_ms(fns: Dict[str, Callable[[], object]], runs: int = 60, warmup: int = 5,
                   clock: str = "cpu") -> Dict[str, float]:
    """Median ms per engine, engines timed in turn (round robin) so machine load hits all alike.

    clock "cpu": CPU time of this thread (time.thread_time; every engine runs single-threaded on the
    calling thread), which on a machine shared with other jobs is not inflated by the time the process
    waits for a core, unlike "wall" (time.perf_counter)."""
    now = time.thread_time if clock == "cpu" else time.perf_counter
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            t0 = now()
            fn()
            times[k].append(now() - t0)
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


# ---------------------------------------------------------------------------------------------- response errors
def _response(op, x, W):
    """Pre-bias, pre-ReLU response of a Conv/Gemm with dense weights W."""
    if isinstance(op, ir.Conv):
        return conv2d(x, op, W, None, False)
    return gemm(x.reshape(len(x), -1), W, None, False)


def layer_errors(orig: ir.Model, quant: ir.Model, x: np.ndarray) -> Dict[str, Dict[str, float]]:
    """Per quantized layer, on inputs x, relative response errors sum||T - T_hat||^2 / sum||T||^2:
      'error'  : T_hat = W_hat S_quant (input from the quantized network: what the net really sees,
                 the accumulated error of everything before plus this layer's own),
      'single' : T_hat = W_hat S_orig  (this layer alone, input from the original network).
    orig and quant are ir.Models of the same graph (quant with QuantizedWeights)."""
    qops = {op.name: op for op in quant.operators}
    last = last_uses(orig)
    env_o = {orig.input_name: x}
    env_q = {orig.input_name: x}
    out = {}
    for i, op in enumerate(orig.operators):
        qop = qops[op.name]
        xo = [env_o[t] for t in op.inputs]
        xq = [env_q[t] for t in op.inputs]
        if isinstance(getattr(qop, "weights", None), ir.QuantizedWeights):
            W = op.weights
            What = quantize.reconstruct(qop)
            T = _response(op, xo[0], W).astype(np.float64)
            tt = float((T * T).sum())
            Tq = _response(op, xq[0], What)
            Ts = _response(op, xo[0], What)
            out[op.name] = {"error": float(((T - Tq) ** 2).sum() / tt), "single": float(((T - Ts) ** 2).sum() / tt)}
        out_o = run_op(op, xo)
        quantized = isinstance(getattr(qop, "weights", None), ir.QuantizedWeights)
        # the two networks share tensors until the first quantized layer
        env_o[op.outputs[0]] = out_o
        env_q[op.outputs[0]] = run_op(qop, xq) if quantized or any(a is not b for a, b in zip(xo, xq)) else out_o
        for t in op.inputs:
            if last.get(t, -1) <= i:
                env_o.pop(t, None)
                env_q.pop(t, None)
    out["_output"] = {"error": float(((env_o[orig.outputs[0]] - env_q[orig.outputs[0]]) ** 2).sum()
                                     / (env_o[orig.outputs[0]] ** 2).sum())}
    return out


def save_json(obj, path):
    Path(path).write_text(json.dumps(obj, indent=1, sort_keys=True))


def qcnn_step_ms(model, image_chw: np.ndarray, runs: int = 100) -> list:
    """Per-step thread CPU time (ms, median) of a qcnn.runtime.Model on one image, in plan order.

    Uses the runtime's internals (Model._buffers() workspace with its "steps" list, Model._run_one):
    the plan is run one step at a time, buffers persisting so each step reads what the previous one
    wrote; the input copy, timed with an empty step list, is subtracted."""
    ws = model._buffers()
    entries = list(ws["steps"])
    image = np.ascontiguousarray(image_chw, dtype=np.float32)

    def timed():
        t0 = time.thread_time()
        model._run_one(image, ws)
        return time.thread_time() - t0

    per = [[] for _ in entries]
    base = []
    try:
        for r in range(runs + 1):
            ws["steps"] = []
            base.append(timed())
            for i, e in enumerate(entries):
                ws["steps"] = [e]
                per[i].append(timed())
    finally:
        ws["steps"] = entries
    b = float(np.median(base[1:]))
    return [{"name": e[0].op.name, "op": e[0].kind, "ms": max(0.0, 1e3 * (float(np.median(t[1:])) - b))}
            for e, t in zip(entries, per)]
