"""libjpeg-turbo window decode (jaxsup/data/host/turbo_jpeg.py) against the Pillow path of the same ops.

Each comparison runs an op twice on the same bytes and (seed, epoch, index): once as installed
(turbo where it applies) and once with JAXSUP_JPEG=pillow. Tolerances (mean abs diff per pixel,
uint8 levels): crops and resizes <= 0.25, decodes and exact windows 0 (bit-identical).
"""
import io
import threading

import numpy as np
import pytest
from PIL import Image

from jaxsup.data.host import preprocess, resize, turbo_jpeg
from jaxsup.errors import DataError

RNG_KEY = preprocess.RNG_KEY
needs_turbo = pytest.mark.skipif(turbo_jpeg.load_library() is None, reason="no libturbojpeg 3 (the [jpeg] extra)")
MEAN_TOL = 0.25


@pytest.fixture(autouse=True)
def turbo_on(monkeypatch):
    """Whatever JAXSUP_JPEG the shell has, these tests choose the path themselves."""
    monkeypatch.setenv("JAXSUP_JPEG", "auto")


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Photo-like uint8 [H, W, 3]: gradients, a texture and noise (so JPEG has detail to keep)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x * 255 / width, y * 255 / height, 128 + 100 * np.sin(x / 7.0) * np.cos(y / 5.0)], -1)
    return np.clip(base + np.random.default_rng(seed).normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def encode(array: np.ndarray, mode: str | None = None, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    pil = Image.fromarray(array)
    (pil.convert(mode) if mode else pil).save(buf, fmt, **kw)
    return buf.getvalue()


IMAGE = photo(336, 248)
KINDS = {  # name -> bytes; sizes not multiples of the MCU on purpose
    "420": encode(IMAGE, quality=90, subsampling=2), "444": encode(IMAGE, quality=90, subsampling=0),
    "422": encode(IMAGE, quality=85, subsampling=1), "gray": encode(IMAGE, "L", quality=90),
}
EXOTIC = {  # the Pillow path decodes these
    "cmyk": encode(IMAGE, "CMYK", quality=90), "progressive": encode(IMAGE, quality=90, progressive=True),
    "png": encode(IMAGE, fmt="PNG"),
}
BAD = {"zero-byte": b"", "truncated": KINDS["420"][:3000], "truncated-late": KINDS["420"][:-300],
       "truncated-2": KINDS["420"][:-2], "garbage": b"\xff\xd8\xff\xe0 not really a jpeg",
       "zeroed-tables": KINDS["420"][:200] + bytes(200) + KINDS["420"][400:],
       "corrupt-scan": KINDS["420"][:5000] + b"\xff\xd9\x00\xff" * 50 + KINDS["420"][5200:]}


def run(ops, image, index=0, epoch=0, seed=0):
    return preprocess.build(ops)({"image": image, RNG_KEY: np.asarray([seed, epoch, index], np.uint32)})


def both_paths(monkeypatch, ops, image, **kw):
    """(as installed, Pillow only) outputs of `ops` on one example (an exception is returned, not raised)."""
    out = []
    for mode in ("auto", "pillow"):
        monkeypatch.setenv("JAXSUP_JPEG", mode)
        try:
            out.append(run(ops, image, **kw))
        except DataError as err:
            out.append(err)
    return out


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


@needs_turbo
def test_header_takes_baseline_8bit_jpegs_and_leaves_the_rest_to_pillow():
    for name, data in KINDS.items():
        header = turbo_jpeg.read_header(data)
        assert header is not None and (header.width, header.height) == (336, 248), name
    for name in ("cmyk", "progressive", "png", "zero-byte", "garbage"):  # damaged scans: the decode fails instead
        assert turbo_jpeg.read_header({**EXOTIC, **BAD}[name]) is None, name


def test_jaxsup_jpeg_pillow_turns_the_fast_path_off(monkeypatch):
    monkeypatch.setenv("JAXSUP_JPEG", "pillow")
    assert not turbo_jpeg.available() and turbo_jpeg.read_header(KINDS["420"]) is None


@needs_turbo
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("antialias", [1, 0])
def test_inception_crop_matches_the_pillow_path(monkeypatch, kind, antialias):
    """Same windows (same RNG draws, same header size) and pixels within MEAN_TOL, over many windows
    that hit every DCT scale (1/1 .. 1/4 here) and the image edges."""
    for channels in (3, 1):
        ops = [f"inception_crop:size=40,antialias={antialias},channels={channels}"]
        diffs = []
        for index in range(24):
            fast, slow = (r["image"] for r in both_paths(monkeypatch, ops, KINDS[kind], index=index))
            diffs.append(mean_abs(fast, slow))
            assert np.abs(fast.astype(int) - slow.astype(int)).max() <= 3
        assert np.mean(diffs) <= MEAN_TOL, (kind, channels, np.mean(diffs))


@needs_turbo
def test_the_window_is_the_one_pillow_crops():
    """turbo_jpeg.window returns the exact sub-box of the scaled image that Pillow's path resizes."""
    data, box = KINDS["420"], (101, 37, 101 + 150, 37 + 120)
    for need in [(150, 120), (80, 60), (40, 30)]:
        array, window = turbo_jpeg.window(data, box, 3, margin=3, need=need)
        pil = Image.open(io.BytesIO(data))
        pil.draft("RGB", need)
        s = 336 // pil.size[0] if pil.size[0] * 2 <= 336 else 1
        assert turbo_jpeg.draft_scale(336, 248, need) == s
        full = np.asarray(pil.convert("RGB"))
        sx, sy = pil.size[0] / 336, pil.size[1] / 248
        x0, y0 = box[0] * sx - window[0], box[1] * sy - window[1]  # the array's origin in the scaled image
        assert x0 == int(x0) and y0 == int(y0)
        inner = slice(int(y0) + 2, int(y0) + array.shape[0] - 2), slice(int(x0) + 2, int(x0) + array.shape[1] - 2)
        np.testing.assert_array_equal(array[2:-2, 2:-2], full[inner])  # bit-identical inside the margin


@needs_turbo
@pytest.mark.parametrize("ops", [["decode"], ["decode:channels=1"], ["central_crop:200"], ["central_crop:300"],
                                 ["resize_small:100"], ["resize_small:size=100,antialias=0"]])
def test_decode_resize_small_and_central_crop_match_the_pillow_path(monkeypatch, ops):
    for kind in ("420", "444", "gray"):
        fast, slow = (r["image"] for r in both_paths(monkeypatch, ops, KINDS[kind]))
        exact = ops[0].startswith(("decode", "central_crop:200"))
        assert mean_abs(fast, slow) <= (0 if exact else MEAN_TOL), (kind, ops)


@pytest.mark.parametrize("name", sorted(EXOTIC))
def test_exotic_images_take_the_pillow_path_unchanged(monkeypatch, name):
    for ops in (["decode"], ["inception_crop:48"], ["central_crop:64"]):
        fast, slow = (r["image"] for r in both_paths(monkeypatch, ops, EXOTIC[name], index=5))
        np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_bytes_give_the_same_data_error_or_image_on_both_paths(monkeypatch, name):
    """Damaged files end as they do without turbo_jpeg: the same DataError naming the example, or
    (where libjpeg only warns and Pillow decodes) the same image; skip_bad counts the same."""
    for ops in (["decode"], ["inception_crop:48"], ["inception_crop:scale_min=0.01,scale_max=0.02,size=8"],
                ["resize_small:64"], ["central_crop:64"]):  # small windows: the decode stops early
        fast, slow = both_paths(monkeypatch, ops, BAD[name], index=17)
        if isinstance(slow, DataError):
            assert isinstance(fast, DataError) and "example 17" in str(fast) and str(fast) == str(slow), (name, ops)
        else:
            assert not isinstance(fast, DataError) and mean_abs(fast["image"], slow["image"]) <= MEAN_TOL, (name, ops)
    fast, slow = both_paths(monkeypatch, ["decode:skip_bad=1"], BAD[name], index=17)
    assert int(fast["bad_image"]) == int(slow["bad_image"])
    assert not name.startswith(("zero-byte", "truncated", "garbage")) or int(fast["bad_image"]) == 1


def reference_bilinear(a: np.ndarray, box: tuple[float, ...], out: tuple[int, int]) -> np.ndarray:
    """tf.image.resize(antialias=False) on the box: half-pixel centres, 2x2 taps, edges clamped -> float [h, w, C]."""
    (l, t, r, b), (w, h) = box, out
    xs = np.clip(l + (np.arange(w) + 0.5) * (r - l) / w - 0.5, 0, a.shape[1] - 1)
    ys = np.clip(t + (np.arange(h) + 0.5) * (b - t) / h - 0.5, 0, a.shape[0] - 1)
    x0, y0 = xs.astype(int), ys.astype(int)
    x1, y1 = np.minimum(x0 + 1, a.shape[1] - 1), np.minimum(y0 + 1, a.shape[0] - 1)
    fx, fy, f = (xs - x0)[None, :, None], (ys - y0)[:, None, None], a.astype(np.float64)
    top = f[y0][:, x0] * (1 - fx) + f[y0][:, x1] * fx
    return top * (1 - fy) + (f[y1][:, x0] * (1 - fx) + f[y1][:, x1] * fx) * fy


@pytest.mark.parametrize("box,out", [((0, 0, 336, 248), (50, 40)), ((10, 7, 210, 180), (64, 64)),
                                     ((30, 20, 60, 50), (90, 90)), ((10.5, 7.25, 300.3, 200.1), (224, 224))])
@pytest.mark.parametrize("backend", ["as installed", "Pillow"])
def test_antialias_0_is_plain_bilinear_as_tf_image_resize(monkeypatch, box, out, backend):
    """Both 2x2-tap backends (cv2.warpAffine from the [jpeg] extra, Pillow's affine transform)."""
    if backend == "Pillow":
        monkeypatch.setattr(resize, "optional_cv2", lambda: None)
    l, t, r, b = box
    got = resize.resize_window(IMAGE, box, out, antialias=False)
    assert np.abs(got - reference_bilinear(IMAGE, box, out)).max() <= 1 + 1e-6  # both round in fixed point
    if out[0] < r - l:  # downscaling: the antialiased default is a different (smoother) filter
        assert mean_abs(resize.resize_window(IMAGE, box, out, antialias=True), got) > 1.0


@needs_turbo
def test_threads_share_nothing_and_get_the_serial_results():
    op = preprocess.build(["inception_crop:32"])
    examples = [{"image": KINDS[k], RNG_KEY: np.asarray([0, 0, i], np.uint32)} for i, k in enumerate(list(KINDS) * 6)]
    serial = [op(ex)["image"] for ex in examples]
    results: dict[int, np.ndarray] = {}

    def work(offset: int) -> None:
        for i in range(offset, len(examples), 3):
            results[i] = op(examples[i])["image"]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(serial):
        np.testing.assert_array_equal(results[i], want)


@needs_turbo
def test_one_header_parse_per_crop_and_repeats_decode_the_same(monkeypatch):
    """The size lookups and the window decode share one parse; a second decode of the same bytes
    (the handle no longer holds their header) parses again and gives the same image."""
    lib, calls = turbo_jpeg.load_library(), []
    parse = lib.tj3DecompressHeader
    monkeypatch.setattr(lib, "tj3DecompressHeader", lambda *a: calls.append(1) or parse(*a))
    data = bytes(KINDS["444"])  # a fresh object: nothing cached for it
    first = run(["inception_crop:64"], data, index=3)["image"]
    assert len(calls) == 1
    again = run(["inception_crop:64"], data, index=3)["image"]
    other = run(["inception_crop:64"], KINDS["420"], index=3)["image"]
    assert len(calls) == 3 and run(["inception_crop:64"], data, index=3)["image"].tobytes() == first.tobytes()
    np.testing.assert_array_equal(again, first)
    assert other.shape == first.shape


@pytest.mark.parametrize("shape", [(5, 7, 3), (5, 7, 1), (4, 6, 4), (3, 5)])
def test_flip_is_numpys_reversed_columns(shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    got = resize.flip_lr(image[:, 1:] if len(shape) == 3 else image)  # a non-contiguous view too
    want = (image[:, 1:] if len(shape) == 3 else image)[:, ::-1]
    assert got.flags.c_contiguous and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
