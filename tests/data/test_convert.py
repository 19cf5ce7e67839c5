"""python -m jaxsup.data.convert: webdataset tars, tables and image folders -> shards read via config.data.path.

Inputs are generated here (real JPEG / PNG bytes from Pillow), bad ones included.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tarfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxsup.data.convert import cli as convert, inputs as convert_inputs
from jaxsup.data.loader import pipeline
from jaxsup.data.host import preprocess
from jaxsup.data.datasets import shards, splits
from jaxsup.errors import DataError


def image_bytes(w: int, h: int, mode: str = "RGB", fmt: str = "JPEG", seed: int = 0) -> bytes:
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


GOOD = image_bytes(40, 30)
TRUNCATED = GOOD[: len(GOOD) // 2]


def write_tar(path: str, records: list[tuple[str, dict[str, bytes]]]) -> str:
    with tarfile.open(path, "w") as tar:
        for key, parts in records:
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def caption(text: str) -> bytes:
    return text.encode()


@pytest.fixture
def webdataset_dir(tmp_path):
    """Two img2dataset-style tars: 6 good records, a truncated JPEG, a 0-byte image, an empty caption,
    an over-long caption (kept, cut), a record without image, and 1/2/4-channel and CMYK images."""
    src = tmp_path / "wds"
    src.mkdir()
    write_tar(str(src / "00000.tar"), [
        ("000000000", {"jpg": image_bytes(40, 30, seed=1), "txt": caption("a red car"), "json": b"{}"}),
        ("000000001", {"jpg": TRUNCATED, "txt": caption("broken"), "json": b"{}"}),
        ("000000002", {"jpg": b"", "txt": caption("zero bytes")}),
        ("000000003", {"jpg": image_bytes(20, 50, seed=3), "txt": caption("   ")}),
        ("000000004", {"png": image_bytes(30, 30, "L", "PNG"), "txt": caption("grey")}),
        ("000000005", {"txt": caption("no image")}),
    ])
    write_tar(str(src / "00001.tar"), [
        ("000010000", {"png": image_bytes(30, 20, "LA", "PNG"), "txt": caption("grey with alpha")}),
        ("000010001", {"png": image_bytes(25, 35, "RGBA", "PNG"), "txt": caption("rgba")}),
        ("000010002", {"jpg": image_bytes(33, 21, "CMYK"), "txt": caption("cmyk")}),
        ("000010003", {"jpg": image_bytes(64, 48, seed=4), "txt": caption("x" * 5000)}),
    ])
    return str(src)


def data_config(path: str, split: str = "train") -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(name="converted", data_dir="", path=path, train_split=split))


def read_all(path: str, split: str = "train") -> list[dict]:
    source = splits.open_split(data_config(path, split), split)
    return [source[i] for i in range(len(source))]


def test_webdataset_converts_skips_and_counts_bad_records(webdataset_dir, tmp_path):
    out = str(tmp_path / "out")
    info = convert.convert("webdataset", webdataset_dir, out, workers=2)
    assert info["num_examples"] == 6 and info["features"] == ["caption", "image", "key"]
    assert info["counts"] == {"caption_truncated": 1, "skipped/bad_image": 1, "skipped/empty_caption": 1,
                              "skipped/empty_image": 1, "skipped/missing_image": 1}
    records = {r["key"]: r for r in read_all(out)}
    assert sorted(records) == ["000000000", "000000004", "000010000", "000010001", "000010002", "000010003"]
    assert records["000000000"]["image"] == image_bytes(40, 30, seed=1)  # stored as given (no resize)
    assert records["000010003"]["caption"] == "x" * 1000


def test_converted_image_text_trains_through_the_pipeline(webdataset_dir, tmp_path):
    out = str(tmp_path / "out")
    convert.convert("webdataset", webdataset_dir, out)
    ops = ("decode", "inception_crop:size=16", "flip_lr", "pick_caption:feature=caption,choice=hash",
           "tokenize:max_len=12,tokenizer=bytes", "keep:image,tokens")
    source = splits.open_split(data_config(out), "train")
    ds = pipeline.train_dataset(source, preprocess.build(ops), 4, seed=0, process_count=1)
    batches = [b for _, b in zip(range(3), pipeline.train_iterator(ds, 0, 0, 1, workers=2))]
    assert all(b["image"].shape == (4, 16, 16, 3) and b["image"].dtype == np.uint8 for b in batches)
    assert all(b["tokens"].shape == (4, 12) for b in batches)
    seen = np.concatenate([b["index"] for b in batches])
    assert sorted(seen[:6]) == list(range(6))  # epoch 0 is a permutation of the 6 converted examples


def test_resize_on_write_reencodes_every_mode_as_rgb_jpeg(webdataset_dir, tmp_path):
    out = str(tmp_path / "out")
    convert.convert("webdataset", webdataset_dir, out, options=convert.Options(resize=24))
    for record in read_all(out):
        image = Image.open(io.BytesIO(record["image"]))
        assert image.format == "JPEG" and image.mode in ("RGB", "L") and min(image.size) <= 24
    sizes = {r["key"]: Image.open(io.BytesIO(r["image"])).size for r in read_all(out)}
    assert sizes["000010003"] == (32, 24) and sizes["000000000"] == (32, 24)  # 64x48 and 40x30, aspect kept


def test_strict_stops_at_the_first_bad_record_naming_it(webdataset_dir, tmp_path):
    with pytest.raises(DataError, match=r"00000\.tar: record '000000001': bad image"):
        convert.convert("webdataset", webdataset_dir, str(tmp_path / "out"), options=convert.Options(strict=True))


def test_a_tar_without_captions_beside_captioned_ones_is_counted_not_a_schema_error(tmp_path):
    """Captions are declared by the whole input (any .txt member): a caption-less record is a counted skip."""
    src = tmp_path / "wds"
    src.mkdir()
    write_tar(str(src / "a.tar"), [("k0", {"jpg": GOOD, "txt": caption("with caption")})])
    write_tar(str(src / "b.tar"), [("k1", {"jpg": GOOD})])
    info = convert.convert("webdataset", str(src), str(tmp_path / "out"))
    assert info["features"] == ["caption", "image", "key"] and info["num_examples"] == 1
    assert info["counts"] == {"skipped/missing_caption": 1}
    with pytest.raises(DataError, match=r"b\.tar: record 'k1': missing caption"):
        convert.convert("webdataset", str(src), str(tmp_path / "strict"), options=convert.Options(strict=True))


def test_a_folder_without_shards_is_one_line_naming_it(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert convert.main(["webdataset", str(empty), "--out", str(tmp_path / "out"), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"No .tar shards found in '{empty}'" in err


def test_restart_after_a_kill_keeps_finished_shards_and_equals_a_straight_run(webdataset_dir, tmp_path,
                                                                              monkeypatch):
    straight = convert.convert("webdataset", webdataset_dir, str(tmp_path / "straight"))
    out = str(tmp_path / "killed")
    real_items = convert_inputs.webdataset_items

    def dies_in_second_shard(tar_path, strict):
        for k, item in enumerate(real_items(tar_path, strict)):
            if tar_path.endswith("00001.tar") and k == 2:
                raise KeyboardInterrupt  # killed mid-shard: a half-written .tmp is left behind
            yield item

    monkeypatch.setattr(convert_inputs, "webdataset_items", dies_in_second_shard)
    with pytest.raises(KeyboardInterrupt):
        convert.convert("webdataset", webdataset_dir, out)
    split_dir = os.path.join(out, "train")
    assert sorted(os.listdir(split_dir)) == ["convert.json", "lock", "shard-00000.array_record", "shard-00000.json",
                                             "shard-00001.array_record.tmp"]
    first_written = os.stat(os.path.join(split_dir, "shard-00000.array_record")).st_mtime_ns
    monkeypatch.setattr(convert_inputs, "webdataset_items", real_items)
    resumed = convert.convert("webdataset", webdataset_dir, out)
    assert os.stat(os.path.join(split_dir, "shard-00000.array_record")).st_mtime_ns == first_written  # kept
    assert resumed == straight and not [f for f in os.listdir(split_dir) if f.endswith(".tmp")]
    assert read_all(out) == read_all(str(tmp_path / "straight"))
    with pytest.raises(DataError, match="holds a conversion of other inputs or options"):
        convert.convert("webdataset", webdataset_dir, out, options=convert.Options(resize=8))


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
def test_table_of_paths_and_captions(tmp_path, fmt):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(image_bytes(30, 20, seed=1))
    (images / "b.png").write_bytes(image_bytes(20, 30, "RGBA", "PNG"))
    (images / "zero.jpg").write_bytes(b"")
    rows = [{"filepath": "images/a.jpg", "title": "first"}, {"filepath": "images/b.png", "title": "second"},
            {"filepath": "images/zero.jpg", "title": "third"}, {"filepath": "images/gone.jpg", "title": "fourth"},
            {"filepath": "images/a.jpg", "title": ""}]
    table = str(tmp_path / f"captions.{fmt}")
    if fmt == "parquet":
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), table)
    else:
        with open(table, "w", newline="") as f:
            writer = csv.DictWriter(f, ["filepath", "title"], delimiter="\t" if fmt == "tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    info = convert.convert("table", table, str(tmp_path / "out"), examples_per_shard=2, caption_column="title")
    assert info["num_examples"] == 2 and len(info["shards"]) == 3
    assert info["counts"] == {"skipped/empty_caption": 1, "skipped/empty_image": 1, "skipped/missing_image": 1}
    assert [r["caption"] for r in read_all(str(tmp_path / "out"))] == ["first", "second"]
    with pytest.raises(DataError, match=r"no caption column 'alt'; columns: \['filepath', 'title'\]"):
        convert.convert("table", table, str(tmp_path / "out2"), caption_column="alt")


def test_a_table_of_urls_is_an_error_saying_to_download_first(tmp_path):
    table = tmp_path / "urls.csv"
    table.write_text("url,caption\nhttps://example.com/a.jpg,a cat\n")
    with pytest.raises(DataError, match="holds URLs .* jaxsup never downloads"):
        convert.convert("table", str(table), str(tmp_path / "out"), image_column="url")


def test_image_folder_labels_class_names_and_pipeline(tmp_path):
    root = tmp_path / "train"
    for label, name in enumerate(["cat", "dog", "eel"]):
        (root / name).mkdir(parents=True)
        for k in range(3):
            (root / name / f"{k}.jpg").write_bytes(image_bytes(24 + k, 20, seed=10 * label + k))
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "eel" / "notes.txt").write_text("not an image")
    out = str(tmp_path / "out")
    info = convert.convert("folder", str(root), out, examples_per_shard=4, workers=2)
    assert info["class_names"] == ["cat", "dog", "eel"] and info["num_examples"] == 9
    assert info["counts"] == {"skipped/empty_image": 1}
    assert [int(r["label"]) for r in read_all(out)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert shards.class_names(out, "train[:50%]") == ["cat", "dog", "eel"]
    from jaxsup.evaluators.features import dataset_class_names  # what the zero-shot evaluator reads

    assert dataset_class_names(data_config(out)) == ("cat", "dog", "eel")
    ops = ("decode", "resize_small:16", "central_crop:16", "label_to_int32", "keep:image,label")
    batch = next(pipeline.eval_batches(splits.open_split(data_config(out), "train[:5]"), preprocess.build(ops), 8,
                                       process_index=0, process_count=1))
    assert batch["image"].shape == (8, 16, 16, 3) and batch["mask"].sum() == 5
    assert batch["label"][:5].tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(DataError, match=r"No converted split 'validation' .*splits there: \['train'\]"):
        splits.open_split(data_config(out, "validation"), "validation")


def test_cli_prints_the_summary(webdataset_dir, tmp_path, capsys):
    assert convert.main(["webdataset", webdataset_dir, "--out", str(tmp_path / "o"), "--workers", "1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_examples"] == 6 and summary["counts"]["skipped/bad_image"] == 1


def test_a_missing_tfds_dataset_names_what_prepares_it(tmp_path):
    from jaxsup.data.datasets import sources

    with pytest.raises(DataError, match=r"jaxsup\[tf\].*tfds build imagenet2012 .*--manual_dir.*jaxsup\.data\.convert"):
        sources.open_source("imagenet2012", "train", str(tmp_path))


def test_cli_sigkilled_mid_run_then_rerun_equals_a_straight_run(tmp_path):
    """A real kill (SIGKILL, no cleanup) of `python -m jaxsup.data.convert` after its first shard, then the
    same command again: the result equals an uninterrupted conversion."""
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "wds"
    src.mkdir()
    big = image_bytes(500, 375, seed=7)
    for t in range(6):
        write_tar(str(src / f"{t:05d}.tar"), [(f"{t}_{k}", {"jpg": big, "txt": caption(f"t{t} k{k}")})
                                               for k in range(30)])
    straight = convert.convert("webdataset", str(src), str(tmp_path / "straight"))
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "jaxsup.data.convert", "webdataset", str(src), "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = out / "train" / "shard-00000.json"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    left = sorted(os.listdir(out / "train"))
    assert "shard-00000.json" in left and "dataset.json" not in left, left  # killed after shard 0, before the end
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["num_examples"] == straight["num_examples"] == 180
    assert read_all(str(out)) == read_all(str(tmp_path / "straight"))
