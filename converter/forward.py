"""A small NCHW numpy executor for ir.Model, used by the converter to feed calibration data.

The converter needs every layer's input in the partially quantized network and its response in
the original network (paper §3.3.3), so it runs the graph itself, op by op. Convolutions are
im2col (numpy stride tricks) + BLAS matmul, processed in chunks of images to bound memory.
This is converter-side code (BLAS is fine here); the runtime has its own kernels.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from qcnn.schema import ir

from .onnx_import import pool_output_size

# Target size of one im2col chunk (float32 elements * 4 bytes).
CHUNK_BYTES = 64 << 20


def conv_output_hw(op: ir.Conv, h: int, w: int) -> Tuple[int, int]:
    kh, kw = op.kernel
    t, l, b, r = op.pads
    return (h + t + b - kh) // op.strides[0] + 1, (w + l + r - kw) // op.strides[1] + 1


def pad_nhwc(x: np.ndarray, pads, cpad: int = 0) -> np.ndarray:
    """NCHW -> zero-padded NHWC (spatial pads top, left, bottom, right; `cpad` extra zero channels)."""
    t, l, b, r = pads
    n, c, h, w = x.shape
    out = np.zeros((n, h + t + b, w + l + r, c + cpad), dtype=np.float32)
    out[:, t:t + h, l:l + w, :c] = x.transpose(0, 2, 3, 1)
    return out


def patches(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int) -> np.ndarray:
    """View (N, OH, OW, KH, KW, C) of the sliding windows of a padded NHWC array."""
    n, _, _, c = xp.shape
    s0, s1, s2, s3 = xp.strides
    return as_strided(xp, shape=(n, oh, ow, kh, kw, c), strides=(s0, s1 * sh, s2 * sw, s1, s2, s3), writeable=False)


def image_chunks(n: int, bytes_per_image: int, budget: int = CHUNK_BYTES) -> Iterable[Tuple[int, int]]:
    step = max(1, budget // max(1, bytes_per_image))
    for i in range(0, n, step):
        yield i, min(n, i + step)


def conv_weight_matrices(W: np.ndarray, groups: int, cin_pad: int = 0) -> np.ndarray:
    """Dense [Cout][Cin/G][KH][KW] -> (G, KH*KW*(Cin/G + cin_pad), Cout/G), rows ordered (kh, kw, c)."""
    cout, cin_g, kh, kw = W.shape
    cg = cout // groups
    Wt = W.reshape(groups, cg, cin_g, kh, kw).transpose(0, 3, 4, 2, 1)  # G, KH, KW, Cin_g, Cout_g
    if cin_pad:
        Wt = np.concatenate([Wt, np.zeros(Wt.shape[:3] + (cin_pad, cg), Wt.dtype)], axis=3)
    return np.ascontiguousarray(Wt.reshape(groups, kh * kw * (cin_g + cin_pad), cg))


def conv2d(x: np.ndarray, op: ir.Conv, W: np.ndarray, bias: Optional[np.ndarray], relu: bool) -> np.ndarray:
    n, c, h, w = x.shape
    kh, kw = op.kernel
    oh, ow = conv_output_hw(op, h, w)
    G = op.groups
    cin_g, cout_g = c // G, op.cout // G
    mats = conv_weight_matrices(W.astype(np.float32), G)
    out = np.empty((n, op.cout, oh, ow), dtype=np.float32)
    per_image = oh * ow * kh * kw * c * 4
    for i0, i1 in image_chunks(n, per_image):
        xp = pad_nhwc(x[i0:i1], op.pads)
        pt = patches(xp, kh, kw, op.strides[0], op.strides[1], oh, ow)
        for g in range(G):
            rows = pt[..., g * cin_g:(g + 1) * cin_g].reshape(-1, kh * kw * cin_g)
            y = rows @ mats[g]  # (n*oh*ow, cout_g)
            out[i0:i1, g * cout_g:(g + 1) * cout_g] = y.reshape(i1 - i0, oh, ow, cout_g).transpose(0, 3, 1, 2)
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    if relu:
        np.maximum(out, 0, out=out)
    return out


def gemm(x: np.ndarray, W: np.ndarray, bias: Optional[np.ndarray], relu: bool) -> np.ndarray:
    y = x.astype(np.float32) @ W.astype(np.float32).T
    if bias is not None:
        y += bias
    if relu:
        np.maximum(y, 0, out=y)
    return y


def _pool_windows(x, kernel, strides, pads, ceil_mode, fill):
    n, c, h, w = x.shape
    oh, ow = pool_output_size((h, w), kernel, strides, pads, ceil_mode)
    t, l, _, _ = pads
    # enough bottom/right padding for every window (ceil_mode may need more than the declared pads)
    H = max(h + t, (oh - 1) * strides[0] + kernel[0])
    Wd = max(w + l, (ow - 1) * strides[1] + kernel[1])
    xp = np.full((n, c, H, Wd), fill, dtype=np.float32)
    xp[:, :, t:t + h, l:l + w] = x
    s = xp.strides
    view = as_strided(xp, shape=(n, c, oh, ow, kernel[0], kernel[1]),
                      strides=(s[0], s[1], s[2] * strides[0], s[3] * strides[1], s[2], s[3]), writeable=False)
    return view, (oh, ow), (H, Wd)


def maxpool(x: np.ndarray, op: ir.MaxPool) -> np.ndarray:
    view, _, _ = _pool_windows(x, op.kernel, op.strides, op.pads, op.ceil_mode, -np.inf)
    return view.max(axis=(4, 5))


def avgpool(x: np.ndarray, op: ir.AveragePool) -> np.ndarray:
    view, (oh, ow), (H, Wd) = _pool_windows(x, op.kernel, op.strides, op.pads, op.ceil_mode, 0.0)
    total = view.sum(axis=(4, 5), dtype=np.float64)
    n, c, h, w = x.shape
    t, l, b, r = op.pads
    mask = np.zeros((1, 1, H, Wd), dtype=np.float32)
    if op.count_include_pad:  # cells of the declared padded area count, ceil-mode overhang does not
        mask[:, :, :min(H, h + t + b), :min(Wd, w + l + r)] = 1
    else:
        mask[:, :, t:t + h, l:l + w] = 1
    s = mask.strides
    mview = as_strided(mask, shape=(1, 1, oh, ow, op.kernel[0], op.kernel[1]),
                       strides=(s[0], s[1], s[2] * op.strides[0], s[3] * op.strides[1], s[2], s[3]))
    count = mview.sum(axis=(4, 5))
    return (total / np.maximum(count, 1)).astype(np.float32)


def lrn(x: np.ndarray, op: ir.LRN) -> np.ndarray:
    c = x.shape[1]
    sq = np.square(x.astype(np.float64))
    lo, hi = (op.size - 1) // 2, op.size - 1 - (op.size - 1) // 2
    csum = np.concatenate([np.zeros_like(sq[:, :1]), np.cumsum(sq, axis=1)], axis=1)
    idx = np.arange(c)
    upper = np.minimum(idx + hi + 1, c)
    lower = np.maximum(idx - lo, 0)
    s = csum[:, upper] - csum[:, lower]
    return (x / (op.bias + op.alpha / op.size * s) ** op.beta).astype(np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def dense_weights(op) -> np.ndarray:
    """The dense float weights of a Conv/Gemm (reconstructed from codebooks if quantized)."""
    if isinstance(op.weights, ir.QuantizedWeights):
        from .quantize import reconstruct

        return reconstruct(op)
    return op.weights


def run_op(op, xs: List[np.ndarray], weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Apply one ir operator to its (batched) inputs. `weights` overrides the op's weights."""
    if isinstance(op, ir.Conv):
        return conv2d(xs[0], op, dense_weights(op) if weights is None else weights, op.bias, op.relu)
    if isinstance(op, ir.Gemm):
        return gemm(xs[0], dense_weights(op) if weights is None else weights, op.bias, op.relu)
    if isinstance(op, ir.Relu):
        return np.maximum(xs[0], 0)
    if isinstance(op, ir.LRN):
        return lrn(xs[0], op)
    if isinstance(op, ir.MaxPool):
        return maxpool(xs[0], op)
    if isinstance(op, ir.AveragePool):
        return avgpool(xs[0], op)
    if isinstance(op, ir.GlobalAveragePool):
        return xs[0].mean(axis=(2, 3), keepdims=True, dtype=np.float64).astype(np.float32)
    if isinstance(op, ir.Flatten):
        return xs[0].reshape(xs[0].shape[0], -1)
    if isinstance(op, ir.Softmax):
        return softmax(xs[0])
    if isinstance(op, ir.Concat):
        return np.concatenate(xs, axis=1)
    if isinstance(op, ir.Add):
        y = xs[0] + xs[1]
        return np.maximum(y, 0) if op.relu else y
    raise TypeError(f"unknown operator {type(op).__name__}")


def last_uses(model: ir.Model) -> Dict[str, int]:
    """tensor -> index of the last operator reading it (graph outputs live to the end)."""
    last: Dict[str, int] = {}
    for i, op in enumerate(model.operators):
        for t in op.inputs:
            last[t] = i
    for t in model.outputs:
        last[t] = len(model.operators)
    return last


def run_model(model: ir.Model, x: np.ndarray, keep: Iterable[str] = ()) -> Dict[str, np.ndarray]:
    """Run the whole graph; returns the graph outputs (and any tensors named in `keep`)."""
    keep = set(keep) | set(model.outputs)
    last = last_uses(model)
    env = {model.input_name: np.asarray(x, dtype=np.float32)}
    for i, op in enumerate(model.operators):
        env[op.outputs[0]] = run_op(op, [env[t] for t in op.inputs])
        for t in op.inputs:
            if last.get(t, -1) <= i and t not in keep:
                env.pop(t, None)
    return {k: v for k, v in env.items() if k in keep}
