"""Calibration data for error correction: image folders or preprocessed arrays.

Image folders (JPEG/PNG/BMP) are decoded with Pillow and preprocessed as described by an
ir.Preprocessing, which is also stored in the output file so the runtime can reproduce it:
  shorter side resized to `resize_shorter` (bilinear), centre crop to `crop`, channel order,
  x = (pixel * scale - mean) / std per channel, CHW float32.

Arrays: a .npy file, or a .npz file from which the first present key of
  x, x_calib, x_train, x_test, data, images
is used (or its only array). The array should be (N, C, H, W) float32, already preprocessed.
For convenience (N, H, W) gains a channel axis when the model has one channel, (N, H, W, C) is
transposed when its last axis matches the model channels, a model with a vector input takes the
samples flattened, and integer arrays (e.g. uint8 MNIST) are converted to float and go through
the preprocessing's scale/mean/std (no resizing).
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np

from qcnn.schema import ir

from .errors import ConversionError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
NPZ_KEYS = ("x", "x_calib", "x_train", "x_test", "data", "images")

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def make_preprocessing(preset: Optional[str], input_shape: Sequence[int], mean=None, std=None, scale=None,
                       size=None, crop=None, bgr: bool = False) -> Optional[ir.Preprocessing]:
    """ir.Preprocessing from a preset ('imagenet', 'caffe', 'none') and explicit overrides."""
    if preset is None and all(v is None for v in (mean, std, scale, size, crop)) and not bgr:
        return None
    chans = input_shape[0] if len(input_shape) == 3 else 1
    hw = tuple(input_shape[1:]) if len(input_shape) == 3 else (0, 0)
    gray = chans == 1
    if preset in (None, "none"):
        p = ir.Preprocessing(mean=[0.0] * chans, std=[1.0] * chans, scale=1.0,
                             channel_order="GRAY" if gray else "RGB", resize_shorter=max(hw), crop=hw)
    elif preset == "imagenet":
        if gray:
            raise ConversionError("--preprocess imagenet needs a 3-channel model input")
        p = ir.Preprocessing(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), scale=1.0 / 255.0,
                             channel_order="RGB", resize_shorter=256 if max(hw) <= 256 else max(hw), crop=hw)
    elif preset == "caffe":
        if gray:
            raise ConversionError("--preprocess caffe needs a 3-channel model input")
        p = ir.Preprocessing(mean=[104.0, 117.0, 123.0], std=[1.0, 1.0, 1.0], scale=1.0, channel_order="BGR",
                             resize_shorter=256 if max(hw) <= 256 else max(hw), crop=hw)
    else:
        raise ConversionError(f"unknown --preprocess {preset!r} (use imagenet, caffe or none)")
    if mean is not None:
        p.mean = _per_channel(mean, chans, "--mean")
    if std is not None:
        p.std = _per_channel(std, chans, "--std")
        if any(s == 0 for s in p.std):
            raise ConversionError("--std values must be nonzero")
    if scale is not None:
        p.scale = float(scale)
    if size is not None:
        p.resize_shorter = int(size)
    if crop is not None:
        p.crop = tuple(int(c) for c in crop)
    if bgr:
        if gray:
            raise ConversionError("--bgr needs a 3-channel model input")
        p.channel_order = "BGR"
    if len(input_shape) == 3 and p.crop != (0, 0) and tuple(p.crop) != hw:
        raise ConversionError(f"--crop {p.crop[0]},{p.crop[1]} does not match the model input {hw[0]}x{hw[1]}")
    return p


def _per_channel(values, chans, flag) -> List[float]:
    vals = [float(v) for v in values]
    if len(vals) == 1:
        vals = vals * chans
    if len(vals) != chans:
        raise ConversionError(f"{flag} needs 1 or {chans} values, got {len(vals)}")
    return vals


def preprocess_image(img, prep: ir.Preprocessing, hw: Tuple[int, int]) -> np.ndarray:
    """PIL image -> (C, H, W) float32 following `prep` (the runtime's implementation, so that
    calibration inputs and `Model.preprocess` agree exactly)."""
    from qcnn.runtime.preprocess import to_input

    chans = 1 if prep.channel_order == "GRAY" else len(prep.mean)
    return to_input(img, prep, (chans,) + tuple(hw))


def list_images(folder: str) -> List[str]:
    files = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.lower().endswith(IMAGE_EXTS)]
    return files


def choose(items: Sequence, count: int, seed: int, offset: int = 0) -> List:
    """A seeded random subset of `count` items (after skipping the first `offset` of the shuffle)."""
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in order[offset:offset + count]]


def load_images(files: Sequence[str], prep: ir.Preprocessing, input_shape, count: int,
                warn=None) -> Tuple[np.ndarray, List[str]]:
    """Decode up to `count` images (skipping unreadable ones with a warning)."""
    from PIL import Image, UnidentifiedImageError

    warn = warn or (lambda msg: print(f"qcnn-convert: warning: {msg}", file=sys.stderr))
    hw = tuple(input_shape[1:])
    out, used = [], []
    for f in files:
        if len(out) >= count:
            break
        try:
            with Image.open(f) as img:
                img.load()
                out.append(preprocess_image(img, prep, hw))
            used.append(f)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            warn(f"skipping unreadable image {f}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    if not out:
        raise ConversionError("no usable calibration images")
    x = np.stack(out)
    if x.shape[1:] != tuple(input_shape):
        raise ConversionError(f"preprocessed images have shape {x.shape[1:]}, the model expects {tuple(input_shape)}")
    return x, used


def load_array(path: str) -> np.ndarray:
    try:
        if path.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                for k in NPZ_KEYS:
                    if k in keys:
                        return z[k]
                if len(keys) == 1:
                    return z[keys[0]]
                raise ConversionError(
                    f"{path}: cannot tell which array holds the samples (keys: {', '.join(keys)}); "
                    f"name it one of {', '.join(NPZ_KEYS)}"
                )
        return np.load(path, allow_pickle=False)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"cannot read calibration array {path}: {str(exc).splitlines()[0]}") from None


def adapt_array(x: np.ndarray, input_shape, prep: Optional[ir.Preprocessing], source: str) -> np.ndarray:
    shape = tuple(input_shape)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ConversionError(f"{source}: calibration array is empty")
    integer = np.issubdtype(x.dtype, np.integer)
    if not (integer or np.issubdtype(x.dtype, np.floating)):
        raise ConversionError(f"{source}: calibration array has dtype {x.dtype}, expected float32")
    x = x.astype(np.float32)
    if len(shape) == 3:
        c = shape[0]
        if x.ndim == 3 and c == 1:
            x = x[:, None]
        elif x.ndim == 4 and x.shape[1:] != shape and x.shape[3] == c and x.shape[1:3] == shape[1:]:
            x = x.transpose(0, 3, 1, 2)
    elif len(shape) == 1 and x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
    if x.shape[1:] != shape:
        raise ConversionError(
            f"{source}: calibration samples have shape {x.shape[1:]}, the model input is {shape} "
            f"(expected an (N, {', '.join(map(str, shape))}) array)"
        )
    if integer and prep is not None:
        c = x.shape[1] if x.ndim == 4 else 1
        mean = np.asarray(prep.mean[:c] if len(prep.mean) >= c else prep.mean[:1] * c, np.float32)
        std = np.asarray(prep.std[:c] if len(prep.std) >= c else prep.std[:1] * c, np.float32)
        if x.ndim == 4:
            mean, std = mean.reshape(1, -1, 1, 1), std.reshape(1, -1, 1, 1)
        else:
            mean, std = mean.reshape(-1)[:1], std.reshape(-1)[:1]
        x = (x * prep.scale - mean) / std
    if not np.isfinite(x).all():
        raise ConversionError(f"{source}: calibration array contains NaN or infinite values")
    return np.ascontiguousarray(x, dtype=np.float32)


def load_calibration(path: str, input_shape, prep: Optional[ir.Preprocessing], count: int, seed: int,
                     offset: int = 0) -> Tuple[np.ndarray, str]:
    """Calibration inputs (N, *input_shape) float32 and a one-line description of the source."""
    if count < 1:
        raise ConversionError(f"--calib-count must be >= 1, got {count}")
    if not os.path.exists(path):
        raise ConversionError(f"calibration data not found: {path}")
    if os.path.isdir(path):
        if len(input_shape) != 3:
            raise ConversionError("image calibration needs a model with an image (N,C,H,W) input")
        if prep is None:
            raise ConversionError("image calibration folders need preprocessing: give --preprocess imagenet|caffe|none")
        files = list_images(path)
        if not files:
            raise ConversionError(f"no JPEG/PNG/BMP images in {path}")
        # shuffle all, then decode until `count` succeed (unreadable files are skipped)
        ordered = choose(files, len(files), seed)[offset:]
        x, used = load_images(ordered, prep, input_shape, count)
        return x, f"{len(used)} images from {path}"
    x = adapt_array(load_array(path), input_shape, prep, path)
    if len(x) > count or offset:
        idx = np.sort(np.random.default_rng(seed).permutation(len(x))[offset:offset + count])
        if len(idx) == 0:
            raise ConversionError(f"{path}: no calibration samples left")
        x = x[idx]
    return x, f"{len(x)} samples from {path}"


def load_labels(path: str) -> List[str]:
    """`index wnid name` lines (ImageNet classes file) or one label per line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln.rstrip("\n") for ln in f]
    except OSError as exc:
        raise ConversionError(f"cannot read labels file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConversionError(f"labels file {path} is not UTF-8 text") from None
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise ConversionError(f"labels file {path} is empty")
    parts = [ln.split(None, 2) for ln in lines]
    if all(len(p) == 3 and p[0].isdigit() for p in parts):
        ordered = sorted(parts, key=lambda p: int(p[0]))
        if [int(p[0]) for p in ordered] != list(range(len(ordered))):
            raise ConversionError(f"labels file {path}: indices are not 0..{len(ordered) - 1}")
        return [f"{p[1]} {p[2]}" for p in ordered]
    return [ln.strip() for ln in lines]
