"""Conversion benchmark (not a test): time, peak memory, size, EC vs plain on held-out images.

    python -m qcnn.converter.benchmark alexnet --calib-count 200 --heldout 100
    python -m qcnn.converter.benchmark squeezenet1.1

Converts the model twice through the real CLI in a subprocess (EC, then --no-ec), measuring wall
time and peak RSS of the child, then runs the original and both quantized networks on held-out
images (disjoint from the calibration images) and prints each quantized layer's relative response
error ||W S_orig - W_hat S_quant||^2 / ||W S_orig||^2 (bias omitted) for EC and for plain k-means.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from qcnn.schema import ir

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")


def heldout_errors(float_model: ir.Model, q_model: ir.Model, x: np.ndarray) -> dict:
    """Per quantized layer relative response error on `x`, plus network output agreement."""
    from .convert import network_agreement
    from .forward import last_uses, run_op

    qops = {op.name: op for op in q_model.operators}
    last = last_uses(float_model)
    orig, quant = {float_model.input_name: x}, {float_model.input_name: x}
    out = {}
    for i, op in enumerate(float_model.operators):
        qop = qops[op.name]
        xs_o = [orig[t] for t in op.inputs]
        xs_q = [quant[t] for t in op.inputs]
        if isinstance(qop, (ir.Conv, ir.Gemm)) and qop.quantized:
            bare_o = copy.copy(op)
            bare_o.bias, bare_o.relu = None, False
            bare_q = copy.copy(qop)
            bare_q.bias, bare_q.relu = None, False
            T = run_op(bare_o, xs_o).astype(np.float64)
            Th = run_op(bare_q, xs_q).astype(np.float64)
            out[op.name] = float(((T - Th) ** 2).sum() / max((T ** 2).sum(), 1e-300))
        orig[op.outputs[0]] = run_op(op, xs_o)
        quant[op.outputs[0]] = run_op(qop, xs_q)
        for t in op.inputs:
            if last.get(t, -1) <= i:
                orig.pop(t, None)
                quant.pop(t, None)
    o = float_model.outputs[0]
    return {"layers": out, "network": network_agreement(orig[o], quant[o])}


def run_cli(args, log_path):
    """Run qcnn-convert in a child; returns (wall seconds, CPU seconds, peak RSS MB of the children so far)."""
    t = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "w") as log:
        rc = subprocess.call([sys.executable, "-c", "import sys; from qcnn.converter.cli import main; sys.exit(main())"]
                             + args, stdout=log, stderr=subprocess.STDOUT)
    dt = time.time() - t
    if rc:
        sys.exit(f"conversion failed ({rc}), see {log_path}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return dt, cpu, after.ru_maxrss / 1024


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="alexnet | vgg19 | zfnet512 (light zoo graphs, seeded He weights) | squeezenet1.1 | PATH.onnx")
    ap.add_argument("--calib-count", type=int, default=200)
    ap.add_argument("--heldout", type=int, default=100)
    ap.add_argument("--preprocess", default=None)
    ap.add_argument("--workdir", default="/tmp/qcnn-bench")
    ap.add_argument("--extra", default="", help="extra qcnn-convert options")
    ap.add_argument("--skip-plain", action="store_true")
    a = ap.parse_args(argv)
    from . import calibration
    from .onnx_import import import_onnx
    from .zoo import load_light

    os.makedirs(a.workdir, exist_ok=True)
    images = os.path.join(SHARED, "data", "imagenet-samples")
    if a.model in ("alexnet", "vgg19", "zfnet512", "vgg16"):
        import onnx

        src = os.path.join(a.workdir, f"{a.model}.onnx")
        if not os.path.exists(src):
            onnx.save(load_light("bvlc_alexnet" if a.model == "alexnet" else a.model, seed=0), src)
        prep = a.preprocess or "caffe"
    elif a.model == "squeezenet1.1":
        src = os.path.join(SHARED, "models", "squeezenet1.1.onnx")
        prep = a.preprocess or "imagenet"
    else:
        src, prep = a.model, a.preprocess or "imagenet"
    name = os.path.splitext(os.path.basename(src))[0]
    common = [src, "--calib", images, "--calib-count", str(a.calib_count), "--preprocess", prep, "--seed", "0",
              "-q"] + a.extra.split()
    ec_out = os.path.join(a.workdir, f"{name}.ec.qcnn")
    pl_out = os.path.join(a.workdir, f"{name}.plain.qcnn")
    t_ec, cpu_ec, rss_ec = run_cli(common + ["-o", ec_out, "--json", ec_out + ".json", "--report-plain"], ec_out + ".log")
    print(f"{name}: EC conversion {t_ec:.1f} s wall ({cpu_ec:.1f} s CPU, load {os.getloadavg()[0]:.1f}), peak RSS {rss_ec:.0f} MB, file {os.path.getsize(ec_out)} bytes, "
          f"ONNX {os.path.getsize(src)} bytes -> {os.path.getsize(src) / os.path.getsize(ec_out):.1f}x smaller")
    rep = json.load(open(ec_out + ".json"))
    print(f"  theoretical speed-up {rep['total']['speedup']:.2f}x, weight compression {rep['total']['compression']:.1f}x")
    if not a.skip_plain:
        t_pl, cpu_pl, _ = run_cli(common + ["-o", pl_out, "--no-ec"], pl_out + ".log")
        print(f"  plain conversion {t_pl:.1f} s wall ({cpu_pl:.1f} s CPU)")
    from qcnn.schema.reader import read_model

    fm = import_onnx(src)
    p = calibration.make_preprocessing(prep, fm.input_shape)
    x, desc = calibration.load_calibration(images, fm.input_shape, p, a.heldout, seed=0, offset=a.calib_count)
    print(f"  held-out: {desc} (disjoint from the calibration images)")
    ev_ec = heldout_errors(fm, read_model(ec_out), x)
    ev_pl = heldout_errors(fm, read_model(pl_out), x) if not a.skip_plain else None
    calib_err = {r["name"]: r for r in rep["layers"]}
    print(f"  {'layer':<14} {'C/K':>7} {'EC calib':>9} {'plain cal':>9} {'EC held':>9} {'plain held':>10}")
    for lname, e in ev_ec["layers"].items():
        r = calib_err[lname]
        pl = ev_pl["layers"][lname] if ev_pl else float("nan")
        print(f"  {lname:<14} {r['subvec']:>3}/{r['ncode']:<3} {r.get('error', float('nan')):>9.4f} "
              f"{r.get('plain_error', float('nan')):>9.4f} {e:>9.4f} {pl:>10.4f}")
    print(f"  network on held-out, EC: {ev_ec['network']}")
    if ev_pl:
        print(f"  network on held-out, plain: {ev_pl['network']}")


if __name__ == "__main__":
    main()
