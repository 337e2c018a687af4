"""Automatic per-layer plan: which (C's, K) - or dense - for every Conv/Gemm layer.

    qcnn-convert MODEL.onnx -o OUT.qcnn --calib DATA --plan speed=2
    qcnn-convert MODEL.onnx -o OUT.qcnn --calib DATA --plan size=10
    qcnn-convert MODEL.onnx -o OUT.qcnn --calib DATA --plan ms=1.0        (conv/fc time budget)
    qcnn-convert MODEL.onnx -o OUT.qcnn --calib DATA --plan speed=1,size=1.5  (both at once)
    qcnn-convert MODEL.onnx -o OUT.qcnn --calib DATA --plan error=0.01   (fastest within an error budget)
    qcnn-convert MODEL.onnx -o OUT.qcnn --calib DATA                     (= --plan auto = error=0.01)

A uniform setting such as 8/128 everywhere is a poor fit for nets like SqueezeNet: in a 1x1
convolution with 16 input channels a 128-entry table per sub-vector costs more than the
convolution itself. So for every layer we list candidates (dense and a few (C's, K)), give each
  - a cost: measured time of the runtime kernel on the layer's real shape (default), or the
    paper's Table 1 FLOPs (`cost=flops`), or bytes for `size=`;
  - an error: the network output's relative error ||y - y_hat||^2 / ||y||^2 with only this layer
    quantized by plain k-means, on a few calibration images (default; `error="response"`: the
    layer's own response error ||T - T_hat||^2 / ||T||^2, cheaper but blind to how much the rest of
    the network amplifies it: SqueezeNet's `speed=1,size=1.3` plan lost 26 top-1 points picked by
    it, 17 by output error); the chosen layers are later quantized with error correction, which
    only lowers it,
and pick one candidate per layer minimising the summed error under the cost budget - or, for
`error=E`, minimising the time with the summed error at most E.

`auto` (qcnn-convert's default when no C's/K settings are given) is `error=0.01`: the fastest plan
whose layers' summed plain output error is at most 1% of the output's energy. On SqueezeNet 1.1
(real weights) plans scored at 0.01 lost 0.4 top-1 / -0.4 top-5 points with float tables; one at
0.03 lost 1.2 / 2.4, one at 0.29 lost 14 / 6 (experiments/results/squeezenet.md). Where no table is
faster than the layer's dense kernel within the budget, the layer stays dense (SqueezeNet: all of
them, which runs it at 2.3x onnxruntime through the int8 dense convs alone).

Selection is an exact multiple-choice knapsack (dynamic programming over savings rounded down to a
fine grid; a few dozen layers x a dozen candidates x 20000 cells is instant), which beats a greedy or
Lagrangian pick on the same numbers. A looser budget never yields a higher error (the feasible set
only grows) - tested. A time (or FLOPs) target and a size target together (`speed=1,size=1.5`: no
slower than the dense kernels and at least 1.5x smaller) use dynamic programming on a
two-dimensional grid of costs, where a slower but smaller layer can be paid for by another one.

Errors of different layers are summed: to first order, small independent errors of several layers
add up at the output (the response error variant sums errors relative to each layer's own
response energy: a cruder proxy).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from qcnn.schema import ir

from . import quantize
from .errors import ConversionError

# (C's, K) candidates tried for every layer (those whose C's does not divide the input channels are dropped)
DEFAULT_CANDIDATES = ((4, 16), (8, 16), (4, 32), (8, 32), (16, 32), (4, 64), (8, 64), (16, 64),
                      (4, 128), (8, 128), (16, 128))
PLAN_CALIB = 32  # calibration samples used to score candidates (EC later uses all of them)
OUTPUT_CALIB = 16  # of those, the images the output error is measured on ...
OUTPUT_KEEP_BYTES = 512 << 20  # ... fewer (at least 2) if all their activations would take more
# Planning fits each candidate's k-means on at most this many sub-vectors per codeword (all are
# then assigned): an estimate is enough to rank candidates, and AlexNet's fc6 (4096 sub-vectors in
# each of 2304 subspaces, 11 candidates) took over 10 minutes with all of them.
PLAN_FIT_PER_CODE = 16
PLAN_KMEANS_WORK = 2e9  # ... and runs at most this many (subspace x point x codeword) distance terms
AUTO_ERROR = 0.01  # `--plan auto`: the summed plain output error budget (see the module docstring)
# error=E plans take a table only where it saves at least this fraction of the layer's dense time:
# kernel timings vary by a few percent, and a table that only ties with dense adds error for nothing.
ERROR_PLAN_MIN_SAVING = 0.03
ERROR_GRID = 1e-5  # error=E plans sum errors on this grid (fixed, so a looser E never gives a slower plan)


def _plan_kmeans(Wb, geom, rng, kmeans_iters):
    """k-means for scoring a candidate: a subset fit, fewer iterations on huge layers (at least 3)."""
    fit = min(geom.P * geom.cout_g, PLAN_FIT_PER_CODE * geom.ncode)
    per_iter = geom.groups * geom.nsub * fit * geom.ncode
    iters = max(3, min(kmeans_iters, int(PLAN_KMEANS_WORK // max(per_iter, 1))))
    return quantize.kmeans_layer(Wb, geom, rng, iters=iters, fit_points=PLAN_FIT_PER_CODE * geom.ncode)


@dataclass
class Candidate:
    subvec: int  # 0 = dense
    ncode: int
    flops: int
    nbytes: int
    ms: float = float("nan")
    error: float = 0.0

    @property
    def dense(self) -> bool:
        return self.subvec == 0

    @property
    def label(self) -> str:
        return "dense" if self.dense else f"{self.subvec}/{self.ncode}"


@dataclass
class LayerOptions:
    name: str
    kind: str
    candidates: List[Candidate]
    chosen: int = 0  # index into candidates (0 is dense)
    allowed: Optional[List[int]] = None  # indices the plan may choose (None: all); [0] = kept dense (--skip)


@dataclass
class Target:
    what: str  # speed, size, ms or error
    value: float
    cost: str  # time, flops or bytes
    size: Optional[float] = None  # with speed/ms: also at least this compression (bytes)

    def __str__(self) -> str:
        text = f"{self.what}={self.value:g}"
        return text + (f",size={self.size:g}" if self.size is not None else "")


@dataclass
class Plan:
    target: Target
    layers: List[LayerOptions]
    lut: str = "int8"
    seconds: float = 0.0
    info: Dict[str, float] = field(default_factory=dict)

    def overrides(self) -> Tuple[Dict[str, Tuple[int, int]], List[str]]:
        """(layers {name: (C's, K)}, skip [names]) for convert()."""
        layers, skip = {}, []
        for lo in self.layers:
            c = lo.candidates[lo.chosen]
            if c.dense:
                skip.append(lo.name)
            else:
                layers[lo.name] = (c.subvec, c.ncode)
        return layers, skip

    def totals(self) -> Dict[str, float]:
        return totals(self.layers, [lo.chosen for lo in self.layers])

    def to_json(self) -> dict:
        t = self.totals()
        target = {k: v for k, v in asdict(self.target).items() if v is not None}
        return {"target": target, "lut": self.lut, "seconds": round(self.seconds, 2), **self.info,
                "totals": t,
                "layers": [{"name": lo.name, "choice": lo.candidates[lo.chosen].label,
                            "error": lo.candidates[lo.chosen].error, "ms": lo.candidates[lo.chosen].ms,
                            "ms_dense": lo.candidates[0].ms, "flops": lo.candidates[lo.chosen].flops,
                            "flops_dense": lo.candidates[0].flops,
                            "candidates": {c.label: {"ms": c.ms, "error": c.error, "flops": c.flops,
                                                     "bytes": c.nbytes} for c in lo.candidates}}
                           for lo in self.layers]}

    def note(self) -> Optional[str]:
        """A hint when an error-budget plan quantizes nothing although tables would be faster."""
        if self.target.what != "error" or any(lo.chosen for lo in self.layers):
            return None
        faster = [(c.error, lo.name, c.label) for lo in self.layers for c in lo.candidates[1:]]
        if not faster:
            return None
        err, name, label = min(faster)
        return (f"note: every faster choice alone exceeds the error budget {self.target.value:g} (the least: {name} "
                f"as {label}, {err:.3g}), so every layer stays dense: the output is sensitive to every layer's "
                f"quantization (compact nets such as SqueezeNet; seeded or random weights, which have nothing for k-means "
                f"to find). A looser --plan error=E, a size target, or --plan uniform (the paper's settings) quantizes.")

    def format(self) -> str:
        head = f"{'layer':<16} {'choice':>7} {'ms':>7} {'dense ms':>8} {'MFLOPs':>8} {'plain err':>9}"
        lines = [head, "-" * len(head)]
        for lo in self.layers:
            c, d = lo.candidates[lo.chosen], lo.candidates[0]
            lines.append(f"{lo.name[:16]:<16} {c.label:>7} {c.ms:>7.3f} {d.ms:>8.3f} {c.flops / 1e6:>8.1f} {c.error:>9.4f}")
        t = self.totals()
        lines.append("-" * len(head))
        timed = (f"measured {t['speedup_time']:.2f}x ({t['ms']:.3f} of {t['ms_dense']:.3f} ms), "
                 if np.isfinite(t["ms"]) else "not timed, ")
        lines.append(f"plan {self.target} (cost: {self.target.cost}): {timed}FLOPs {t['speedup_flops']:.2f}x, "
                     f"size {t['compression']:.2f}x, summed plain {self.info.get('error', 'response')} error {t['error']:.4f}")
        return "\n".join(lines)


def totals(layers: Sequence[LayerOptions], choice: Sequence[int]) -> Dict[str, float]:
    pick = [lo.candidates[i] for lo, i in zip(layers, choice)]
    dense = [lo.candidates[0] for lo in layers]
    ms, msd = sum(c.ms for c in pick), sum(c.ms for c in dense)
    fl, fld = sum(c.flops for c in pick), sum(c.flops for c in dense)
    by, byd = sum(c.nbytes for c in pick), sum(c.nbytes for c in dense)
    return {"ms": ms, "ms_dense": msd, "speedup_time": msd / max(ms, 1e-12), "flops": fl, "flops_dense": fld,
            "speedup_flops": fld / max(fl, 1), "bytes": by, "bytes_dense": byd, "compression": byd / max(by, 1),
            "error": sum(c.error for c in pick)}


# --------------------------------------------------------------------------- target
def parse_target(text: str) -> Target:
    """'speed=2', 'size=10', 'ms=1.2', optionally ',cost=flops' (speed only); 'speed=S,size=X' or
    'ms=T,size=X' asks for both a time (or FLOPs) and a size target. 'error=E' (optionally
    ',cost=flops'): the fastest plan with summed error <= E; 'auto' is error=AUTO_ERROR."""
    if str(text).strip() == "auto":
        return Target("error", AUTO_ERROR, "time")
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    kv = {}
    for p in parts:
        if "=" not in p:
            raise ConversionError(f"--plan: expected speed=S, size=X or ms=T (optionally ,cost=time|flops), got {text!r}")
        k, v = p.split("=", 1)
        kv[k.strip()] = v.strip()
    goals = [k for k in ("speed", "size", "ms", "error") if k in kv]
    unknown = set(kv) - {"speed", "size", "ms", "error", "cost"}
    if unknown or not goals or ("speed" in kv and "ms" in kv) or ("error" in kv and len(goals) > 1):
        raise ConversionError(f"--plan: give auto, or one of speed=, size=, ms=, error= (and optionally cost=), or "
                              f"size= with speed= or ms=, got {text!r}")
    values = {}
    for what in goals:
        try:
            values[what] = float(kv[what])
        except ValueError:
            raise ConversionError(f"--plan {what}: expected a number, got {kv[what]!r}") from None
        # speed below 1 (slower than dense) only makes sense as the price of a size target
        at_least_1 = what == "size" or (what == "speed" and len(goals) == 1)
        if not np.isfinite(values[what]) or not values[what] > 0 or (at_least_1 and values[what] < 1):
            raise ConversionError(f"--plan {what}={kv[what]}: must be {'>= 1' if at_least_1 else '> 0'}")
    what = goals[0] if len(goals) == 1 else next(g for g in goals if g != "size")
    value = values[what]
    size = values["size"] if len(goals) == 2 else None
    cost = kv.get("cost", "bytes" if what == "size" else "time")
    if what == "size" and cost != "bytes":
        raise ConversionError("--plan size=X is always counted in bytes")
    if what != "size" and cost not in ("time", "flops"):
        raise ConversionError(f"--plan cost must be time or flops, got {cost!r}")
    if what == "ms" and cost != "time":
        raise ConversionError("--plan ms=T needs cost=time")
    return Target(what, value, cost, size)


# --------------------------------------------------------------------------- candidates
def _layers(model: ir.Model):
    return [op for op in model.operators if isinstance(op, (ir.Conv, ir.Gemm))]


def candidate_settings(op, candidates=DEFAULT_CANDIDATES) -> List[Tuple[int, int]]:
    cin_g = op.cin // op.groups if isinstance(op, ir.Conv) else op.in_features
    return [(c, k) for c, k in candidates if c <= cin_g and cin_g % c == 0]


def _costs(op, shapes, c: int, k: int):
    from .convert import layer_costs

    geom = quantize.geometry(op, c, k)
    return layer_costs(op, geom, shapes[op.inputs[0]], shapes[op.outputs[0]])


def _median_ms(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts))


def kernel_ms(op, in_shape, subvec: int, ncode: int, lut: str = "int8", repeats: int = 15,
              rng: Optional[np.random.Generator] = None, x_in: Optional[np.ndarray] = None,
              quantized: Optional[ir.QuantizedWeights] = None) -> float:
    """Median time (ms) of the runtime kernel for this layer: dense if subvec == 0, else Q-CNN with
    the given codebooks and indices (`quantized`, at subvec/ncode), or random ones of the right
    shape. x_in: the layer's input for one image (C, H, W or features), e.g. from a calibration
    image; without it a random one. A conv's table time can depend on both: rows whose int8 step
    the runtime guesses from the row above are built again when the guess does not fit, and that
    follows how the tables' ranges change from row to row, which noise does not imitate."""
    from qcnn.runtime import _core
    from qcnn.runtime.model import dense_precision

    rng = rng or np.random.default_rng(0)
    bias = op.bias.astype(np.float32) if op.bias is not None else None
    if x_in is not None and x_in.size != int(np.prod(in_shape)):
        raise ValueError(f"{op.name}: timing input has {x_in.size} values, the layer takes {tuple(in_shape)}")
    if isinstance(op, ir.Conv):
        c, h, w = in_shape
        if x_in is not None:  # the runtime's layout: channels last
            x = np.ascontiguousarray(np.asarray(x_in, np.float32).reshape(c, h, w).transpose(1, 2, 0))
        else:
            x = rng.standard_normal((h, w, c)).astype(np.float32)
        if subvec == 0:  # in the precision the runtime will use for it
            k = _core.DenseConvKernel(op.weights, bias, strides=op.strides, pads=op.pads, groups=op.groups,
                                      relu=bool(op.relu), isa={"avx512vbmi": "avx512"}.get(_core.isa_selected(), "auto"),
                                      precision=dense_precision(lut, conv=op))
        else:
            geom = quantize.geometry(op, subvec, ncode)
            if quantized is not None:
                cb, idx = quantized.codebooks, quantized.indices
            else:
                cb = rng.standard_normal((op.groups, geom.nsub, ncode, subvec)).astype(np.float32)
                idx = rng.integers(0, ncode, (op.groups, geom.kh, geom.kw, geom.nsub, geom.cout_g)).astype(np.uint8)
            k = _core.QConvKernel(op.cin, op.cout, op.groups, geom.kh, geom.kw, op.strides, op.pads, subvec,
                                  geom.nsub, ncode, cb, idx, bias, bool(op.relu), lut=lut)
        y = np.empty(k.out_shape(h, w), np.float32)
        scratch = np.empty(max(64, int(k.scratch_nbytes(h, w))), np.uint8)
    else:
        if x_in is not None:
            x = np.ascontiguousarray(np.asarray(x_in, np.float32).reshape(-1))
        else:
            x = rng.standard_normal(op.in_features).astype(np.float32)
        y = np.empty(op.out_features, np.float32)
        if subvec == 0:
            k = _core.DenseFcKernel(op.weights, bias, relu=bool(op.relu),
                                    isa={"avx512vbmi": "avx512"}.get(_core.isa_selected(), "auto"),
                                    precision=dense_precision(lut, conv=op))
        else:
            geom = quantize.geometry(op, subvec, ncode)
            cb = rng.standard_normal((geom.nsub, ncode, subvec)).astype(np.float32)
            idx = rng.integers(0, ncode, (geom.nsub, op.out_features)).astype(np.uint8)
            k = _core.QFcKernel(op.in_features, op.out_features, subvec, geom.nsub, ncode, cb, idx, bias,
                                bool(op.relu), lut=lut)
        scratch = np.empty(max(64, int(k.scratch_nbytes())), np.uint8)
    return _median_ms(lambda: k.run(x, y, scratch), repeats)


def keep_dense_where_faster(model: ir.Model, plans, lut: str = "int8", log=None, timer=None,
                            x: Optional[np.ndarray] = None, kmeans_iters: int = 15) -> List[str]:
    """qcnn-convert --dense-where-faster: time each layer the fixed C's/K settings would quantize,
    as tables and dense, on this CPU, and keep it dense where dense is at least as fast (on
    AVX-512 VNNI, Zen 4: VGG-16's conv1_2, conv2_1 and conv2_2, whose dense int8 runs as
    Winograd, 7.3 / 3.2 / 7.2 ms against 12.0 / 4.4 / 7.7 ms of 8/128 tables; conv3_x and later
    stay tables). Layers given explicitly (--layer) are left alone. x: calibration images; the layers
    are then timed on the first one's activations, a conv's tables with plain k-means codebooks
    of its weights (a quick fit, as the planner's) standing in for the file's. Without x: random
    inputs and codebooks. Returns the names kept dense."""
    timer = timer or kernel_ms
    shapes = {t.name: t.shape for t in model.tensors}
    ops = {op.name: op for op in _layers(model)}
    todo = [p for p in plans if p.quantize and not p.explicit]
    inputs = layer_inputs(model, x[:1], [ops[p.name].inputs[0] for p in todo]) if x is not None and todo else {}
    kept = []
    for p in todo:
        op = ops[p.name]
        x_in, quantized = None, None
        if op.inputs[0] in inputs:
            x_in = inputs[op.inputs[0]][0]
            if isinstance(op, ir.Conv):
                geom = quantize.geometry(op, p.subvec, p.ncode)
                cb, assign = _plan_kmeans(quantize.weight_blocks(op.weights, geom), geom,
                                          np.random.default_rng(0), kmeans_iters)
                quantized = quantize.to_quantized_weights(cb, assign, geom)
        t_quant = timer(op, shapes[op.inputs[0]], p.subvec, p.ncode, lut=lut, x_in=x_in, quantized=quantized)
        t_dense = timer(op, shapes[op.inputs[0]], 0, 0, lut=lut, x_in=x_in)
        if t_dense <= t_quant:
            p.quantize = False
            p.reason = f"dense is faster on this CPU ({t_dense:.3f} vs {t_quant:.3f} ms as {p.subvec}/{p.ncode})"
            kept.append(p.name)
        if log:
            log(f"  {p.name}: {p.subvec}/{p.ncode} tables {t_quant:.3f} ms, dense {t_dense:.3f} ms"
                f"{' -> dense' if not p.quantize else ''}")
    return kept


def layer_inputs(model: ir.Model, x: np.ndarray, names: Optional[Iterable[str]] = None) -> Dict[str, np.ndarray]:
    """Every Conv/Gemm input tensor (or those named) of the original network on x."""
    from .forward import run_model

    names = {op.inputs[0] for op in _layers(model)} if names is None else set(names)
    env = run_model(model, x, keep=names)
    return {n: env[n] for n in names}


def plain_errors(op, S: np.ndarray, settings: Sequence[Tuple[int, int]], seed: int, kmeans_iters: int,
                 weights_out: Optional[Dict[Tuple[int, int], np.ndarray]] = None) -> Dict[Tuple[int, int], float]:
    """Relative response error of plain k-means for each (C's, K), on the layer's original input S.
    weights_out (if given) receives each setting's dense k-means weights."""
    from .convert import collect_stats

    out = {}
    stats = None
    for i, (c, k) in enumerate(settings):
        geom = quantize.geometry(op, c, k)
        Wb = quantize.weight_blocks(op.weights, geom)
        if stats is None:  # C's divides the channels: D and the row order are the same for every C's
            stats = collect_stats(op, geom, Wb, S, S)
            TT = max(sum(s.TT for s in stats), 1e-300)
        cb, A = _plan_kmeans(Wb, geom, np.random.default_rng([seed, i]), kmeans_iters)
        W = quantize.reconstruct_blocks(cb, A, geom)
        out[(c, k)] = sum(s.error(W[g]) for g, s in enumerate(stats)) / TT
        if weights_out is not None:
            weights_out[(c, k)] = quantize.blocks_to_dense(W, geom).astype(np.float32)
    return out


class OutputProbe:
    """The network's output error when one layer's weights are replaced: ||y' - y||^2 / ||y||^2 on a
    few calibration images, y the logits (the input of a final Softmax, else the graph output).

    All tensors of the original network are kept once; a probe recomputes only the operators
    downstream of the changed layer (the others' outputs are reused), so a layer near the end is
    cheap and one near the input costs about a forward pass."""

    def __init__(self, model: ir.Model, x: np.ndarray):
        from .forward import run_op

        self.model = model
        last = model.operators[-1]
        self.target = last.inputs[0] if isinstance(last, ir.Softmax) else model.outputs[0]
        env = {model.input_name: np.asarray(x, dtype=np.float32)}
        for op in model.operators:
            env[op.outputs[0]] = run_op(op, [env[t] for t in op.inputs])
        self.env = env
        y = env[self.target].astype(np.float64)
        self.yy = max(float((y ** 2).sum()), 1e-300)

    def error(self, op, weights: np.ndarray) -> float:
        from .forward import run_op

        ops = self.model.operators
        start = next(i for i, o in enumerate(ops) if o is op)
        changed = {op.outputs[0]: run_op(op, [self.env[t] for t in op.inputs], weights=weights)}
        for o in ops[start + 1:]:
            if any(t in changed for t in o.inputs):
                changed[o.outputs[0]] = run_op(o, [changed.get(t, self.env[t]) for t in o.inputs])
        if self.target not in changed:
            return 0.0  # the layer does not reach the output
        d = changed[self.target].astype(np.float64) - self.env[self.target]
        return float((d ** 2).sum()) / self.yy


def score(model: ir.Model, x: Optional[np.ndarray], *, lut: str = "int8", candidates=DEFAULT_CANDIDATES,
          calib_count: int = PLAN_CALIB, seed: int = 0, kmeans_iters: int = 15, repeats: int = 15,
          time_kernels: bool = True, error: str = "output", output_count: int = OUTPUT_CALIB,
          log=None, keep_dense: Sequence[str] = (), min_saving: Optional[float] = None) -> List[LayerOptions]:
    """All candidates of every Conv/Gemm layer with cost and error.

    error "output" (default): the network output's relative error with only this layer quantized
    (plain k-means, on `output_count` calibration images): it sees how much the rest of the network
    amplifies or forgets a layer's error, which the layer's own response error cannot. min_saving
    (with time_kernels): candidates that do not save this fraction of the dense time are dropped
    before their error is measured (an error=E plan never takes them). "response":
    the layer's relative response error on its original input (cheaper). Without calibration data
    (x None) the error is the relative weight error ||W - W_hat||^2/||W||^2.
    """
    if error not in ("output", "response"):
        raise ConversionError(f"--plan error must be output or response, got {error!r}")
    log = log or (lambda msg: None)
    shapes = {t.name: t.shape for t in model.tensors}
    if x is not None and len(x) > calib_count:
        x = x[np.sort(np.random.default_rng(seed).permutation(len(x))[:calib_count])]
    probe = None
    if x is not None and error == "output":  # the probe keeps every activation of its images
        per_image = 4 * sum(int(np.prod(t.shape)) for t in model.tensors if t.shape)
        probe = OutputProbe(model, x[:max(2, min(output_count, OUTPUT_KEEP_BYTES // max(per_image, 1)))])
    inputs = layer_inputs(model, x) if x is not None else {}
    out = []
    for op in _layers(model):
        kind = "conv" if isinstance(op, ir.Conv) else "fc"
        settings = [] if op.name in keep_dense else candidate_settings(op, candidates)
        fd, _, bd, _ = _costs(op, shapes, 1, 2)
        cands = [Candidate(0, 0, fd, bd)]
        for c, k in settings:
            _, fq, _, bq = _costs(op, shapes, c, k)
            cands.append(Candidate(c, k, fq, bq))
        if time_kernels:  # on the first calibration image's activations, when there are images
            x_in = inputs[op.inputs[0]][0] if op.inputs[0] in inputs else None
            for cand in cands:
                cand.ms = kernel_ms(op, shapes[op.inputs[0]], cand.subvec, cand.ncode, lut, repeats, x_in=x_in)
            if min_saving is not None:
                cands = [c for c in cands if c.dense or c.ms <= (1 - min_saving) * cands[0].ms]
                settings = [(c.subvec, c.ncode) for c in cands[1:]]
        if x is not None:
            dense_w = {} if probe is not None else None
            errs = plain_errors(op, inputs.pop(op.inputs[0]) if _last_reader(model, op) else inputs[op.inputs[0]],
                                settings, seed, kmeans_iters, weights_out=dense_w)
            if probe is not None:
                errs = {cs: probe.error(op, w) for cs, w in dense_w.items()}
        else:
            errs = _weight_errors(op, settings, seed, kmeans_iters)
        for cand in cands[1:]:
            cand.error = float(errs[(cand.subvec, cand.ncode)])
        out.append(LayerOptions(op.name, kind, cands))
        log(f"  plan: scored {op.name}: " + ", ".join(
            f"{c.label}" + (f" {c.ms:.3f}ms" if np.isfinite(c.ms) else "") + f" e={c.error:.2g}" for c in cands))
    return out


def _last_reader(model, op) -> bool:
    readers = [o for o in _layers(model) if o.inputs[0] == op.inputs[0]]
    return readers[-1] is op


def _weight_errors(op, settings, seed, kmeans_iters):
    out = {}
    for i, (c, k) in enumerate(settings):
        geom = quantize.geometry(op, c, k)
        Wb = quantize.weight_blocks(op.weights, geom)
        cb, A = _plan_kmeans(Wb, geom, np.random.default_rng([seed, i]), kmeans_iters)
        W = quantize.reconstruct_blocks(cb, A, geom)
        out[(c, k)] = float(((W - Wb) ** 2).sum() / max((Wb ** 2).sum(), 1e-300))
    return out


# --------------------------------------------------------------------------- selection
def _cost_of(c: Candidate, target: Target) -> float:
    return {"time": c.ms, "flops": float(c.flops), "bytes": float(c.nbytes)}[target.cost]


def budget(layers: Sequence[LayerOptions], target: Target) -> float:
    dense = sum(_cost_of(lo.candidates[0], target) for lo in layers)
    if target.what == "ms":
        return target.value
    return dense / target.value


def select(layers: List[LayerOptions], target: Target, resolution: int = 20000) -> List[int]:
    if target.what == "error":
        return _select_within_error(layers, target)
    if target.size is not None:
        return _select_two(layers, target)
    return _select_one(layers, target, resolution)


def _allowed(lo: LayerOptions, j: int) -> bool:
    return lo.allowed is None or j in lo.allowed


def _select_within_error(layers: List[LayerOptions], target: Target) -> List[int]:
    """Indices of the chosen candidate per layer: least total cost with summed error <= target.value.

    Multiple-choice knapsack the other way round: dynamic programming over the summed error, each
    candidate's error rounded *up* to a fixed grid (ERROR_GRID, coarser only for budgets above
    0.2), so the plan keeps the budget in true errors and a looser budget never costs more. Dense
    (error 0) is always feasible; a table is a candidate only where it saves at least
    ERROR_PLAN_MIN_SAVING of the layer's dense cost. Equal costs go to the smaller file."""
    E = target.value
    unit = max(ERROR_GRID, E / 20000)
    cells_budget = int(np.floor(E / unit + 1e-9))
    best = np.zeros(cells_budget + 1)  # best[e]: least cost of the layers so far with error <= e cells
    bytes_total = max(sum(lo.candidates[0].nbytes for lo in layers), 1)
    # each candidate's error in grid cells, rounded up
    cells = [[int(np.ceil(c.error / unit - 1e-9)) if c.error > 0 else 0 for c in lo.candidates] for lo in layers]
    back = []
    for lo, ecells in zip(layers, cells):
        costs = np.array([_cost_of(c, target) for c in lo.candidates])
        if not np.isfinite(costs).all():
            raise ConversionError("--plan: some candidate has no cost (kernel timing failed)")
        # ties (equal cost) break toward fewer bytes: a term far below any timing difference
        keys = costs + 1e-9 * costs[0] * np.array([c.nbytes for c in lo.candidates]) / bytes_total
        new = np.full(cells_budget + 1, np.inf)
        arg = np.zeros(cells_budget + 1, np.int64)
        for j, c in enumerate(lo.candidates):
            if not _allowed(lo, j):
                continue
            if j and costs[j] > (1 - ERROR_PLAN_MIN_SAVING) * costs[0]:
                continue
            e = ecells[j]
            if e > cells_budget:
                continue
            cand = np.full(cells_budget + 1, np.inf)
            cand[e:] = best[:cells_budget + 1 - e] + keys[j]
            better = cand < new
            new[better] = cand[better]
            arg[better] = j
        best = new
        back.append(arg)
    e = cells_budget
    choice = [0] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        j = int(back[i][e])
        choice[i] = j
        e -= cells[i][j]
    return choice


def _select_one(layers: List[LayerOptions], target: Target, resolution: int = 20000) -> List[int]:
    """Indices of the chosen candidate per layer: least summed error with total cost <= budget.

    Exact multiple-choice knapsack by dynamic programming over the *savings* against dense
    (dense cost - candidate cost), rounded *down* to a grid of (dense total / resolution): the plan
    always meets the budget in true costs, all-dense stays feasible for speed=1, and since the grid
    does not depend on the target a looser target can only lower the error. Candidates that cost
    more than dense are dropped (dense is better in cost and error). Raises ConversionError if the
    budget is out of reach.
    """
    B = budget(layers, target)
    cost = [np.array([_cost_of(c, target) for c in lo.candidates]) for lo in layers]
    err = [np.array([c.error for c in lo.candidates]) for lo in layers]
    if any(not np.isfinite(cs).all() for cs in cost):
        raise ConversionError("--plan: some candidate has no cost (kernel timing failed)")
    dense = float(sum(cs[0] for cs in cost))
    unit = max(dense, 1e-300) / resolution
    need = max(0, int(np.ceil((dense - B) / unit - 1e-9)))  # cells of savings needed
    save = [np.floor((cs[0] - cs) / unit + 1e-9).astype(np.int64) for cs in cost]
    if sum(max(int(sv[j]) for j in range(len(sv)) if _allowed(lo, j)) for lo, sv in zip(layers, save)) < need:
        best = sum(float(cs.min()) for cs in cost)
        raise ConversionError(f"--plan {target.what}={target.value:g} is out of reach: the cheapest choice for every "
                              f"layer gives {dense / best:.2f}x ({best:.4g} of {dense:.4g} {target.cost})")
    best = np.full(need + 1, np.inf)  # best[s]: least error of the layers so far saving >= s cells
    best[0] = 0.0
    cells = np.arange(need + 1)
    back = []
    for lo, sv, es in zip(layers, save, err):
        new = np.full(need + 1, np.inf)
        arg = np.zeros(need + 1, np.int64)
        for j in range(len(sv)):
            if not _allowed(lo, j) or sv[j] < 0 or (j and sv[j] == 0 and es[j] >= es[0]):
                continue  # pinned elsewhere (--skip), costs more than dense, or saves nothing
            cand = best[np.maximum(cells - sv[j], 0)] + es[j]
            better = cand < new - 1e-15
            new[better] = cand[better]
            arg[better] = j
        best = new
        back.append(arg)
    s = need
    choice = [0] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        j = int(back[i][s])
        choice[i] = j
        s = max(0, s - int(save[i][j]))
    return choice


def _select_two(layers: List[LayerOptions], target: Target, resolution: Tuple[int, int] = (1000, 400)) -> List[int]:
    """select() for a time/FLOPs target and a size target together: dynamic programming over a 2-D
    grid of *costs* (each candidate's cost rounded up to cells of budget/resolution, so the plan meets
    both budgets in true costs). Unlike savings, costs let a layer that is slower than dense but
    smaller be paid for by another layer's time savings (`ms=` or `speed=` with `size=`)."""
    size_target = Target("size", target.size, "bytes")
    err = [np.array([c.error for c in lo.candidates]) for lo in layers]
    cells, limits = [], []
    for tgt, res in zip((target, size_target), resolution):
        cs = [np.array([_cost_of(c, tgt) for c in lo.candidates]) for lo in layers]
        if any(not np.isfinite(c).all() for c in cs):
            raise ConversionError("--plan: some candidate has no cost (kernel timing failed)")
        unit = max(budget(layers, tgt), 1e-300) / res
        cells.append([np.ceil(c / unit - 1e-9).astype(np.int64) for c in cs])
        limits.append(res)
    nt, nb = limits
    best = np.zeros((nt + 1, nb + 1))  # best[i, j]: least error of the layers so far costing <= (i, j) cells
    back = []
    for lo, ct, cb, es in zip(layers, cells[0], cells[1], err):
        new = np.full_like(best, np.inf)
        arg = np.zeros(best.shape, np.int16)
        for k in range(len(es)):
            if ct[k] > nt or cb[k] > nb or not _allowed(lo, k):
                continue
            cand = np.full_like(best, np.inf)
            cand[ct[k]:, cb[k]:] = best[:nt + 1 - ct[k], :nb + 1 - cb[k]] + es[k]
            better = cand < new - 1e-15
            new[better] = cand[better]
            arg[better] = k
        best = new
        back.append(arg)
    if not np.isfinite(best[nt, nb]):
        raise ConversionError(f"--plan {target} is out of reach: no choice of dense or (C's, K) per layer meets "
                              f"both the {target.cost} and the size target")
    i, j = nt, nb
    choice = [0] * len(layers)
    for li in range(len(layers) - 1, -1, -1):
        k = int(back[li][i, j])
        choice[li] = k
        i, j = i - int(cells[0][li][k]), j - int(cells[1][li][k])
    return choice


def make_plan(model: ir.Model, x: Optional[np.ndarray], target, *, lut: str = "int8", seed: int = 0,
              candidates=DEFAULT_CANDIDATES, calib_count: int = PLAN_CALIB, error: str = "output", log=None,
              scored: Optional[List[LayerOptions]] = None, keep_dense: Sequence[str] = ()) -> Plan:
    """Score the candidates (unless `scored` is given) and choose one per layer for `target`;
    the layers named in `keep_dense` (--skip) stay dense."""
    t0 = time.time()
    target = parse_target(target) if isinstance(target, str) else target
    keep_dense = set(keep_dense)
    layers = scored if scored is not None else score(
        model, x, lut=lut, candidates=candidates, calib_count=calib_count, seed=seed,
        time_kernels=target.cost == "time", error=error, log=log, keep_dense=keep_dense,
        min_saving=ERROR_PLAN_MIN_SAVING if target.what == "error" and target.cost == "time" else None)
    # fresh choices
    layers = [LayerOptions(lo.name, lo.kind, lo.candidates, allowed=[0] if lo.name in keep_dense else None)
              for lo in layers]
    for lo, j in zip(layers, select(layers, target)):
        lo.chosen = j
    plan = Plan(target, layers, lut, time.time() - t0)
    plan.info["calib_samples"] = 0 if x is None else int(min(len(x), calib_count))
    plan.info["error"] = "weights" if x is None else error
    return plan
