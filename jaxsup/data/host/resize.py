"""Bilinear resize of a sub-pixel window, antialiased (Pillow) or 2x2-tap (OpenCV when installed, else Pillow).

antialias=True: Pillow's bilinear filter widened by the downscale factor (torchvision's
RandomResizedCrop default). antialias=False: 2x2-tap bilinear at half-pixel centres, edges
clamped (tf.image.resize(antialias=False), big_vision): cv2.warpAffine (the `[jpeg]` extra;
~13x faster than Pillow's affine transform at 224 x 224) or Pillow's transform, equal within 1 level.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
from PIL import Image


@functools.lru_cache(maxsize=None)
def optional_cv2() -> Any:
    """cv2 with its own thread pool off (the input pipeline's workers are the parallelism), or None."""
    try:
        import cv2
    except ImportError:
        return None
    cv2.setNumThreads(1)
    return cv2


def as_array(pixels: Image.Image | np.ndarray) -> np.ndarray:
    """PIL image or array -> uint8 [H, W, C] (C = 1 for "L")."""
    out = np.asarray(pixels, np.uint8)
    return out[..., None] if out.ndim == 2 else out


def resize_window(pixels: Image.Image | np.ndarray, window: tuple[float, ...], out_wh: tuple[int, int],
                  antialias: bool) -> np.ndarray:
    """The window (l, t, r, b) of `pixels` (PIL image, or uint8 [H, W] / [H, W, 3]) bilinearly
    resized to out_wh (w, h) -> uint8 [h, w, C]."""
    (l, t, r, b), (w, h) = window, out_wh
    sx, sy = (r - l) / w, (b - t) / h
    cv2 = None if antialias else optional_cv2()
    if cv2 is not None:
        inverse = np.asarray([[sx, 0, l + 0.5 * sx - 0.5], [0, sy, t + 0.5 * sy - 0.5]], np.float64)
        return as_array(cv2.warpAffine(np.ascontiguousarray(pixels), inverse, out_wh,
                                       flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE))
    pil = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    if antialias:
        return as_array(pil.resize(out_wh, Image.BILINEAR, box=window, reducing_gap=None))
    return as_array(pil.transform(out_wh, Image.AFFINE, (sx, 0, l, 0, sy, t), Image.BILINEAR))


def flip_lr(image: np.ndarray) -> np.ndarray:
    """Left-right flip of [H, W, C] as a new contiguous array (cv2.flip where it applies: ~8x
    NumPy's strided copy for uint8 [224, 224, 3]; bit-identical)."""
    cv2 = optional_cv2()
    if cv2 is not None and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] in (1, 3, 4):
        return cv2.flip(np.ascontiguousarray(image), 1).reshape(image.shape)
    return np.ascontiguousarray(image[:, ::-1])
