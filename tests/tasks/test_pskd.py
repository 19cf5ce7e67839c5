"""Task "pskd": targets, per-example buffer, checkpointing of the buffer, bad input."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsup import checkpoint, sharding
from jaxsup.config import load_config
from jaxsup.data.loader import pipeline
from jaxsup.data.host import preprocess
from jaxsup.data.datasets import sources
from jaxsup.experiment import build_task
from jaxsup.tasks.pskd.task import PREV_PROBS
from jaxsup.train import train_and_evaluate

from helpers import ROOT, read_metrics, restored_params

NUM_TRAIN = 1437


def pskd_config(**overrides):
    base = {"model_name": "mlp", "model": dict(widths=(16,), num_classes=10), "batch_size": 32, "total_steps": 100,
            "log_every": 1, "checkpoint.every": 3, "checkpoint.async_save": False, "mesh": (("data", 1),),
            "evals.test.every": 0, "evals.test.batch_size": 120}
    return load_config(os.path.join(ROOT, "configs/pskd_digits.py:runlocal"), {**base, **overrides})


def test_targets_loss_grads_and_buffer_update():
    config = pskd_config(**{"pskd.alpha_T": 0.6})
    task = build_task(config, sharding.make_mesh((("data", 1),)))
    source = sources.open_source("digits", "train")
    batch = pipeline.train_dataset(source, preprocess.build(config.data.preprocess), 32, seed=1)[0]
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    params, state = task.init(jax.random.key(0), jax.tree.map(lambda x: x[:1], batch))
    assert state[PREV_PROBS].shape == (NUM_TRAIN, 10) and len(source) == NUM_TRAIN
    rng = np.random.default_rng(0)
    prev = rng.dirichlet(np.ones(10), size=NUM_TRAIN).astype(np.float32)
    state = {**state, PREV_PROBS: jnp.asarray(prev)}
    step = 90  # epoch floor(90 * 32 / 1437) = 2 of 100 * 32 / 1437
    alpha = 0.6 * 2 / (100 * 32 / NUM_TRAIN)
    idx, labels = np.asarray(batch["index"]), np.asarray(batch["label"])
    targets = (1 - alpha) * np.eye(10)[labels] + alpha * prev[idx]

    def task_loss(p):
        loss, (metrics, new_state) = task.loss_fn(p, state, {}, batch, jax.random.key(0), jnp.int32(step))
        return loss, (metrics, new_state)

    def reference(p):
        logits = task.model.apply({"params": p}, batch["image"])[0]
        return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), -1))

    (loss, (metrics, new_state)), grads = jax.value_and_grad(task_loss, has_aux=True)(params)
    logits = np.asarray(task.model.apply({"params": params}, batch["image"])[0], np.float64)
    log_q = logits - logits.max(1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(1, keepdims=True))
    np.testing.assert_allclose(loss, -np.mean(np.sum(targets * log_q, 1)), rtol=1e-5)
    np.testing.assert_allclose(metrics["alpha"], alpha, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads, jax.grad(reference)(params))
    updated = np.asarray(new_state[PREV_PROBS])
    np.testing.assert_allclose(updated[idx], np.exp(log_q), rtol=1e-5, atol=1e-7)
    untouched = np.setdiff1d(np.arange(NUM_TRAIN), idx)
    np.testing.assert_array_equal(updated[untouched], prev[untouched])
    # Epoch 0: alpha = 0, plain cross-entropy whatever the buffer holds.
    loss0 = task.loss_fn(params, state, {}, batch, jax.random.key(0), jnp.int32(3))[0]
    np.testing.assert_allclose(loss0, -np.mean(log_q[np.arange(32), labels]), rtol=1e-5)


def test_buffer_is_checkpointed_and_resume_is_exact(tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train_and_evaluate(pskd_config(total_steps=6), straight)  # checkpoints at steps 3 and 6
    shutil.copytree(straight, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))
    train_and_evaluate(pskd_config(total_steps=6), resumed)  # resumes from step 3
    records = read_metrics(resumed)
    assert [r["step"] for r in records if "perf/compile_s" in r] == [0, 3]  # the second run started at step 3
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4, 5, 6]  # replayed steps superseded
    a = np.asarray(checkpoint.restore_subtree(straight, f"task_state/{PREV_PROBS}"))
    b = np.asarray(checkpoint.restore_subtree(resumed, f"task_state/{PREV_PROBS}"))
    np.testing.assert_array_equal(a, b)
    seen = a.sum(1) > 0
    assert seen.sum() == 6 * 32  # one epoch not yet complete: every example seen once
    np.testing.assert_allclose(a[seen].sum(1), 1.0, rtol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, restored_params(straight), restored_params(resumed))


@pytest.mark.parametrize("overrides, match", [
    ({"pskd.alpha_T": 1.5}, r"config.pskd.alpha_T=1.5 \(--config.pskd.alpha_T\): expected a finite number in \[0, 1\]"),
    ({"pskd.augment": "mixup"}, "pskd.augment='mixup' is not one of"),
])
def test_bad_input_names_the_cause(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        train_and_evaluate(pskd_config(**overrides), str(tmp_path))
