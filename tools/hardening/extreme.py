"""Random VALID models with edge-case parameters, run by the runtime and checked against numpy.

    python -m qcnn.tools.hardening.extreme --trials 2000 --seed 1 --json extreme.json

The mutation harness mostly produces files the reader refuses; this one produces files it must
accept and the kernels must compute correctly: kernels larger than the input (with padding),
pads larger than the kernel, strides up to 5, 1x1 images, depthwise and grouped convs, C's larger
than the channels of a group (one zero-padded subspace), K in {2, 3, 5, 16, 17, 255, 256}, pools
with ceil_mode and maximal pads, even LRN sizes, Concat/Add of a tensor with itself, odd channel
counts (SIMD tails). Each model runs in a worker process (crash/hang counted, as in mutate.py) with
lut="float" on every available ISA and is compared with converter.forward.run_model (numpy);
lut="int8" must run and give finite outputs.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter

import numpy as np

from qcnn.schema import ir, shapes
from qcnn.tools.hardening.mutate import BAD, DEFAULT_MEM_LIMIT, Supervisor

_KS = [2, 3, 5, 16, 17, 255, 256]


def _quantized(rng, nprng, groups, kh, kw, cin_g, cout_g):
    subvec = rng.choice([1, 2, 3, 4, 8, cin_g, cin_g + 1, cin_g + 3])
    nsub = -(-cin_g // subvec)
    ncode = rng.choice(_KS)
    codebooks = nprng.standard_normal((groups, nsub, ncode, subvec)).astype(np.float32)
    indices = nprng.integers(0, ncode, (groups, kh, kw, nsub, cout_g)).astype(np.uint8)
    return ir.QuantizedWeights(subvec, nsub, ncode, codebooks, indices)


def _conv(rng, nprng, name, src, shape):
    c, h, w = shape
    for _ in range(50):
        kh, kw = rng.randint(1, min(h + 4, 7)), rng.randint(1, min(w + 4, 7))
        pads = tuple(rng.choice([0, 0, 1, 2, 4]) for _ in range(4))
        strides = (rng.choice([1, 1, 2, 3, 5]), rng.choice([1, 1, 2, 3, 5]))
        groups = rng.choice([g for g in range(1, c + 1) if c % g == 0])
        cout = groups * rng.randint(1, max(1, 20 // groups))
        op = ir.Conv(name, [src], [name], cin=c, cout=cout, kernel=(kh, kw), strides=strides, pads=pads,
                     groups=groups, relu=rng.random() < 0.5)
        try:
            out = shapes.output_shape(op, [shape])
        except ValueError:
            continue
        cin_g, cout_g = c // groups, cout // groups
        if rng.random() < 0.6:
            op.weights = _quantized(rng, nprng, groups, kh, kw, cin_g, cout_g)
        else:
            op.weights = (nprng.standard_normal((cout, cin_g, kh, kw)) * 0.5).astype(np.float32)
        op.bias = nprng.standard_normal(cout).astype(np.float32) if rng.random() < 0.5 else None
        return op, out
    return None


def _pool(rng, name, src, shape):
    for _ in range(50):
        kh, kw = rng.randint(1, 4), rng.randint(1, 4)
        pads = (rng.randint(0, kh - 1), rng.randint(0, kw - 1), rng.randint(0, kh - 1), rng.randint(0, kw - 1))
        args = dict(kernel=(kh, kw), strides=(rng.randint(1, 4), rng.randint(1, 4)), pads=pads,
                    ceil_mode=rng.random() < 0.5)
        op = (ir.MaxPool(name, [src], [name], **args) if rng.random() < 0.5 else
              ir.AveragePool(name, [src], [name], count_include_pad=rng.random() < 0.5, **args))
        try:
            return op, shapes.output_shape(op, [shape])
        except ValueError:
            continue
    return None


def random_model(seed: int) -> ir.Model:
    rng, nprng = random.Random(seed), np.random.default_rng(seed)
    c, h, w = rng.choice([1, 2, 3, 5, 8, 16, 17, 33]), rng.randint(1, 12), rng.randint(1, 12)
    tensors = {"x": (c, h, w)}
    order = ["x"]
    ops = []
    cur = "x"

    def add(op, shape):
        nonlocal cur
        ops.append(op)
        tensors[op.outputs[0]] = tuple(shape)
        order.append(op.outputs[0])
        cur = op.outputs[0]

    for i in range(rng.randint(1, 6)):
        name, shape = f"t{i}", tensors[cur]
        choice = rng.choice(["conv", "conv", "conv", "pool", "lrn", "relu", "add", "concat", "gap"])
        made = None
        if choice == "conv":
            made = _conv(rng, nprng, name, cur, shape)
        elif choice == "pool":
            made = _pool(rng, name, cur, shape)
        elif choice == "lrn":
            op = ir.LRN(name, [cur], [name], size=rng.randint(1, 8), alpha=rng.choice([1e-4, 0.5, 2.0]),
                        beta=rng.choice([0.5, 0.75, 1.0]), bias=rng.choice([1.0, 2.0]))
            made = op, shape
        elif choice == "relu":
            made = ir.Relu(name, [cur], [name]), shape
        elif choice == "add":
            same = [t for t in order if tensors[t] == shape]
            made = ir.Add(name, [cur, rng.choice(same)], [name], relu=rng.random() < 0.5), shape
        elif choice == "concat":
            same = [t for t in order if tensors[t][1:] == shape[1:]]
            ins = [cur] + [rng.choice(same) for _ in range(rng.randint(1, 2))]
            made = ir.Concat(name, ins, [name]), (sum(tensors[t][0] for t in ins),) + shape[1:]
        elif choice == "gap":
            made = ir.GlobalAveragePool(name, [cur], [name]), (shape[0], 1, 1)
        if made is not None:
            add(*made)
    outputs = [cur]
    if rng.random() < 0.7:  # classifier head
        n = int(np.prod(tensors[cur]))
        add(ir.Flatten("flat", [cur], ["flat"]), (n,))
        for j in range(rng.randint(1, 2)):
            fin, fout = tensors[cur][0], rng.choice([1, 2, 7, 10, 17, 64])
            op = ir.Gemm(f"fc{j}", [cur], [f"fc{j}"], in_features=fin, out_features=fout, relu=rng.random() < 0.3,
                         bias=nprng.standard_normal(fout).astype(np.float32) if rng.random() < 0.5 else None)
            op.weights = (_quantized(rng, nprng, 1, 1, 1, fin, fout) if rng.random() < 0.6 else
                          (nprng.standard_normal((fout, fin)) * 0.3).astype(np.float32))
            add(op, (fout,))
        if rng.random() < 0.5:
            add(ir.Softmax("softmax", [cur], ["softmax"]), tensors[cur])
        outputs = [cur] + ([order[rng.randrange(1, len(order))]] if rng.random() < 0.3 else [])
    outputs = list(dict.fromkeys(outputs))
    return ir.Model("x", (c, h, w), [ir.TensorInfo(n, s) for n, s in tensors.items()], ops, outputs,
                    producer="qcnn-hardening-extreme")


def _check(path, use_runtime):
    """Worker side: run the file with every ISA, float LUTs vs numpy; int8 LUTs must be finite."""
    from qcnn.converter.forward import run_model
    from qcnn.runtime import Model, _core
    from qcnn.schema import reader

    try:
        model = reader.read_model(path)
        x = np.random.default_rng(1).standard_normal((2,) + tuple(model.input_shape)).astype(np.float32)
        ref = run_model(model, x)
        isas = list(_core.isa_available())  # generic C plus every SIMD path this CPU runs
        for isa in isas:
            for lut in ("float", "int8"):
                with Model(path, lut=lut, isa=isa) as m:
                    ys = m.run(x)
                ys = ys if isinstance(ys, list) else [ys]
                for name, y in zip(model.outputs, ys):
                    r = ref[name].reshape(y.shape)
                    if lut == "int8":
                        if not np.all(np.isfinite(y)):
                            return ("mismatch", f"{isa}/int8: non-finite output {name}")
                        continue
                    err = float(np.max(np.abs(y - r))) if y.size else 0.0
                    tol = 1e-3 * (1 + float(np.max(np.abs(r))) if r.size else 1)
                    if not err <= tol:
                        return ("mismatch", f"{isa}/float: output {name!r} differs from numpy by {err:.3g} (tol {tol:.3g})")
        return ("ok", f"isas {isas}")
    except Exception as exc:  # noqa: BLE001
        return ("exception", f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=8))


def run_trials(trials: int, seed: int, timeout: float = 20.0, save_bad=None, progress=False) -> dict:
    from qcnn.schema import writer

    sup = Supervisor(True, timeout, DEFAULT_MEM_LIMIT, target=_check)
    tmp = tempfile.mkdtemp(prefix="qcnn-extreme-")
    outcomes, bad, op_counts = Counter(), [], Counter()
    t0 = time.time()
    try:
        for t in range(trials):
            model = random_model(seed * 1_000_003 + t)
            op_counts.update(type(op).__name__ + ("(q)" if getattr(op, "quantized", False) else "")
                             for op in model.operators)
            path = os.path.join(tmp, f"e{t}.qcnn")
            writer.write_model(model, path)
            result = sup.run(path)
            outcome = result[0]
            outcomes[outcome] += 1
            if outcome != "ok":
                entry = dict(trial=t, model_seed=seed * 1_000_003 + t, outcome=outcome, message=result[1][:500])
                if len(result) > 2:
                    entry["traceback"] = result[2][-1500:]
                if save_bad:
                    os.makedirs(save_bad, exist_ok=True)
                    entry["file"] = shutil.copy(path, os.path.join(save_bad, f"{outcome}-{t}.qcnn"))
                bad.append(entry)
            os.unlink(path)
            if progress and (t + 1) % 200 == 0:
                print(f"{t + 1}/{trials} {dict(outcomes)} {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    finally:
        sup.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return dict(trials=trials, seed=seed, seconds=round(time.time() - t0, 1), outcomes=dict(outcomes),
                bad_count=sum(v for k, v in outcomes.items() if k != "ok"), operators=dict(op_counts), bad=bad[:100])


def main(argv=None):
    ap = argparse.ArgumentParser(description="Random valid edge-case models: runtime vs numpy, in a child process")
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--json")
    ap.add_argument("--save-bad")
    args = ap.parse_args(argv)
    report = run_trials(args.trials, args.seed, args.timeout, args.save_bad, progress=True)
    print(json.dumps({k: report[k] for k in ("trials", "seed", "seconds", "outcomes", "bad_count", "operators")},
                     indent=1))
    for b in report["bad"][:20]:
        print(f"BAD {b['outcome']} (model seed {b['model_seed']}): {b['message'][:300]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if report["bad_count"] else 0


if __name__ == "__main__":
    assert BAD  # shares the outcome vocabulary of mutate.py
    sys.exit(main())
