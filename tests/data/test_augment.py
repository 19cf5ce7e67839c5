"""On-device augmentations: determinism, identity cases, NumPy/colorsys/scipy references, ranges."""
from __future__ import annotations

import colorsys
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxsup.data.device import augment as aug

KEY = jax.random.key(0)


def run(fn, *args, **kwargs):
    """fn(*args, **kwargs) under jit (keyword options static): one compile instead of op-by-op."""
    return jax.jit(functools.partial(fn, **kwargs))(*args)


def batch(b=8, hw=8, c=3, seed=1, lo=0.0, hi=1.0):
    return jax.random.uniform(jax.random.key(seed), (b, hw, hw, c), minval=lo, maxval=hi)


RANDOM_FNS = {
    "crop": functools.partial(aug.random_resized_crop, scale=(0.2, 1.0)),
    "flip": aug.random_flip,
    "jitter": aug.color_jitter,
    "gray": functools.partial(aug.random_grayscale, prob=0.5),
    "blur": functools.partial(aug.gaussian_blur, sigma=(0.5, 2.0)),
    "simclr": aug.simclr_augment,
}


@pytest.mark.parametrize("name", sorted(RANDOM_FNS))
def test_deterministic_per_key(name):
    fn, x = RANDOM_FNS[name], batch()
    jitted = jax.jit(fn)
    a, b = jitted(KEY, x), jitted(KEY, x)
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(jitted(jax.random.key(7), x)) - np.asarray(a)).max() > 1e-3
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


# ----------------------------------------------------------------------------- crop


def _bilinear_reference(image, box):
    """NumPy: sample image [H, W, C] at the centres of an HxW grid over box (y0, x0, h, w),
    bilinear with edge clamping."""
    height, width = image.shape[:2]
    y0, x0, h, w = box
    ys = y0 + (np.arange(height) + 0.5) * h / height - 0.5
    xs = x0 + (np.arange(width) + 0.5) * w / width - 0.5

    def taps(coords, size):
        lo = np.floor(coords).astype(int)
        frac = coords - lo
        return np.clip(lo, 0, size - 1), np.clip(lo + 1, 0, size - 1), frac

    y_lo, y_hi, fy = taps(ys, height)
    x_lo, x_hi, fx = taps(xs, width)
    rows = image[y_lo] * (1 - fy)[:, None, None] + image[y_hi] * fy[:, None, None]
    return rows[:, x_lo] * (1 - fx)[None, :, None] + rows[:, x_hi] * fx[None, :, None]


@pytest.mark.parametrize("box", [(2.0, 1.0, 4.0, 5.0), (0.3, 2.7, 3.3, 5.1), (0.0, 0.0, 8.0, 8.0)])
def test_crop_and_resize_matches_numpy_bilinear(box):
    image = np.asarray(batch(b=1)[0], np.float64)
    got = jax.jit(aug.crop_and_resize)(jnp.asarray(image, jnp.float32), jnp.asarray(box, jnp.float32))
    np.testing.assert_allclose(got, _bilinear_reference(image, box), rtol=1e-5, atol=1e-5)


def test_crop_scale_one_ratio_one_is_identity():
    x = batch()
    np.testing.assert_allclose(run(aug.random_resized_crop, KEY, x, scale=(1, 1), ratio=(1, 1)), x, atol=1e-5)


def test_crop_boxes_respect_scale_ratio_and_bounds():
    keys = jax.random.split(KEY, 500)
    boxes = np.asarray(jax.vmap(lambda k: aug.sample_crop_box(k, 32, 32, (0.2, 0.5), (3 / 4, 4 / 3)))(keys))
    y0, x0, h, w = boxes.T
    assert (y0 >= 0).all() and (x0 >= 0).all() and (y0 + h <= 32 + 1e-4).all() and (x0 + w <= 32 + 1e-4).all()
    area = h * w / 32**2
    assert area.min() >= 0.2 - 1e-5 and area.max() <= 0.5 + 1e-5
    assert (w / h).min() >= 3 / 4 - 1e-5 and (w / h).max() <= 4 / 3 + 1e-5
    assert area.max() - area.min() > 0.25 and np.ptp(y0) > 10  # actually random


def test_crop_bad_ranges():
    with pytest.raises(ValueError, match="scale"):
        run(aug.random_resized_crop, KEY, batch(), scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="images"):
        run(aug.random_resized_crop, KEY, batch()[0])


# ----------------------------------------------------------------------------- flip


def test_flip():
    x = batch(b=16)
    np.testing.assert_array_equal(run(aug.random_flip, KEY, x, prob=1.0), np.asarray(x)[:, :, ::-1])
    np.testing.assert_array_equal(run(aug.random_flip, KEY, x, prob=0.0), x)
    half = np.asarray(run(aug.random_flip, KEY, x, prob=0.5))
    flipped = [np.array_equal(h, np.asarray(o)[:, ::-1]) for h, o in zip(half, x)]
    kept = [np.array_equal(h, o) for h, o in zip(half, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


# ----------------------------------------------------------------------------- colour


def test_grayscale():
    x = batch()
    gray = np.asarray(x) @ np.array([0.2989, 0.5870, 0.1140])
    np.testing.assert_allclose(run(aug.random_grayscale, KEY, x, prob=1.0), np.repeat(gray[..., None], 3, -1), rtol=1e-5)
    single = batch(c=1)
    np.testing.assert_array_equal(run(aug.random_grayscale, KEY, single, prob=1.0), single)


def _colour_pixels():
    rng = np.random.default_rng(0)
    special = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5], [0, 0, 0], [1, 1, 0], [0.2, 0.2, 0.9]]
    return np.concatenate([np.array(special), rng.uniform(size=(200, 3))]).astype(np.float32)


def test_hsv_conversions_match_colorsys():
    rgb = _colour_pixels()
    hsv_ref = np.array([colorsys.rgb_to_hsv(*p) for p in rgb])
    np.testing.assert_allclose(aug.rgb_to_hsv(jnp.asarray(rgb)), hsv_ref, atol=1e-5)
    rgb_ref = np.array([colorsys.hsv_to_rgb(*p) for p in hsv_ref])
    np.testing.assert_allclose(aug.hsv_to_rgb(jnp.asarray(hsv_ref, jnp.float32)), rgb_ref, atol=1e-5)


@pytest.mark.parametrize("delta", [0.0, 0.3, -0.45])
def test_adjust_hue_matches_colorsys(delta):
    rgb = _colour_pixels()
    ref = []
    for p in rgb:
        h, s, v = colorsys.rgb_to_hsv(*p)
        ref.append(colorsys.hsv_to_rgb((h + delta) % 1.0, s, v))
    np.testing.assert_allclose(aug.adjust_hue(jnp.asarray(rgb), delta), np.array(ref), atol=1e-5)


def test_adjust_contrast_and_saturation_formulas():
    x = np.asarray(batch(b=1)[0])
    mean = x.mean(axis=(0, 1), keepdims=True)
    np.testing.assert_allclose(aug.adjust_contrast(jnp.asarray(x), 0.3), (x - mean) * 0.3 + mean, rtol=1e-5)
    gray = (x @ np.array([0.2989, 0.5870, 0.1140]))[..., None]
    np.testing.assert_allclose(aug.adjust_saturation(jnp.asarray(x), 1.7), (x - gray) * 1.7 + gray, rtol=1e-5, atol=1e-6)


def test_brightness_jitter_scales_each_example_by_one_factor():
    x = batch(c=1, lo=0.2, hi=0.6)  # no clipping for factors in [0.5, 1.5]
    out = np.asarray(run(aug.color_jitter, KEY, x, brightness=0.5, contrast=0.0, prob=1.0))
    ratio = out / np.asarray(x)
    per_example = ratio.reshape(len(ratio), -1)
    np.testing.assert_allclose(per_example, np.broadcast_to(per_example[:, :1], per_example.shape), rtol=1e-5)
    assert per_example.min() >= 0.5 and per_example.max() <= 1.5 and np.ptp(per_example[:, 0]) > 0.05


def test_contrast_jitter_keeps_channel_means():
    x = batch(lo=0.4, hi=0.6)  # no clipping for factors in [0.5, 1.5]
    out = np.asarray(run(aug.color_jitter, KEY, x, brightness=0.0, contrast=0.5, saturation=0.0, hue=0.0, prob=1.0))
    np.testing.assert_allclose(out.mean(axis=(1, 2)), np.asarray(x).mean(axis=(1, 2)), rtol=1e-5)
    assert np.abs(out - np.asarray(x)).max() > 1e-3


def test_jitter_prob_zero_is_identity_and_bad_args():
    x = batch()
    np.testing.assert_array_equal(run(aug.color_jitter, KEY, x, prob=0.0), x)
    with pytest.raises(ValueError, match="hue"):
        run(aug.color_jitter, KEY, x, hue=0.7)


# ----------------------------------------------------------------------------- blur


def test_blur_tiny_sigma_is_identity():
    x = batch()
    out = run(aug.gaussian_blur, KEY, x, sigma=(1e-4, 1e-4), prob=1.0, kernel_size=5)
    np.testing.assert_allclose(out, x, atol=1e-6)


def test_blur_matches_scipy_gaussian_filter():
    x = np.asarray(batch(b=2, hw=12))
    out = run(aug.gaussian_blur, KEY, jnp.asarray(x), sigma=(1.3, 1.3), prob=1.0, kernel_size=5)
    ref = np.stack([ndimage.gaussian_filter(im, sigma=(1.3, 1.3, 0), mode="nearest", truncate=2 / 1.3) for im in x])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_blur_keeps_constants_and_checks_kernel_size():
    const = jnp.full((2, 8, 8, 1), 0.3)
    np.testing.assert_allclose(run(aug.gaussian_blur, KEY, const, prob=1.0), const, rtol=1e-6)
    with pytest.raises(ValueError, match="kernel_size"):
        run(aug.gaussian_blur, KEY, const, kernel_size=4)


# ----------------------------------------------------------------------------- SimCLR


def test_simclr_identity_settings_return_input():
    x = batch(c=1)
    out = run(
        aug.simclr_augment, KEY, x, crop_scale=(1, 1), crop_ratio=(1, 1), flip=False, jitter_strength=0.0,
        grayscale_prob=0.0, blur_prob=0.0,
    )
    np.testing.assert_allclose(out, x, atol=1e-5)


def test_simclr_grey_digits_without_flip():
    x = batch(b=4, c=1)
    fn = jax.jit(functools.partial(aug.simclr_augment, flip=False, blur_prob=0.0))
    out = fn(KEY, x)
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    two_views = fn(jax.random.key(3), x)
    assert np.abs(np.asarray(out) - np.asarray(two_views)).max() > 1e-3
