"""Image files -> model input, following the preprocessing stored in the .qcnn file.

The one implementation of the preprocessing: the converter uses it for calibration images too, so
the runtime sees inputs prepared exactly as during conversion. Pillow is imported here only (the
runtime itself needs numpy alone): `pip install 'qcnn[images]'`.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from qcnn.schema import ir


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("loading images needs Pillow: pip install 'qcnn[images]'") from None
    return Image


def _source_box(size: Tuple[int, int], pre: ir.Preprocessing, out_hw: Tuple[int, int]):
    """The region of the source image that ends up in the crop, and the crop size.

    Equivalent to "resize the shorter side to resize_shorter, then centre-crop", but resizing only
    the kept region: memory stays bounded by the crop, whatever the image's aspect ratio.
    """
    w, h = size
    crop_h, crop_w = pre.crop if pre.crop[0] else out_hw
    if pre.resize_shorter:
        scale = pre.resize_shorter / min(w, h)
        rw, rh = max(1, round(w * scale)), max(1, round(h * scale))
    elif pre.crop[0]:
        rw, rh = w, h  # crop only
    else:
        return (0, 0, w, h), (crop_w, crop_h)  # plain resize to the input size
    if rw < crop_w or rh < crop_h:
        raise ValueError(f"image is {w}x{h}; after resizing to {rw}x{rh} it is smaller than the {crop_w}x{crop_h} crop")
    left, top = (rw - crop_w) // 2, (rh - crop_h) // 2
    sx, sy = w / rw, h / rh
    return (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy), (crop_w, crop_h)


def to_input(img, pre: ir.Preprocessing, input_chw) -> np.ndarray:
    """A PIL image -> float32 (C, H, W): x = (pixel * scale - mean) / std after resize and crop."""
    Image = _pil()
    c, h, w = input_chw
    img = img.convert("L" if pre.channel_order == "GRAY" or c == 1 else "RGB")
    box, out_size = _source_box(img.size, pre, (h, w))
    if box != (0, 0) + img.size or out_size != img.size:
        img = img.resize(out_size, Image.BILINEAR, box=box)
    x = np.asarray(img, dtype=np.float32)
    x = x[:, :, None] if x.ndim == 2 else x
    if pre.channel_order == "BGR":
        x = x[:, :, ::-1]
    x = (x * np.float32(pre.scale) - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    if x.shape != (h, w, c):
        raise ValueError(f"preprocessed image is {x.shape[0]}x{x.shape[1]}x{x.shape[2]}, the model wants {h}x{w}x{c}")
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def load_image(image, pre: ir.Preprocessing, input_chw) -> np.ndarray:
    """One image (path or PIL image) -> float32 (C, H, W)."""
    Image = _pil()
    if hasattr(image, "convert"):
        return to_input(image, pre, input_chw)
    with Image.open(image) as img:
        return to_input(img, pre, input_chw)


def preprocess_images(images: Sequence, pre, input_chw) -> np.ndarray:
    if pre is None:
        pre = ir.Preprocessing(mean=[0.0] * input_chw[0], std=[1.0] * input_chw[0])
    return np.stack([load_image(im, pre, input_chw) for im in images])
