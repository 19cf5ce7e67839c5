"""NaFlex host ops: native-aspect resize to a patch budget, patchify, sequence-length buckets, packing.

Ops (names in config.data.preprocess):

- `naflex_patchify:patch=4,max_patches=64,length=0,upscale=1` -> "image" uint8 [length, F]:
  the image resized (Pillow bilinear, antialiased) to the largest patch grid (gh, gw) with
  gh * gw <= max_patches that keeps its aspect (`target_grid`; each side rounded up to a
  whole patch, as big_vision's `resize_to_sequence`), cut into gh * gw patches in row-major
  order and written as rows (`encode_rows`), padded to `length` rows (0: max_patches).
  upscale=0 keeps an image that already fits the budget at its own size (rounded up to whole
  patches) instead of enlarging it.
- `naflex_bucket:buckets=16/36/64` (batchable) -> "image" cut to the smallest bucket that holds
  the longest image of the example or batch, so a run compiles one program per bucket used.
  The bucket is a function of the batch's examples alone, which are a function of (seed, step):
  worker count and resume do not change a batch.
- `digit_canvas:min_side=16,max_side=48,max_aspect=3` -> "image": the (square) image resized to
  the short side of a canvas of random aspect (log-uniform in [1/max_aspect, max_aspect]) and
  long side (uniform in [min_side, max_side]), placed at a random offset along the long side.

Row layout (one uint8 array per image input, so the pipeline, the task and the evaluators pass
it as "image" unchanged): F = p * p * C + 5 bytes per row: the patch's pixels in (y, x, c)
order, then row index (2 bytes, big-endian), column index (2 bytes), segment id (1 byte:
0 = padding, 1.. = the image's slot in the row). jaxsup.models.naflex_vit reads it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from jaxsup.data.host.image_ops import example_name, get_image, op_args
from jaxsup.data.host.preprocess import Example, example_rng, register_op
from jaxsup.data.host.resize import resize_window
from jaxsup.errors import ConfigError, DataError

META_BYTES = 5  # row (2), col (2), segment (1) after each patch's pixels
MAX_SIDE = 2**16 - 1  # patch rows / columns must fit 2 bytes
MAX_SEGMENTS = 255


def target_grid(height: int, width: int, patch: int, max_patches: int, upscale: bool = True) -> tuple[int, int]:
    """The largest patch grid (gh, gw) with gh * gw <= max_patches for an image of height x width.

    The image is scaled by one ratio r (aspect kept) and each side rounded up to whole patches:
    (max(1, ceil(h r / p)), max(1, ceil(w r / p))). The grid only grows with r and jumps where
    h r / p or w r / p is an integer, so the best r is one of those 2 * max_patches points
    (exact integer arithmetic; big_vision binary-searches r). upscale=False: an image whose
    own grid fits the budget keeps it.
    """
    if height < 1 or width < 1 or patch < 1 or max_patches < 1:
        raise ConfigError(f"target_grid: need positive sizes, got {height}x{width}, patch {patch}, "
                          f"max_patches {max_patches}.")
    if not upscale:
        own = (-(-height // patch), -(-width // patch))
        if own[0] * own[1] <= max_patches:
            return own
    k = np.arange(1, max_patches + 1, dtype=np.int64)
    # r = k p / h: gh = k, gw = ceil(w k / h); r = k p / w: gw = k, gh = ceil(h k / w).
    gh = np.concatenate([k, -(-height * k // width)])
    gw = np.concatenate([-(-width * k // height), k])
    gh, gw = np.maximum(gh, 1), np.maximum(gw, 1)
    size = np.where(gh * gw <= max_patches, gh * gw, 0)
    best = int(np.argmax(size))
    return int(gh[best]), int(gw[best])


def patchify(image: np.ndarray, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [gh p, gw p, C] -> (patches [gh gw, p p C] row-major, (y, x, c) inside a patch; coords [gh gw, 2])."""
    h, w, c = image.shape
    if h % patch or w % patch:
        raise DataError(f"patchify: image {h}x{w} is not a multiple of the patch size {patch}.")
    gh, gw = h // patch, w // patch
    patches = image.reshape(gh, patch, gw, patch, c).transpose(0, 2, 1, 3, 4).reshape(gh * gw, patch * patch * c)
    coords = np.stack(np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij"), -1).reshape(-1, 2)
    return patches, coords.astype(np.int32)


def encode_rows(patches: np.ndarray, coords: np.ndarray, segments: np.ndarray | int, length: int) -> np.ndarray:
    """Patches uint8 [n, P], coords [n, 2], segment ids [n] (or one id) -> uint8 rows [length, P + 5], zero-padded."""
    n, dim = patches.shape
    if n > length:
        raise DataError(f"encode_rows: {n} patches do not fit {length} rows.")
    if n and (coords.max() > MAX_SIDE or coords.min() < 0):
        raise DataError(f"encode_rows: patch coordinates must be in 0..{MAX_SIDE}, got {coords.min()}..{coords.max()}.")
    rows = np.zeros((length, dim + META_BYTES), np.uint8)
    rows[:n, :dim] = patches
    coords = coords.astype(np.int64)
    rows[:n, dim:dim + 4] = np.stack([coords[:, 0] >> 8, coords[:, 0] & 255, coords[:, 1] >> 8, coords[:, 1] & 255], -1)
    rows[:n, dim + 4] = segments
    return rows


def rows_used(rows: np.ndarray) -> np.ndarray:
    """Rows [..., L, F] -> the number of non-padding rows [...] (segment id > 0)."""
    return (rows[..., -1] > 0).sum(-1)


def parse_buckets(spec: str | Sequence[int]) -> tuple[int, ...]:
    """"16/36/64" or a sequence -> sorted distinct positive lengths; ConfigError otherwise."""
    try:
        values = [int(v) for v in (spec.split("/") if isinstance(spec, str) else spec)]
    except ValueError as err:
        raise ConfigError(f"naflex buckets {spec!r}: expected lengths like '64/144/256'.") from err
    if not values or min(values) < 1:
        raise ConfigError(f"naflex buckets {spec!r}: expected positive lengths like '64/144/256'.")
    return tuple(sorted(set(values)))


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n; DataError when none holds n."""
    for b in buckets:
        if n <= b:
            return b
    raise DataError(f"An image of {n} patches fits none of the sequence buckets {tuple(buckets)}.")


def naflex_image(image: np.ndarray, patch: int, max_patches: int, upscale: bool = True) -> tuple[np.ndarray, ...]:
    """uint8 [H, W, C] -> (patches [n, p p C], coords [n, 2]) at `target_grid`, n <= max_patches."""
    h, w, c = image.shape
    gh, gw = target_grid(h, w, patch, max_patches, upscale)
    pixels = image[..., 0] if c == 1 else image
    resized = resize_window(pixels, (0, 0, w, h), (gw * patch, gh * patch), antialias=True)
    return patchify(resized.reshape(gh * patch, gw * patch, c), patch)


@register_op("naflex_patchify")
def naflex_patchify(arg: str = "") -> Callable[[Example], Example]:
    """See the module docstring."""
    a = op_args("naflex_patchify", arg, dict(patch=4, max_patches=64, length=0, upscale=1))
    length = a["length"] or a["max_patches"]
    if a["patch"] < 1 or a["max_patches"] < 1 or length < a["max_patches"]:
        raise ConfigError(f"naflex_patchify: need patch >= 1, max_patches >= 1, length >= max_patches; got {a}.")

    def op(ex: Example) -> Example:
        image = np.asarray(get_image(ex, "naflex_patchify"))
        if image.ndim != 3 or image.dtype != np.uint8 or image.shape[-1] not in (1, 3):
            raise DataError(f"naflex_patchify: {example_name(ex)} needs uint8 [H, W, 1 or 3], got "
                            f"{image.dtype} {image.shape}.")
        patches, coords = naflex_image(image, a["patch"], a["max_patches"], bool(a["upscale"]))
        return {**ex, "image": encode_rows(patches, coords, 1, length)}

    return op


@register_op("naflex_bucket", batchable=True)
def naflex_bucket(arg: str = "") -> Callable[[Example], Example]:
    """See the module docstring."""
    buckets = parse_buckets(op_args("naflex_bucket", arg, dict(buckets="16/36/64"), bare="buckets")["buckets"])

    def op(ex: Example) -> Example:
        rows = ex["image"]
        if rows.ndim not in (2, 3) or rows.dtype != np.uint8:
            raise DataError(f"naflex_bucket: 'image' must be naflex rows uint8 [(B,) L, F], got {rows.dtype} "
                            f"{rows.shape}; put naflex_patchify before it.")
        length = bucket_length(int(np.max(rows_used(rows))), buckets)
        if length > rows.shape[-2]:
            raise ConfigError(f"naflex_bucket: bucket {length} is longer than the rows ({rows.shape[-2]}); "
                              "set naflex_patchify's length to the largest bucket.")
        return {**ex, "image": rows[..., :length, :]}

    return op


def canvas_shape(rng: np.random.Generator, min_side: int, max_side: int, max_aspect: float) -> tuple[int, int]:
    """(h, w): long side uniform in [min_side, max_side], w / h log-uniform in [1/max_aspect, max_aspect]."""
    long_side = int(rng.integers(min_side, max_side + 1))
    aspect = float(np.exp(rng.uniform(-np.log(max_aspect), np.log(max_aspect))))
    short = max(1, int(round(long_side / max(aspect, 1 / aspect))))
    return (short, long_side) if aspect >= 1 else (long_side, short)


@register_op("digit_canvas")
def digit_canvas(arg: str = "") -> Callable[[Example], Example]:
    """See the module docstring."""
    a = op_args("digit_canvas", arg, dict(min_side=16, max_side=48, max_aspect=3.0))
    if not 1 <= a["min_side"] <= a["max_side"] or a["max_aspect"] < 1:
        raise ConfigError(f"digit_canvas: need 1 <= min_side <= max_side and max_aspect >= 1; got {a}.")
    spec = f"digit_canvas:{arg}"

    def op(ex: Example) -> Example:
        image = np.asarray(get_image(ex, "digit_canvas"))
        rng = example_rng(ex, spec)
        h, w = canvas_shape(rng, a["min_side"], a["max_side"], a["max_aspect"])
        side = min(h, w)
        pixels = image[..., 0] if image.shape[-1] == 1 else image
        digit = resize_window(pixels, (0, 0, image.shape[1], image.shape[0]), (side, side), antialias=True)
        canvas = np.zeros((h, w, image.shape[-1]), np.uint8)
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        canvas[top:top + side, left:left + side] = digit.reshape(side, side, -1)
        return {**ex, "image": canvas}

    return op


def pack_rows(images: Sequence[tuple[np.ndarray, np.ndarray]], length: int, max_segments: int
              ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Packs images (patches [n, P], coords [n, 2]) into rows of `length`, first fit, in order.

    Returns rows uint8 [R, length, P + 5] (segment ids 1..max_segments) and, per image, its
    (row, slot) with slot = segment id - 1. Deterministic: the same images give the same rows.
    """
    if not 1 <= max_segments <= MAX_SEGMENTS:
        raise ConfigError(f"pack_rows: max_segments must be in 1..{MAX_SEGMENTS}, got {max_segments}.")
    fill: list[int] = []
    members: list[list[int]] = []
    where = []
    for i, (patches, _) in enumerate(images):
        n = len(patches)
        if n > length:
            raise DataError(f"pack_rows: image {i} has {n} patches, more than a row ({length}).")
        row = next((r for r in range(len(fill)) if fill[r] + n <= length and len(members[r]) < max_segments), None)
        if row is None:
            row = len(fill)
            fill.append(0)
            members.append([])
        where.append((row, len(members[row])))
        members[row].append(i)
        fill[row] += n
    dim = images[0][0].shape[1]
    rows = np.zeros((len(fill), length, dim + META_BYTES), np.uint8)
    for r, ids in enumerate(members):
        patches = np.concatenate([images[i][0] for i in ids])
        coords = np.concatenate([images[i][1] for i in ids])
        segments = np.concatenate([np.full(len(images[i][0]), s + 1) for s, i in enumerate(ids)])
        rows[r] = encode_rows(patches, coords, segments, length)
    return rows, where
