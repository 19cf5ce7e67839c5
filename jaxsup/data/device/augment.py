"""On-device image augmentations in JAX, deterministic from an RNG key.

Every batch function is `fn(rng, images, **options) -> images`, images
[B, H, W, C] float in [0, 1]; example b uses `jax.random.split(rng, B)[b]`, so
the same key gives the same output and results do not depend on the batch's
other examples. All functions are jit-compatible (options are static).
Colour ops that need RGB (saturation, hue, grayscale) only act when C == 3.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from jaxsup.errors import ConfigError

Range = tuple[float, float]
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # ITU-R 601 luma


def _check_images(images: jnp.ndarray) -> None:
    if images.ndim != 4:
        raise ValueError(f"Augmentations expect images [B, H, W, C], got shape {images.shape}.")


def _check_range(name: str, lo_hi: Range, lower: float = 0.0) -> None:
    lo, hi = lo_hi
    if not lower <= lo <= hi:
        raise ConfigError(f"{name} must satisfy {lower} <= low <= high, got {lo_hi}.")


def per_example(fn: Callable[[jax.Array, jnp.ndarray], jnp.ndarray], rng: jax.Array, images: jnp.ndarray) -> jnp.ndarray:
    """Applies fn(key, image [H, W, C]) to each example with its own split key."""
    _check_images(images)
    keys = jax.random.split(rng, images.shape[0])
    return jax.vmap(fn)(keys, images)


def _maybe(key: jax.Array, prob: float, fn: Callable[[jnp.ndarray], jnp.ndarray], image: jnp.ndarray) -> jnp.ndarray:
    """fn(image) with probability prob, else image (fn is always traced; select picks)."""
    if prob <= 0.0:
        return image
    if prob >= 1.0:
        return fn(image)
    return jnp.where(jax.random.uniform(key) < prob, fn(image), image)


# ----------------------------------------------------------------------------- crop / flip


def sample_crop_box(key: jax.Array, height: int, width: int, scale: Range, ratio: Range) -> jnp.ndarray:
    """Samples (y0, x0, h, w) with area fraction in scale and w/h in ratio (log-uniform),
    clipped to the image (continuous coordinates, pixels)."""
    k_area, k_ratio, k_y, k_x = jax.random.split(key, 4)
    area = jax.random.uniform(k_area, minval=scale[0], maxval=scale[1]) * height * width
    log_r = jax.random.uniform(k_ratio, minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
    aspect = jnp.exp(log_r)
    w = jnp.clip(jnp.sqrt(area * aspect), 1.0, width)
    h = jnp.clip(jnp.sqrt(area / aspect), 1.0, height)
    y0 = jax.random.uniform(k_y) * (height - h)
    x0 = jax.random.uniform(k_x) * (width - w)
    return jnp.stack([y0, x0, h, w])


def crop_and_resize(image: jnp.ndarray, box: jnp.ndarray) -> jnp.ndarray:
    """Bilinear resample of the box (y0, x0, h, w) of image [H, W, C] back to [H, W, C]."""
    height, width = image.shape[:2]
    y0, x0, h, w = box
    scale = jnp.stack([height / h, width / w])
    translation = jnp.stack([-y0 * height / h, -x0 * width / w])
    return jax.image.scale_and_translate(
        image, image.shape, spatial_dims=(0, 1), scale=scale, translation=translation,
        method="linear", antialias=True,
    )


def random_resized_crop(
    rng: jax.Array, images: jnp.ndarray, *, scale: Range = (0.08, 1.0), ratio: Range = (3 / 4, 4 / 3)
) -> jnp.ndarray:
    """Random crop (area fraction in scale, aspect ratio in ratio) resized back to H x W."""
    _check_range("scale", scale)
    _check_range("ratio", ratio, lower=1e-6)
    if scale[1] > 1.0 or scale[1] <= 0.0:
        raise ConfigError(f"scale must lie in (0, 1], got {scale}.")
    height, width = images.shape[1:3]

    def one(key, image):
        return crop_and_resize(image, sample_crop_box(key, height, width, scale, ratio)).astype(image.dtype)

    return per_example(one, rng, images)


def random_flip(rng: jax.Array, images: jnp.ndarray, *, prob: float = 0.5) -> jnp.ndarray:
    """Left-right flip of each example with probability prob."""
    return per_example(lambda k, im: _maybe(k, prob, lambda x: x[:, ::-1], im), rng, images)


# ----------------------------------------------------------------------------- colour


def to_grayscale(image: jnp.ndarray) -> jnp.ndarray:
    """[..., 3] RGB -> [..., 1] luma."""
    return jnp.tensordot(image, jnp.asarray(GRAY_WEIGHTS, image.dtype), axes=([-1], [0]))[..., None]


def rgb_to_hsv(rgb: jnp.ndarray) -> jnp.ndarray:
    """[..., 3] RGB in [0, 1] -> [..., 3] HSV with hue in [0, 1)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    vmax, vmin = rgb.max(-1), rgb.min(-1)
    delta = vmax - vmin
    safe = jnp.where(delta > 0, delta, 1.0)
    hue = jnp.where(vmax == r, (g - b) / safe, jnp.where(vmax == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = jnp.where(delta > 0, (hue / 6.0) % 1.0, 0.0)
    sat = jnp.where(vmax > 0, delta / jnp.where(vmax > 0, vmax, 1.0), 0.0)
    return jnp.stack([hue, sat, vmax], axis=-1)


def hsv_to_rgb(hsv: jnp.ndarray) -> jnp.ndarray:
    """[..., 3] HSV (hue in [0, 1)) -> [..., 3] RGB."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    # Standard closed form: channel n uses k = (n + 6h) mod 6.
    def channel(n):
        k = (n + 6.0 * h) % 6.0
        return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)

    return jnp.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-1)


def adjust_brightness(image: jnp.ndarray, factor: jnp.ndarray) -> jnp.ndarray:
    return image * factor


def adjust_contrast(image: jnp.ndarray, factor: jnp.ndarray) -> jnp.ndarray:
    """Blends towards the per-channel spatial mean (tf.image.adjust_contrast)."""
    mean = image.mean(axis=(0, 1), keepdims=True)
    return (image - mean) * factor + mean


def adjust_saturation(image: jnp.ndarray, factor: jnp.ndarray) -> jnp.ndarray:
    """Blends towards the grayscale image (RGB only)."""
    gray = to_grayscale(image)
    return (image - gray) * factor + gray


def adjust_hue(image: jnp.ndarray, delta: jnp.ndarray) -> jnp.ndarray:
    """Rotates hue by delta (in turns, [-0.5, 0.5]) (RGB only)."""
    hsv = rgb_to_hsv(image)
    return hsv_to_rgb(hsv.at[..., 0].set((hsv[..., 0] + delta) % 1.0))


def color_jitter(
    rng: jax.Array, images: jnp.ndarray, *, brightness: float = 0.8, contrast: float = 0.8,
    saturation: float = 0.8, hue: float = 0.2, prob: float = 0.8, random_order: bool = True,
) -> jnp.ndarray:
    """With probability prob: brightness x U[1-b, 1+b], contrast x U[1-c, 1+c], saturation
    x U[1-s, 1+s] and hue + U[-h, h] (the last two only when C == 3), in a random order
    (SimCLR), clipping to [0, 1] after each. Strengths 0 disable an op."""
    for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value}.")
    if not 0 <= hue <= 0.5:
        raise ConfigError(f"hue must lie in [0, 0.5], got {hue}.")
    rgb = images.shape[-1] == 3
    ops = [(adjust_brightness, 1.0, brightness), (adjust_contrast, 1.0, contrast)]
    if rgb:
        ops += [(adjust_saturation, 1.0, saturation), (adjust_hue, 0.0, hue)]
    ops = [op for op in ops if op[2] > 0]
    if not ops:
        return images

    def jitter(key, image):
        k_order, k_apply, *k_ops = jax.random.split(key, 2 + len(ops))
        params = [
            jax.random.uniform(k, minval=center - s, maxval=center + s)
            for k, (_, center, s) in zip(k_ops, ops)
        ]
        branches = [
            (lambda x, p, fn=fn: jnp.clip(fn(x, p), 0.0, 1.0)) for fn, _, _ in ops
        ]
        order = jax.random.permutation(k_order, len(ops)) if random_order else jnp.arange(len(ops))

        params = jnp.stack(params)

        def apply_all(x):
            # fori_loop keeps one copy of the branches in the compiled program.
            step = lambda i, x: jax.lax.switch(order[i], branches, x, params[order[i]])  # noqa: E731
            return jax.lax.fori_loop(0, len(ops), step, x.astype(jnp.float32)).astype(image.dtype)

        return _maybe(k_apply, prob, apply_all, image)

    return per_example(jitter, rng, images)


def random_grayscale(rng: jax.Array, images: jnp.ndarray, *, prob: float = 0.2) -> jnp.ndarray:
    """With probability prob, replaces RGB by its luma on all 3 channels (C == 3; else identity)."""
    if images.shape[-1] != 3:
        _check_images(images)
        return images
    gray3 = lambda x: jnp.broadcast_to(to_grayscale(x), x.shape)  # noqa: E731
    return per_example(lambda k, im: _maybe(k, prob, gray3, im), rng, images)


# ----------------------------------------------------------------------------- blur


def gaussian_kernel_1d(sigma: jnp.ndarray, radius: int) -> jnp.ndarray:
    """Normalised Gaussian weights [2 * radius + 1] (sigma -> 0 gives a delta)."""
    x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    logits = -(x**2) / (2.0 * jnp.maximum(sigma, 1e-6) ** 2)
    return jax.nn.softmax(logits)


def blur_image(image: jnp.ndarray, sigma: jnp.ndarray, radius: int) -> jnp.ndarray:
    """Separable Gaussian blur of [H, W, C] with edge padding."""
    weights = gaussian_kernel_1d(sigma, radius).astype(image.dtype)
    height, width = image.shape[:2]
    padded = jnp.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    image = sum(weights[k] * padded[k : k + height] for k in range(2 * radius + 1))
    padded = jnp.pad(image, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(weights[k] * padded[:, k : k + width] for k in range(2 * radius + 1))


def gaussian_blur(
    rng: jax.Array, images: jnp.ndarray, *, sigma: Range = (0.1, 2.0), prob: float = 0.5,
    kernel_size: int | None = None,
) -> jnp.ndarray:
    """With probability prob, blurs with sigma ~ U[sigma]; kernel_size defaults to
    ~10% of the image side (odd, at least 3), as in SimCLR."""
    _check_images(images)
    _check_range("sigma", sigma)
    if kernel_size is None:
        kernel_size = max(3, int(0.1 * min(images.shape[1:3])) | 1)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ConfigError(f"kernel_size must be a positive odd integer, got {kernel_size}.")
    radius = kernel_size // 2

    def blur(key, image):
        k_sigma, k_apply = jax.random.split(key)
        s = jax.random.uniform(k_sigma, minval=sigma[0], maxval=sigma[1])
        return _maybe(k_apply, prob, lambda x: blur_image(x, s, radius), image)

    return per_example(blur, rng, images)


# ----------------------------------------------------------------------------- SimCLR


def simclr_augment(
    rng: jax.Array, images: jnp.ndarray, *, crop_scale: Range = (0.08, 1.0),
    crop_ratio: Range = (3 / 4, 4 / 3), flip: bool = True, jitter_strength: float = 1.0,
    jitter_prob: float = 0.8, grayscale_prob: float = 0.2, blur_prob: float = 0.5,
    blur_sigma: Range = (0.1, 2.0),
) -> jnp.ndarray:
    """SimCLR view: random resized crop, [flip], colour jitter (0.8s, 0.8s, 0.8s, 0.2s)
    with prob jitter_prob, grayscale with grayscale_prob, blur with blur_prob.
    Use flip=False for digits; blur_prob=0 for CIFAR-size images (SimCLR)."""
    k_crop, k_flip, k_jitter, k_gray, k_blur = jax.random.split(rng, 5)
    x = random_resized_crop(k_crop, images, scale=crop_scale, ratio=crop_ratio)
    if flip:
        x = random_flip(k_flip, x)
    if jitter_strength > 0:
        s = jitter_strength
        x = color_jitter(
            k_jitter, x, brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s,
            hue=min(0.2 * s, 0.5), prob=jitter_prob,
        )
    x = random_grayscale(k_gray, x, prob=grayscale_prob)
    if blur_prob > 0:
        x = gaussian_blur(k_blur, x, sigma=blur_sigma, prob=blur_prob)
    return jnp.clip(x, 0.0, 1.0)
