"""benchmarks/jpeg_bench.py (input_pipeline.py --jpeg): every contender does the same work and the
report holds what the docs' tables need; tf.data is skipped cleanly where TensorFlow is missing."""
import io
import json
import os
import sys

import numpy as np
from PIL import Image

from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import jpeg_bench  # noqa: E402
import jpeg_tables  # noqa: E402

from jaxsup.data.host import resize  # noqa: E402


def test_tf_windows_and_flips_are_the_ones_jaxsup_draws():
    """crop_plan's (top, left, h, w) and flip, applied by hand to Pillow's full decode, give jaxsup's
    batch on its Pillow path exactly (the windows tf.data gets are jaxsup's, for both antialias specs)."""
    jpegs = jpeg_bench.photo_set(np.random.default_rng(1), 4, (200, 320))
    for aa in (1, 0):
        boxes, flips = jpeg_bench.crop_plan(jpegs, aa)
        ours = jpeg_bench.backends(False, lambda: jpeg_bench.jaxsup_batches(jpegs, aa)(jpeg_bench.examples(jpegs)))
        assert len(ours) == 1 and ours[0].shape == (4, 224, 224, 3) and ours[0].dtype == np.uint8
        for i, data in enumerate(jpegs):
            full = Image.open(io.BytesIO(data)).convert("RGB")
            top, left, h, w = (int(v) for v in boxes[i])
            box = (left, top, left + w, top + h)
            want = jpeg_bench.backends(False, lambda: resize.resize_window(full, box, (224, 224), bool(aa)))
            np.testing.assert_array_equal(ours[0][i], want[:, ::-1] if flips[i] else want)  # < 448 px: no DCT scale


def test_report_has_medians_spread_load_and_skips_tf_cleanly(tmp_path, monkeypatch):
    monkeypatch.setattr(jpeg_bench, "optional_tf", lambda: None)  # as without TensorFlow
    report = jpeg_bench.run_sets(32, 0, rounds=1, threads=(1,))
    assert report["tf_data"] is None and list(report["sets"]) == ["400-640px"]
    block = report["sets"]["400-640px"]
    assert len(block["load_per_round"]) == 1 and len(report["load_before"]) == 3
    res = block["results"]
    assert not any(r["impl"] == "tf.data" for r in res.values())
    assert {(r["impl"], r["kind"], r["antialias"]) for r in res.values()} >= {
        ("jaxsup Pillow", "op", 1), ("jaxsup Pillow", "op", 0), ("jaxsup Pillow", "pipeline", 1)}
    for r in res.values():
        assert 0 < r["images_per_cpu_s_min"] <= r["images_per_cpu_s"] <= r["images_per_cpu_s_max"]
        assert len(r["samples"]) == 1
    assert block["mean_abs_diff"]["[jpeg] vs Pillow aa=1"] <= 0.25 or not report["turbo"]
    json.dumps(report)
    jpeg_bench.print_report(report)
    text = "\n".join(jpeg_tables.bench_tables(report))
    assert "tf.data not importable (column skipped)" in text
    assert "| 400-640px | 1 | 1 |" in text and "no tf.data" in text or not report["turbo"]


def test_docs_tables_are_the_scripts_output_of_the_committed_json():
    """docs/host_jpeg.md's measured tables are jpeg_tables.py's output of benchmarks/results/*.json."""
    results = os.path.join(ROOT, "benchmarks", "results")
    with open(os.path.join(results, "host_jpeg.json")) as f:
        lines = jpeg_tables.bench_tables(json.load(f))
    with open(os.path.join(results, "host_jpeg_scaling.json")) as f:
        lines += jpeg_tables.scaling_tables(json.load(f))
    with open(os.path.join(ROOT, "docs", "host_jpeg.md")) as f:
        doc = f.read()
    assert "\n".join(lines).strip() in doc
