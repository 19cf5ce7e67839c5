"""End-to-end trainer: device-count invariance, resume, checkpoints, bad input."""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxsup import checkpoint
from jaxsup.data.datasets import sources
from jaxsup.train import train_and_evaluate

from helpers import ROOT, read_metrics, restored_params, run_cli, tiny_supervised_config, train_losses


def test_one_and_eight_devices_give_the_same_training(tmp_path):
    one = tiny_supervised_config(total_steps=4, mesh=(("data", 1),))
    eight = tiny_supervised_config(
        total_steps=4, mesh=(("data", 8),), partition_rules=(("kernel", "fsdp"), (".*", "replicate"))
    )
    train_and_evaluate(one, str(tmp_path / "one"))
    train_and_evaluate(eight, str(tmp_path / "eight"))
    l1, l8 = train_losses(str(tmp_path / "one")), train_losses(str(tmp_path / "eight"))
    assert sorted(l1) == [1, 2, 3, 4]
    np.testing.assert_allclose([l8[s] for s in sorted(l8)], [l1[s] for s in sorted(l1)], rtol=1e-5)
    p1, p8 = restored_params(str(tmp_path / "one")), restored_params(str(tmp_path / "eight"))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p1, p8)


def test_final_eval_and_checkpoints_written(tmp_path):
    metrics = train_and_evaluate(tiny_supervised_config(), str(tmp_path))
    assert 0.0 <= metrics["test/top1"] <= 1.0 and metrics["test/count"] == 360
    assert checkpoint.Checkpointer(str(tmp_path), every=3).all_steps() == [3, 6]


def test_checkpoint_restores_across_device_counts(tmp_path):
    eight = tiny_supervised_config(mesh=(("data", 8),), partition_rules=(("kernel", "fsdp"),))
    train_and_evaluate(eight, str(tmp_path))
    # Continue the same run on one device: restores the 8-way sharded state.
    one = tiny_supervised_config(total_steps=8, mesh=(("data", 1),))
    train_and_evaluate(one, str(tmp_path))
    assert max(train_losses(str(tmp_path))) == 8


def test_subtree_restore_from_another_run(tmp_path):
    train_and_evaluate(tiny_supervised_config(), str(tmp_path))
    head = checkpoint.restore_subtree(str(tmp_path), "params/head")
    assert head["kernel"].shape == (32, 10)
    with pytest.raises(checkpoint.CheckpointError, match="nope"):
        checkpoint.restore_subtree(str(tmp_path), "params/nope")
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.restore_subtree(str(tmp_path / "missing"), "params")


def test_mismatched_checkpoint_errors_and_keeps_checkpoints(tmp_path):
    train_and_evaluate(tiny_supervised_config(), str(tmp_path))
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    wider = tiny_supervised_config(total_steps=9, **{"model.widths": (48,)})
    with pytest.raises(checkpoint.CheckpointError, match=r"params/dense_0/kernel: checkpoint \(64, 32\) vs model \(64, 48\)"):
        train_and_evaluate(wider, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"model_name": "resnet9000"}, "Unknown model 'resnet9000'"),
        ({"task": "telepathy"}, "Unknown task 'telepathy'"),
        ({"evals.test.type": "vibes"}, "Unknown evaluator 'vibes'"),
        ({"batch_size": 12, "mesh": (("data", 8),)}, "batch_size=12"),
        ({"data.name": "no_such_dataset"}, "no_such_dataset"),
        ({"data.train_split": "validation"}, "no split 'validation'"),
        ({"optim.name": "adamax"}, "adamax"),
    ],
)
def test_bad_input_names_the_cause(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(tiny_supervised_config(**overrides), str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints") or not os.listdir(tmp_path / "checkpoints")


@pytest.mark.parametrize("override", [{"seed": 1}, {"batch_size": 64}])
def test_resuming_with_another_seed_or_batch_size_is_refused(tmp_path, override):
    train_and_evaluate(tiny_supervised_config(), str(tmp_path))
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    name = next(iter(override))
    with pytest.raises(checkpoint.CheckpointError, match=f"{name}: checkpoint"):
        train_and_evaluate(tiny_supervised_config(total_steps=9, **override), str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_dataset_missing_from_tfds_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    with pytest.raises(sources.DatasetNotFoundError, match=str(tmp_path / "tfds")):
        sources.open_source("cifar10", "train")
    assert not os.path.exists(tmp_path / "tfds" / "cifar10")


def test_tfds_path_reads_a_locally_built_dataset(tmp_path):
    from jaxsup.data.datasets import digits

    digits.prepare(str(tmp_path))  # Built locally into a TFDS data dir.
    builder = sources.prepared_tfds_builder("digits", str(tmp_path))
    source = builder.as_data_source(split="test")
    assert len(source) == 360 and source[0]["image"].shape == (8, 8, 1)


def test_nan_loss_stops_and_names_the_metric(tmp_path, nan_lr_allowed):
    config = tiny_supervised_config(**{"optim.lr": float("nan")})
    with pytest.raises(FloatingPointError, match=r"'train/lr', 'train/update_norm'\] at step 1;"):
        train_and_evaluate(config, str(tmp_path))


def _wait_for_step(workdir, step, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        path = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(path) and any(r.get("step", 0) >= step for r in read_metrics(workdir)):
            return
        time.sleep(0.05)
    raise AssertionError(f"training never reached step {step}: {proc.stderr.read() if proc.stderr else ''}")


def test_sigterm_saves_and_resume_is_bitwise_exact(tmp_path):
    """Straight run vs. SIGTERM mid-run + resume: identical params, bit for bit."""
    steps = 150
    overrides = [f"--config.total_steps={steps}", "--config.log_every=1", "--config.checkpoint.every=1000",
                 "--config.model_name=mlp", "--config.batch_size=32", "--config.evals.test.every=0",
                 "--config.mesh=(('data', 1),)"]
    config = os.path.join(ROOT, "configs/supervised_digits.py")
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    proc = subprocess.Popen([sys.executable, "-m", "jaxsup.train", "--config", config, "--workdir", resumed, *overrides],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_step(resumed, 20, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    stopped_at = checkpoint.Checkpointer(resumed, every=1000).latest_step()
    assert 20 <= stopped_at < steps, stopped_at
    assert run_cli("--config", config, "--workdir", resumed, *overrides).returncode == 0
    finished = run_cli("--config", config, "--workdir", straight, *overrides)
    assert finished.returncode == 0
    last_line = finished.stdout.strip().splitlines()[-1]
    assert last_line.startswith(f"jaxsup: done: workdir={straight} test/") and "test/top1=" in last_line, last_line
    a, b = restored_params(straight), restored_params(resumed)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)
    assert train_losses(straight)[steps] == train_losses(resumed)[steps]
