"""Host pipeline with workers: same batches whatever the threads/processes, exact resume, uint8 to device."""
import io
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, read_metrics, restored_params, run_cli, tiny_supervised_config, train_losses
from jaxsup.data.loader import batching, pipeline
from jaxsup.data.host import preprocess
from jaxsup.data.datasets import sources

JPEG_OPS = ("decode", "inception_crop:size=24,scale_min=0.3", "flip_lr", "randaugment:num_layers=1,magnitude=5",
            "label_to_int32", "keep:image,label")


@pytest.fixture(scope="module")
def jpeg_source():
    """40 small JPEGs (random sizes, some grayscale) with labels, as a list data source."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(40):
        h, w = rng.integers(30, 60, 2)
        array = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(array).convert("L" if i % 5 == 0 else "RGB").save(buf, "JPEG")
        out.append({"image": buf.getvalue(), "label": np.int64(i % 4)})
    return out


def _equal_batches(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("workers,processes", [(1, 0), (3, 0), (2, 2)])
def test_batches_do_not_depend_on_the_workers(jpeg_source, workers, processes):
    ds = pipeline.train_dataset(jpeg_source, preprocess.build(JPEG_OPS), 8, seed=7)
    it = pipeline.train_iterator(ds, 3, process_index=0, process_count=1, workers=workers, processes=processes)
    got = [next(it) for _ in range(7)]  # steps 3..9 cross epochs (5 batches per epoch)
    for k, batch in enumerate(got):
        _equal_batches(batch, ds[3 + k])
        assert batch["image"].shape == (8, 24, 24, 3) and batch["image"].dtype == np.uint8


def test_batch_is_the_per_example_reference(jpeg_source):
    """read_batch == the ops applied to each example with its (seed, epoch, index) key, stacked."""
    pre = preprocess.build(JPEG_OPS)
    ds = pipeline.train_dataset(jpeg_source, pre, 8, seed=7)
    batch = ds[6]  # epoch 1
    epochs, indices = pipeline.stream_examples(7, 40, 6 * 8 + np.arange(8))
    assert (epochs == 1).all() and sorted(indices) == sorted(pipeline.epoch_order(7, 1, 40)[8:16])
    for row, (index, epoch) in enumerate(zip(indices, epochs)):
        ex = {**jpeg_source[index], preprocess.RNG_KEY: np.asarray([7, epoch, index], np.uint32)}
        np.testing.assert_array_equal(batch["image"][row], pre(ex)["image"])
    np.testing.assert_array_equal(batch["index"], indices)


def test_epochs_cover_the_split_and_reshuffle():
    first, second = pipeline.epoch_order(3, 0, 50), pipeline.epoch_order(3, 1, 50)
    np.testing.assert_array_equal(np.sort(first), np.arange(50))
    assert not np.array_equal(first, second)


def test_small_fixed_shape_splits_are_read_once_into_memory():
    source = sources.open_source("digits", "train")
    cached = batching.in_memory(source)
    assert isinstance(cached, batching.InMemorySource) and batching.in_memory(source) is cached
    np.testing.assert_array_equal(cached[5]["image"], source[5]["image"])
    assert not isinstance(batching.in_memory([{"image": b"x"}]), batching.InMemorySource)  # bytes: not cached


def test_eval_batches_are_read_in_batches_with_padding(jpeg_source):
    pre = preprocess.build(("decode", "central_crop:24", "label_to_int32", "keep:image,label"))
    batches = list(pipeline.eval_batches(jpeg_source, pre, 16, process_index=0, process_count=1))
    assert [b["image"].shape[0] for b in batches] == [16, 16, 16]
    assert [int(b["mask"].sum()) for b in batches] == [16, 16, 8]
    np.testing.assert_array_equal(batches[1]["image"][3], pre(jpeg_source[19])["image"])


def test_no_examples_is_one_data_error():
    from jaxsup.errors import DataError

    with pytest.raises(DataError, match="no examples"):
        pipeline.train_dataset([], preprocess.build(("keep:image",)), 8, seed=0)


def test_uint8_images_go_to_the_devices_as_uint8_and_become_unit_floats():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    images = np.random.default_rng(0).integers(0, 256, (16, 4, 4, 3), dtype=np.uint8)
    out = pipeline.to_global({"image": images, "label": np.arange(16, dtype=np.uint8)}, sharding)
    assert out["image"].dtype == np.float32 and out["image"].sharding.is_equivalent_to(sharding, 4)
    np.testing.assert_allclose(np.asarray(out["image"]), images / 255.0, rtol=1e-6)
    assert out["label"].dtype == np.uint8  # only [B, H, W, C] images are converted


def test_kill_and_resume_with_random_host_ops_on_worker_threads_is_bitwise_exact(tmp_path):
    """SIGTERM mid-run + resume on 2 worker threads == a straight run on 1, with per-example random host ops."""
    steps = 60
    ops = ("inception_crop:size=8,channels=1,scale_min=0.5", "flip_lr", "image_to_float", "label_to_int32",
           "keep:image,label")
    overrides = [f"--config.total_steps={steps}", "--config.log_every=1", "--config.checkpoint.every=1000",
                 "--config.model_name=mlp", "--config.batch_size=32", "--config.evals.test.every=0",
                 "--config.mesh=(('data', 1),)", f"--config.data.preprocess={ops!r}"]
    config = os.path.join(ROOT, "configs/supervised_digits.py")
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    threads = {resumed: "--config.data.workers=2", straight: "--config.data.workers=1"}
    proc = subprocess.Popen([sys.executable, "-m", "jaxsup.train", "--config", config, "--workdir", resumed,
                             *overrides, threads[resumed]], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    metrics = os.path.join(resumed, "metrics.jsonl")
    while not (os.path.exists(metrics) and any(r.get("step", 0) >= 10 for r in read_metrics(resumed))):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    stopped = max(r["step"] for r in read_metrics(resumed))
    assert stopped < steps, "the run finished before it was killed"
    for workdir in (resumed, straight):
        result = run_cli("--config", config, "--workdir", workdir, *overrides, threads[workdir])
        assert result.returncode == 0, result.stderr[-2000:]
    jax.tree.map(np.testing.assert_array_equal, restored_params(straight), restored_params(resumed))
    assert train_losses(straight)[steps] == train_losses(resumed)[steps]


def test_the_train_loop_reads_the_worker_settings(tmp_path):
    """config.data.workers / worker_processes reach the train iterator (a bad value is one ConfigError)."""
    from jaxsup import train
    from jaxsup.errors import ConfigError

    config = tiny_supervised_config(total_steps=2, **{"data.workers": 0})
    with pytest.raises(ConfigError, match=r"config.data.workers=0 must be >= 1"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
