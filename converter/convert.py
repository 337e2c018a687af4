"""Conversion driver: plan, calibrate, quantize layer by layer, report, write.

Multi-layer error correction (paper §3.3.3): the graph is run twice side by side on the
calibration inputs, op by op - the original network and the network quantized so far. A layer
is quantized with S = its input in the quantized network and T = its (pre-bias, pre-ReLU) response
in the original network; then both networks move one layer on. Tensors are dropped after their
last reader, and an op whose inputs are the same arrays in both networks is computed once.

Per-layer statistics for error correction are accumulated in chunks of images: G = S^T S and
B = S^T T per group (D x D and D x Cout/G, D = KH*KW*Cin/G), so memory and the cost of the solver do
not grow with the number of calibration images. When there are fewer rows than D (fully
connected layers with a few hundred images) the rows themselves are kept instead (see quantize.py).

Relative response error of a layer = sum ||T - T_hat||^2 / sum ||T||^2 over calibration rows, where
T = W S_orig is the original response and T_hat = W_hat S_quant the quantized layer's response
on its input in the quantized network (bias omitted: it is unchanged and cancels).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from qcnn.schema import ir

from . import calibration, onnx_import, quantize
from .errors import ConversionError
from .forward import conv_output_hw, image_chunks, last_uses, pad_nhwc, patches, run_op
from .onnx_import import import_onnx

DEFAULT_CONV = (8, 128)
DEFAULT_FC = (4, 32)
DEFAULT_LAST_FC = (1, 16)


# --------------------------------------------------------------------------- planning
@dataclass
class LayerPlan:
    name: str
    kind: str  # conv / fc
    subvec: int
    ncode: int
    quantize: bool
    reason: str = ""
    explicit: bool = False
    nsub: int = 0
    flops_dense: int = 0
    flops_quant: int = 0
    bytes_dense: int = 0
    bytes_quant: int = 0


def parse_ck(text: str, what: str) -> Tuple[int, int]:
    try:
        c, k = text.split("/")
        c, k = int(c), int(k)
    except ValueError:
        raise ConversionError(f"{what}: expected C/K like 8/128, got {text!r}") from None
    check_ck(c, k, what)
    return c, k


def check_ck(c: int, k: int, what: str) -> None:
    if c < 1:
        raise ConversionError(f"{what}: C's must be >= 1, got {c}")
    if not 2 <= k <= 256:
        raise ConversionError(f"{what}: K must be in 2..256, got {k}")


def layer_costs(op, geom: quantize.LayerGeom, in_shape, out_shape) -> Tuple[int, int, int, int]:
    """Paper Table 1: (FLOPs dense, FLOPs Q-CNN, bytes dense, bytes Q-CNN), biases included in bytes.

    Conv: d_t^2 C_t d_k^2 C_s vs d_s^2 C_s K + d_t^2 C_t d_k^2 M (per group, C_s = input channels of
    the group). FC: C_s C_t vs C_s K + C_t M. Bytes: 4 per float; indices at ceil(log2 K) bits.
    """
    K, M, G = geom.ncode, geom.nsub, geom.groups
    bias = 4 * (geom.cout_g * G) if op.bias is not None else 0
    if geom.kind == "conv":
        hs, ws = in_shape[1], in_shape[2]
        ht, wt = out_shape[1], out_shape[2]
        cout = geom.cout_g * G
        dense = ht * wt * cout * geom.P * geom.cin_g
        quant = hs * ws * geom.cin_g * G * K + ht * wt * cout * geom.P * M
        nidx = G * geom.P * M * geom.cout_g
    else:
        dense = geom.cin_g * geom.cout_g
        quant = geom.cin_g * K + geom.cout_g * M
        nidx = M * geom.cout_g
    bits = max(1, (K - 1).bit_length())
    bytes_dense = 4 * geom.cout_g * G * geom.cin_g * geom.P + bias
    bytes_quant = 4 * G * M * K * geom.subvec + (nidx * bits + 7) // 8 + bias
    return dense, quant, bytes_dense, bytes_quant


def plan_layers(model: ir.Model, conv=DEFAULT_CONV, fc=DEFAULT_FC, last_fc=DEFAULT_LAST_FC,
                overrides: Optional[Dict[str, Tuple[int, int]]] = None, skip: Sequence[str] = (),
                pad_subspaces: bool = False, skip_reason: str = "--skip") -> List[LayerPlan]:
    overrides = dict(overrides or {})
    skip = set(skip)
    layers = [op for op in model.operators if isinstance(op, (ir.Conv, ir.Gemm))]
    names = {op.name for op in layers}
    for n in list(overrides) + sorted(skip):
        if n not in names:
            raise ConversionError(f"no Conv/Gemm layer named {n!r} (layers: {', '.join(op.name for op in layers)})")
    gemms = [op for op in layers if isinstance(op, ir.Gemm)]
    last_gemm = gemms[-1] if gemms else None
    shapes = {t.name: t.shape for t in model.tensors}
    plans = []
    for op in layers:
        kind = "conv" if isinstance(op, ir.Conv) else "fc"
        explicit = op.name in overrides
        c, k = overrides.get(op.name) or (conv if kind == "conv" else (last_fc if op is last_gemm else fc))
        plan = LayerPlan(op.name, kind, c, k, True, explicit=explicit)
        plans.append(plan)
        if op.name in skip:
            plan.quantize, plan.reason = False, skip_reason
            plan.flops_dense, _, plan.bytes_dense, _ = layer_costs(op, quantize.geometry(op, 1, 2),
                                                                   shapes[op.inputs[0]], shapes[op.outputs[0]])
            continue
        cin_g = op.cin // op.groups if kind == "conv" else op.in_features
        if c > cin_g:
            if explicit:
                raise ConversionError(f"--layer {op.name}={c}/{k}: C's={c} is larger than the {cin_g} input "
                                      f"channels{' per group' if kind == 'conv' and op.groups > 1 else ''}")
            if not pad_subspaces:
                plan.quantize, plan.reason = False, f"C's={c} > {cin_g} input channels"
        elif cin_g % c and not pad_subspaces:
            plan.quantize, plan.reason = False, f"C's={c} does not divide {cin_g} input channels (--pad-subspaces)"
        geom = quantize.geometry(op, c, k)
        plan.nsub = geom.nsub
        fd, fq, bd, bq = layer_costs(op, geom, shapes[op.inputs[0]], shapes[op.outputs[0]])
        plan.flops_dense, plan.flops_quant, plan.bytes_dense, plan.bytes_quant = fd, fq, bd, bq
        if plan.quantize and not explicit:
            # Conv layers are quantized for speed; fully connected ones also for size alone (the paper
            # quantizes the last FC layer at 1/16 purely for compression, §5.2.2).
            if kind == "conv" and fq >= fd:
                plan.quantize, plan.reason = False, f"no speed-up ({fq:.3g} vs {fd:.3g} FLOPs)"
            elif kind == "fc" and fq >= fd and bq >= bd:
                plan.quantize, plan.reason = False, "neither faster nor smaller"
    return plans


# --------------------------------------------------------------------------- statistics
class GroupStats:
    """Calibration statistics of one group: either the Gram form (G, B, ||T||^2) or the rows (S, T)."""

    def __init__(self, D: int, cout: int, rows_mode: bool):
        self.rows_mode = rows_mode
        self.TT = 0.0
        self.nrows = 0
        self.energy = 0.0  # sum of squared inputs S (for tests and diagnostics)
        if rows_mode:
            self.S_parts, self.T_parts = [], []
        else:
            self.G = np.zeros((D, D))
            self.B = np.zeros((D, cout))

    def add(self, rows: np.ndarray, T: np.ndarray) -> None:
        self.nrows += len(rows)
        self.TT += float(np.einsum("ij,ij->", T, T, dtype=np.float64))
        self.energy += float(np.einsum("ij,ij->", rows, rows, dtype=np.float64))
        if self.rows_mode:
            self.S_parts.append(rows.astype(np.float64))
            self.T_parts.append(T.astype(np.float64))
        else:
            self.G += np.dot(rows.T, rows)
            self.B += np.dot(rows.T, T)

    def finish(self) -> None:
        if self.rows_mode:
            self.S = np.concatenate(self.S_parts)
            self.T = np.concatenate(self.T_parts)
            del self.S_parts, self.T_parts

    def gram_diag_mean(self) -> float:
        if self.rows_mode:
            return float((self.S ** 2).sum() / self.S.shape[1])
        return float(np.trace(self.G) / len(self.G))

    def error(self, W: np.ndarray) -> float:
        """sum ||T - S W||^2 for weights W (D, Cout)."""
        if self.rows_mode:
            R = self.T - self.S @ W
            return float((R * R).sum())
        return max(0.0, float(np.einsum("ij,ij->", W, self.G @ W) - 2 * np.einsum("ij,ij->", W, self.B) + self.TT))


def _rows_of(x_nchw: np.ndarray, op, geom: quantize.LayerGeom, g: int, oh: int, ow: int) -> np.ndarray:
    """im2col rows of group g in the (kh, kw, m, j) order, float32 (n*oh*ow, D)."""
    n = x_nchw.shape[0]
    cin_g = geom.cin_g
    xs = x_nchw[:, g * cin_g:(g + 1) * cin_g]
    xp = pad_nhwc(xs, op.pads, geom.cin_pad)
    pt = patches(xp, geom.kh, geom.kw, op.strides[0], op.strides[1], oh, ow)
    return pt.reshape(n * oh * ow, geom.D)


def collect_stats(op, geom: quantize.LayerGeom, Wb: np.ndarray, Sq: np.ndarray, So: np.ndarray) -> List[GroupStats]:
    """Per-group statistics of S (quantized-network input) and T = W S_orig."""
    n = Sq.shape[0]
    Wb32 = Wb.astype(np.float32)
    if geom.kind == "conv":
        oh, ow = conv_output_hw(op, Sq.shape[2], Sq.shape[3])
        per_image = oh * ow
    else:
        per_image = 1
    rows_mode = n * per_image <= geom.D
    stats = [GroupStats(geom.D, geom.cout_g, rows_mode) for _ in range(geom.groups)]
    same = Sq is So
    for i0, i1 in image_chunks(n, per_image * geom.D * 4 * (1 if same else 2)):
        for g in range(geom.groups):
            if geom.kind == "conv":
                rows = _rows_of(Sq[i0:i1], op, geom, g, oh, ow)
                rows_o = rows if same else _rows_of(So[i0:i1], op, geom, g, oh, ow)
            else:
                rows = _pad_cols(Sq[i0:i1], geom)
                rows_o = rows if same else _pad_cols(So[i0:i1], geom)
            T = rows_o @ Wb32[g]
            stats[g].add(rows, T)
    for s in stats:
        s.finish()
    return stats


def _pad_cols(x: np.ndarray, geom) -> np.ndarray:
    x = x.reshape(x.shape[0], -1).astype(np.float32)
    if geom.cin_pad:
        x = np.concatenate([x, np.zeros((x.shape[0], geom.cin_pad), np.float32)], axis=1)
    return x


# --------------------------------------------------------------------------- one layer
@dataclass
class Options:
    ec: bool = True
    ec_iters: int = 4
    ec_ridge: float = 1e-3
    ec_ridge_few: float = 0.3
    ec_tol: float = 1e-3
    multilayer: bool = True
    kmeans_iters: int = 30
    report_plain: bool = False
    seed: int = 0
    progress: bool = True


def quantize_layer(op, plan: LayerPlan, index: int, opts: Options, Sq: Optional[np.ndarray],
                   So: Optional[np.ndarray], bar=None) -> Tuple[ir.QuantizedWeights, dict]:
    t0 = time.time()
    geom = quantize.geometry(op, plan.subvec, plan.ncode)
    Wb = quantize.weight_blocks(op.weights, geom)
    rng = np.random.default_rng([opts.seed, index])
    cb, A = quantize.kmeans_layer(Wb, geom, rng, iters=opts.kmeans_iters)
    rep: Dict[str, object] = {}
    if Sq is not None:
        stats = collect_stats(op, geom, Wb, Sq, So)
        TT = sum(s.TT for s in stats)
        rep["calib_rows"] = int(stats[0].nrows)
        rep["input_energy"] = float(sum(s.energy for s in stats))
        rep["stats_mode"] = "rows" if stats[0].rows_mode else "gram"
        W_plain = quantize.reconstruct_blocks(cb, A, geom)
        plain_err = sum(s.error(W_plain[g]) for g, s in enumerate(stats)) / max(TT, 1e-300)
        if opts.ec:
            cb_ec, A_ec = cb.copy(), A.copy()
            curves, sweeps = [], 0
            for g, s in enumerate(stats):
                # Few calibration rows (fewer than inputs, typical for FC layers): the data leave most
                # input directions unconstrained, so pull harder towards the original weights.
                ridge = opts.ec_ridge_few if s.rows_mode else opts.ec_ridge
                mu = ridge * max(s.gram_diag_mean(), 1e-30)
                if s.rows_mode:
                    F, Y, W0, mu_solver, const, mu_resp = s.S, s.T, Wb[g], mu, 0.0, 0.0
                else:
                    F, Y, yy = quantize.factor_stats(s.G, s.B, mu, Wb[g])
                    W0, mu_solver, mu_resp = Wb[g], 0.0, mu
                    const = s.TT + mu * float((Wb[g] ** 2).sum()) - yy
                TTg = max(s.TT, 1e-300)

                def rel(hist, drift, const=const, mu_resp=mu_resp, TTg=TTg):
                    # response error (ridge removed): ||R||^2 + const - mu ||W - W0||^2 in gram mode
                    return [max(h + const - mu_resp * d, 0.0) / TTg for h, d in zip(hist, drift)]

                def stop(hist, drift, rel=rel):
                    r = rel(hist[-2:], drift[-2:])
                    return len(r) == 2 and r[0] - r[1] < opts.ec_tol

                res = quantize.ec_solve(F, Y, cb[g], A[g], geom, opts.ec_iters, mu=mu_solver, W0=W0,
                                        progress=(bar.update if bar is not None else None), stop=stop)
                if bar is not None:  # sweeps skipped by the early stop
                    bar.update(geom.nsub * (opts.ec_iters + 1 - len(res.history)))
                cb_ec[g], A_ec[g] = res.codebooks, res.assign
                curve = rel(res.history, res.drift)
                sweeps = max(sweeps, len(curve) - 1)
                curves.append(np.array(curve + [curve[-1]] * (opts.ec_iters + 1 - len(curve))) * s.TT)
                del F, Y
            curve = np.sum(curves, axis=0)
            rep["ec_sweeps"] = sweeps
            rep["ridge"] = opts.ec_ridge_few if stats[0].rows_mode else opts.ec_ridge
            cb, A = cb_ec, A_ec
            W_ec = quantize.reconstruct_blocks(cb, A, geom)
            ec_err = sum(s.error(W_ec[g]) for g, s in enumerate(stats)) / max(TT, 1e-300)
            rep["error"] = ec_err
            rep["error_curve"] = [float(v) for v in curve / max(TT, 1e-300)]
            if opts.report_plain:
                rep["plain_error"] = plain_err
        else:
            rep["error"] = plain_err
        del stats
    rep["seconds"] = round(time.time() - t0, 3)
    return quantize.to_quantized_weights(cb, A, geom), rep


# --------------------------------------------------------------------------- driver
@dataclass
class ConversionResult:
    model: ir.Model
    plans: List[LayerPlan]
    report: dict
    output_bytes: int = 0


def convert(model_path, output: Optional[str] = None, *, calib=None, calib_count: int = 100, seed: int = 0,
            preprocess: Optional[str] = None, mean=None, std=None, scale=None, size=None, crop=None,
            bgr: bool = False, conv=DEFAULT_CONV, fc=DEFAULT_FC, last_fc=DEFAULT_LAST_FC,
            layers: Optional[Dict[str, Tuple[int, int]]] = None, skip: Sequence[str] = (),
            pad_subspaces: bool = False, ec: bool = True, ec_iters: int = 4, ec_ridge: float = 1e-3,
            ec_ridge_few: float = 0.3, ec_tol: float = 1e-3,
            multilayer: bool = True, kmeans_iters: int = 30, labels=None, report_plain: bool = False,
            input_shape=None, progress: bool = False, log: Optional[Callable[[str], None]] = None,
            threads: Optional[int] = 1, plan=None, plan_lut: str = "int8",
            plan_error: str = "output", dense_where_faster: bool = False) -> ConversionResult:
    """Convert an ONNX model (path or ModelProto) to a quantized ir.Model; write it if `output` is given.

    `calib` is a path (image folder, .npy, .npz) or an array (N, *input_shape) already preprocessed.
    `threads`: BLAS threads during the conversion (None: numpy's default); see _blas.py.
    `dense_where_faster`: keep dense the layers this CPU runs faster dense than as tables
    (plan.keep_dense_where_faster; not with `plan`, which already weighs time).
    """
    from ._blas import blas_threads

    with blas_threads(threads):
        return _convert(model_path, output, calib, calib_count, seed, preprocess, mean, std, scale, size, crop,
                        bgr, conv, fc, last_fc, layers, skip, pad_subspaces, ec, ec_iters, ec_ridge, multilayer,
                        kmeans_iters, labels, report_plain, input_shape, progress, log, ec_ridge_few, ec_tol,
                        plan, plan_lut, plan_error, dense_where_faster)


def _convert(model_path, output, calib, calib_count, seed, preprocess, mean, std, scale, size, crop, bgr, conv,
             fc, last_fc, layers, skip, pad_subspaces, ec, ec_iters, ec_ridge, multilayer, kmeans_iters, labels,
             report_plain, input_shape, progress, log, ec_ridge_few, ec_tol, plan=None,
             plan_lut="int8", plan_error="output", dense_where_faster=False) -> ConversionResult:
    log = log or (lambda msg: None)
    if dense_where_faster and plan is not None:
        raise ConversionError("--dense-where-faster and --plan: give one (a plan already weighs time)")
    if plan is not None and layers:
        raise ConversionError(f"--layer {next(iter(layers))} and --plan: give one (a plan chooses every layer)")
    if plan == "auto" and calib is None:
        # the auto plan measures each choice's output error on calibration data; without it, plain
        # k-means on the weights with the fixed settings (the paper's, unless given)
        log("note: no calibration data, so no automatic plan: the fixed settings "
            f"(conv {conv[0]}/{conv[1]}, fc {fc[0]}/{fc[1]}, last fc {last_fc[0]}/{last_fc[1]})")
        plan = None
    for what, (c, k) in (("--conv", conv), ("--fc", fc), ("--last-fc", last_fc)):
        check_ck(c, k, what)
    for name, (c, k) in (layers or {}).items():
        check_ck(c, k, f"--layer {name}")
    if ec_iters < 0:
        raise ConversionError(f"--ec-iters must be >= 0, got {ec_iters}")
    if ec and calib is None:
        raise ConversionError("error correction needs calibration data: give --calib PATH (images, .npy or "
                              ".npz), or use --no-ec for plain k-means quantization")
    t_start = time.time()
    model = import_onnx(model_path, input_shape)
    hint = model.metadata.pop(onnx_import.SOURCE_PREPROCESS_KEY, None)
    prep = calibration.make_preprocessing(preprocess, model.input_shape, mean, std, scale, size, crop, bgr)
    if prep is None and hint is not None:
        prep = calibration.from_model_hint(hint, model.input_shape)
        if prep is not None:
            log("preprocessing: taken from the model's qcnn.preprocess metadata")
    if prep is None and isinstance(calib, str) and _is_dir(calib) and len(model.input_shape) == 3:
        prep = calibration.make_preprocessing("imagenet", model.input_shape)
        log("note: image calibration without --preprocess: using --preprocess imagenet")
    plans = plan_layers(model, conv, fc, last_fc, layers, skip, pad_subspaces)
    label_list = calibration.load_labels(labels) if isinstance(labels, str) else (list(labels) if labels else None)

    x = None
    calib_desc = ""
    if calib is not None:
        if isinstance(calib, np.ndarray):
            x = calibration.adapt_array(calib, model.input_shape, prep, "calibration array")
            if len(x) > calib_count:
                x = x[np.sort(np.random.default_rng(seed).permutation(len(x))[:calib_count])]
            calib_desc = f"{len(x)} samples (array)"
        else:
            x, calib_desc = calibration.load_calibration(calib, model.input_shape, prep, calib_count, seed)
        log(f"calibration: {calib_desc}")

    auto_plan = None
    if plan is not None:  # --plan speed=S / size=X: per-layer C's/K or dense, see plan.py
        from .plan import make_plan

        log(f"planning ({plan}): timing and scoring every layer's choices")
        auto_plan = make_plan(model, x, plan, lut=plan_lut, seed=seed, error=plan_error, log=log, keep_dense=skip)
        layers, plan_dense = auto_plan.overrides()
        plans = plan_layers(model, conv, fc, last_fc, layers, plan_dense, pad_subspaces,
                            skip_reason=f"plan {auto_plan.target}")
        for p in plans:
            if p.name in skip:
                p.reason = "--skip"
        log(auto_plan.format())
        if auto_plan.note():
            log(auto_plan.note())
    if dense_where_faster:
        from .plan import keep_dense_where_faster

        log("timing each layer as tables and dense on this CPU (--dense-where-faster)")
        keep_dense_where_faster(model, plans, lut=plan_lut, log=log, x=x)

    opts = Options(ec=ec, ec_iters=ec_iters, ec_ridge=ec_ridge, ec_ridge_few=ec_ridge_few, ec_tol=ec_tol,
                   multilayer=multilayer,
                   kmeans_iters=kmeans_iters, report_plain=report_plain, seed=seed, progress=progress)
    layer_reports = _run(model, plans, opts, x, log)

    # ---- report
    by_name = {p.name: p for p in plans}
    rows = []
    for op in model.operators:
        if not isinstance(op, (ir.Conv, ir.Gemm)):
            continue
        p = by_name[op.name]
        r = {"name": p.name, "kind": p.kind, "quantized": p.quantize, "reason": p.reason}
        if p.quantize:
            r.update({"subvec": p.subvec, "ncode": p.ncode, "nsub": p.nsub, "flops_dense": p.flops_dense,
                      "flops_quant": p.flops_quant, "bytes_dense": p.bytes_dense, "bytes_quant": p.bytes_quant,
                      "speedup": p.flops_dense / max(p.flops_quant, 1), "compression": p.bytes_dense / max(p.bytes_quant, 1)})
        else:
            r.update({"flops_dense": p.flops_dense, "flops_quant": p.flops_dense, "bytes_dense": p.bytes_dense,
                      "bytes_quant": p.bytes_dense, "speedup": 1.0, "compression": 1.0})
        r.update(layer_reports.get(p.name, {}))
        rows.append(r)
    fd = sum(r["flops_dense"] for r in rows)
    fq = sum(r["flops_quant"] for r in rows)
    bd = sum(r["bytes_dense"] for r in rows)
    bq = sum(r["bytes_quant"] for r in rows)
    report = {
        "tool": "qcnn-convert",
        "method": "Q-CNN (EC)" if ec else "Q-CNN",
        "settings": {"conv": f"{conv[0]}/{conv[1]}", "fc": f"{fc[0]}/{fc[1]}", "last_fc": f"{last_fc[0]}/{last_fc[1]}",
                     "layers": {k: f"{c}/{kk}" for k, (c, kk) in (layers or {}).items()}, "skip": sorted(skip),
                     "pad_subspaces": pad_subspaces, "ec_iters": ec_iters if ec else 0, "ec_ridge": ec_ridge if ec else 0,
                     "ec_ridge_few": ec_ridge_few if ec else 0, "ec_tol": ec_tol,
                     "multilayer": multilayer, "seed": seed, "kmeans_iters": kmeans_iters,
                     "plan": "uniform" if auto_plan is None else str(auto_plan.target)},
        "calibration": calib_desc,
        "layers": rows,
        "total": {"flops_dense": fd, "flops_quant": fq, "bytes_dense": bd, "bytes_quant": bq,
                  "speedup": fd / max(fq, 1), "compression": bd / max(bq, 1)},
        "seconds": None,
    }
    if "_network" in layer_reports:
        report["network"] = layer_reports["_network"]
    if auto_plan is not None:
        report["plan"] = auto_plan.to_json()
    model.preprocessing = prep
    model.labels = label_list
    model.producer = f"qcnn-convert ({model.producer})" if model.producer else "qcnn-convert"
    report["seconds"] = round(time.time() - t_start, 2)
    model.metadata["qcnn.report"] = json.dumps(_without_timings(report), sort_keys=True)
    result = ConversionResult(model, plans, report)
    if output is not None:
        result.output_bytes = write(model, output)
        report["output_bytes"] = result.output_bytes
    return result


def _without_timings(report: dict) -> dict:
    """The report as stored in the file: no wall-clock fields, so equal inputs give equal bytes."""
    stored = {k: v for k, v in report.items() if k != "seconds"}
    stored["layers"] = [{k: v for k, v in r.items() if k != "seconds"} for r in report["layers"]]
    return stored


def _is_dir(p) -> bool:
    import os

    return os.path.isdir(p)


def write(model: ir.Model, path) -> int:
    import os

    from qcnn.schema.writer import write_model

    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise ConversionError(f"cannot write {path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise ConversionError(f"cannot write {path}: it is a directory")
    try:
        return write_model(model, path)
    except OSError as exc:
        raise ConversionError(f"cannot write {path}: {exc.strerror or exc}") from None


def _run(model: ir.Model, plans: List[LayerPlan], opts: Options, x: Optional[np.ndarray], log) -> Dict[str, dict]:
    """Quantize every planned layer in graph order, feeding calibration data through both networks."""
    from tqdm import tqdm

    plan = {p.name: p for p in plans if p.quantize}
    reports: Dict[str, dict] = {}
    todo = [op for op in model.operators if op.name in plan]
    total_steps = sum(quantize.geometry(op, plan[op.name].subvec, 2).nsub * quantize.geometry(op, 1, 2).groups
                      for op in todo) * (opts.ec_iters if (opts.ec and x is not None) else 0)
    bar = tqdm(total=total_steps, desc="EC subspaces", unit="sub", disable=not opts.progress or total_steps == 0,
               file=sys.stderr, leave=False)
    try:
        if x is None:
            for i, op in enumerate(model.operators):
                if op.name in plan:
                    log(f"  {op.name}: k-means {plan[op.name].subvec}/{plan[op.name].ncode}")
                    op.weights, reports[op.name] = quantize_layer(op, plan[op.name], i, opts, None, None)
            return reports
        last = last_uses(model)
        orig = {model.input_name: x}
        quant = {model.input_name: x}
        for i, op in enumerate(model.operators):
            xs_o = [orig[t] for t in op.inputs]
            xs_q = [quant[t] for t in op.inputs]
            if op.name in plan:
                W_orig = op.weights
                Sq = xs_q[0] if opts.multilayer else xs_o[0]
                log(f"  {op.name}: {'EC' if opts.ec else 'k-means'} {plan[op.name].subvec}/{plan[op.name].ncode}")
                qw, rep = quantize_layer(op, plan[op.name], i, opts, Sq, xs_o[0], bar)
                op.weights = qw
                reports[op.name] = rep
                out_o = run_op(op, xs_o, weights=W_orig)
                out_q = run_op(op, xs_q)
            elif all(a is b for a, b in zip(xs_o, xs_q)):
                out_o = out_q = run_op(op, xs_o)
            else:
                out_o, out_q = run_op(op, xs_o), run_op(op, xs_q)
            orig[op.outputs[0]] = out_o
            quant[op.outputs[0]] = out_q
            for t in op.inputs:
                if last.get(t, -1) <= i:
                    orig.pop(t, None)
                    quant.pop(t, None)
        reports["_network"] = network_agreement(orig[model.outputs[0]], quant[model.outputs[0]])
        return reports
    finally:
        bar.close()


def network_agreement(y_orig: np.ndarray, y_quant: np.ndarray) -> dict:
    """How close the quantized network's output is to the original's on the calibration inputs."""
    yo = y_orig.reshape(len(y_orig), -1).astype(np.float64)
    yq = y_quant.reshape(len(y_quant), -1).astype(np.float64)
    out = {"output_rel_error": float(((yo - yq) ** 2).sum() / max((yo ** 2).sum(), 1e-300))}
    if yo.shape[1] > 1:
        out["top1_agreement"] = float((yo.argmax(1) == yq.argmax(1)).mean())
        top5 = np.argsort(-yq, axis=1)[:, :5]
        out["top1_in_top5"] = float((top5 == yo.argmax(1)[:, None]).any(1).mean())
    return out


def format_report(report: dict) -> str:
    """The per-layer table printed by the CLI."""
    head = f"{'layer':<22} {'C/K':>7} {'M':>5} {'MFLOPs':>16} {'KB':>18} {'speed':>6} {'compr':>6} {'resp.err':>9}"
    if any("plain_error" in r for r in report["layers"]):
        head += f" {'plain':>9}"
    head += f" {'sec':>6}"
    lines = [head, "-" * len(head)]
    for r in report["layers"]:
        ck = f"{r['subvec']}/{r['ncode']}" if r["quantized"] else "dense"
        m = str(r.get("nsub", "")) if r["quantized"] else ""
        fl = f"{r['flops_dense'] / 1e6:.1f}->{r['flops_quant'] / 1e6:.1f}"
        kb = f"{r['bytes_dense'] / 1024:.0f}->{r['bytes_quant'] / 1024:.0f}"
        err = f"{r['error']:.4f}" if "error" in r else "-"
        line = f"{r['name'][:22]:<22} {ck:>7} {m:>5} {fl:>16} {kb:>18} {r['speedup']:>5.2f}x {r['compression']:>5.1f}x {err:>9}"
        if "plain_error" in r or any("plain_error" in x for x in report["layers"]):
            line += f" {r['plain_error']:>9.4f}" if "plain_error" in r else f" {'-':>9}"
        line += f" {r.get('seconds', 0):>6.1f}"
        if not r["quantized"]:
            line += f"  ({r['reason']})"
        lines.append(line)
    t = report["total"]
    lines.append("-" * len(head))
    lines.append(f"{'total':<22} {'':>7} {'':>5} {t['flops_dense'] / 1e6:>7.1f}->{t['flops_quant'] / 1e6:<8.1f} "
                 f"{t['bytes_dense'] / 1024:>8.0f}->{t['bytes_quant'] / 1024:<9.0f} {t['speedup']:>5.2f}x {t['compression']:>5.1f}x")
    if "network" in report:
        n = report["network"]
        extra = f"network output relative error on calibration data: {n['output_rel_error']:.4g}"
        if "top1_agreement" in n:
            extra += f", top-1 agreement with the original: {100 * n['top1_agreement']:.1f}%"
        lines.append(extra)
    return "\n".join(lines)
