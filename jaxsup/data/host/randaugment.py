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


def rand_augment(image: np.ndarray, rng: np.random.Generator, num_layers: int, magnitude: float) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [H, W, 3] after `num_layers` random transforms at `magnitude` (0..10)."""
    pil = Image.fromarray(image)
    for k in rng.integers(0, len(NAMES), num_layers):
        fn, signed = TRANSFORMS[NAMES[k]]
        m = magnitude / MAX_MAGNITUDE
        pil = fn(pil, -m if signed and rng.uniform() < 0.5 else m)
    return to_array(pil)


@register_op("randaugment")
def randaugment(arg: str = "") -> Callable[[Example], Example]:
    """RandAugment of the decoded uint8 "image" (RGB); see the module docstring."""
    kw = op_args("randaugment", arg, {"num_layers": 2, "magnitude": 9.0})
    if kw["num_layers"] < 0 or not 0 <= kw["magnitude"] <= MAX_MAGNITUDE:
        raise ConfigError(f"randaugment: need num_layers >= 0 and 0 <= magnitude <= {MAX_MAGNITUDE}; got {kw}.")
    salt = f"randaugment:{arg}"

    def op(ex: Example) -> Example:
        image = as_channels(np.asarray(get_image(ex, "randaugment")), 3, example_name(ex))
        return {**ex, "image": rand_augment(image, example_rng(ex, salt), kw["num_layers"], kw["magnitude"])}

    return op
