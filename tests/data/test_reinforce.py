"""python -m jaxsup.data.reinforce: teacher top-k targets for K augmentations stored beside converted shards;
same output for any worker count and after a SIGKILL + rerun; bad input is one line; the stored
augmentation replays bitwise in the train pipeline (threads, 0/1/2 worker processes, resume)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxsup.data.convert import cli as convert
from jaxsup.data.loader import pipeline
from jaxsup.data.host import preprocess, reinforce_store as store
from jaxsup.data.reinforce import cli as reinforce
from jaxsup.data.datasets import shards
from jaxsup.train import train_and_evaluate

from helpers import ROOT, tiny_supervised_config

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from reinforced_step import digits_folder  # noqa: E402 (benchmarks/ is not a package)

NUM_EXAMPLES = 120
CROP = "size=8,channels=1,scale_min=0.5"
TEACHER_MODEL = dict(widths=(32,), num_classes=10)
KEEP = "keep:image,label," + ",".join(store.OUTPUT_KEYS)


@pytest.fixture(scope="session")
def digits_ar(tmp_path_factory):
    """Converted digits: train (120 examples, 20 per shard: 6 shards), test (60)."""
    root = tmp_path_factory.mktemp("digits_ar")
    convert.convert("folder", digits_folder(str(root / "folders"), NUM_EXAMPLES), str(root / "ar"), examples_per_shard=20,
                    workers=1)
    convert.convert("folder", digits_folder(str(root / "test"), 60, "test"), str(root / "ar"), split="test",
                    workers=1)
    return str(root / "ar")


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("teacher"))
    train_and_evaluate(tiny_supervised_config(total_steps=200, **{"model": TEACHER_MODEL, "checkpoint.every": 100}), workdir)
    return workdir


def make(digits_ar, teacher_dir, out, workers=1, **kw):
    spec = reinforce.make_spec(digits_ar, "train", teacher_dir, **{"augmentations": 3, "topk": 4, "crop": CROP,
                                                                   "batch_size": 32, **kw})
    return reinforce.reinforce(spec, out, workers=workers)


@pytest.fixture(scope="session")
def reinforced(digits_ar, teacher_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reinforced") / "r")
    make(digits_ar, teacher_dir, out)
    return out


def records(directory: str) -> list[dict]:
    side = store.Sidecar(directory)
    return [side[i] for i in range(len(side))]


def assert_same(a: str, b: str) -> None:
    ra, rb = records(a), records(b)
    assert len(ra) == len(rb) == NUM_EXAMPLES
    for x, y in zip(ra, rb):
        assert x["key"] == y["key"]
        for k in ("box", "flip", "logits", "indices", "lse_rest"):
            np.testing.assert_array_equal(x[k], y[k])
    for name in sorted(os.listdir(a)):
        if name.endswith(".array_record"):
            assert open(os.path.join(a, name), "rb").read() == open(os.path.join(b, name), "rb").read(), name


def test_stores_the_host_op_draws_and_the_teachers_topk(reinforced, digits_ar, teacher_dir):
    info = store.read_info(reinforced)
    assert info["num_examples"] == NUM_EXAMPLES and info["num_classes"] == 10
    # payload per example: K * (box 16 + flip 1 + logits 4*2 + indices 4*2 + lse 4) bytes + key and msgpack
    assert 3 * 37 <= info["bytes_per_example"] < 3 * 37 + 120
    source = shards.open_split(digits_ar, "train")
    rec = store.Sidecar(reinforced)[7]
    ex = source[7]
    drawn = store.draw_params(info, 7, 8, 8)
    boxes, flips = drawn["box"], drawn["flip"]
    np.testing.assert_array_equal(rec["box"], boxes)
    np.testing.assert_array_equal(rec["flip"], flips)
    assert rec["key"] == ex["key"] and rec["box"].shape == (3, 4) and set(rec["flip"].tolist()) <= {0, 1}
    # the teacher on the rendered crops (f32, one batch), top-4 descending, stored in float16
    import jax.numpy as jnp

    from helpers import restored_params
    from jaxsup.tasks.common import build_model

    images = np.stack([store.render(ex["image"], {"box": b, "flip": f}, info, "x") for b, f in zip(boxes, flips)])
    logits = np.asarray(build_model("mlp", TEACHER_MODEL).apply({"params": restored_params(teacher_dir)},
                                                                 jnp.asarray(images, jnp.float32) / 255.0)[0])
    order = np.argsort(-logits, axis=1)[:, :4]
    np.testing.assert_array_equal(rec["indices"], order)
    np.testing.assert_allclose(rec["logits"], np.take_along_axis(logits, order, 1), rtol=2e-3, atol=2e-3)
    rest = np.ones_like(logits, bool)
    np.put_along_axis(rest, order, False, 1)
    ref_rest = np.log(np.where(rest, np.exp(logits), 0).sum(1))
    np.testing.assert_allclose(rec["lse_rest"], ref_rest, rtol=1e-5, atol=1e-5)


def test_equal_for_any_worker_count(reinforced, digits_ar, teacher_dir, tmp_path):
    make(digits_ar, teacher_dir, str(tmp_path / "w2"), workers=2)
    assert_same(reinforced, str(tmp_path / "w2"))


def test_sigkill_then_rerun_equals_a_straight_run(reinforced, digits_ar, teacher_dir, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "jaxsup.data.reinforce", digits_ar, "--teacher", teacher_dir, "--out", str(out),
               "--augmentations", "3", "--topk", "4", "--crop", CROP, "--batch-size", "32"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = out / "shard-00000.json"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    left = sorted(os.listdir(out))
    assert "shard-00000.json" in left and store.INFO not in left, left  # killed mid-run
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["num_examples"] == NUM_EXAMPLES and summary["full_logits_bytes_per_example"] == 3 * 10 * 4
    assert_same(reinforced, str(out))


@pytest.mark.parametrize("args, match", [
    (["--topk", "11"], r"--topk 11 must lie in \[1, 10\]"),
    (["--dtype", "float16", "--augmentations", "0"], "--augmentations 0"),
    (["--teacher", "/nonexistent"], "--teacher '/nonexistent' does not exist"),
    (["DATA=/nonexistent"], "No converted split 'train'"),
])
def test_bad_input_is_one_line(args, match, digits_ar, teacher_dir, tmp_path, capsys):
    data = digits_ar
    if args[0].startswith("DATA="):
        data, args = args[0][5:], []
    argv = [data, "--teacher", teacher_dir, "--crop", CROP, "--out", str(tmp_path / "o"), *args]
    assert reinforce.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxsup.data.reinforce: error: "), err
    assert __import__("re").search(match, err[0]), err[0]


def test_a_rerun_with_other_settings_is_refused(reinforced, digits_ar, teacher_dir):
    with pytest.raises(Exception, match="other settings .*topk"):
        make(digits_ar, teacher_dir, reinforced, topk=5)


# ----------------------------------------------------------------------------- replay in the train pipeline


def replay_dataset(digits_ar, reinforced, seed=1, batch=16):
    source = shards.open_split(digits_ar, "train")
    pre = preprocess.build((f"reinforce:{reinforced}", "label_to_int32", KEEP))
    return pipeline.train_dataset(source, pre, batch, seed, process_count=1)


def expected_images(digits_ar, reinforced, batch) -> np.ndarray:
    """The crops the teacher saw for the batch's examples and choices, rendered from the raw records."""
    source, side = shards.open_split(digits_ar, "train"), store.Sidecar(reinforced)
    out = []
    for index, choice in zip(batch["index"], batch["reinforced_choice"]):
        rec = side[int(index)]
        out.append(store.render(source[int(index)]["image"], store.augmentation(rec, choice), side.info, "x"))
    return np.stack(out)


def test_replay_is_the_stored_crop_bitwise_and_carries_its_targets(digits_ar, reinforced):
    data = replay_dataset(digits_ar, reinforced)
    side = store.Sidecar(reinforced)
    choices = []
    for step in (0, 7, 8):  # 16 * 8 = 128 > 120: step 7 straddles epochs 0 and 1
        batch = data[step]
        np.testing.assert_array_equal(batch["image"], expected_images(digits_ar, reinforced, batch))
        assert batch["image"].dtype == np.uint8 and batch["image"].shape == (16, 8, 8, 1)
        for row, (index, choice) in enumerate(zip(batch["index"], batch["reinforced_choice"])):
            rec = side[int(index)]
            np.testing.assert_array_equal(batch["reinforced_logits"][row], rec["logits"][choice])
            np.testing.assert_array_equal(batch["reinforced_indices"][row], rec["indices"][choice])
            assert batch["reinforced_lse_rest"][row] == rec["lse_rest"][choice]
        choices += batch["reinforced_choice"].tolist()
    assert len(set(choices)) == 3  # every stored augmentation gets used
    np.testing.assert_array_equal(data[3]["image"], replay_dataset(digits_ar, reinforced)[3]["image"])
    other_seed = replay_dataset(digits_ar, reinforced, seed=2)[0]
    assert not np.array_equal(other_seed["reinforced_choice"], data[0]["reinforced_choice"]) or \
        not np.array_equal(other_seed["index"], data[0]["index"])


@pytest.mark.parametrize("processes", [0, 1, 2])
def test_replay_same_for_worker_processes_and_after_resume(digits_ar, reinforced, processes):
    data = replay_dataset(digits_ar, reinforced)
    straight = pipeline.train_iterator(data, 0, process_index=0, process_count=1, processes=processes)
    first = [next(straight) for _ in range(6)]
    resumed = pipeline.train_iterator(data, 4, process_index=0, process_count=1, processes=processes)
    for step, batch in [(4, next(resumed)), (5, next(resumed))]:
        for key in ("image", "index", "reinforced_choice", "reinforced_logits"):
            np.testing.assert_array_equal(batch[key], first[step][key])
    for batch in first:
        np.testing.assert_array_equal(batch["image"], expected_images(digits_ar, reinforced, batch))


def test_replay_refuses_a_split_that_is_not_the_reinforced_one(digits_ar, reinforced):
    from jaxsup.errors import DataError

    source = shards.open_split(digits_ar, "train[50%:]")
    pre = preprocess.build((f"reinforce:{reinforced}", KEEP))
    with pytest.raises(DataError, match="train on the reinforced split"):
        pipeline.train_dataset(source, pre, 16, 0, process_count=1)[0]


@pytest.mark.parametrize("dtype, numpy_dtype", [("float16", np.float16), ("bfloat16", store.ml_dtypes.bfloat16),
                                                ("float32", np.float32)])
def test_record_round_trip_in_each_storage_dtype(dtype, numpy_dtype):
    spec = {"augmentations": 2, "topk": 3, "dtype": dtype, "num_classes": 70000 if dtype == "float32" else 10}
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3)).astype(np.float32) * 5
    indices = np.asarray([[0, 9, 4], [69999 if dtype == "float32" else 7, 1, 2]])
    boxes, flips, rest = np.arange(8).reshape(2, 4), np.asarray([1, 0]), np.asarray([-np.inf, 0.25], np.float32)
    fields = {"key": "k", "box": boxes, "flip": flips, "logits": logits, "indices": indices, "lse_rest": rest}
    rec = store.decode(store.encode(fields, spec), spec)
    np.testing.assert_array_equal(rec["logits"], logits.astype(numpy_dtype).astype(np.float32))
    assert rec["logits"].dtype == np.float32 and rec["indices"].dtype == np.int32
    np.testing.assert_array_equal(rec["indices"], indices)
    np.testing.assert_array_equal(rec["box"], boxes)
    np.testing.assert_array_equal(rec["flip"], flips)
    np.testing.assert_array_equal(rec["lse_rest"], rest)
    assert rec["key"] == "k"
    if dtype != "float32":
        assert not np.array_equal(rec["logits"], logits)  # really stored in 16 bits


def test_randaugment_layers_are_stored_and_replayed_bitwise(digits_ar, teacher_dir, tmp_path):
    out = str(tmp_path / "ra")
    make(digits_ar, teacher_dir, out, randaugment="num_layers=2,magnitude=9")
    rec, info = store.Sidecar(out)[3], store.read_info(out)
    drawn = store.draw_params(info, 3, 8, 8)
    assert rec["ra_ops"].shape == (3, 2) and rec["ra_mag"].dtype == np.float64
    np.testing.assert_array_equal(rec["ra_ops"], drawn["ra_ops"])
    plain = store.render(shards.open_split(digits_ar, "train")[3]["image"], {"box": rec["box"][0], "flip": 0}, info, "x")
    batch = replay_dataset(digits_ar, out)[0]
    np.testing.assert_array_equal(batch["image"], expected_images(digits_ar, out, batch))
    assert not np.array_equal(store.render(shards.open_split(digits_ar, "train")[3]["image"],
                                           {**store.augmentation(rec, 0), "flip": 0}, info, "x"), plain) or \
        set(rec["ra_ops"][0].tolist()) <= {0}  # the stored layers change the crop (unless both are identity)
