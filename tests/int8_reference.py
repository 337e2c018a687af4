"""What the int8 dense convs share, for their tests (test_int8_conv.py, test_winograd.py): the
uint8 rounding of an input image, and running a conv kernel into a fresh output."""
import numpy as np

f32 = np.float32


def quantize_input(x):
    """The int8 kernels' uint8 input: per image scale sx and zero point zp covering [min(x, 0), max(x, 0)].
    Returns (q as int64, sx, zp)."""
    lo, hi = min(f32(x.min()), f32(0)), max(f32(x.max()), f32(0))
    sx = f32((hi - lo) / f32(255)) if hi > lo else f32(1)
    inv = f32(f32(1) / sx)
    zp = int(np.clip(np.rint(-lo * inv), 0, 255))
    q = np.clip(x * inv + f32(zp) + f32(0.5), f32(0), f32(255)).astype(np.int64)
    return q, sx, zp


def run(kern, x):
    """kern.run on x [h][w][c] into a NaN-filled output (so unwritten values show)."""
    h, w, _ = x.shape
    y = np.full(kern.out_shape(h, w), np.nan, np.float32)
    kern.run(x, y, np.empty(kern.scratch_nbytes(h, w), np.uint8))
    return y
