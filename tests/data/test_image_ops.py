"""Host image ops: decode (all modes, bad bytes), inception crop, resize, crops, flip, normalise, RandAugment."""
import io
import math

import numpy as np
import pytest
from PIL import Image

from jaxsup.data.host import image_ops, preprocess, randaugment
from jaxsup.errors import DataError

RNG_KEY = preprocess.RNG_KEY


def photo(width: int = 160, height: int = 120, seed: int = 0) -> np.ndarray:
    """A smooth uint8 [H, W, 3] test picture (gradients + mild noise) that JPEG keeps close."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, 128 + 100 * np.sin(x / 9.0) * np.cos(y / 7.0)], -1)
    noise = np.random.default_rng(seed).normal(0, 3, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "JPEG", mode: str | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    pil = Image.fromarray(array)
    (pil.convert(mode) if mode else pil).save(buf, fmt, **kw)
    return buf.getvalue()


def run(ops, image, index=0, epoch=0, seed=0):
    return preprocess.build(ops)({"image": image, RNG_KEY: np.asarray([seed, epoch, index], np.uint32)})["image"]


@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"),
                                      ("LA", "PNG"), ("P", "PNG"), ("I;16", "PNG"), ("RGB", "PNG")])
def test_decode_gives_rgb_uint8_for_every_mode(mode, fmt):
    image = photo()
    if mode == "I;16":
        data = encode((image[..., 0].astype(np.uint16) << 8), "PNG")
    else:
        data = encode(image, fmt, mode)
    out = run(["decode"], data)
    assert out.shape == (120, 160, 3) and out.dtype == np.uint8
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) if mode != "I;16" else np.repeat(image[..., :1], 3, 2)
    tolerance = 0 if fmt == "PNG" else 8  # CMYK JPEG round trip loses a little
    assert np.abs(out.astype(int) - want.astype(int)).mean() <= tolerance
    if mode in ("RGB", "RGBA") and fmt == "PNG":
        np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_decoded_arrays_with_1_to_4_channels_become_rgb(channels):
    image = np.random.default_rng(channels).integers(0, 256, (6, 5, channels), dtype=np.uint8)
    out = run(["decode"], image)
    want = np.repeat(image[..., :1], 3, 2) if channels <= 2 else image[..., :3]
    np.testing.assert_array_equal(out, want)
    assert run(["decode:channels=1"], image).shape == (6, 5, 1)


@pytest.mark.parametrize("data,cause", [(b"", "empty"), (encode(photo())[:2000], "truncated or corrupt"),
                                        (b"not an image at all", "not a readable image")])
def test_bad_bytes_are_one_error_naming_the_example(data, cause):
    with pytest.raises(DataError, match=f"example 17: .*{cause}"):
        run(["decode"], data, index=17)
    with pytest.raises(DataError, match="example 17"):
        run(["inception_crop:32"], data, index=17)


def test_skip_bad_counts_instead_of_raising():
    op = preprocess.build(["decode:skip_bad=1"])
    assert int(op({"image": b""})["bad_image"]) == 1
    good = op({"image": encode(photo(), "PNG")})
    assert int(good["bad_image"]) == 0 and good["image"].shape == (120, 160, 3)


def test_inception_box_follows_the_area_and_aspect_ranges():
    rng = np.random.default_rng(0)
    boxes = [image_ops.sample_inception_box(rng, 500, 375, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(2000)]
    left, top, w, h = np.asarray(boxes).T
    assert (left >= 0).all() and (top >= 0).all() and (left + w <= 500).all() and (top + h <= 375).all()
    area = w * h / (500 * 375)
    assert area.min() >= 0.07 and area.max() <= 1.0
    ratio = w / h
    assert ratio.min() >= 0.74 and ratio.max() <= 1.34
    # Area fractions are uniform on [0.08, 1] before rejection: the median sits near the middle.
    assert 0.4 < np.median(area) < 0.62
    # An impossible aspect falls back to the central crop with the aspect clamped.
    assert image_ops.sample_inception_box(rng, 400, 100, (0.9, 1.0), (1.0, 1.0)) == (150, 0, 100, 100)


def test_inception_crop_is_a_pure_function_of_seed_epoch_index():
    data = encode(photo(500, 375), quality=95)
    a = run(["inception_crop:64"], data, index=3, epoch=1)
    np.testing.assert_array_equal(a, run(["inception_crop:64"], data, index=3, epoch=1))
    assert a.shape == (64, 64, 3)
    others = [run(["inception_crop:64"], data, index=3, epoch=2), run(["inception_crop:64"], data, index=4, epoch=1),
              run(["inception_crop:64"], data, index=3, epoch=1, seed=1)]
    assert all(not np.array_equal(a, b) for b in others)


def test_crop_from_jpeg_bytes_with_dct_scaling_matches_the_decoded_crop():
    """The reduced-scale JPEG decode gives (nearly) the crop of the fully decoded image."""
    image = photo(800, 600)
    data = encode(image, quality=95)
    box, out = (100, 50, 600, 500), (64, 64)
    from_bytes = image_ops.crop_resize(data, box, out, 3, "t")
    from_pixels = image_ops.crop_resize(image, box, out, 3, "t")
    assert np.abs(from_bytes.astype(int) - from_pixels.astype(int)).mean() < 3.0
    pil = Image.open(io.BytesIO(data))
    assert pil.draft("RGB", (math.ceil(800 * 64 / 600), math.ceil(600 * 64 / 500))) is not None  # a DCT scale was used


def test_resize_small_keeps_aspect_and_central_crop_is_the_middle():
    image = photo(160, 120)
    small = run(["resize_small:60"], encode(image, "PNG"))
    assert small.shape == (60, 80, 3)
    crop = run(["central_crop:50"], small)
    np.testing.assert_array_equal(crop, small[5:55, 15:65])
    assert run(["resize_small:60", "central_crop:60"], encode(image, "PNG")).shape == (60, 60, 3)
    assert run(["central_crop:200"], image).shape == (200, 200, 3)  # too small: resized up first


def test_flip_is_seeded_and_flips_about_half():
    image = photo(20, 10)
    flips = [np.array_equal(run(["flip_lr"], image, index=i), image[:, ::-1]) for i in range(400)]
    assert 0.4 < np.mean(flips) < 0.6
    assert flips == [np.array_equal(run(["flip_lr"], image, index=i), image[:, ::-1]) for i in range(400)]
    assert not any(np.array_equal(run(["flip_lr:0"], image, index=i), image[:, ::-1]) for i in range(20))


def test_normalize_matches_numpy_on_an_example_and_on_a_batch():
    images = np.random.default_rng(0).integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    mean, std = np.asarray(image_ops.IMAGENET_MEAN), np.asarray(image_ops.IMAGENET_STD)
    want = (images / 255.0 - mean) / std
    np.testing.assert_allclose(run(["normalize"], images), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run(["normalize:imagenet"], images[0]), want[0], rtol=1e-5, atol=1e-5)
    custom = run(["normalize:mean=0.5/0.5/0.5,std=0.25/0.25/0.25"], images)
    np.testing.assert_allclose(custom, (images / 255.0 - 0.5) / 0.25, rtol=1e-5, atol=1e-5)
    assert preprocess.build(["decode", "normalize"]).batched  # runs once per batch


def test_randaugment_is_seeded_changes_the_image_and_keeps_shape():
    image = photo(64, 48)
    a = run(["randaugment:num_layers=2,magnitude=9"], image, index=5)
    np.testing.assert_array_equal(a, run(["randaugment:num_layers=2,magnitude=9"], image, index=5))
    assert a.shape == image.shape and a.dtype == np.uint8
    changed = [not np.array_equal(run(["randaugment"], image, index=i), image) for i in range(20)]
    assert np.mean(changed) > 0.8
    np.testing.assert_array_equal(run(["randaugment:num_layers=0"], image), image)


@pytest.mark.parametrize("name", randaugment.NAMES)
def test_each_randaugment_transform_runs_at_full_magnitude(name):
    fn, _ = randaugment.TRANSFORMS[name]
    out = np.asarray(fn(Image.fromarray(photo(32, 24)), 1.0))
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8
    if name == "invert":
        np.testing.assert_array_equal(out, 255 - photo(32, 24))


@pytest.mark.parametrize("spec", ["inception_crop:scale_min=0", "inception_crop:size=0", "normalize:std=0",
                                  "flip_lr:prob=x", "randaugment:magnitude=11", "decode:channels=2",
                                  "inception_crop:bogus=1"])
def test_bad_op_arguments_are_config_errors(spec):
    from jaxsup.errors import ConfigError

    with pytest.raises(ConfigError):
        preprocess.build([spec])({"image": photo(8, 8)})
