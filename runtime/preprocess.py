"""Image files -> model input, following the preprocessing stored in the .qcnn file.

Pillow is imported here only (the runtime itself needs numpy alone): `pip install 'qcnn[images]'`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from qcnn.schema import ir


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("loading images needs Pillow: pip install 'qcnn[images]'") from None
    return Image


def load_image(image, pre: ir.Preprocessing, input_chw) -> np.ndarray:
    """One image (path or PIL image) -> float32 (C, H, W)."""
    Image = _pil()
    c, h, w = input_chw
    img = image if hasattr(image, "convert") else Image.open(image)
    img = img.convert("L" if pre.channel_order == "GRAY" or c == 1 else "RGB")
    if pre.resize_shorter:
        scale = pre.resize_shorter / min(img.size)
        img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))), Image.BILINEAR)
    crop_h, crop_w = pre.crop if pre.crop[0] else (h, w)
    if img.size != (crop_w, crop_h):
        if not pre.crop[0] and not pre.resize_shorter:
            img = img.resize((crop_w, crop_h), Image.BILINEAR)
        else:
            left, top = (img.size[0] - crop_w) // 2, (img.size[1] - crop_h) // 2
            if left < 0 or top < 0:
                img = img.resize((max(img.size[0], crop_w), max(img.size[1], crop_h)), Image.BILINEAR)
                left, top = (img.size[0] - crop_w) // 2, (img.size[1] - crop_h) // 2
            img = img.crop((left, top, left + crop_w, top + crop_h))
    x = np.asarray(img, dtype=np.float32)
    x = x[:, :, None] if x.ndim == 2 else x
    if pre.channel_order == "BGR":
        x = x[:, :, ::-1]
    mean = np.asarray(pre.mean, np.float32)
    std = np.asarray(pre.std, np.float32)
    x = (x * np.float32(pre.scale) - mean) / std
    if x.shape != (h, w, c):
        raise ValueError(f"preprocessed image has shape {x.shape[:2]} x {x.shape[2]} channels, model wants {(h, w, c)}")
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def preprocess_images(images: Sequence, pre, input_chw) -> np.ndarray:
    if pre is None:
        pre = ir.Preprocessing(mean=[0.0] * input_chw[0], std=[1.0] * input_chw[0])
    return np.stack([load_image(im, pre, input_chw) for im in images])
