"""Token waste of NaFlex resizing, sequence buckets and packing on a realistic mix of image shapes; prints JSON.

    python benchmarks/naflex_buckets.py [--images 4096] [--patch 16] [--seed 0]

The mix (an assumption, stated so the numbers can be re-weighed): aspect ratios w:h of web photos,
screens and documents: 4:3 30 %, 3:2 15 %, 16:9 15 %, 1:1 15 %, 3:4 10 %, 2:3 5 %, 9:16 5 %,
A4 portrait (1:1.414) 5 %; short side log-uniform in [128, 1024] px. Waste = padded rows / all rows.

Rows:
- "fill": every image resized to the budget N (naflex_patchify, upscale=1) in a row of N: the
  rounding loss only.
- "bucket_per_batch": upscale=0 (images that fit keep their own size, larger ones shrink to N),
  each batch cut to the smallest bucket holding its longest image (naflex_bucket), for batch sizes
  1 (per example) .. 256.
- "packed": upscale=0 images packed first-fit into rows of N (naflex_ops.pack_rows), per batch.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from jaxsup.data.host import naflex_ops

MIX = {(4, 3): 0.30, (3, 2): 0.15, (16, 9): 0.15, (1, 1): 0.15, (3, 4): 0.10, (2, 3): 0.05, (9, 16): 0.05,
       (1000, 1414): 0.05}
BUDGETS = {256: (64, 144, 256), 576: (144, 256, 576), 1024: (256, 576, 1024)}


def sample_shapes(n: int, seed: int) -> np.ndarray:
    """(h, w) [n, 2] from MIX."""
    rng = np.random.default_rng(seed)
    ratios = list(MIX)
    pick = rng.choice(len(ratios), n, p=np.asarray(list(MIX.values())))
    short = np.exp(rng.uniform(np.log(128), np.log(1024), n))
    out = []
    for k, s in zip(pick, short):
        w, h = ratios[k]
        scale = s / min(w, h)
        out.append((max(1, round(h * scale)), max(1, round(w * scale))))
    return np.asarray(out)


def patch_counts(shapes: np.ndarray, patch: int, budget: int, upscale: bool) -> np.ndarray:
    return np.asarray([np.prod(naflex_ops.target_grid(int(h), int(w), patch, budget, upscale)) for h, w in shapes])


def bucket_waste(counts: np.ndarray, buckets: tuple[int, ...], batch: int) -> float:
    used = padded = 0
    for s in range(0, len(counts) - batch + 1, batch):
        chunk = counts[s:s + batch]
        used += chunk.sum()
        padded += batch * naflex_ops.bucket_length(int(chunk.max()), buckets)
    return 1 - used / padded


def packed_waste(counts: np.ndarray, length: int, batch: int, max_segments: int) -> tuple[float, float]:
    """(waste, images per row) of first-fit packing, batch by batch."""
    used = rows = 0
    for s in range(0, len(counts) - batch + 1, batch):
        images = [(np.zeros((int(n), 1), np.uint8), np.zeros((int(n), 2), np.int64)) for n in counts[s:s + batch]]
        packed, _ = naflex_ops.pack_rows(images, length, max_segments)
        used += counts[s:s + batch].sum()
        rows += len(packed)
    batches = len(counts) // batch
    return 1 - used / (rows * length), batches * batch / rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shapes = sample_shapes(args.images, args.seed)
    report = {"images": args.images, "patch": args.patch, "mix": {f"{w}:{h}": p for (w, h), p in MIX.items()},
              "budgets": {}}
    for budget, buckets in BUDGETS.items():
        full = patch_counts(shapes, args.patch, budget, upscale=True)
        native = patch_counts(shapes, args.patch, budget, upscale=False)
        waste, per_row = packed_waste(native, budget, 256, 16)
        report["budgets"][str(budget)] = {
            "buckets": list(buckets),
            "fill_waste": round(float(1 - full.mean() / budget), 4),
            "native_mean_patches": round(float(native.mean()), 1),
            "bucket_per_batch_waste": {str(b): round(float(bucket_waste(native, buckets, b)), 4) for b in (1, 8, 32, 256)},
            "no_bucket_waste": round(float(1 - native.mean() / budget), 4),
            "packed_waste": round(float(waste), 4), "packed_images_per_row": round(float(per_row), 2),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
