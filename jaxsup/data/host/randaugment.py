"""RandAugment (Cubuk et al. 2020) on the host, on uint8 images with Pillow.

Op `randaugment:num_layers=2,magnitude=9` (magnitude 0..10, as big_vision /
timm "rand-m9-n2"): `num_layers` transforms drawn uniformly from TRANSFORMS,
each applied at the given magnitude, with a random sign for the signed ones. The draws come from
`preprocess.example_rng(ex, spec)` (run seed, epoch, index), so the
augmented image is a pure function of the example and the step.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from jaxsup.data.host.image_ops import as_channels, example_name, get_image, op_args, to_array
from jaxsup.data.host.preprocess import Example, example_rng, register_op
from jaxsup.errors import ConfigError

MAX_MAGNITUDE = 10.0
FILL = (128, 128, 128)
DEFAULTS = {"num_layers": 2, "magnitude": 9.0}


def _enhance(cls) -> Callable[[Image.Image, float], Image.Image]:
    """An ImageEnhance transform with factor 1 + 0.9 * m (m in [-1, 1])."""
    return lambda im, m: cls(im).enhance(1.0 + 0.9 * m)


def _affine(matrix: Callable[[Image.Image, float], tuple]) -> Callable[[Image.Image, float], Image.Image]:
    return lambda im, m: im.transform(im.size, Image.AFFINE, matrix(im, m), Image.BILINEAR, fillcolor=FILL)


# name -> (fn(image, m), signed): m in [0, 1] is magnitude / 10 (times -1 half the time if signed).
TRANSFORMS: dict[str, tuple[Callable[[Image.Image, float], Image.Image], bool]] = {
    "identity": (lambda im, m: im, False),
    "auto_contrast": (lambda im, m: ImageOps.autocontrast(im), False),
    "equalize": (lambda im, m: ImageOps.equalize(im), False),
    "invert": (lambda im, m: ImageOps.invert(im), False),
    "rotate": (lambda im, m: im.rotate(30.0 * m, Image.BILINEAR, fillcolor=FILL), True),
    "posterize": (lambda im, m: ImageOps.posterize(im, int(round(8 - 4 * m))), False),
    "solarize": (lambda im, m: ImageOps.solarize(im, int(round(256 - 256 * m))), False),
    "color": (_enhance(ImageEnhance.Color), True),
    "contrast": (_enhance(ImageEnhance.Contrast), True),
    "brightness": (_enhance(ImageEnhance.Brightness), True),
    "sharpness": (_enhance(ImageEnhance.Sharpness), True),
    "shear_x": (_affine(lambda im, m: (1, 0.3 * m, 0, 0, 1, 0)), True),
    "shear_y": (_affine(lambda im, m: (1, 0, 0, 0.3 * m, 1, 0)), True),
    "translate_x": (_affine(lambda im, m: (1, 0, 0.45 * m * im.size[0], 0, 1, 0)), True),
    "translate_y": (_affine(lambda im, m: (1, 0, 0, 0, 1, 0.45 * m * im.size[1])), True),
}
NAMES = tuple(TRANSFORMS)


def draw_layers(rng: np.random.Generator, num_layers: int, magnitude: float) -> tuple[np.ndarray, np.ndarray]:
    """(transform ids uint8 [L], signed magnitudes float64 [L] in [-1, 1]) of one RandAugment draw."""
    ids = rng.integers(0, len(NAMES), num_layers)
    m = magnitude / MAX_MAGNITUDE
    mags = [-m if TRANSFORMS[NAMES[k]][1] and rng.uniform() < 0.5 else m for k in ids]
    return np.asarray(ids, np.uint8), np.asarray(mags, np.float64)


def apply_layers(image: np.ndarray, ids: np.ndarray, mags: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [H, W, 3] after transforms `ids` [L] at signed magnitudes `mags` [L]."""
    pil = Image.fromarray(image)
    for k, m in zip(np.asarray(ids).tolist(), np.asarray(mags, np.float64).tolist()):
        pil = TRANSFORMS[NAMES[k]][0](pil, m)
    return to_array(pil)


def rand_augment(image: np.ndarray, rng: np.random.Generator, num_layers: int, magnitude: float) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [H, W, 3] after `num_layers` random transforms at `magnitude` (0..10)."""
    return apply_layers(image, *draw_layers(rng, num_layers, magnitude))


def check_args(kw: dict) -> dict:
    """randaugment's {"num_layers", "magnitude"}, ConfigError when out of range."""
    if kw["num_layers"] < 0 or not 0 <= kw["magnitude"] <= MAX_MAGNITUDE:
        raise ConfigError(f"randaugment: need num_layers >= 0 and 0 <= magnitude <= {MAX_MAGNITUDE}; got {kw}.")
    return kw


@register_op("randaugment")
def randaugment(arg: str = "") -> Callable[[Example], Example]:
    """RandAugment of the decoded uint8 "image" (RGB); see the module docstring."""
    kw = check_args(op_args("randaugment", arg, DEFAULTS))
    salt = f"randaugment:{arg}"

    def op(ex: Example) -> Example:
        image = as_channels(np.asarray(get_image(ex, "randaugment")), 3, example_name(ex))
        return {**ex, "image": rand_augment(image, example_rng(ex, salt), kw["num_layers"], kw["magnitude"])}

    return op
