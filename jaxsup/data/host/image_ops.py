"""Host image ops for real datasets (Pillow; libjpeg-turbo 3 window decode where installed): decode, crops, resize, flip, normalise.

Ops (names in config.data.preprocess; arguments "k=v,k=v", or one bare value):

- `decode:channels=3` -> "image" uint8 [H, W, C]: JPEG/PNG/... bytes decoded; grayscale,
  palette, CMYK, 16-bit and alpha images converted to `channels` (3: RGB, 1: L).
  Already-decoded arrays with 1, 2 (gray+alpha), 3 or 4 (RGBA) channels are converted too.
- `inception_crop:size=224,scale_min=0.08,scale_max=1.0,ratio_min=0.75,ratio_max=1.3333`
  -> uint8 [size, size, C]: a random crop of area fraction in [scale_min, scale_max]
  and aspect w/h log-uniform in [ratio_min, ratio_max] (10 tries, then the central
  crop of the clamped aspect, as torchvision/TF), resized (bilinear, antialiased).
  JPEG bytes are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still
  leaves the crop at least `size` pixels; with libjpeg-turbo 3 (the `[jpeg]` extra,
  jaxsup/data/host/turbo_jpeg.py) only the crop window's rows and columns are decoded,
  Pillow otherwise (and for non-JPEG, CMYK, progressive, 12-bit or damaged files).
- `resize_small:256` -> the shorter side resized to 256, aspect kept (JPEG: DCT scaling).
- `central_crop:224` -> the central 224 x 224 window (smaller images are resized up first).
  The three resizing ops take `antialias=1` (default: Pillow's antialiased bilinear, as
  torchvision) or `antialias=0` (2x2-tap bilinear, as tf.image.resize / big_vision).
- `flip_lr:prob=0.5` -> left-right flip with probability prob.
- `normalize:mean=0.485/0.456/0.406,std=0.229/0.224/0.225` (or `normalize:imagenet`)
  -> float32 (x / 255 - mean) / std; batchable, so it runs once per batch.

Random ops draw from `preprocess.example_rng(ex, op spec)`: seeded by (run seed,
epoch, index), so a batch is the same whatever the workers and on resume.
A corrupt, truncated or empty image is one DataError naming the example index
(or, with `skip_bad=1` on decode, a grey image and "bad_image" = 1 in the batch).
"""
from __future__ import annotations

import io
import math
import warnings
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from jaxsup.data.host import turbo_jpeg
from jaxsup.data.host.resize import flip_lr as flipped, resize_window
from jaxsup.data.host.preprocess import RNG_KEY, Example, example_rng, register_op
from jaxsup.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated JPEG is an error, never silently grey


# ----------------------------------------------------------------------------- arguments


def op_args(op: str, arg: str, defaults: dict[str, Any], bare: str | None = None) -> dict[str, Any]:
    """"k=v,k=v" (or one bare value for key `bare`) -> defaults updated, cast to each default's type."""
    out = dict(defaults)
    for item in filter(None, arg.split(",")):
        key, sep, value = item.partition("=")
        if not sep and bare is not None:
            key, value = bare, item
        elif not sep or key not in defaults:
            raise ConfigError(f"Preprocess {op!r}: bad argument {item!r}; expected k=v with k in {sorted(defaults)}.")
        try:
            out[key] = type(defaults[key])(float(value) if isinstance(defaults[key], int) else value)
        except ValueError as err:
            raise ConfigError(f"Preprocess {op!r}: {key}={value!r} is not a {type(defaults[key]).__name__}.") from err
    return out


def example_name(ex: Example) -> str:
    """"example <index>" for messages (the index in the split, from the pipeline's RNG key)."""
    return f"example {int(np.asarray(ex[RNG_KEY])[2])}" if RNG_KEY in ex else "an example"


def get_image(ex: Example, op: str) -> Any:
    if "image" not in ex:
        raise DataError(f"{op}: {example_name(ex)} has no 'image'; features: {sorted(ex)}.")
    return ex["image"]


# ----------------------------------------------------------------------------- decode


def open_image(data: bytes, where: str) -> Image.Image:
    """Encoded bytes -> a lazily-decoded PIL image; DataError naming `where` if empty or unreadable."""
    if len(data) == 0:
        raise DataError(f"{where}: the image is empty (0 bytes).")
    try:
        return Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{where}: not a readable image ({len(data)} bytes): {err}") from err


def to_mode(pil: Image.Image, channels: int, where: str) -> Image.Image:
    """Decodes `pil` into "RGB" (channels 3) or "L" (channels 1): palette, CMYK, 16-bit, alpha converted."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-with-transparency notices
            if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
                pil = Image.fromarray((np.asarray(pil, np.uint32) >> 8).astype(np.uint8))
            target = "RGB" if channels == 3 else "L"
            if pil.mode == target:  # most JPEGs: decode in place, no converted copy
                pil.load()
                return pil
            return pil.convert(target)
    except (OSError, SyntaxError, ValueError) as err:  # truncated / corrupt data surfaces at load
        raise DataError(f"{where}: the image cannot be decoded (truncated or corrupt): {err}") from err


def check_channels(op: str, channels: int) -> int:
    if channels not in (1, 3):
        raise ConfigError(f"{op}: channels must be 1 or 3, got {channels}.")
    return channels


def as_pil(image: Any, channels: int, where: str, draft: tuple[int, int] | None = None) -> Image.Image:
    """Encoded bytes or uint8 [H, W, C] (C in 1..4) -> PIL image in "RGB"/"L".

    draft: (w, h) the caller needs at least; JPEGs then decode at a reduced DCT scale.
    """
    if isinstance(image, (bytes, np.bytes_)):
        pil = open_image(bytes(image), where)
        if draft is not None:
            pil.draft("RGB" if channels == 3 else "L", draft)
        return to_mode(pil, channels, where)
    return Image.fromarray(as_channels(np.asarray(image), channels, where))


def as_channels(array: np.ndarray, channels: int, where: str) -> np.ndarray:
    """uint8 [H, W] or [H, W, C] with C in 1..4 -> [H, W] (channels 1) or [H, W, 3] (channels 3)."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and not 1 <= array.shape[2] <= 4):
        raise DataError(f"{where}: expected uint8 [H, W, C<=4] or encoded bytes, got {array.dtype}{array.shape}.")
    if array.ndim == 3:
        c = array.shape[2]
        array = array[..., 0] if c <= 2 else array[..., :3]  # drop alpha: gray+alpha, RGBA
    if channels == 1:
        return array if array.ndim == 2 else np.asarray(Image.fromarray(array).convert("L"))
    return np.repeat(array[..., None], 3, axis=2) if array.ndim == 2 else np.ascontiguousarray(array)


def to_array(pil: Image.Image) -> np.ndarray:
    """PIL image -> uint8 [H, W, C] (C = 1 for "L")."""
    out = np.asarray(pil, np.uint8)
    return out[..., None] if out.ndim == 2 else out


def decode_image(image: Any, channels: int = 3, where: str = "image") -> np.ndarray:
    """Encoded bytes or uint8 array -> uint8 [H, W, channels]."""
    if isinstance(image, (bytes, np.bytes_)) and channels == 3:  # Pillow makes "L" from RGB here, not from Y
        fast = turbo_jpeg.window(bytes(image), None, channels, margin=0)
        if fast is not None:
            return fast[0]
    return to_array(as_pil(image, channels, where))


@register_op("decode")
def decode(arg: str = "") -> Callable[[Example], Example]:
    """"image" bytes/array -> uint8 [H, W, channels]; skip_bad=1: unreadable -> grey + "bad_image" 1."""
    kw = op_args("decode", arg, {"channels": 3, "skip_bad": 0})
    check_channels("decode", kw["channels"])

    def op(ex: Example) -> Example:
        where = example_name(ex)
        try:
            image = decode_image(get_image(ex, "decode"), kw["channels"], where)
            bad = 0
        except DataError:
            if not kw["skip_bad"]:
                raise
            image, bad = np.full((1, 1, kw["channels"]), 128, np.uint8), 1
        out = {**ex, "image": image}
        return {**out, "bad_image": np.int32(bad)} if kw["skip_bad"] else out

    return op


def image_size(image: Any, where: str) -> tuple[int, int]:
    """(width, height) of encoded bytes (header only) or of an array [H, W, ...]."""
    if isinstance(image, (bytes, np.bytes_)):
        return encoded_size(bytes(image), where)
    shape = np.shape(image)
    return int(shape[1]), int(shape[0])


def encoded_size(data: bytes, where: str) -> tuple[int, int]:
    """(width, height) from the header of encoded bytes (libjpeg-turbo where it applies, else Pillow)."""
    header = turbo_jpeg.read_header(data)
    return (header.width, header.height) if header is not None else open_image(data, where).size


# ----------------------------------------------------------------------------- crops and resize


def sample_inception_box(rng: np.random.Generator, width: int, height: int, scale: tuple[float, float],
                         ratio: tuple[float, float], tries: int = 10) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a random crop: area fraction in `scale`, w/h log-uniform in `ratio`.

    After `tries` misses, the largest central crop with the aspect clamped to `ratio` (torchvision).
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(tries):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def crop_resize(image: Any, box: tuple[int, int, int, int], out_wh: tuple[int, int], channels: int,
                where: str, antialias: bool = True) -> np.ndarray:
    """The window box (left, top, w, h) of `image` resized to out_wh (w, h) -> uint8 [h, w, C].

    JPEG bytes decode at the smallest DCT scale that keeps the window >= out_wh; with
    libjpeg-turbo 3 (turbo_jpeg) only the window's rows and columns (plus the filter's reach).
    """
    full_w, full_h = image_size(image, where)
    left, top, w, h = box
    need = (math.ceil(full_w * out_wh[0] / w), math.ceil(full_h * out_wh[1] / h))
    if isinstance(image, (bytes, np.bytes_)):
        reach = max(w / out_wh[0], h / out_wh[1], 1.0) + 2  # filter support + 2 (edge columns of a crop)
        fast = turbo_jpeg.window(bytes(image), (left, top, left + w, top + h), channels, reach, need)
        if fast is not None:
            return resize_window(fast[0][..., 0] if channels == 1 else fast[0], fast[1], out_wh, antialias)
    pil = as_pil(image, channels, where, draft=need)
    sx, sy = pil.size[0] / full_w, pil.size[1] / full_h  # 1, or the DCT scale actually used
    window = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
    return resize_window(pil, window, out_wh, antialias)


def check_size(op: str, size: int) -> int:
    if size < 1:
        raise ConfigError(f"{op}: size must be >= 1, got {size}.")
    return size


@register_op("inception_crop")
def inception_crop(arg: str = "") -> Callable[[Example], Example]:
    """Random-resized crop to size x size (see the module docstring)."""
    kw = op_args("inception_crop", arg, {"size": 224, "scale_min": 0.08, "scale_max": 1.0, "ratio_min": 0.75,
                                         "ratio_max": 4 / 3, "channels": 3, "antialias": 1}, bare="size")
    size, _ = check_size("inception_crop", kw["size"]), check_channels("inception_crop", kw["channels"])
    scale, ratio = (kw["scale_min"], kw["scale_max"]), (kw["ratio_min"], kw["ratio_max"])
    if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
        raise ConfigError(f"inception_crop: need 0 < scale_min <= scale_max <= 1 and 0 < ratio_min <= ratio_max; got {kw}.")
    salt = f"inception_crop:{arg}"

    def op(ex: Example) -> Example:
        image, where = get_image(ex, "inception_crop"), example_name(ex)
        width, height = image_size(image, where)
        box = sample_inception_box(example_rng(ex, salt), width, height, scale, ratio)
        return {**ex, "image": crop_resize(image, box, (size, size), kw["channels"], where, bool(kw["antialias"]))}

    return op


def small_side_size(width: int, height: int, small: int) -> tuple[int, int]:
    """(w, h) with the shorter side `small` and the aspect kept (rounded)."""
    factor = small / min(width, height)
    return max(1, round(width * factor)), max(1, round(height * factor))


@register_op("resize_small")
def resize_small(arg: str = "256") -> Callable[[Example], Example]:
    """Shorter side -> size, aspect kept (bilinear, antialias=1 by default); decodes bytes first."""
    kw = op_args("resize_small", arg, {"size": 256, "channels": 3, "antialias": 1}, bare="size")
    size, _ = check_size("resize_small", kw["size"]), check_channels("resize_small", kw["channels"])

    def op(ex: Example) -> Example:
        image, where = get_image(ex, "resize_small"), example_name(ex)
        width, height = image_size(image, where)
        out = small_side_size(width, height, size)
        box = (0, 0, width, height)
        return {**ex, "image": crop_resize(image, box, out, kw["channels"], where, bool(kw["antialias"]))}

    return op


@register_op("central_crop")
def central_crop(arg: str = "224") -> Callable[[Example], Example]:
    """The central size x size window of uint8 [H, W, C]; a smaller side is first resized up to size."""
    kw = op_args("central_crop", arg, {"size": 224, "channels": 3, "antialias": 1}, bare="size")
    size, _ = check_size("central_crop", kw["size"]), check_channels("central_crop", kw["channels"])

    def op(ex: Example) -> Example:
        image, where = get_image(ex, "central_crop"), example_name(ex)
        width, height = image_size(image, where)
        if min(width, height) < size:
            width, height = small_side_size(width, height, size)
            image = crop_resize(image, (0, 0, *image_size(image, where)), (width, height), kw["channels"], where,
                                bool(kw["antialias"]))
        top, left = (height - size) // 2, (width - size) // 2
        return {**ex, "image": exact_window(image, left, top, size, kw["channels"], where)}

    return op


def exact_window(image: Any, left: int, top: int, size: int, channels: int, where: str) -> np.ndarray:
    """The size x size window at (left, top) of uint8 [H, W, C] or of encoded bytes (only the window
    decoded where libjpeg-turbo applies) -> uint8 [size, size, C]."""
    if isinstance(image, (bytes, np.bytes_)) and channels == 3:  # as decode_image
        fast = turbo_jpeg.window(bytes(image), (left, top, left + size, top + size), channels, margin=2)
        if fast is not None:
            x, y = int(fast[1][0]), int(fast[1][1])
            return np.ascontiguousarray(fast[0][y:y + size, x:x + size])
        image = decode_image(image, channels, where)
    return np.ascontiguousarray(np.asarray(image)[top:top + size, left:left + size])


@register_op("flip_lr")
def flip_lr(arg: str = "") -> Callable[[Example], Example]:
    """Left-right flip of uint8 [H, W, C] with probability prob (per example, seeded)."""
    kw = op_args("flip_lr", arg, {"prob": 0.5}, bare="prob")
    salt = f"flip_lr:{arg}"

    def op(ex: Example) -> Example:
        image = np.asarray(get_image(ex, "flip_lr"))
        flip = example_rng(ex, salt).uniform() < kw["prob"]
        return {**ex, "image": flipped(image) if flip else image}

    return op


def parse_triple(op: str, value: str) -> np.ndarray:
    """"a/b/c" (or "a") -> float32 [3] (or [1])."""
    try:
        return np.asarray([float(v) for v in value.split("/")], np.float32)
    except ValueError as err:
        raise ConfigError(f"{op}: {value!r} is not a '/'-separated list of numbers.") from err


@register_op("normalize", batchable=True)
def normalize(arg: str = "imagenet") -> Callable[[Example], Example]:
    """uint8 "image" -> float32 (x / 255 - mean) / std, per channel; works on [.., H, W, C]."""
    if arg in ("", "imagenet"):
        mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    else:
        kw = op_args("normalize", arg, {"mean": "0.5", "std": "0.5"})
        mean, std = parse_triple("normalize", kw["mean"]), parse_triple("normalize", kw["std"])
    if np.any(std <= 0):
        raise ConfigError(f"normalize: std must be > 0, got {std}.")
    scale, shift = (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)

    def op(ex: Example) -> Example:
        image = np.asarray(get_image(ex, "normalize"))
        return {**ex, "image": image.astype(np.float32) * scale + shift}

    return op
