"""NaFlex host ops: patch-budget grid vs a binary-search reference, patchify vs a loop, rows, buckets, packing."""
import numpy as np
import pytest

from jaxsup.data.host import naflex_ops, preprocess
from jaxsup.data.loader.batching import InMemorySource, read_batch
from jaxsup.errors import ConfigError, DataError

RNG_KEY = preprocess.RNG_KEY


def grid_by_bisection(h, w, patch, max_patches, eps=1e-7):
    """The reference: bisect the scale ratio r (float64) as big_vision's resize_to_sequence does."""
    def grid(r):
        return max(1, int(np.ceil(h * r / patch - 1e-9))), max(1, int(np.ceil(w * r / patch - 1e-9)))

    lo, hi = eps / 10, 1000.0
    while hi - lo >= eps * lo:
        mid = (lo + hi) / 2
        gh, gw = grid(mid)
        lo, hi = (mid, hi) if gh * gw <= max_patches else (lo, mid)
    return grid(lo)


def test_target_grid_matches_bisection_and_keeps_aspect():
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(1, 2000, 2))
        patch, budget = int(rng.choice([4, 14, 16])), int(rng.choice([16, 64, 256, 576, 1024]))
        gh, gw = naflex_ops.target_grid(h, w, patch, budget)
        assert (gh, gw) == grid_by_bisection(h, w, patch, budget), (h, w, patch, budget)
        assert gh * gw <= budget
        # both sides are one scale ratio rounded up to whole patches: the aspect is kept
        assert max((gh - 1) / h, (gw - 1) / w) < min(gh / h, gw / w)


def test_target_grid_known_values_and_upscale_off():
    assert naflex_ops.target_grid(224, 224, 16, 256) == (16, 16)
    assert naflex_ops.target_grid(480, 640, 16, 256) == (14, 18)  # 3:4 at budget 256 -> 252 patches
    assert naflex_ops.target_grid(8, 24, 4, 64, upscale=False) == (2, 6)  # fits: own size
    assert naflex_ops.target_grid(8, 24, 4, 64, upscale=True) == (4, 12)  # 5 x 13 would be 65
    assert naflex_ops.target_grid(10, 400, 4, 64) == (1, 40)  # 40:1 kept, not 64 x 1
    with pytest.raises(ConfigError, match="positive"):
        naflex_ops.target_grid(0, 5, 4, 64)


def test_patchify_matches_a_loop():
    image = np.random.default_rng(1).integers(0, 256, (12, 8, 3), dtype=np.uint8)
    patches, coords = naflex_ops.patchify(image, 4)
    k = 0
    for y in range(3):
        for x in range(2):
            np.testing.assert_array_equal(patches[k], image[4 * y:4 * y + 4, 4 * x:4 * x + 4].reshape(-1))
            assert tuple(coords[k]) == (y, x)
            k += 1
    with pytest.raises(DataError, match="multiple"):
        naflex_ops.patchify(image[:10], 4)


def test_encode_rows_layout():
    patches = np.arange(6, dtype=np.uint8).reshape(2, 3)
    rows = naflex_ops.encode_rows(patches, np.asarray([[0, 300], [1, 2]]), 7, 4)
    assert rows.shape == (4, 8) and rows.dtype == np.uint8
    np.testing.assert_array_equal(rows[0], [0, 1, 2, 0, 0, 1, 44, 7])  # col 300 = 1 * 256 + 44
    np.testing.assert_array_equal(rows[2:], 0)
    assert naflex_ops.rows_used(rows) == 2


def test_patchify_op_resizes_to_the_budget_and_pads():
    image = np.random.default_rng(2).integers(0, 256, (30, 90, 1), dtype=np.uint8)
    rows = preprocess.build(["naflex_patchify:patch=4,max_patches=64"])({"image": image})["image"]
    gh, gw = naflex_ops.target_grid(30, 90, 4, 64)
    assert rows.shape == (64, 4 * 4 + 5) and naflex_ops.rows_used(rows) == gh * gw == 4 * 12
    assert rows[:, -1].max() == 1 and rows[gh * gw - 1, 16:20].tolist() == [0, gh - 1, 0, gw - 1]


def test_bucket_op_picks_smallest_fitting_bucket_per_example_and_batch():
    pre = preprocess.build(["naflex_patchify:patch=4,max_patches=64,upscale=0", "naflex_bucket:16/36/64"])
    small = np.zeros((8, 12, 1), np.uint8)  # 2 x 3 = 6 patches -> 16
    mid = np.zeros((20, 24, 1), np.uint8)  # 5 x 6 = 30 -> 36
    assert pre({"image": small})["image"].shape[0] == 16
    assert pre({"image": mid})["image"].shape[0] == 36
    source = InMemorySource({"image": np.stack([np.pad(small, ((0, 12), (0, 12), (0, 0))), mid] * 2)})
    # all four are 20 x 24 canvases here: one bucket for the batch, 36
    assert read_batch(source, pre, np.arange(4))["image"].shape == (4, 36, 21)
    with pytest.raises(DataError, match="fits none"):
        naflex_ops.bucket_length(65, (16, 36, 64))
    with pytest.raises(ConfigError, match="lengths"):
        naflex_ops.parse_buckets("16/x")


def test_digit_canvas_is_seeded_per_example_and_keeps_the_digit_square():
    digit = np.full((8, 8, 1), 200, np.uint8)
    op = preprocess.build(["digit_canvas:min_side=16,max_side=48,max_aspect=3"])
    key = lambda i: np.asarray([0, 0, i], np.uint32)  # noqa: E731
    shapes = {op({"image": digit, RNG_KEY: key(i)})["image"].shape for i in range(30)}
    assert len(shapes) > 10 and all(16 <= max(s[:2]) <= 48 for s in shapes)
    a, b = (op({"image": digit, RNG_KEY: key(3)})["image"] for _ in range(2))
    np.testing.assert_array_equal(a, b)
    side = min(a.shape[:2])
    assert (a[..., 0] == 200).sum() == side * side  # the digit is resized to the short side, not stretched


def test_pack_rows_first_fit_and_roundtrip():
    rng = np.random.default_rng(3)
    images = []
    for n in (10, 30, 6, 20, 16):
        images.append((rng.integers(0, 256, (n, 3), dtype=np.uint8), np.stack([np.arange(n) // 4, np.arange(n) % 4], -1)))
    rows, where = naflex_ops.pack_rows(images, 36, max_segments=3)
    assert where == [(0, 0), (1, 0), (0, 1), (0, 2), (2, 0)]  # 10+6+20 = 36; 30; 16
    assert rows.shape == (3, 36, 8)
    for i, (row, slot) in enumerate(where):
        seg = rows[row, :, -1] == slot + 1
        np.testing.assert_array_equal(rows[row, seg, :3], images[i][0])
    with pytest.raises(DataError, match="more than a row"):
        naflex_ops.pack_rows(images, 20, 2)


def test_bucketed_stream_is_the_same_on_resume_and_with_other_workers():
    from jaxsup.data.loader import pipeline

    rng = np.random.default_rng(5)
    source = InMemorySource({"image": rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)})
    pre = preprocess.build(["digit_canvas:min_side=4,max_side=40,max_aspect=3",
                            "naflex_patchify:patch=4,max_patches=64,upscale=0", "naflex_bucket:16/36/64"])
    data = pipeline.train_dataset(source, pre, 4, seed=3)
    whole = pipeline.train_iterator(data, 0, workers=2)
    first = [next(whole) for _ in range(8)]
    assert len({b["image"].shape[1] for b in first}) >= 2  # several buckets in the stream
    resumed = pipeline.train_iterator(pipeline.train_dataset(source, pre, 4, seed=3), 5, workers=1)
    for want in first[5:]:
        got = next(resumed)
        assert got["image"].shape == want["image"].shape
        np.testing.assert_array_equal(got["image"], want["image"])
